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
//!   connections), a Redis primary followed through Redis Sentinel, Redis
//!   Cluster, and in-process memory (moka), behind one [`Backend`] trait;
//!   `cache-testkit` adds a controllable test backend.
//! - **Redis Sentinel** ([`CacheBuilder::redis_sentinel`],
//!   `REDIS_SENTINELS` + `REDIS_SENTINEL_MASTER`, [`RedisTarget::Sentinel`]):
//!   the primary is found through the sentinels at start-up (redis-rs's
//!   Sentinel client) and again after every failover, without a restart: a
//!   subscription to `+switch-master` on one sentinel makes the cache
//!   follow a few milliseconds after the announcement, and a `READONLY`
//!   answer or a primary that stops answering makes it ask the sentinels
//!   again. Client tracking moves with the primary: what was held under the
//!   old one (near entries, generations) is dropped before calls reach the
//!   new one. Passwords and TLS work for the sentinels and the primary
//!   alike ([`CacheBuilder::sentinel_data_url`]).
//! - **Invalidations that survive a failover** (opt-in,
//!   [`CacheBuilder::wait_replicas`], `CACHE_WAIT_REPLICAS=n`): every key
//!   delete and generation write waits for `n` replicas (`WAIT`, bounded
//!   by the call's timeout); one fewer replicas acknowledge is remembered
//!   and replayed like one Redis missed, so the replica a failover promotes
//!   holds every invalidation that was delivered. Replication is
//!   asynchronous otherwise: without it, deletes the old primary took just
//!   before a failover can be lost (see the README's guarantees).
//! - **Codec**: bincode 2 by default, JSON on request, in a small envelope;
//!   undecodable bytes are a counted miss, never an error ([`codec`]).
//! - **Resilience**: every cache call is bounded by one timeout (250 ms)
//!   across all the Redis steps it takes, whatever lock, reconnection or
//!   recovery it meets; a circuit breaker (5 failures; on a cluster, one
//!   per master) skips a dead Redis,
//!   an in-memory fallback with TTLs capped at 30 s serves meanwhile, and
//!   invalidations that could not reach Redis are remembered (each once,
//!   bounded: past 10,000 they fold into deletes of their prefixes) and
//!   replayed by a background task before Redis is trusted again, including
//!   those made while the replay runs; then the fallback is cleared. The
//!   task probes Redis at once, then every 250 ms backing off to 1 s, so the
//!   cache is back on Redis about a second after Redis answers; a call that
//!   finds Redis answering wakes it and waits for the replay within its own
//!   timeout. Loads during an outage take their lease in the fallback, so an
//!   invalidation wins over a slow loader there too. A write Redis refuses
//!   while answering (out of memory) makes [`Cache::health`] report degraded
//!   with Redis' reason until a write succeeds. Redis down at start is not
//!   an error.
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
//!   Two things of a single server are not done on a cluster: waiting for
//!   replicas (`WAIT` would be needed on every master; the configuration
//!   refuses it) and the check for a server restarted with old data.
//! - **Consistency**: misses take a lease (a marker stored at the key with
//!   `SET NX`); the store is a compare-and-set on that lease, and an
//!   invalidation deletes it, so a load that started before an invalidation
//!   can never store its (stale) value after it. The lease is renewed while
//!   the load runs (`CACHE_LEASE_TTL_MS` is how long it lasts unrenewed), so
//!   a slow load keeps it: it is stored, and callers waiting on it, in this
//!   process and in others, get its value instead of running the body too.
//!   Within a process concurrent misses share one load (single-flight).
//!   Every read API goes through one read operation and every kind of
//!   invalidation through one invalidation operation, so what one of them
//!   checks, all of them do (`get_many` included).
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
//! - The runtime is four layers, each a type that owns its state: the
//!   [`Cache`] handle (API, keys, codec), a consistency layer (generations,
//!   near level, flights, leases; one read and one invalidation operation),
//!   a guarded store (timeouts, breaker, fallback, replay) and the
//!   [`Backend`]. Lower layers report upward through narrow interfaces (an
//!   invalidation's outcome, a listener for Redis' tracking messages),
//!   never through the handle. The repository's `docs/CONTRIBUTING.md`
//!   says which layer owns which invariant; a test keeps the modules free of
//!   dependency cycles.
//! - `exists`, `ttl` and `expire` read the key (the same `GET` every read
//!   makes) rather than asking `EXISTS`: a load's lease marker, or a value
//!   its prefix's invalidation left behind, is not a value.
//! - `get_many` reads each key with that same read, all at once: pipelined
//!   on one connection (one round trip), sent to their nodes concurrently
//!   on a cluster.
//! - `WAIT` runs on a connection of its own, after the invalidation's
//!   write on that same connection ([`Backend::invalidate_replicated`]):
//!   `WAIT` counts the writes of the connection it is sent on, and Redis
//!   answers nothing else on that connection until it returns, which on the
//!   shared connection would stall every read of the process for as long
//!   as the replicas take.
//! - A `+switch-master` message is acted on at once (its new primary,
//!   checked with `ROLE`), not through redis-rs's lookup: the lookup takes
//!   the first sentinel's answer, and a sentinel that has not heard of the
//!   failover yet still names the old primary, which answers `ROLE` as a
//!   master until the sentinels demote it. For the same reason a lookup
//!   does not take a primary back that the cache left in the last 10 s.
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
mod join;
pub mod keys;
pub mod outbox;
mod redact;
mod stats;
mod store;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use backend::{Backend, BackendInfo, BackendKind, InvalidationWrite, MemoryBackend};
pub use cache::Cache;
pub use cache::builder::CacheBuilder;
pub use cache::health::{Health, HealthStatus};
pub use codec::{Codec, CodecKind};
pub use config::{CacheConfig, RedisTarget};
pub use consistency::near::NearStats;
pub use error::{
    BackendError, CacheError, ConfigError, ErrorKind, LoadTimedOut, Outcome, WriteRefused,
};
pub use redact::redact_url;
pub use stats::{CacheStats, CircuitState, PrefixStats};

pub use cache_macros::{cached, invalidates, updates};

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
    cache::call::bypass(fut).await
}

/// Runs `fut` and says what answered the first `#[cached]` call in it: a
/// hit, a miss (the body ran), another caller's load (coalesced), a stale
/// value (fail-safe), or no cache at all. Wrap a call of the function
/// whose outcome you want; calls it makes inside its body are not the
/// first.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use cache_core::{cached, with_outcome, Cache, Outcome};
/// #[cached(prefix = "square", key = "{n}")]
/// async fn square(n: u64) -> u64 { n * n }
///
/// let cache = Cache::memory();
/// cache.scope(async {
///     assert_eq!(with_outcome(square(3)).await, (9, Outcome::Miss));
///     assert_eq!(with_outcome(square(3)).await, (9, Outcome::Hit));
/// }).await;
/// assert_eq!(with_outcome(square(4)).await, (16, Outcome::Uncached)); // no cache here
/// # }
/// ```
pub async fn with_outcome<F: std::future::Future>(fut: F) -> (F::Output, Outcome) {
    cache::call::outcome_of(fut).await
}

/// Runs `fut` with its first `#[cached]` call reloading its value: the
/// body runs and its result is stored, whatever is cached. The store is a
/// load like any other (under the key's lease), so an invalidation during
/// it wins, and a failed body leaves the cached value as it was. The call
/// returns what the body returned, an error too (also with `fail_safe`: a
/// reload asked for is not answered with the value it was to replace).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use cache_core::{cached, refresh, Cache};
/// static PRICE: AtomicU64 = AtomicU64::new(10);
///
/// #[cached(prefix = "price", key = "{id}")]
/// async fn price(id: u64) -> u64 { let _ = id; PRICE.load(Ordering::SeqCst) }
///
/// let cache = Cache::memory();
/// cache.scope(async {
///     assert_eq!(price(1).await, 10);
///     PRICE.store(12, Ordering::SeqCst);
///     assert_eq!(price(1).await, 10);          // cached
///     assert_eq!(refresh(price(1)).await, 12); // reloaded and stored
///     assert_eq!(price(1).await, 12);
/// }).await;
/// # }
/// ```
pub async fn refresh<F: std::future::Future>(fut: F) -> F::Output {
    cache::call::with_action(cache::call::Action::Refresh, fut)
        .await
        .0
}

/// Runs `fut` with its first `#[cached]` call storing `value` as its cached
/// value (what the function caches: `T` of a `Result<T, E>` or an
/// `Option<T>`) and returning it, without running its body: warm a cache,
/// or store what a write just produced. It is stored like a loaded value
/// (labels, tags, TTL, fail-safe expiry), and replaces whatever is cached,
/// including a load in progress, whose older value is then not stored.
/// Returns the call's result and whether a `#[cached]` call took the
/// value (`false`: there was none, or no cache; the function then ran as
/// usual). A value that does not read back as the function's type is not
/// stored (logged), and the call runs as usual.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use cache_core::{cached, prime, Cache};
/// #[cached(prefix = "name", key = "{id}")]
/// async fn name(id: u64) -> Option<String> { let _ = id; None }
///
/// let cache = Cache::memory();
/// cache.scope(async {
///     let (primed, taken) = prime(name(7), "Ada".to_owned()).await;
///     assert_eq!((primed.as_deref(), taken), (Some("Ada"), true));
///     assert_eq!(name(7).await.as_deref(), Some("Ada")); // a hit: the body never ran
/// }).await;
/// # }
/// ```
pub async fn prime<F, T>(fut: F, value: T) -> (F::Output, bool)
where
    F: std::future::Future,
    T: serde::Serialize + Send + 'static,
{
    let payload: cache::call::Payload =
        Box::new(move |kind, out| codec::encode_payload(kind, &value, out));
    cache::call::with_action(cache::call::Action::Prime(payload), fut).await
}
