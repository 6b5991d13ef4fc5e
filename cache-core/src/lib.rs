//! Cache-aside caching for async Rust services: put `#[cached]` on an async
//! repository function and `#[invalidates]` on the function that changes its
//! data, and get caching on Redis that survives Redis outages, never serves
//! data an invalidation removed, and shows its hit rates.
//!
//! ```
//! use cache_core::{cached, invalidates, Cache};
//! # #[derive(Clone, serde::Serialize, serde::Deserialize, PartialEq, Debug)]
//! # struct Customer { id: u64, name: String }
//! # #[derive(Debug)] struct DbError;
//! # struct Db;
//! # impl Db { async fn load(&self, id: u64) -> Result<Customer, DbError> { Ok(Customer { id, name: "Ada".into() }) }
//! #          async fn save(&self, _c: &Customer) -> Result<(), DbError> { Ok(()) } }
//!
//! #[cached(prefix = "customer", ttl = 3600, key = "{id}")]
//! async fn get_customer(db: &Db, id: u64) -> Result<Customer, DbError> {
//!     db.load(id).await
//! }
//!
//! #[invalidates("customer:{customer.id}")]
//! async fn update_customer(db: &Db, customer: &Customer) -> Result<(), DbError> {
//!     db.save(customer).await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! Cache::from_env().await?.install(); // REDIS_URL set: Redis; unset: in-memory
//! let db = Db;
//! let first = get_customer(&db, 42).await.unwrap();  // miss: runs the body, stores
//! let second = get_customer(&db, 42).await.unwrap(); // hit
//! assert_eq!(first, second);
//! update_customer(&db, &first).await.unwrap();       // deletes customer:42
//! assert_eq!(Cache::current().unwrap().stats().prefixes["customer"].hits, 1);
//! # Ok(()) }
//! ```
//!
//! # What you get
//! - **Keys** `{namespace}:{prefix}:{key}`; template values are escaped so
//!   user data never adds `*`, `?`, `[`, `]`, `{`, `}` or `:` to a key ([`keys`]).
//! - **Backends**: Redis (a bb8 pool managing shared multiplexed
//!   connections), Redis Cluster, and in-process memory (moka), behind one
//!   [`Backend`] trait; `cache-testkit` adds a controllable test backend.
//! - **Codec**: bincode 2 by default, JSON on request, in a small envelope;
//!   undecodable bytes are a counted miss, never an error ([`codec`]).
//! - **Resilience**: every Redis call is bounded by a timeout (250 ms), a
//!   circuit breaker (5 failures) skips a dead Redis, an in-memory fallback
//!   with TTLs capped at 30 s serves meanwhile, and invalidations that could
//!   not reach Redis are remembered (each once, bounded: past 10,000 they
//!   fold into whole-prefix invalidations) and replayed before Redis is
//!   trusted again, including those made while the replay runs; then the
//!   fallback is cleared. While the breaker is open a background probe pings
//!   Redis (250 ms, backing off to 1 s), so the cache is back on Redis about
//!   a second after Redis answers; without it, a call after the 30 s
//!   cooldown probes. Loads during an outage take their lease in the
//!   fallback, so an invalidation wins over a slow loader there too. A write
//!   Redis refuses while answering (out of memory) makes
//!   [`Cache::health`] report degraded with Redis' reason until a write
//!   succeeds. Redis down at start is not an error.
//! - **Redis Cluster**: a key goes to the master serving its hash slot, on
//!   that master's own shared connection, and each master has its own
//!   circuit breaker, so a dead or stalled master costs only the keys it
//!   serves (and the prefixes whose generation key it holds, whose reads
//!   cannot be checked meanwhile); the other masters keep their latency.
//!   An invalidation is delivered per master: a key counts as delivered
//!   once its master confirmed it, the rest is replayed to whichever master
//!   serves its slot next (the promoted replica after a failover), and only
//!   the slots with something to replay go to the fallback until then. A
//!   missed pattern delete keeps every slot there until every master
//!   confirmed it. `CLUSTERDOWN` answers (a failed master not replaced yet,
//!   with full coverage required) use the fallback without blaming a node.
//! - **Consistency**: misses take a lease (a marker stored at the key with
//!   `SET NX`); the store is a compare-and-set on that lease, and an
//!   invalidation deletes it, so a load that started before an invalidation
//!   can never store its (stale) value after it. The same lease makes other
//!   processes wait for one load instead of stampeding, and within a process
//!   concurrent misses share one load (single-flight).
//! - **O(1) prefix invalidation**, on by default for Redis and Redis
//!   Cluster ([`prefix_generations`](CacheConfig::prefix_generations),
//!   `CACHE_PREFIX_GENERATIONS`): values are labeled with their prefix's
//!   generation and [`Cache::invalidate_prefix`] replaces it, one write
//!   whatever the number of keys. Each process holds the generations it has
//!   read, and Redis client tracking tells it when one changes (on a
//!   cluster, every master tells it about its own keys), so a hit stays one
//!   `GET`; while tracking is not established a hit is one `MGET`.
//!   Turned off (and on the memory backend), prefix invalidation is
//!   SCAN + UNLINK.
//! - **Near cache** (opt-in, Redis or Redis Cluster):
//!   `Cache::builder().near_cache(n)` ([`CacheBuilder::near_cache`]) or
//!   `CACHE_NEAR_CAPACITY=n` keeps up to `n` decoded values in process in
//!   front of Redis (and at most `CACHE_NEAR_MAX_BYTES`, 64 MiB by
//!   default), so a near hit makes no round trip. An entry lives no longer
//!   than its Redis key had left when it was read. Redis client
//!   tracking tells every process when a key changes: an instance's own
//!   write or invalidation clears its near cache before the call returns,
//!   another instance's reaches it once Redis' message arrives (the
//!   measured window is in docs/BENCHMARKS.md), and a lost tracking
//!   connection empties it until tracking is back. On a cluster every
//!   master that serves slots has a tracking connection; losing any of
//!   them, or a change in the set of masters (checked every second), empties
//!   the near cache until all of them track again.
//! - **Observability**: [`Cache::stats`] (per prefix and total), [`Cache::health`],
//!   `metrics` counters per prefix (`cache_hits_total{prefix}`, ...,
//!   `cache_errors_total{prefix,kind}`) and gauges (`cache_hit_ratio{prefix}`,
//!   `cache_circuit_state`, `cache_fallback_active`), each listed with its
//!   labels in [`metrics_guide`]; `tracing` events. Passwords in URLs are
//!   redacted everywhere.
//!
//! # Configuration
//! See [`CacheConfig`] for the environment variables and their defaults.
//!
//! # The macros
//! See [`macros_guide`] for every argument of `#[cached]` and
//! `#[invalidates]`, with a runnable example each, and `cache-testkit` for
//! testing cached code without Redis.
//!
//! # Design decisions
//! - The direct API returns `Result` only for caller mistakes (encoding,
//!   oversized values, empty keys). Backend failures are absorbed by the
//!   fallback and counted in [`Cache::stats`]: a cache outage must not become
//!   an outage of the service.
//! - Key values are percent-escaped (`*` → `%2A`) rather than
//!   backslash-escaped, so stored keys contain no glob characters at all and
//!   the mapping stays injective.
//! - Counters ([`Cache::incr`]) are stored as plain integers (Redis `INCRBY`
//!   needs that), not in the envelope.
//! - TCP_NODELAY stays on although Nagle costs less CPU when many small
//!   requests share a connection over loopback; see
//!   [`CacheConfig::tcp_nodelay`] for the latency cliff Nagle brings on a
//!   real network.
//! - The memory backend keeps `{namespace}:{prefix}:{key}` string
//!   keys and moka's per-entry expiry, although a `u64`-keyed moka without
//!   expiry does a lookup in fewer instructions: one key space for both
//!   backends, `delete_pattern`, `invalidate_prefix` and the `_cache_key`
//!   companions, and expired entries that free their memory, are worth more
//!   than that difference.
//! - Resilience (timeouts, breaker, fallback, replay) is part of the cache,
//!   not a `Backend` wrapper in the style of redis-rs's
//!   `ConnectionManager`: what it does on a failure involves the cache's own
//!   state, which a backend never sees. A failed write must evict the near
//!   cache and seal the key's single-flight, a fallback read is counted
//!   against the key's prefix, leases taken in the fallback must be found
//!   by the invalidation that removes them, and a missed prefix
//!   invalidation is replayed as a generation change. Reconnection, which
//!   needs none of that, stays below, in the Redis backend's connections.
//! - The cluster is routed by this crate (slot map from `CLUSTER SLOTS`,
//!   one shared connection per master), not by redis-rs' cluster client:
//!   that client serves all nodes from one task whose slot refresh, which
//!   dials every node including a dead or stalled one, holds up every
//!   command; and a multi-key command it splits across nodes reports one
//!   result, so a store could not tell which keys a dead node missed.
//! - Client tracking on a cluster uses broadcast mode on every master:
//!   the node a key lives on reports its changes, so a tracking connection
//!   per master is needed whatever the mode, and broadcast mode lets reads
//!   use the normal cluster connection instead of routing each through the
//!   right tracking connection.
//!
//! # What a hit costs
//! A Redis hit is one `GET` on a shared multiplexed connection (prefix
//! generations included, once client tracking is established); a near-cache
//! or memory hit is one lookup in process, with no round trip; no hit runs
//! the function's body or checks a connection out of the pool.
//! `docs/BENCHMARKS.md` in the repository has the measured figures, each
//! next to what does the same work without this crate (raw redis-rs, moka
//! keyed the same way, the `cached` crate's Redis store), and how to
//! reproduce them.
#![warn(missing_docs)]

/// The `#[cached]` and `#[invalidates]` guide: every argument with a runnable example.
#[doc = include_str!("../MACROS.md")]
pub mod macros_guide {}

/// Every `metrics` series the cache exports: name, type, labels, meaning.
#[doc = include_str!("metrics_doc.md")]
pub mod metrics_guide {}

mod backend;
mod cache;
mod clock;
pub mod codec;
mod config;
mod consistency;
mod error;
mod held;
pub mod keys;
mod redact;
mod stats;
mod store;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use backend::{Backend, BackendInfo, BackendKind, MemoryBackend};
pub use cache::Cache;
pub use cache::builder::CacheBuilder;
pub use cache::health::{Health, HealthStatus};
pub use codec::{Codec, CodecKind};
pub use config::{CacheConfig, RedisTarget};
pub use consistency::near::NearStats;
pub use error::{BackendError, CacheError, ConfigError, ErrorKind};
pub use redact::redact_url;
pub use stats::{CacheStats, CircuitState, PrefixStats};

pub use cache_macros::{cached, invalidates};

/// Re-exported so custom [`Backend`] implementations use the same version.
pub use async_trait::async_trait;

/// Runs `fut` with every `#[cached]` function bypassing the cache: bodies
/// run, nothing is read or stored. Use it to reach the uncached body in tests
/// or to force a fresh read.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use cache_core::{cached, Cache};
/// #[cached(prefix = "clock")]
/// async fn now_ms() -> u128 { std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() }
///
/// let cache = Cache::memory();
/// cache.scope(async {
///     let cached = now_ms().await;
///     tokio::time::sleep(std::time::Duration::from_millis(2)).await;
///     assert_eq!(now_ms().await, cached);
///     assert_ne!(cache_core::uncached(now_ms()).await, cached);
/// }).await;
/// # }
/// ```
pub async fn uncached<F: std::future::Future>(fut: F) -> F::Output {
    cache::install::BYPASS.scope(true, fut).await
}
