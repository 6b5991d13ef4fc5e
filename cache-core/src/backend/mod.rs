//! The byte-level storage behind a [`Cache`](crate::Cache).
//!
//! [`Cache`](crate::Cache) does the typed work (keys, codec, stats,
//! resilience, single-flight, leases); a [`Backend`] only moves bytes. Two
//! backends ship here, [`MemoryBackend`] (moka) and the Redis backend (single
//! server or cluster); `cache-testkit`'s `TestCache` is a third. Implement the
//! trait to plug in another store.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::BackendError;

pub(crate) mod memory;
pub(crate) mod primary;
pub(crate) mod redis;

pub use memory::MemoryBackend;
pub(crate) use primary::{Primary, RawBytes};

/// Which kind of store a backend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackendKind {
    /// In-process memory ([`MemoryBackend`]).
    Memory,
    /// One Redis server.
    Redis,
    /// A Redis Cluster.
    RedisCluster,
    /// A Redis primary found through Redis Sentinel (followed across failovers).
    RedisSentinel,
    /// Caching is disabled (`CACHE_ENABLED=false`).
    Disabled,
    /// Another backend; `remote` says whether it can fail like a network
    /// store (then the cache applies timeouts, the circuit breaker and the
    /// in-memory fallback to it).
    Custom {
        /// Name shown in stats and health.
        name: &'static str,
        /// Whether the resilience layer wraps it.
        remote: bool,
    },
}

impl BackendKind {
    /// Name used in stats, health and logs (`"redis"`, `"memory"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Redis => "redis",
            BackendKind::RedisCluster => "redis-cluster",
            BackendKind::RedisSentinel => "redis-sentinel",
            BackendKind::Disabled => "disabled",
            BackendKind::Custom { name, .. } => name,
        }
    }

    /// Whether calls can fail for availability reasons (network stores).
    pub fn is_remote(self) -> bool {
        match self {
            BackendKind::Redis | BackendKind::RedisCluster | BackendKind::RedisSentinel => true,
            BackendKind::Custom { remote, .. } => remote,
            BackendKind::Memory | BackendKind::Disabled => false,
        }
    }
}

/// Server facts reported by [`Backend::info`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct BackendInfo {
    /// Server version (`redis_version`), if the backend has one.
    pub version: Option<String>,
    /// Memory used by the store, in bytes.
    pub used_memory_bytes: Option<u64>,
    /// Connected clients (Redis `connected_clients`).
    pub connected_clients: Option<u64>,
    /// Keys in the store (for Redis: `DBSIZE` summed over masters, all namespaces).
    pub total_keys: Option<u64>,
    /// `host:port` of the primary the sentinels named, for a Redis Sentinel
    /// target (it changes with a failover).
    pub primary: Option<String>,
    /// Commands (lower-case, `script|load` for a subcommand) the Redis user
    /// may not run on this cache's keys, as found at start-up; empty when
    /// all are allowed or the backend has no ACL.
    pub missing_permissions: Vec<String>,
}

/// One write of an invalidation, as [`Backend::invalidate_replicated`]
/// receives it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum InvalidationWrite<'a> {
    /// Delete these keys ([`Backend::delete`]).
    Delete(&'a [String]),
    /// Delete every key matching this glob pattern ([`Backend::delete_pattern`]).
    DeletePattern(&'a str),
    /// Store `value` at `key` for `ttl` ([`Backend::set`]): a prefix's new
    /// generation.
    Write {
        /// The key written.
        key: &'a str,
        /// Its new bytes.
        value: &'a [u8],
        /// Its TTL.
        ttl: Duration,
    },
}

/// A byte-level key-value store with per-entry TTLs. Keys given to a backend
/// are full storage keys (`{namespace}:{prefix}:{rest}`); patterns are Redis
/// glob patterns.
///
/// Lease operations implement the "Scaling Memcache at Facebook" leases: a
/// missing key can be claimed with [`try_lease`](Backend::try_lease) (store
/// the marker only if the key is absent), filled with
/// [`set_if_lease`](Backend::set_if_lease) (store only if the marker is still
/// there) and given up with [`release_lease`](Backend::release_lease). A
/// delete removes a lease like any value, which is what makes a concurrent
/// invalidation win over a slow loader.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// What kind of backend this is.
    fn kind(&self) -> BackendKind;
    /// Whether the backend bounds every call by the cache's timeout itself
    /// (the Redis backends arm redis-rs's response and connection timeouts).
    /// When it does, the cache skips its own per-call timer, which would be
    /// a second timer for the same call on the hit path.
    fn enforces_timeouts(&self) -> bool {
        false
    }
    /// The value at `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError>;
    /// The values at `keys`, in order.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, BackendError>;
    /// Stores `value` at `key` for `ttl`.
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), BackendError>;
    /// Stores every entry for `ttl`.
    async fn set_many(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        ttl: Duration,
    ) -> Result<(), BackendError>;
    /// Deletes `keys`; returns how many existed.
    async fn delete(&self, keys: &[String]) -> Result<u64, BackendError>;
    /// Whether `key` exists.
    async fn exists(&self, key: &str) -> Result<bool, BackendError>;
    /// Sets a new TTL on `key`; `false` when the key does not exist.
    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, BackendError>;
    /// Remaining TTL of `key`; `None` when it does not exist or never expires.
    async fn ttl(&self, key: &str) -> Result<Option<Duration>, BackendError>;
    /// Adds `delta` to the integer at `key` (a missing key counts as 0).
    async fn incr_by(&self, key: &str, delta: i64) -> Result<i64, BackendError>;
    /// Deletes every key matching the glob `pattern`, in batches; returns the count.
    async fn delete_pattern(&self, pattern: &str) -> Result<u64, BackendError>;
    /// Stores `marker` at `key` for `ttl` only if `key` is absent.
    async fn try_lease(
        &self,
        key: &str,
        marker: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, BackendError>;
    /// Replaces `marker` at `key` by `value` (for `ttl`) only if the marker is still there.
    async fn set_if_lease(
        &self,
        key: &str,
        marker: Vec<u8>,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, BackendError>;
    /// Deletes `key` only if it still holds `marker`.
    async fn release_lease(&self, key: &str, marker: Vec<u8>) -> Result<(), BackendError>;
    /// Extends `key`'s expiry to `ttl` from now if it still holds `marker`;
    /// `false` when it does not (the lease was lost). The cache renews a
    /// lease this way while its load runs, so a slow load keeps it.
    ///
    /// The default reads the key and then sets its expiry: two calls, so a
    /// lease deleted between them could be given an expiry it no longer
    /// needs (a deleted key has none to extend, so nothing is revived).
    /// Backends that can do it atomically should.
    async fn renew_lease(
        &self,
        key: &str,
        marker: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        match self.get(key).await? {
            Some(held) if held == marker => self.expire(key, ttl).await,
            _ => Ok(false),
        }
    }
    /// Size in bytes of the value at `key`, without fetching it (`None`:
    /// no such key, or the backend cannot tell). The cache asks before
    /// reading a key whose last read failed on its own, so that a value too
    /// large to read is not fetched again.
    async fn value_len(&self, key: &str) -> Result<Option<u64>, BackendError> {
        let _ = key;
        Ok(None)
    }
    /// Makes `write` and then waits, up to `timeout`, until at least
    /// `replicas` replicas have it; returns how many keys it deleted and how
    /// many replicas acknowledged it (fewer than `replicas` when the wait
    /// timed out). The cache calls it for its invalidations when
    /// [`CacheConfig::wait_replicas`](crate::CacheConfig::wait_replicas) is
    /// set, and counts one acknowledged by fewer replicas as not delivered.
    ///
    /// The Redis backend makes the write and sends `WAIT` on a connection
    /// of their own: `WAIT` counts the writes of its own connection, and it
    /// blocks the connection it is sent on, which must not be the one
    /// every read shares. The default, for backends without replicas,
    /// makes the write and reports `replicas` acknowledgements.
    async fn invalidate_replicated(
        &self,
        write: InvalidationWrite<'_>,
        replicas: u32,
        timeout: Duration,
    ) -> Result<(u64, u32), BackendError> {
        let _ = timeout;
        let deleted = match write {
            InvalidationWrite::Delete(keys) => self.delete(keys).await?,
            InvalidationWrite::DeletePattern(pattern) => self.delete_pattern(pattern).await?,
            InvalidationWrite::Write { key, value, ttl } => {
                self.set(key, value.to_vec(), ttl).await?;
                0
            }
        };
        Ok((deleted, replicas))
    }
    /// A cheap round trip proving the store answers.
    async fn ping(&self) -> Result<(), BackendError>;
    /// Server facts for health and stats.
    async fn info(&self) -> Result<BackendInfo, BackendError>;
}
