//! [`RedisSentinel`]: a primary, a replica and three Redis Sentinels for tests.
//!
//! - this file: the fixture (start, failover, the data servers);
//! - `builder`: passwords and TLS ([`SentinelBuilder`]);
//! - `sentinel_process`: one `redis-sentinel` process, its config file and
//!   the commands the fixture sends it.

mod builder;
mod sentinel_process;

pub use builder::SentinelBuilder;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use crate::RedisServer;
use crate::process::tail;
use builder::Options;
use sentinel_process::{SentinelProcess, query};

/// How many sentinels watch the primary.
const SENTINELS: usize = 3;
/// How long `start` and `failover` wait for the sentinels to agree.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Arguments of both data servers: replicas sync at once (no 5 s wait for
/// more replicas before a diskless transfer).
const SERVER_ARGS: [&str; 2] = ["--repl-diskless-sync-delay", "0"];

/// A primary `redis-server`, one replica of it, and three `redis-sentinel`
/// processes monitoring it (quorum 2), all on `127.0.0.1`, each on a free
/// port with its own directory (a sentinel rewrites its config file there).
/// Everything is killed on drop.
///
/// The sentinels are tuned for tests: `down-after-milliseconds 1000`,
/// `failover-timeout 5000`, and (through `SENTINEL DEBUG`) `INFO` polling
/// every 100 ms and hello messages every 500 ms. [`RedisSentinel::start`]
/// returns once the replica is in sync and every sentinel knows the
/// replica and the two other sentinels (about a second), so stopping the
/// primary ([`RedisSentinel::servers_mut`]) makes them fail over on their
/// own, and [`RedisSentinel::failover`] forces one.
///
/// Methods are synchronous (they block the calling thread), so they work in
/// `#[test]` and `#[tokio::test]` alike. Needs `redis-server` and
/// `redis-sentinel` (`apt-get install -y redis-server redis-sentinel`).
///
/// ```no_run
/// use cache_testkit::RedisSentinel;
///
/// let sentinel = RedisSentinel::start();
/// let before = sentinel.primary_addr();
/// let after = sentinel.failover(); // the replica is promoted
/// assert_ne!(before, after);
/// assert_eq!(sentinel.primary_addr(), after);
/// ```
pub struct RedisSentinel {
    master_name: String,
    /// The data servers: the initial primary first, then its replica.
    servers: Vec<RedisServer>,
    sentinels: Vec<SentinelProcess>,
    options: Options,
}

impl fmt::Debug for RedisSentinel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSentinel")
            .field("master_name", &self.master_name)
            .field("servers", &self.servers)
            .field("sentinels", &self.sentinel_addrs())
            .finish()
    }
}

impl RedisSentinel {
    /// Starts the primary, its replica and three sentinels monitoring it as
    /// `mymaster`, and waits until they all know each other.
    ///
    /// Panics if `redis-server` or `redis-sentinel` is missing (telling you
    /// how to install them), or, with the sentinels' log tails, if they do
    /// not settle within 20 s.
    ///
    /// ```no_run
    /// let sentinel = cache_testkit::RedisSentinel::start();
    /// assert_eq!(sentinel.master_name(), "mymaster");
    /// assert_eq!(sentinel.sentinel_urls().len(), 3);
    /// ```
    pub fn start() -> RedisSentinel {
        RedisSentinel::start_named("mymaster")
    }

    /// Like [`RedisSentinel::start`], with the primary monitored under
    /// `master_name` (letters, digits, `-`, `_` and `.`).
    ///
    /// ```no_run
    /// let sentinel = cache_testkit::RedisSentinel::start_named("orders");
    /// assert_eq!(sentinel.master_name(), "orders");
    /// ```
    pub fn start_named(master_name: &str) -> RedisSentinel {
        RedisSentinel::builder().master_name(master_name).start()
    }

    /// A [`SentinelBuilder`]: the master name, passwords for the data
    /// servers and for the sentinels, TLS.
    ///
    /// ```no_run
    /// let sentinel = cache_testkit::RedisSentinel::builder()
    ///     .password("data-secret")
    ///     .sentinel_password("sentinel-secret")
    ///     .tls()
    ///     .start();
    /// assert!(sentinel.sentinel_urls()[0].starts_with("rediss://"));
    /// ```
    pub fn builder() -> SentinelBuilder {
        SentinelBuilder::default()
    }

    fn launch(options: Options) -> RedisSentinel {
        let master_name = options.master_name.clone();
        let primary = options.server(None, None);
        let replica = options.server(Some(primary.port()), Some(primary.dir()));
        let mut fixture = RedisSentinel {
            master_name,
            servers: vec![primary, replica],
            sentinels: Vec::new(),
            options,
        };
        fixture.wait_for("the replica to be in sync", |f| {
            let replica = info_replication(&f.servers[1])?;
            (replica.get("master_link_status").map(String::as_str) == Some("up"))
                .then_some(())
                .ok_or_else(|| format!("replica: {replica:?}"))
        });
        let primary_addr = fixture.servers[0].addr();
        let certificates = fixture.options.tls.then(|| fixture.servers[0].dir());
        fixture.sentinels = (0..SENTINELS)
            .map(|_| {
                SentinelProcess::start(
                    &fixture.master_name,
                    primary_addr,
                    &fixture.options,
                    certificates,
                )
            })
            .collect();
        fixture.wait_for("the sentinels to know the replica and each other", |f| {
            f.sentinels.iter().try_for_each(|s| s.knows_everyone(f))
        });
        fixture
    }

    /// The name the sentinels monitor the primary under (`mymaster` unless
    /// started with [`RedisSentinel::start_named`]).
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// `redis://127.0.0.1:<port>` of each sentinel (`rediss://` with
    /// [`SentinelBuilder::tls`]), without the sentinels' password (see
    /// [`RedisSentinel::authed_sentinel_urls`]).
    ///
    /// ```no_run
    /// let sentinel = cache_testkit::RedisSentinel::start();
    /// for url in sentinel.sentinel_urls() {
    ///     assert!(url.starts_with("redis://127.0.0.1:"));
    /// }
    /// ```
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("{}://{}", self.options.scheme(), s.addr()))
            .collect()
    }

    /// Like [`RedisSentinel::sentinel_urls`], with the sentinels' password
    /// ([`SentinelBuilder::sentinel_password`]) if they have one.
    ///
    /// ```no_run
    /// let sentinel = cache_testkit::RedisSentinel::builder().sentinel_password("s3").start();
    /// assert!(sentinel.authed_sentinel_urls()[0].starts_with("redis://:s3@127.0.0.1:"));
    /// ```
    pub fn authed_sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| self.options.sentinel_url(s.addr()))
            .collect()
    }

    /// The data servers' password ([`SentinelBuilder::password`]), if any.
    pub fn password(&self) -> Option<&str> {
        self.options.password.as_deref()
    }

    /// The sentinels' password ([`SentinelBuilder::sentinel_password`]), if any.
    pub fn sentinel_password(&self) -> Option<&str> {
        self.options.sentinel_password.as_deref()
    }

    /// PEM file of the private CA that signed every certificate of a TLS
    /// fixture ([`SentinelBuilder::tls`]). Panics without TLS.
    pub fn tls_ca_file(&self) -> std::path::PathBuf {
        self.servers[0].tls_ca_file()
    }

    /// `127.0.0.1:<port>` of each sentinel.
    pub fn sentinel_addrs(&self) -> Vec<SocketAddr> {
        self.sentinels.iter().map(SentinelProcess::addr).collect()
    }

    /// The primary's address as the sentinels report it now
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`, asking each sentinel in turn
    /// until one answers).
    ///
    /// Panics if no sentinel answers.
    ///
    /// ```no_run
    /// let sentinel = cache_testkit::RedisSentinel::start();
    /// assert_eq!(sentinel.primary_addr(), sentinel.servers()[0].addr());
    /// ```
    pub fn primary_addr(&self) -> SocketAddr {
        let mut errors = Vec::new();
        for sentinel in &self.sentinels {
            match sentinel.primary_addr(&self.master_name) {
                Ok(addr) => return addr,
                Err(e) => errors.push(format!("{}: {e}", sentinel.addr())),
            }
        }
        panic!("cache-testkit: no sentinel reported the primary: {errors:?}");
    }

    /// `redis://<primary_addr>` (`rediss://` with TLS), without the
    /// password.
    pub fn primary_url(&self) -> String {
        format!("{}://{}", self.options.scheme(), self.primary_addr())
    }

    /// Forces a failover (`SENTINEL FAILOVER <name>`) and waits (up to 20 s,
    /// usually 2-3 s) until every sentinel reports the new primary, the new
    /// primary says it is one, and the old primary is its replica, in sync.
    /// Returns the new primary's address.
    ///
    /// Panics, with the sentinels' log tails, if that does not happen.
    ///
    /// ```no_run
    /// let sentinel = cache_testkit::RedisSentinel::start();
    /// let old = sentinel.primary_addr();
    /// let new = sentinel.failover();
    /// let back = sentinel.failover(); // and back again
    /// assert_eq!(back, old);
    /// # drop(new);
    /// ```
    pub fn failover(&self) -> SocketAddr {
        let old = self.primary_addr();
        let asked = self.sentinels.iter().find_map(|s| {
            s.query::<String>(
                redis::cmd("SENTINEL")
                    .arg("FAILOVER")
                    .arg(&self.master_name),
            )
            .ok()
        });
        if asked.is_none() {
            let why = self.sentinels[0].query::<String>(
                redis::cmd("SENTINEL")
                    .arg("FAILOVER")
                    .arg(&self.master_name),
            );
            panic!(
                "cache-testkit: no sentinel accepted SENTINEL FAILOVER: {why:?}\n{}",
                self.describe()
            );
        }
        let mut new = old;
        self.wait_for("the failover to complete", |f| {
            new = f.settled_primary()?;
            if new == old {
                return Err(format!("the sentinels still report {old}"));
            }
            let promoted = info_replication(f.server(new)?)?;
            if promoted.get("role").map(String::as_str) != Some("master") {
                return Err(format!("{new} is not a master yet: {promoted:?}"));
            }
            let demoted = info_replication(f.server(old)?)?;
            let replicates_new = demoted.get("role").map(String::as_str) == Some("slave")
                && demoted.get("master_port") == Some(&new.port().to_string())
                && demoted.get("master_link_status").map(String::as_str) == Some("up");
            replicates_new
                .then_some(())
                .ok_or_else(|| format!("{old} is not an in-sync replica of {new}: {demoted:?}"))
        });
        new
    }

    /// The data servers: the initial primary first, then the initial
    /// replica (roles swap with each failover; ask
    /// [`RedisSentinel::primary_addr`]).
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// The data servers, to [`stop`](RedisServer::stop) or
    /// [`pause`](RedisServer::pause) one: a primary down for more than a
    /// second is failed over by the sentinels on their own.
    ///
    /// ```no_run
    /// let mut sentinel = cache_testkit::RedisSentinel::start();
    /// let old = sentinel.primary_addr();
    /// sentinel.servers_mut().iter_mut().find(|s| s.addr() == old).unwrap().stop();
    /// std::thread::sleep(std::time::Duration::from_secs(5));
    /// assert_ne!(sentinel.primary_addr(), old);
    /// ```
    pub fn servers_mut(&mut self) -> &mut [RedisServer] {
        &mut self.servers
    }

    /// Kills every sentinel and both servers (each server keeps its port,
    /// like [`RedisServer::stop`]). Dropping the fixture does the same.
    pub fn stop(&mut self) {
        self.sentinels.clear();
        for server in &mut self.servers {
            server.stop();
        }
    }

    fn server(&self, addr: SocketAddr) -> Result<&RedisServer, String> {
        self.servers
            .iter()
            .find(|s| s.addr() == addr)
            .ok_or_else(|| format!("{addr} is none of the fixture's servers"))
    }

    /// The primary every sentinel reports, if they agree.
    fn settled_primary(&self) -> Result<SocketAddr, String> {
        let reported: Vec<Result<SocketAddr, String>> = self
            .sentinels
            .iter()
            .map(|s| s.primary_addr(&self.master_name))
            .collect();
        match reported.first() {
            Some(Ok(first)) if reported.iter().all(|r| r.as_ref() == Ok(first)) => Ok(*first),
            _ => Err(format!("the sentinels report {reported:?}")),
        }
    }

    /// Polls `check` until it passes; panics after [`SETTLE_TIMEOUT`] with
    /// its last complaint and the sentinels' logs.
    fn wait_for(&self, what: &str, mut check: impl FnMut(&Self) -> Result<(), String>) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let last = match check(self) {
                Ok(()) => return,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "cache-testkit: timed out after {SETTLE_TIMEOUT:?} waiting for {what}: {last}\n{}",
                    self.describe()
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// The log tails of every process, for error messages.
    fn describe(&self) -> String {
        let mut out = String::new();
        for server in &self.servers {
            out.push_str(&format!(
                "--- redis-server {} ---\n{}\n",
                server.addr(),
                server.log_tail()
            ));
        }
        for sentinel in &self.sentinels {
            out.push_str(&format!(
                "--- redis-sentinel {} ---\n{}\n",
                sentinel.addr(),
                tail(&sentinel.log_path(), 20)
            ));
        }
        out
    }
}

/// `INFO replication` of `server` as field/value pairs.
fn info_replication(server: &RedisServer) -> Result<HashMap<String, String>, String> {
    let info: String = query(&server.client(), redis::cmd("INFO").arg("replication"))?;
    Ok(info
        .lines()
        .filter_map(|line| line.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}
