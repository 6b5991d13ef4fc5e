//! [`TestCache`]: a [`Cache`] over an in-process backend with a manual clock,
//! an operation log and fault injection.
//!
//! - `backend`: the in-process store, its manual clock and the `Backend`
//!   implementation that writes the log;
//! - `log`: the log's entries and event kinds;
//! - `faults`: fault injection;
//! - here: [`TestCache`], its builder, the store and log accessors and the
//!   scoped views ([`TestCache::key`], [`TestCache::prefix`]) that count and
//!   assert ([`LogView`]).

mod backend;
mod faults;
mod log;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cache_core::{Cache, CacheConfig, CacheStats, CodecKind};

use crate::view::LogView;
use backend::TestBackend;
use log::render;

pub use faults::Fault;
pub use log::{LogEntry, Method, Op};

/// The name a [`TestCache`]'s backend reports in stats and health.
pub const BACKEND_NAME: &str = "test";

/// A [`Cache`] for tests: an in-process backend with a **manual clock**, an
/// **operation log** and **fault injection**, wrapped in a real
/// `cache_core::Cache`.
///
/// The backend reports itself as a remote backend
/// (`BackendKind::Custom { name: "test", remote: true }`), so the cache puts
/// its whole resilience layer in front of it (timeout, circuit breaker,
/// in-memory fallback, replay of missed invalidations): injected faults go
/// through exactly the code paths a Redis outage would.
///
/// Cloning is cheap and clones share everything (store, clock, log, faults,
/// the `Cache`). Each [`TestCache::new`] is independent, so tests using one
/// each run in parallel without interfering; use [`scope`](Self::scope) (not
/// [`Cache::install`]) to make it the cache `#[cached]` functions use.
///
/// # Clock
/// Entries expire against a manual clock that only moves with
/// [`advance`](Self::advance): TTLs, `expire`, `ttl`, lease markers and the
/// logical expiry values carry (fail-safe's stale point, its throttle,
/// refresh-ahead) all use it, so expiry is instant and deterministic. It does *not* move the
/// circuit breaker's cooldown, the cache's timeout or the in-memory fallback's
/// TTLs, which run on real time (configure short ones with the
/// [builder](Self::builder)).
///
/// # Log
/// Every call the cache makes to the backend is logged per key
/// ([`LogEntry`]): reads, writes, deletes, pattern deletes, leases, pings,
/// and calls that ran into a fault. The counts are about **backend
/// operations**, which is what you want to assert on ("the second call did
/// not reach the store", "the update deleted the key"), and they differ from
/// [`Cache::stats`] (the cache's own view) in a few ways:
/// - a read served by the in-memory fallback while the backend is failing is
///   not a backend hit; a read rejected by the open circuit breaker never
///   reaches the backend and is not logged at all;
/// - a read is a "hit" when the backend returned bytes, whatever they were
///   (a lease marker of a load in progress, or garbage you planted with
///   [`put_raw`](Self::put_raw), counts as a hit here while the cache counts
///   a miss);
/// - a `#[cached]` miss is one read, then `try_lease` and `set_if_lease`
///   (counted as a set); `release_lease` only when nothing is stored (an
///   `Err` or `None` result, or a failed store);
/// - invalidations the cache could not deliver during an outage are
///   replayed on recovery, and show up as deletes then.
///
/// # Faults
/// [`fail_next`](Self::fail_next), [`drop_next`](Self::drop_next),
/// [`delay_next`](Self::delay_next) count **backend calls**, not calls of
/// your function (one `#[cached]` call makes one to four backend calls).
/// When several are pending they apply in the order down, fail, drop, delay;
/// calling one again replaces its pending count (it does not add to it).
/// [`put_raw`](Self::put_raw) plants bytes the codec does not understand.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use cache_testkit::TestCache;
///
/// let test = TestCache::new();
/// let cache = test.cache();
/// cache.set("customer:42", &"Ada", Some(Duration::from_secs(60))).await.unwrap();
/// assert_eq!(cache.get::<String>("customer:42").await.unwrap().as_deref(), Some("Ada"));
/// test.key("customer:42").assert_sets(1).assert_hits(1);
///
/// test.advance(Duration::from_secs(61)); // expired, no sleeping
/// assert_eq!(cache.get::<String>("customer:42").await.unwrap(), None);
/// test.key("customer:42").assert_misses(1);
/// # }
/// ```
#[derive(Clone)]
pub struct TestCache {
    backend: Arc<TestBackend>,
    cache: Cache,
}

impl fmt::Debug for TestCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCache")
            .field("backend", &self.backend)
            .field("cache", &self.cache)
            .finish()
    }
}

impl Default for TestCache {
    fn default() -> Self {
        TestCache::new()
    }
}

/// Builds a [`TestCache`] with adjusted settings; see [`TestCache::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct TestCacheBuilder {
    config: CacheConfig,
}

impl TestCacheBuilder {
    /// Starts from `config` instead of the test defaults (its `redis` target
    /// is ignored).
    pub fn config(mut self, config: CacheConfig) -> Self {
        self.config = config;
        self
    }
    /// Namespace of the keys (default `"test"`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.config.namespace = namespace.into();
        self
    }
    /// Bound on each backend call (default 50 ms): what a delayed or
    /// dropped call costs.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }
    /// Consecutive failures that open the breaker, and its (real-time)
    /// cooldown (default 3 failures, 1 s).
    pub fn circuit_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.config.breaker_failures = failures;
        self.config.breaker_cooldown = cooldown;
        self
    }
    /// TTL when a call names none (default 300 s).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_ttl = ttl;
        self
    }
    /// Longest TTL in the in-memory fallback (default 30 s, real time).
    pub fn fallback_ttl_cap(mut self, cap: Duration) -> Self {
        self.config.fallback_ttl_cap = cap;
        self
    }
    /// Lease length for loads (default 200 ms): how long a lease marker
    /// lives on the manual clock, and at most how long (in real time) a load
    /// waits for a lease held by someone else.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.config.lease_ttl = ttl;
        self
    }
    /// Codec for written values (default bincode).
    pub fn codec(mut self, codec: CodecKind) -> Self {
        self.config.codec = codec;
        self
    }
    /// Largest encoded value stored or read (default 4 MiB).
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.config.max_value_bytes = bytes;
        self
    }

    /// Builds the test cache.
    pub fn build(self) -> TestCache {
        let backend = Arc::new(TestBackend::new(self.config.namespace.clone()));
        let cache = Cache::with_backend(backend.clone(), self.config);
        TestCache { backend, cache }
    }
}

/// The configuration [`TestCache::new`] uses: namespace `test`, 50 ms
/// timeout, breaker 3 failures / 1 s, lease 200 ms, otherwise the
/// `cache-core` defaults.
pub fn test_config() -> CacheConfig {
    let mut config = CacheConfig::default();
    config.namespace = "test".to_owned();
    config.timeout = Duration::from_millis(50);
    config.breaker_failures = 3;
    config.breaker_cooldown = Duration::from_secs(1);
    config.lease_ttl = Duration::from_millis(200);
    config
}

impl TestCache {
    /// A fresh test cache with the [`test_config`] settings.
    pub fn new() -> Self {
        TestCache::builder().build()
    }

    /// A builder starting from [`test_config`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let test = cache_testkit::TestCache::builder()
    ///     .namespace("orders")
    ///     .timeout(Duration::from_millis(20))
    ///     .circuit_breaker(2, Duration::from_millis(100))
    ///     .build();
    /// assert_eq!(test.cache().namespace(), "orders");
    /// ```
    pub fn builder() -> TestCacheBuilder {
        TestCacheBuilder {
            config: test_config(),
        }
    }

    /// A test cache with exactly `config` (its `redis` target is ignored).
    pub fn with_config(config: CacheConfig) -> Self {
        TestCache::builder().config(config).build()
    }

    /// A second `Cache` over the **same** backend (store, clock, log and
    /// faults), with its own stats, single-flight table, breaker and
    /// fallback: a second process sharing one Redis.
    pub fn another_instance(&self) -> TestCache {
        self.another_instance_with(self.cache.config().clone())
    }

    /// Like [`another_instance`](Self::another_instance), with its own
    /// configuration, for example another namespace. Key names in the log,
    /// [`keys`](Self::keys) and the key arguments of the helpers are
    /// relative to the namespace of the *first* instance; other namespaces'
    /// keys keep their full storage name (`"other:customer:1"`).
    pub fn another_instance_with(&self, config: CacheConfig) -> TestCache {
        TestCache {
            backend: self.backend.clone(),
            cache: Cache::with_backend(self.backend.clone(), config),
        }
    }

    /// The `Cache` to call directly or to pass as `cache = ...`.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The cache's own figures ([`Cache::stats`]).
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Runs `fut` with this cache as the current cache of this task
    /// ([`Cache::scope`]): `#[cached]` and `#[invalidates]` functions called
    /// inside use it, and nothing process-wide changes. Tasks spawned inside
    /// do not inherit it (scope them too).
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        self.cache.scope(fut).await
    }

    // ----- clock ------------------------------------------------------------

    /// Moves the backend's clock forward: entries whose TTL ran out are gone
    /// at once.
    pub fn advance(&self, by: Duration) {
        let mut state = self.backend.lock();
        state.now = state.now.saturating_add(by);
        state.purge_expired();
    }

    /// How far the clock has been [advanced](Self::advance) in total.
    pub fn now(&self) -> Duration {
        self.backend.lock().now
    }

    // ----- store ------------------------------------------------------------

    /// Stores raw `bytes` at the logical `key` (`"customer:42"`), without
    /// expiry, bypassing the cache and the log: foreign or corrupt data for
    /// the cache to cope with.
    pub fn put_raw(&self, key: &str, bytes: impl Into<Vec<u8>>) {
        let skey = self.backend.storage_key(key);
        self.backend.lock().put(&skey, bytes.into(), None);
    }

    /// The raw bytes stored at the logical `key`, if any (not logged).
    pub fn raw(&self, key: &str) -> Option<Vec<u8>> {
        let skey = self.backend.storage_key(key);
        self.backend.lock().live(&skey).map(|e| e.bytes.clone())
    }

    /// Whether the logical `key` holds anything (value or lease marker).
    pub fn contains(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    /// Remaining TTL of the logical `key` on the manual clock; `None` when
    /// absent or without expiry. Since the clock only moves when you say so,
    /// this is exactly the TTL the code under test chose.
    pub fn remaining_ttl(&self, key: &str) -> Option<Duration> {
        let skey = self.backend.storage_key(key);
        let state = self.backend.lock();
        state
            .live(&skey)
            .and_then(|e| e.expires_at)
            .map(|at| at.saturating_sub(state.now))
    }

    /// The logical keys stored now, sorted (other namespaces' keys keep
    /// their full name).
    pub fn keys(&self) -> Vec<String> {
        let state = self.backend.lock();
        let mut keys: Vec<String> = state
            .store
            .keys()
            .filter(|k| state.live(k).is_some())
            .map(|k| self.backend.logical(k).to_owned())
            .collect();
        keys.sort();
        keys
    }

    // ----- the log ----------------------------------------------------------

    /// A copy of the whole operation log, oldest first.
    pub fn log(&self) -> Vec<LogEntry> {
        self.backend.lock().log.clone()
    }

    /// The log entries of one logical key.
    pub fn log_for(&self, key: &str) -> Vec<LogEntry> {
        self.filtered(|e| e.key == key)
    }

    /// Empties the log (the counts start again from zero; the store stays).
    pub fn clear_log(&self) {
        self.backend.lock().log.clear();
    }

    /// Backend calls made so far (a multi-key call counts once), including
    /// calls that ran into faults; [`clear_log`](Self::clear_log) does not
    /// reset it.
    pub fn calls(&self) -> u64 {
        self.backend.lock().calls
    }

    /// The log as text, one entry per line (what the assertions print).
    pub fn log_text(&self) -> String {
        render(&self.log())
    }

    fn filtered(&self, keep: impl Fn(&LogEntry) -> bool) -> Vec<LogEntry> {
        self.backend
            .lock()
            .log
            .iter()
            .filter(|e| keep(e))
            .cloned()
            .collect()
    }

    /// The log of one key (`"customer:42"`, relative to the namespace), with
    /// a count and an assertion for every kind of event; see [`LogView`].
    pub fn key<'t>(&'t self, key: &'t str) -> LogView<'t> {
        LogView::new(self, Scope::Key(key))
    }

    /// The log over every key of one prefix (`"customer"`); see [`LogView`].
    pub fn prefix<'t>(&'t self, prefix: &'t str) -> LogView<'t> {
        LogView::new(self, Scope::Prefix(prefix))
    }

    /// How many log entries `keep` accepts.
    pub(crate) fn count(&self, keep: impl Fn(&LogEntry) -> bool) -> usize {
        self.backend.lock().log.iter().filter(|e| keep(e)).count()
    }

    /// The log entries of `scope`, oldest first.
    pub(crate) fn entries_of(&self, scope: Scope<'_>) -> Vec<LogEntry> {
        self.filtered(|e| scope.contains(e))
    }

    /// Panics, printing `scope`'s log, unless `expected == actual`.
    #[track_caller]
    pub(crate) fn check(&self, what: &str, scope: Scope<'_>, expected: usize, actual: usize) {
        if expected == actual {
            return;
        }
        let label = match scope {
            Scope::Key(key) => format!("key {key:?}"),
            Scope::Prefix(prefix) => format!("prefix {prefix:?}"),
        };
        let entries = self.entries_of(scope);
        let listing = if entries.is_empty() {
            "  (no backend operations)\n".to_owned()
        } else {
            render(&entries)
        };
        panic!(
            "TestCache: expected {expected} {what} for {label}, found {actual}\n\
             backend operations on {label}:\n{listing}"
        );
    }
}

/// What a [`LogView`] looks at: one logical key, or every key of a prefix.
#[derive(Clone, Copy)]
pub(crate) enum Scope<'a> {
    Key(&'a str),
    Prefix(&'a str),
}

impl Scope<'_> {
    /// Whether `entry` is in the scope.
    pub(crate) fn contains(&self, entry: &LogEntry) -> bool {
        match *self {
            Scope::Key(key) => entry.key == key,
            Scope::Prefix(prefix) => entry.prefix() == prefix,
        }
    }
}
