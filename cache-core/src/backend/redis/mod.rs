//! Redis backend: one server (bb8 pool + shared multiplexed connections), a
//! primary followed through Redis Sentinel (the same, on whichever server
//! the sentinels name: `sentinel.rs`) or a Redis Cluster (redis-rs
//! `cluster-async`).
//!
//! # Why the hit path does not check out of the pool
//! Measured on the 2-core development machine (64 tasks, 207-byte values): one
//! shared `MultiplexedConnection` serves ~190–235k GET/s, a bb8 checkout per
//! operation 34k/s (60k/s without the check-out PING). A multiplexed
//! connection already pipelines any number of in-flight commands, so commands
//! run on a shared multiplexed connection, and bb8 does what a pool is
//! for: creating, health-checking and replacing those connections (a
//! connection that fails is marked broken, bb8 discards it, and the next call
//! takes a fresh one) and serving bulk work. Check-out PINGs are off and
//! TCP_NODELAY is on.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, IntoConnectionInfo, Script, Value};

use self::connection::*;
use self::sentinel::{SentinelNode, SentinelSettings};
#[cfg(feature = "tls")]
use self::tls::{certificates, install_crypto_provider};
use super::{Backend, BackendInfo, BackendKind, InvalidationWrite};
use crate::config::{RedisTarget, TlsMaterial};
use crate::error::{BackendError, ErrorKind};
use crate::redact::redact_url;

#[macro_use]
mod connection;
#[macro_use]
pub(crate) mod sentinel;
mod acl;
mod info;
mod replicated;
mod restart;
pub(crate) mod tls;
pub(crate) mod tracking;

/// `name key...` in a buffer sized up front: `cmd(name).arg(key)` would
/// grow it once more, a reallocation on every hit (the hit path's `GET`,
/// and its `MGET` with prefix generations).
fn keyed_cmd<'k>(name: &str, keys: impl IntoIterator<Item = &'k str> + Clone) -> Cmd {
    let (count, bytes) = keys
        .clone()
        .into_iter()
        .fold((0, 0), |(n, len), key| (n + 1, len + key.len()));
    let mut cmd = Cmd::with_capacity(1 + count, name.len() + bytes);
    cmd.arg(name);
    for key in keys {
        cmd.arg(key);
    }
    cmd
}

/// A boxed read of one key.
type BoxedRead<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<Vec<u8>>, BackendError>> + Send + 'a>,
>;

/// Keys per SCAN step and per UNLINK batch.
const SCAN_BATCH: usize = 1000;

const SET_IF_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

const RENEW_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

const RELEASE_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

enum Topology {
    Single(SingleNode),
    /// Behind an `Arc`: its background tasks hold it.
    Sentinel(Arc<SentinelNode>),
    /// Behind an `Arc`: the cluster client is large, and a background
    /// reconnect holds the node.
    Cluster(Arc<ClusterNode>),
}

/// The Redis backend (single server or cluster).
pub(crate) struct RedisBackend {
    topology: Topology,
    /// What [`check_permissions`](Self::check_permissions) found missing.
    missing_permissions: ArcSwapOption<Vec<String>>,
    description: String,
    set_if_lease: Script,
    renew_lease: Script,
    release_lease: Script,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("target", &self.description)
            .finish_non_exhaustive()
    }
}

fn tcp_settings(nodelay: bool) -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(nodelay)
}

impl RedisBackend {
    /// Connects lazily: building never fails because Redis is down (the
    /// cache starts degraded and the first successful call recovers it).
    pub(crate) async fn connect(
        target: &RedisTarget,
        pool_size: u32,
        timeout: Duration,
        nodelay: bool,
        tls: Option<&TlsMaterial>,
        restart_marker: Option<String>,
    ) -> Result<Self, BackendError> {
        let urls: Vec<&String> = match target {
            RedisTarget::Single(url) => vec![url],
            RedisTarget::Cluster(urls) => urls.iter().collect(),
            RedisTarget::Sentinel {
                sentinels,
                data_url,
                ..
            } => sentinels.iter().chain(data_url).collect(),
        };
        #[cfg(feature = "tls")]
        if urls.iter().any(|u| u.starts_with("rediss://")) {
            install_crypto_provider();
        }
        #[cfg(not(feature = "tls"))]
        if urls.iter().any(|u| u.starts_with("rediss://")) || tls.is_some() {
            return Err(BackendError::new(
                ErrorKind::Config,
                "rediss:// needs cache-core's `tls` feature",
            ));
        }
        let topology = match target {
            RedisTarget::Single(url) => {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| BackendError::new(ErrorKind::Other, redact_url(&e.to_string())))?
                    .set_tcp_settings(tcp_settings(nodelay));
                let client = match tls {
                    #[cfg(feature = "tls")]
                    Some(material) => {
                        redis::Client::build_with_tls(info.clone(), certificates(material))?
                    }
                    _ => redis::Client::open(info.clone())?,
                };
                Topology::Single(
                    SingleNode::new(info, client, pool_size, timeout)?
                        .with_restart_marker(restart_marker),
                )
            }
            RedisTarget::Sentinel {
                sentinels,
                master,
                data_url,
            } => Topology::Sentinel(
                SentinelNode::connect(SentinelSettings {
                    sentinels,
                    master,
                    data_url: data_url.as_deref(),
                    tls,
                    pool_size,
                    timeout,
                    tcp: tcp_settings(nodelay),
                })
                .await?,
            ),
            RedisTarget::Cluster(urls) => {
                let builder =
                    redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
                        .tcp_settings(tcp_settings(nodelay))
                        .connection_timeout(timeout.max(Duration::from_millis(50)))
                        .response_timeout(timeout.max(Duration::from_millis(50)))
                        .retries(2);
                #[cfg(feature = "tls")]
                let builder = match tls {
                    Some(material) => builder.certs(certificates(material)),
                    None => builder,
                };
                let client = builder.build()?;
                let conn = connect_cluster(&client, timeout).await?;
                Topology::Cluster(Arc::new(ClusterNode::new(client, conn, timeout)))
            }
        };
        Ok(RedisBackend {
            topology,
            missing_permissions: ArcSwapOption::empty(),
            description: target.redacted(),
            set_if_lease: Script::new(SET_IF_LEASE),
            renew_lease: Script::new(RENEW_LEASE),
            release_lease: Script::new(RELEASE_LEASE),
        })
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, BackendError> {
        match &self.topology {
            Topology::Single(node) => on_single!(node, |conn| cmd.query_async(conn)),
            Topology::Sentinel(node) => on_sentinel!(node, |conn| cmd.query_async(conn)),
            Topology::Cluster(node) => on_cluster!(node, |conn| cmd.query_async(conn)),
        }
    }

    /// Whether a new connection found the server restarted with data of an
    /// earlier run since this was last asked (a single server only).
    pub(crate) fn take_restart(&self) -> bool {
        match &self.topology {
            Topology::Single(node) => node.take_restart(),
            _ => false,
        }
    }

    /// Records the server's `run_id` in the namespace again (after the
    /// namespace was cleared, its marker with it).
    pub(crate) async fn mark_run(&self) {
        if let Topology::Single(node) = &self.topology {
            node.mark_run().await;
        }
    }

    /// GET, for the hit path (an inherent method: no boxed future).
    pub(crate) async fn get_direct(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        // The hit path: the shared connection at hand, one command, a
        // future of a few hundred bytes (small enough that the box the
        // caller puts it in comes from the allocator's per-thread cache).
        // Anything else (no connection yet, a connection whose driver is
        // gone, a cluster) takes the general path, boxed.
        if let Topology::Single(node) = &self.topology
            && let Some((mut conn, id)) = node.current()
        {
            match keyed_cmd("GET", [key]).query_async(&mut conn).await {
                Ok(value) => return Ok(value),
                Err(e) if !driver_gone(&e) => return Err(node.failed(id, e)),
                Err(_) => {}
            }
        }
        let general: BoxedRead<'_> =
            Box::pin(async move { self.query(&keyed_cmd("GET", [key])).await });
        general.await
    }

    /// GET and PTTL in one round trip: the value and how long it has left
    /// (`None` when it never expires). A key that vanished between the two
    /// commands reads as having no time left.
    pub(crate) async fn get_with_ttl(
        &self,
        key: &str,
    ) -> Result<(Option<Vec<u8>>, Option<Duration>), BackendError> {
        let mut pipe = redis::pipe();
        pipe.get(key).pttl(key);
        let (value, pttl): (Option<Vec<u8>>, i64) = match &self.topology {
            Topology::Single(node) => on_single!(node, |conn| pipe.query_async(conn)),
            Topology::Sentinel(node) => on_sentinel!(node, |conn| pipe.query_async(conn)),
            Topology::Cluster(node) => on_cluster!(node, |conn| pipe.query_async(conn)),
        }?;
        let left = match pttl {
            -1 => None,
            ms => Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        };
        Ok((value, left))
    }

    async fn invoke(
        &self,
        script: &Script,
        key: &str,
        args: &[&[u8]],
    ) -> Result<i64, BackendError> {
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        match &self.topology {
            Topology::Single(node) => on_single!(node, |conn| invocation.invoke_async(conn)),
            Topology::Sentinel(node) => on_sentinel!(node, |conn| invocation.invoke_async(conn)),
            Topology::Cluster(node) => on_cluster!(node, |conn| invocation.invoke_async(conn)),
        }
    }

    /// Addresses of the cluster's reachable masters.
    async fn masters(node: &Arc<ClusterNode>) -> Result<Vec<(String, u16)>, BackendError> {
        let masters = Self::cluster_masters(node, |flags, _| {
            !flags.contains("fail") && !flags.contains("noaddr")
        })
        .await?;
        if masters.is_empty() {
            return Err(BackendError::new(
                ErrorKind::Connection,
                "no reachable cluster master",
            ));
        }
        Ok(masters)
    }

    /// The masters that serve slots, reachable or not (sorted): the nodes
    /// whose changes client tracking must hear about. Empty for a single
    /// server.
    pub(crate) async fn slot_masters(&self) -> Result<Vec<(String, u16)>, BackendError> {
        match &self.topology {
            Topology::Single(_) | Topology::Sentinel(_) => Ok(Vec::new()),
            Topology::Cluster(node) => {
                let mut masters =
                    Self::cluster_masters(node, |flags, slots| slots && !flags.contains("noaddr"))
                        .await?;
                masters.sort();
                Ok(masters)
            }
        }
    }

    /// The masters in `CLUSTER NODES` that `keep(flags, serves_slots)`.
    async fn cluster_masters(
        node: &Arc<ClusterNode>,
        keep: impl Fn(&str, bool) -> bool,
    ) -> Result<Vec<(String, u16)>, BackendError> {
        let nodes: String = on_cluster!(node, |conn| redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(conn))?;
        let mut masters = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") {
                continue;
            }
            if !keep(fields[2], fields.len() > 8) {
                continue;
            }
            let addr = fields[1].split('@').next().unwrap_or_default();
            if let Some((host, port)) = addr.rsplit_once(':')
                && let Ok(port) = port.parse()
            {
                masters.push((host.to_owned(), port));
            }
        }
        Ok(masters)
    }

    async fn on_node(
        node: &Arc<ClusterNode>,
        host: &str,
        port: u16,
        cmd: Cmd,
    ) -> Result<Value, BackendError> {
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.to_owned(),
            port,
        });
        on_cluster!(node, |conn| conn
            .route_command(cmd.clone(), routing.clone()))
    }

    /// SCAN one node (or the single server) and UNLINK matches in batches.
    async fn scan_unlink(
        &self,
        pattern: &str,
        node: Option<(&str, u16)>,
    ) -> Result<u64, BackendError> {
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH);
            let (next, keys): (u64, Vec<Vec<u8>>) = match (node, &self.topology) {
                (Some((host, port)), Topology::Cluster(cluster)) => {
                    parse(Self::on_node(cluster, host, port, scan).await?)?
                }
                _ => self.query(&scan).await?,
            };
            for batch in keys.chunks(SCAN_BATCH) {
                let mut unlink = redis::cmd("UNLINK");
                for key in batch {
                    unlink.arg(key);
                }
                let n: u64 = self.query(&unlink).await?;
                deleted += n;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(deleted);
            }
        }
    }
}

fn parse<T: FromRedisValue>(value: Value) -> Result<T, BackendError> {
    T::from_redis_value(value).map_err(|e| BackendError::new(ErrorKind::Server, e.to_string()))
}

/// One `SET ... PX` per entry, replies ignored.
fn set_pipeline(entries: &[(String, Vec<u8>)], ttl: Duration) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for (key, value) in entries {
        pipe.cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(px(ttl))
            .ignore();
    }
    pipe
}

fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl Backend for RedisBackend {
    fn enforces_timeouts(&self) -> bool {
        // A cluster call may retry on another node, so it keeps the outer bound.
        matches!(self.topology, Topology::Single(_) | Topology::Sentinel(_))
    }

    fn kind(&self) -> BackendKind {
        match self.topology {
            Topology::Single(_) => BackendKind::Redis,
            Topology::Sentinel(_) => BackendKind::RedisSentinel,
            Topology::Cluster(_) => BackendKind::RedisCluster,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.get_direct(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.query(&keyed_cmd("MGET", keys.iter().map(String::as_str)))
            .await
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), BackendError> {
        self.query(redis::cmd("SET").arg(key).arg(value).arg("PX").arg(px(ttl)))
            .await
    }

    async fn set_many(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        match &self.topology {
            Topology::Single(node) => {
                let pipe = set_pipeline(&entries, ttl);
                on_single!(node, |conn| pipe.query_async::<()>(conn))
            }
            Topology::Sentinel(node) => {
                let pipe = set_pipeline(&entries, ttl);
                on_sentinel!(node, |conn| pipe.query_async::<()>(conn))
            }
            Topology::Cluster(node) => {
                // Keys live in different slots: one SET each, concurrently
                // (all again on a rebuilt connection if the first is dead).
                on_cluster!(node, |conn| async {
                    let mut sets = tokio::task::JoinSet::new();
                    for (key, value) in &entries {
                        let cmd = redis::cmd("SET")
                            .arg(key)
                            .arg(value)
                            .arg("PX")
                            .arg(px(ttl))
                            .clone();
                        let mut conn = conn.clone();
                        sets.spawn(async move { cmd.query_async::<()>(&mut conn).await });
                    }
                    let mut outcome = Ok(());
                    while let Some(result) = sets.join_next().await {
                        let result = result.unwrap_or_else(|e| {
                            Err(redis::RedisError::from((
                                redis::ErrorKind::Client,
                                "SET task failed",
                                e.to_string(),
                            )))
                        });
                        if let Err(e) = result
                            && outcome.is_ok()
                        {
                            outcome = Err(e);
                        }
                    }
                    outcome
                })
            }
        }
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, BackendError> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.query(redis::cmd("UNLINK").arg(keys)).await
    }

    async fn exists(&self, key: &str) -> Result<bool, BackendError> {
        self.query(redis::cmd("EXISTS").arg(key)).await
    }

    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.query(redis::cmd("PEXPIRE").arg(key).arg(px(ttl)))
            .await
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, BackendError> {
        let ms: i64 = self.query(redis::cmd("PTTL").arg(key)).await?;
        Ok(u64::try_from(ms).ok().map(Duration::from_millis))
    }

    async fn incr_by(&self, key: &str, delta: i64) -> Result<i64, BackendError> {
        self.query(redis::cmd("INCRBY").arg(key).arg(delta))
            .await
            .map_err(|e| {
                if e.kind == ErrorKind::Server {
                    BackendError::new(ErrorKind::WrongType, e.message)
                } else {
                    e
                }
            })
    }

    async fn delete_pattern(&self, pattern: &str) -> Result<u64, BackendError> {
        match &self.topology {
            Topology::Single(_) | Topology::Sentinel(_) => self.scan_unlink(pattern, None).await,
            Topology::Cluster(node) => {
                let mut total = 0;
                for (host, port) in Self::masters(node).await? {
                    total += self.scan_unlink(pattern, Some((&host, port))).await?;
                }
                Ok(total)
            }
        }
    }

    async fn try_lease(
        &self,
        key: &str,
        marker: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let reply: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(key)
                    .arg(marker)
                    .arg("NX")
                    .arg("PX")
                    .arg(px(ttl)),
            )
            .await?;
        Ok(reply.is_some())
    }

    async fn set_if_lease(
        &self,
        key: &str,
        marker: Vec<u8>,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let ttl = px(ttl).to_string();
        let stored = self
            .invoke(&self.set_if_lease, key, &[&marker, &value, ttl.as_bytes()])
            .await?;
        Ok(stored == 1)
    }

    async fn release_lease(&self, key: &str, marker: Vec<u8>) -> Result<(), BackendError> {
        self.invoke(&self.release_lease, key, &[&marker])
            .await
            .map(|_| ())
    }

    async fn renew_lease(
        &self,
        key: &str,
        marker: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let ttl = px(ttl).to_string();
        let renewed = self
            .invoke(&self.renew_lease, key, &[&marker, ttl.as_bytes()])
            .await?;
        Ok(renewed == 1)
    }

    async fn value_len(&self, key: &str) -> Result<Option<u64>, BackendError> {
        let len: u64 = self.query(&keyed_cmd("STRLEN", [key])).await?;
        Ok((len > 0).then_some(len))
    }

    async fn invalidate_replicated(
        &self,
        write: InvalidationWrite<'_>,
        replicas: u32,
        timeout: Duration,
    ) -> Result<(u64, u32), BackendError> {
        self.write_and_wait(write, replicas, timeout).await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    async fn info(&self) -> Result<BackendInfo, BackendError> {
        self.server_info().await
    }
}
