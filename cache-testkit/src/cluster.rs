//! [`RedisCluster`]: a local Redis Cluster of real `redis-server` masters for tests.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::redis_server::{RedisServer, make_certificates, require_program};

mod failover;

/// Arguments every cluster node gets on top of [`RedisServer`]'s defaults.
const NODE_ARGS: [&str; 6] = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "2000",
];
/// Number of hash slots in Redis Cluster.
const SLOTS: &str = "16384";
/// How long `start` / `restart_node` wait for `cluster_state:ok`.
const OK_TIMEOUT: Duration = Duration::from_secs(30);

/// A local Redis Cluster of `n` masters (no replicas), each a [`RedisServer`]
/// on `127.0.0.1` with its own directory, `--cluster-node-timeout 2000`, and
/// a free cluster bus port (`port + 10000`). All nodes are killed on drop.
///
/// Created with `redis-cli --cluster create`; [`RedisCluster::start`] returns
/// only once every node reports `cluster_state:ok` with all 16384 slots
/// served. Methods are synchronous (they block the calling thread), so they
/// work in `#[test]` and `#[tokio::test]` alike.
///
/// With no replicas, stopping a node makes the cluster fail (after the node
/// timeout, ~2-4 s, every surviving node reports `cluster_state:fail` and
/// answers `CLUSTERDOWN`); restarting it heals the cluster. A cluster made by
/// [`RedisCluster::start_with_replicas`] fails over instead: a replica of the
/// stopped master is promoted (see [`RedisCluster::wait_for_failover`]).
///
/// ```no_run
/// use cache_testkit::RedisCluster;
///
/// # async fn demo() {
/// let cluster = RedisCluster::start(3);
/// let mut conn = cluster.client().get_async_connection().await.unwrap();
/// let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut conn).await.unwrap();
/// # }
/// ```
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Replicas per master (see [`RedisCluster::start_with_replicas`]).
    replicas: usize,
    /// The replicas each stopped node had when it was stopped, by index.
    former_replicas: HashMap<usize, Vec<usize>>,
    /// The certificates shared by the nodes of a TLS cluster (removed on drop).
    tls_dir: Option<PathBuf>,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if let Some(dir) = &self.tls_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl RedisCluster {
    /// Starts `n` cluster-enabled masters, joins them with
    /// `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`, and
    /// waits (up to 30 s) until every node reports `cluster_state:ok`, all
    /// 16384 slots assigned and ok, and knows all `n` nodes.
    ///
    /// Panics if `n < 3` (Redis Cluster needs three masters), if
    /// `redis-server` / `redis-cli` are missing (telling you to run
    /// `apt-get install -y redis-server`), or if the cluster does not form
    /// (with `redis-cli`'s output or the nodes' `CLUSTER INFO`).
    ///
    /// ```no_run
    /// let cluster = cache_testkit::RedisCluster::start(3);
    /// assert_eq!(cluster.urls().len(), 3);
    /// assert!(cluster.is_ok());
    /// ```
    pub fn start(n: usize) -> RedisCluster {
        assert!(
            n >= 3,
            "cache-testkit: a Redis Cluster needs at least 3 masters, got {n}"
        );
        require_program("redis-cli");
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| RedisServer::launch(NODE_ARGS.iter().map(|a| (*a).to_owned()).collect(), true))
            .collect();
        RedisCluster {
            nodes,
            replicas: 0,
            former_replicas: HashMap::new(),
            tls_dir: None,
        }
        .create()
    }

    /// Like [`RedisCluster::start`], with TLS-only nodes (`--port 0
    /// --tls-port <port> --tls-cluster yes`: clients and the cluster bus
    /// speak TLS) sharing one private CA made by `openssl`. Clients need no
    /// certificate. [`RedisCluster::urls`] are `rediss://` URLs,
    /// [`RedisCluster::client`] trusts the CA, and every node's
    /// [`RedisServer::tls_ca_file`] names it.
    ///
    /// ```no_run
    /// let cluster = cache_testkit::RedisCluster::start_tls(3);
    /// assert!(cluster.urls()[0].starts_with("rediss://"));
    /// let ca = cluster.nodes()[0].tls_ca_file();
    /// # drop(ca);
    /// ```
    pub fn start_tls(n: usize) -> RedisCluster {
        assert!(
            n >= 3,
            "cache-testkit: a Redis Cluster needs at least 3 masters, got {n}"
        );
        require_program("redis-cli");
        let dir = std::env::temp_dir().join(format!(
            "cache-testkit-tls-cluster-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cache-testkit: cannot create {}: {e}", dir.display()));
        make_certificates(&dir);
        let mut args: Vec<String> = NODE_ARGS.iter().map(|a| (*a).to_owned()).collect();
        args.extend(["--tls-cluster".to_owned(), "yes".to_owned()]);
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| RedisServer::launch_tls(false, Some(&dir), args.clone(), true))
            .collect();
        RedisCluster {
            nodes,
            replicas: 0,
            former_replicas: HashMap::new(),
            tls_dir: Some(dir),
        }
        .create()
    }

    /// Joins the nodes with `redis-cli --cluster create` (bounded by
    /// [`CREATE_TIMEOUT`]) and waits for `ok`.
    fn create(self) -> RedisCluster {
        let cluster = self;
        let mut create = Command::new("redis-cli");
        if let Some(dir) = &cluster.tls_dir {
            create.arg("--tls").arg("--cacert").arg(dir.join("ca.crt"));
        }
        create
            .args(["--cluster", "create"])
            .args(cluster.nodes.iter().map(|node| node.addr().to_string()))
            .args([
                "--cluster-replicas",
                &cluster.replicas.to_string(),
                "--cluster-yes",
            ]);
        let output = output_within(&mut create, CREATE_TIMEOUT);
        if !output.status.success() {
            panic!(
                "cache-testkit: `redis-cli --cluster create` failed ({}):\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        if !cluster.wait_until_ok(OK_TIMEOUT) {
            panic!(
                "cache-testkit: the cluster did not reach cluster_state:ok within {OK_TIMEOUT:?}:\n{}",
                cluster.describe()
            );
        }
        if cluster.replicas > 0 && !cluster.wait_until_replicas_synced(OK_TIMEOUT) {
            panic!(
                "cache-testkit: the replicas did not finish their first sync within {OK_TIMEOUT:?}:\n{}",
                cluster.describe()
            );
        }
        cluster
    }

    /// The nodes' URLs, `redis://127.0.0.1:<port>` each, in node order.
    ///
    /// ```no_run
    /// let cluster = cache_testkit::RedisCluster::start(3);
    /// let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    /// # drop(client);
    /// ```
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, in the order of [`RedisCluster::urls`].
    ///
    /// ```no_run
    /// let cluster = cache_testkit::RedisCluster::start(3);
    /// for node in cluster.nodes() {
    ///     println!("{} running: {}", node.url(), node.is_running());
    /// }
    /// ```
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// A [`redis::cluster::ClusterClient`] seeded with every node, tuned to
    /// fail fast in tests: 1 s connection and response timeouts, 2 retries.
    ///
    /// ```no_run
    /// # async fn demo() {
    /// let cluster = cache_testkit::RedisCluster::start(3);
    /// let mut conn = cluster.client().get_async_connection().await.unwrap();
    /// let v: Option<String> = redis::cmd("GET").arg("k").query_async(&mut conn).await.unwrap();
    /// assert_eq!(v, None);
    /// # }
    /// ```
    pub fn client(&self) -> redis::cluster::ClusterClient {
        let builder = redis::cluster::ClusterClient::builder(self.urls())
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(1))
            .retries(2);
        let builder = match &self.tls_dir {
            Some(dir) => {
                // Deprecated in rustls 0.23.48 without a replacement for ring.
                #[allow(deprecated)]
                let ring = rustls::crypto::ring::default_provider();
                let _ = ring.install_default();
                builder.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(
                        std::fs::read(dir.join("ca.crt")).expect("the kit's CA file is readable"),
                    ),
                })
            }
            None => builder,
        };
        builder.build().expect("loopback cluster URLs are valid")
    }

    /// Kills node `i` (SIGKILL) and returns at once. The cluster notices after
    /// the node timeout (2 s); use [`RedisCluster::wait_until_down`] to wait
    /// for that. Panics if `i` is out of range.
    ///
    /// ```no_run
    /// let mut cluster = cache_testkit::RedisCluster::start(3);
    /// cluster.stop_node(0);
    /// assert!(cluster.wait_until_down(std::time::Duration::from_secs(10)));
    /// ```
    pub fn stop_node(&mut self, i: usize) {
        if self.replicas > 0 {
            let replicas = self.replicas_of(i);
            self.former_replicas.insert(i, replicas);
        }
        self.nodes[i].stop();
    }

    /// Restarts node `i` on its port with its old identity (`nodes.conf`
    /// survives; its data does not), then waits (up to 30 s) until the whole
    /// cluster reports `cluster_state:ok` again. Panics if it does not.
    ///
    /// ```no_run
    /// let mut cluster = cache_testkit::RedisCluster::start(3);
    /// cluster.stop_node(1);
    /// cluster.restart_node(1);
    /// assert!(cluster.is_ok());
    /// ```
    pub fn restart_node(&mut self, i: usize) {
        self.nodes[i].restart();
        if !self.wait_until_ok(OK_TIMEOUT) {
            panic!(
                "cache-testkit: the cluster did not recover after restarting node {i} within {OK_TIMEOUT:?}:\n{}",
                self.describe()
            );
        }
    }

    /// Freezes node `i` with SIGSTOP (see [`RedisServer::pause`]).
    ///
    /// ```no_run
    /// let mut cluster = cache_testkit::RedisCluster::start(3);
    /// cluster.pause_node(2);
    /// cluster.resume_node(2);
    /// ```
    pub fn pause_node(&mut self, i: usize) {
        self.nodes[i].pause();
    }

    /// Continues node `i` after [`RedisCluster::pause_node`] (SIGCONT).
    ///
    /// ```no_run
    /// let mut cluster = cache_testkit::RedisCluster::start(3);
    /// cluster.pause_node(0);
    /// cluster.resume_node(0);
    /// ```
    pub fn resume_node(&mut self, i: usize) {
        self.nodes[i].resume();
    }

    /// Node `i`'s `CLUSTER INFO` as key/value pairs, `None` if it does not
    /// answer within ~1 s (stopped or paused).
    ///
    /// ```no_run
    /// let cluster = cache_testkit::RedisCluster::start(3);
    /// let info = cluster.cluster_info(0).unwrap();
    /// assert_eq!(info["cluster_state"], "ok");
    /// ```
    pub fn cluster_info(&self, i: usize) -> Option<HashMap<String, String>> {
        let node = &self.nodes[i];
        if !node.is_running() || node.is_paused() {
            return None;
        }
        let client = node.client();
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        let text: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).ok()?;
        Some(
            text.lines()
                .filter_map(|line| line.trim().split_once(':'))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// Whether every node is running and reports `cluster_state:ok`, all 16384
    /// slots assigned and ok, and all nodes known.
    ///
    /// ```no_run
    /// let cluster = cache_testkit::RedisCluster::start(3);
    /// assert!(cluster.is_ok());
    /// ```
    pub fn is_ok(&self) -> bool {
        let n = self.nodes.len().to_string();
        (0..self.nodes.len()).all(|i| {
            self.cluster_info(i).is_some_and(|info| {
                let is = |k: &str, v: &str| info.get(k).is_some_and(|x| x == v);
                is("cluster_state", "ok")
                    && is("cluster_slots_assigned", SLOTS)
                    && is("cluster_slots_ok", SLOTS)
                    && is("cluster_known_nodes", &n)
            })
        })
    }

    /// Polls until [`RedisCluster::is_ok`]; `false` if `timeout` passes first.
    ///
    /// ```no_run
    /// let cluster = cache_testkit::RedisCluster::start(3);
    /// assert!(cluster.wait_until_ok(std::time::Duration::from_secs(5)));
    /// ```
    pub fn wait_until_ok(&self, timeout: Duration) -> bool {
        poll_until(timeout, || self.is_ok())
    }

    /// Polls until every node that answers reports `cluster_state:fail` (and
    /// at least one answers); `false` if `timeout` passes first. With no
    /// replicas this follows [`RedisCluster::stop_node`] after ~2-4 s.
    ///
    /// ```no_run
    /// let mut cluster = cache_testkit::RedisCluster::start(3);
    /// cluster.stop_node(0);
    /// assert!(cluster.wait_until_down(std::time::Duration::from_secs(10)));
    /// ```
    pub fn wait_until_down(&self, timeout: Duration) -> bool {
        poll_until(timeout, || {
            let states: Vec<String> = (0..self.nodes.len())
                .filter_map(|i| self.cluster_info(i)?.remove("cluster_state"))
                .collect();
            !states.is_empty() && states.iter().all(|s| s == "fail")
        })
    }

    /// Every node's URL, state and `CLUSTER INFO` summary, or log tail if it
    /// does not answer (for panic messages).
    fn describe(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            out.push_str(&format!(
                "node {i} {} running={}: ",
                node.url(),
                node.is_running()
            ));
            match self.cluster_info(i) {
                Some(info) => {
                    for k in [
                        "cluster_state",
                        "cluster_slots_assigned",
                        "cluster_slots_ok",
                        "cluster_known_nodes",
                    ] {
                        out.push_str(&format!("{k}={} ", info.get(k).map_or("?", String::as_str)));
                    }
                    out.push('\n');
                }
                None => out.push_str(&format!("no answer; log tail:\n{}\n", node.log_tail())),
            }
        }
        out
    }
}

fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Longest `redis-cli --cluster create` may take before the fixture gives up.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `command` to completion like `Command::output`, but kills it and
/// panics if it is still running after `timeout` (a hung `redis-cli` must
/// not hang the test run).
fn output_within(command: &mut Command, timeout: Duration) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cache-testkit: cannot run redis-cli: {e}"));
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < timeout => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let output = child.wait_with_output().ok();
                panic!(
                    "cache-testkit: `redis-cli --cluster create` did not finish within {timeout:?}:\n{}",
                    output.map_or_else(String::new, |o| String::from_utf8_lossy(&o.stdout)
                        .into_owned())
                );
            }
        }
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cache-testkit: cannot read redis-cli's output: {e}"))
}
