//! Replicas and failover: a cluster whose masters have replicas, which
//! master serves a key, and waiting for a replica's promotion after its
//! master was killed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::{NODE_ARGS, RedisCluster, SLOTS, poll_until};
use crate::redis_server::{RedisServer, require_program};

/// One line of `CLUSTER NODES`.
struct NodeLine {
    id: String,
    port: u16,
    flags: String,
    /// The id of its master (`-` for a master).
    master_id: String,
    /// Slot ranges it serves (`start-end` or `slot`).
    slots: Vec<(u16, u16)>,
}

fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let addr = fields[1].split('@').next()?;
            let port = addr.rsplit_once(':')?.1.parse().ok()?;
            let slots = fields[8..]
                .iter()
                .filter(|f| !f.starts_with('['))
                .filter_map(|f| match f.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => f.parse().ok().map(|s| (s, s)),
                })
                .collect();
            Some(NodeLine {
                id: fields[0].to_owned(),
                port,
                flags: fields[2].to_owned(),
                master_id: fields[3].to_owned(),
                slots,
            })
        })
        .collect()
}

impl RedisCluster {
    /// Starts a cluster of `masters` masters with `replicas_per_master`
    /// replicas each (`redis-cli --cluster create ... --cluster-replicas n`),
    /// and waits (up to 30 s each) until every node reports
    /// `cluster_state:ok` and every replica has finished its first sync
    /// with its master, so that it can be promoted. The nodes run with
    /// `cluster-require-full-coverage no`, so that the other masters keep
    /// serving their slots while a failed master is not replaced yet
    /// (with Redis' default, every node answers `CLUSTERDOWN` then).
    ///
    /// Nodes are listed in [`RedisCluster::nodes`] in creation order; which
    /// are masters is up to `redis-cli`: ask [`RedisCluster::master_of`] and
    /// [`RedisCluster::replicas_of`]. Kill a master with
    /// [`RedisCluster::stop_node`] and wait for its replica's promotion with
    /// [`RedisCluster::wait_for_failover`] (about 3-4 s with the node timeout
    /// of 2 s).
    ///
    /// Panics if `masters < 3`, if `redis-server` / `redis-cli` are missing,
    /// or if the cluster does not form.
    ///
    /// ```no_run
    /// let mut cluster = cache_testkit::RedisCluster::start_with_replicas(3, 1);
    /// assert_eq!(cluster.nodes().len(), 6);
    /// let master = cluster.master_of("customer:1");
    /// cluster.stop_node(master);
    /// let promoted = cluster
    ///     .wait_for_failover(master, std::time::Duration::from_secs(20))
    ///     .expect("a replica took over");
    /// assert_eq!(cluster.master_of("customer:1"), promoted);
    /// ```
    pub fn start_with_replicas(masters: usize, replicas_per_master: usize) -> RedisCluster {
        assert!(
            masters >= 3,
            "cache-testkit: a Redis Cluster needs at least 3 masters, got {masters}"
        );
        require_program("redis-cli");
        let n = masters * (1 + replicas_per_master);
        let mut args: Vec<String> = NODE_ARGS.iter().map(|a| (*a).to_owned()).collect();
        // The other masters keep serving their slots while a failed
        // master is not replaced yet (Redis' default refuses every key then).
        args.extend([
            "--cluster-require-full-coverage".to_owned(),
            "no".to_owned(),
        ]);
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| RedisServer::launch(args.clone(), true))
            .collect();
        RedisCluster {
            nodes,
            replicas: replicas_per_master,
            former_replicas: std::collections::HashMap::new(),
            tls_dir: None,
        }
        .create()
    }

    /// `CLUSTER NODES` as seen by the first running node that answers.
    fn node_lines(&self) -> Option<Vec<NodeLine>> {
        (0..self.nodes.len()).find_map(|i| {
            let text: String = self.ask(i, redis::cmd("CLUSTER").arg("NODES"))?;
            Some(parse_nodes(&text))
        })
    }

    /// Runs `cmd` on node `i` (`None` if it is stopped, paused or does not
    /// answer within ~1 s).
    fn ask<T: redis::FromRedisValue>(&self, i: usize, cmd: &redis::Cmd) -> Option<T> {
        let node = &self.nodes[i];
        if !node.is_running() || node.is_paused() {
            return None;
        }
        let mut conn = node
            .client()
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        cmd.query(&mut conn).ok()
    }

    fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|node| node.port() == port)
    }

    /// The index (in [`RedisCluster::nodes`]) of the master that serves
    /// `key`'s hash slot now, as the first running node sees it. Panics if
    /// no node answers or no node serves the slot.
    ///
    /// ```no_run
    /// let cluster = cache_testkit::RedisCluster::start_with_replicas(3, 1);
    /// let i = cluster.master_of("cache:customer:1");
    /// println!("served by {}", cluster.nodes()[i].url());
    /// ```
    pub fn master_of(&self, key: &str) -> usize {
        let slot: u16 = (0..self.nodes.len())
            .find_map(|i| self.ask(i, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)))
            .expect("cache-testkit: no cluster node answered CLUSTER KEYSLOT");
        let lines = self
            .node_lines()
            .expect("cache-testkit: no cluster node answered CLUSTER NODES");
        lines
            .iter()
            .filter(|line| line.flags.contains("master") && !line.flags.contains("fail"))
            .find(|line| line.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .and_then(|line| self.index_of_port(line.port))
            .unwrap_or_else(|| panic!("cache-testkit: no live master serves slot {slot}"))
    }

    /// The indexes of the nodes that replicate node `master` now (empty for
    /// a replica, or when no node answers).
    ///
    /// ```no_run
    /// let cluster = cache_testkit::RedisCluster::start_with_replicas(3, 1);
    /// let master = cluster.master_of("k");
    /// assert_eq!(cluster.replicas_of(master).len(), 1);
    /// ```
    pub fn replicas_of(&self, master: usize) -> Vec<usize> {
        let Some(lines) = self.node_lines() else {
            return Vec::new();
        };
        let port = self.nodes[master].port();
        let Some(id) = lines.iter().find(|l| l.port == port).map(|l| l.id.clone()) else {
            return Vec::new();
        };
        lines
            .iter()
            .filter(|line| line.master_id == id)
            .filter_map(|line| self.index_of_port(line.port))
            .collect()
    }

    /// After [`RedisCluster::stop_node`] of master `dead`: polls until one
    /// of its replicas serves its slots as a master and every running node
    /// reports `cluster_state:ok` with all 16384 slots ok; returns that
    /// replica's index, or `None` if `timeout` passes first (also when
    /// the promotion happened before the call).
    ///
    /// ```no_run
    /// let mut cluster = cache_testkit::RedisCluster::start_with_replicas(3, 1);
    /// let master = cluster.master_of("k");
    /// cluster.stop_node(master);
    /// let promoted = cluster.wait_for_failover(master, std::time::Duration::from_secs(20));
    /// assert!(promoted.is_some());
    /// ```
    pub fn wait_for_failover(&self, dead: usize, timeout: Duration) -> Option<usize> {
        let mut candidates: BTreeSet<usize> = self
            .former_replicas
            .get(&dead)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let mut promoted = None;
        let done = poll_until(timeout, || {
            candidates.extend(self.replicas_of(dead));
            let Some(lines) = self.node_lines() else {
                return false;
            };
            let serving = candidates.iter().copied().find(|&i| {
                let port = self.nodes[i].port();
                lines.iter().any(|line| {
                    line.port == port
                        && line.flags.contains("master")
                        && !line.flags.contains("fail")
                        && !line.slots.is_empty()
                })
            });
            let Some(serving) = serving else {
                return false;
            };
            let all_ok = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].is_running())
                .all(|i| {
                    self.cluster_info(i).is_some_and(|info| {
                        info.get("cluster_state").is_some_and(|v| v == "ok")
                            && info.get("cluster_slots_ok").is_some_and(|v| v == SLOTS)
                    })
                });
            promoted = Some(serving);
            all_ok
        });
        done.then_some(promoted).flatten()
    }

    /// Polls until every replica reports `master_link_status:up` and no
    /// sync in progress.
    pub(super) fn wait_until_replicas_synced(&self, timeout: Duration) -> bool {
        let started = Instant::now();
        poll_until(timeout.saturating_sub(started.elapsed()), || {
            (0..self.nodes.len()).all(|i| {
                let Some(info) = self.ask::<String>(i, redis::cmd("INFO").arg("replication"))
                else {
                    return false;
                };
                info.contains("role:master")
                    || (info.contains("master_link_status:up")
                        && info.contains("master_sync_in_progress:0"))
            })
        })
    }
}
