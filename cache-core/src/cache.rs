//! The [`Cache`] handle: configuration, the direct API, and the resilience
//! layer (timeouts, circuit breaker, in-memory fallback, replay of
//! invalidations missed during an outage).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::redis::RedisBackend;
use crate::backend::{Backend, BackendKind, MemoryBackend};
use crate::breaker::Breaker;
use crate::builder::CacheBuilder;
use crate::codec::{self, DecodeError};
use crate::config::{CacheConfig, RedisTarget};
use crate::error::{CacheError, ConfigError};
use crate::flight::Flights;
use crate::keys::glob_literal;
use crate::load::ReadThrough;
use crate::near::NearCache;
use crate::resilience::Resilience;
use crate::stats::{Event, PrefixEntry, StatsRegistry};
use crate::tracking::Tracker;

/// Bytes read from a backend: shared with the memory store, or owned.
pub(crate) enum RawBytes {
    Shared(Arc<crate::backend::memory::Slot>),
    Owned(Vec<u8>),
}

impl std::ops::Deref for RawBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            RawBytes::Shared(b) => b,
            RawBytes::Owned(b) => b,
        }
    }
}

/// A handle to a cache: cheap to clone (one `Arc`), safe to share.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_core::CacheError> {
/// use std::time::Duration;
/// let cache = cache_core::Cache::memory();
/// cache.set("customer:42", &"Ada", Some(Duration::from_secs(60))).await?;
/// assert_eq!(cache.get::<String>("customer:42").await?, Some("Ada".to_owned()));
/// assert!(cache.delete("customer:42").await?);
/// assert_eq!(cache.get::<String>("customer:42").await?, None);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: CacheConfig,
    pub(crate) kind: BackendKind,
    pub(crate) primary: Arc<dyn Backend>,
    /// Set when the primary is the built-in memory backend (no dynamic dispatch, no resilience).
    pub(crate) memory: Option<MemoryBackend>,
    /// Set when the primary is the built-in Redis backend: the hit path calls
    /// it directly (no boxed `async_trait` future per GET).
    pub(crate) redis: Option<Arc<RedisBackend>>,
    pub(crate) resilience: Option<Resilience>,
    pub(crate) stats: StatsRegistry,
    pub(crate) flights: Flights,
    pub(crate) lease_tokens: AtomicU64,
    /// Prefix generations are in use (see [`CacheConfig::prefix_generations`]).
    pub(crate) generations: bool,
    /// Holds generations and near entries under Redis client tracking.
    pub(crate) tracker: Option<Tracker>,
    /// The near level (Redis or a cluster, `near_capacity` set).
    pub(crate) near: Option<NearCache>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("backend", &self.inner.kind.name())
            .field("target", &self.inner.config.target_description())
            .field("namespace", &self.inner.config.namespace)
            .field("enabled", &self.inner.config.enabled)
            .finish()
    }
}

impl Cache {
    /// Reads [`CacheConfig::from_env`] and builds: `REDIS_URL` set means
    /// Redis (degraded, not failed, if it is down), unset means in-memory.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::ConfigError> {
    /// // With no REDIS_URL in the environment this is an in-memory cache.
    /// let cache = cache_core::Cache::from_env().await?;
    /// cache.install();
    /// # Ok(()) }
    /// ```
    pub async fn from_env() -> Result<Cache, ConfigError> {
        Cache::builder()
            .config(CacheConfig::from_env()?)
            .build()
            .await
    }

    /// A builder starting from [`CacheConfig::default`].
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), cache_core::ConfigError> {
    /// let cache = cache_core::Cache::builder()
    ///     .redis_url("redis://127.0.0.1:6379")
    ///     .namespace("app")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// An in-memory cache with default settings.
    pub fn memory() -> Cache {
        Cache::memory_with(CacheConfig::default())
    }

    /// An in-memory cache with `config` (its `redis` field is ignored).
    pub fn memory_with(config: CacheConfig) -> Cache {
        let backend = MemoryBackend::new(config.memory_capacity);
        Cache::from_parts(
            config,
            BackendKind::Memory,
            Some(Arc::new(backend.clone())),
            Some(backend),
            None,
        )
    }

    /// A cache over any [`Backend`] (for example `cache-testkit`'s
    /// `TestCache`). When `backend.kind().is_remote()`, calls get the
    /// timeout, circuit breaker and in-memory fallback of `config`.
    pub fn with_backend(backend: Arc<dyn Backend>, config: CacheConfig) -> Cache {
        let kind = backend.kind();
        Cache::from_parts(config, kind, Some(backend), None, None)
    }

    /// `memory` / `redis`: the primary again, typed, when it is one of the
    /// built-in backends (the hit path calls it without dynamic dispatch).
    pub(crate) fn from_parts(
        config: CacheConfig,
        kind: BackendKind,
        backend: Option<Arc<dyn Backend>>,
        memory: Option<MemoryBackend>,
        redis: Option<Arc<RedisBackend>>,
    ) -> Cache {
        let resilience = kind.is_remote().then(|| {
            Resilience::new(
                Breaker::new(config.breaker_failures, config.breaker_cooldown),
                MemoryBackend::new(config.memory_capacity),
            )
        });
        let primary = backend.unwrap_or_else(|| Arc::new(MemoryBackend::new(1)));
        let generations = config.prefix_generations.unwrap_or(matches!(
            kind,
            BackendKind::Redis | BackendKind::RedisCluster
        ));
        let redis_target = match (&config.redis, kind) {
            (Some(target), BackendKind::Redis | BackendKind::RedisCluster) => Some(target),
            _ => None,
        };
        let near_capacity = config.near_capacity.filter(|_| redis_target.is_some());
        let tracker = redis_target
            .filter(|_| generations || near_capacity.is_some())
            .and_then(|target| {
                // Already read and checked when the backend connected.
                let tls = config
                    .tls_certificates(crate::config::TlsVariables::ENV)
                    .ok()
                    .flatten();
                let (namespace, near) = (&config.namespace, near_capacity.is_some());
                match target {
                    RedisTarget::Single(url) => {
                        Tracker::single(url, namespace, config.timeout, near, tls.as_ref())
                    }
                    RedisTarget::Cluster(urls) => Tracker::cluster(
                        urls.first()?,
                        namespace,
                        config.timeout,
                        near,
                        tls.as_ref(),
                    ),
                }
            });
        let near = near_capacity.filter(|_| tracker.is_some()).map(|capacity| {
            NearCache::new(capacity, config.default_ttl.max(Duration::from_secs(1)))
        });
        let cache = Cache {
            inner: Arc::new(Inner {
                config,
                kind,
                primary,
                memory,
                redis,
                resilience,
                stats: StatsRegistry::new(),
                flights: Flights::default(),
                lease_tokens: AtomicU64::new(seed()),
                generations,
                tracker,
                near,
            }),
        };
        cache.start_tracking();
        cache
    }

    /// Namespace of this cache's keys.
    pub fn namespace(&self) -> &str {
        &self.inner.config.namespace
    }

    /// The configuration in use.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// Which backend serves this cache.
    pub fn backend_kind(&self) -> BackendKind {
        self.inner.kind
    }

    /// The key as stored: `{namespace}:{key}`.
    ///
    /// ```
    /// let cache = cache_core::Cache::memory();
    /// assert_eq!(cache.storage_key("customer:42"), "cache:customer:42");
    /// ```
    pub fn storage_key(&self, key: &str) -> String {
        let mut out = String::with_capacity(self.key_head_len() + key.len());
        self.push_key_head(&mut out);
        out.push_str(key);
        out
    }

    /// The length of `"{namespace}:"`.
    pub(crate) fn key_head_len(&self) -> usize {
        self.inner.config.namespace.len() + 1
    }

    /// Appends `"{namespace}:"`, the start of every storage key.
    pub(crate) fn push_key_head(&self, out: &mut String) {
        out.push_str(&self.inner.config.namespace);
        out.push(':');
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.inner.kind != BackendKind::Disabled
    }

    fn check_key(key: &str) -> Result<(), CacheError> {
        if key.is_empty() {
            return Err(CacheError::InvalidKey {
                key: key.to_owned(),
                reason: "keys must not be empty",
            });
        }
        if key.chars().any(|c| c.is_control()) {
            return Err(CacheError::InvalidKey {
                key: key.to_owned(),
                reason: "keys must not contain control characters",
            });
        }
        Ok(())
    }

    fn prefix_of(key: &str) -> &str {
        key.split(':').next().unwrap_or(key)
    }

    /// Encodes with size check and counting.
    pub(crate) fn encode<T: Serialize + ?Sized>(
        &self,
        entry: &PrefixEntry,
        key: &str,
        value: &T,
        generation: Option<u64>,
    ) -> Result<Vec<u8>, CacheError> {
        let bytes = codec::encode_labeled(self.inner.config.codec, value, generation).map_err(
            |message| CacheError::Encode {
                key: key.to_owned(),
                message,
            },
        )?;
        if bytes.len() > self.inner.config.max_value_bytes {
            self.inner.stats.record(entry, Event::Oversized);
            tracing::warn!(
                key,
                size = bytes.len(),
                limit = self.inner.config.max_value_bytes,
                "value over max_value_bytes not stored"
            );
            return Err(CacheError::TooLarge {
                key: key.to_owned(),
                size: bytes.len(),
                limit: self.inner.config.max_value_bytes,
            });
        }
        Ok(bytes)
    }

    /// Decodes, counting a failure as a decode failure (the caller treats it as a miss).
    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        entry: &PrefixEntry,
        key: &str,
        bytes: &[u8],
    ) -> Option<T> {
        match codec::decode(bytes, self.inner.config.max_value_bytes) {
            Ok(v) => Some(v),
            Err(err) => {
                self.inner.stats.record(entry, Event::DecodeFailure);
                let reason = match err {
                    DecodeError::Foreign => {
                        "not written by cache-core (or by a newer format)".to_owned()
                    }
                    DecodeError::TooLarge => "over max_value_bytes".to_owned(),
                    DecodeError::Payload(m) => m,
                };
                tracing::debug!(key, %reason, "stored value did not decode; treating as a miss");
                None
            }
        }
    }

    pub(crate) fn next_lease_marker(&self) -> Vec<u8> {
        codec::lease_marker(self.inner.lease_tokens.fetch_add(1, Ordering::Relaxed))
    }

    // ----- the direct API -----------------------------------------------------

    /// The value at `key` (`"prefix:rest"`), or `None` when absent, expired,
    /// or not decodable as `T` (counted as a decode failure).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, CacheError> {
        Self::check_key(key)?;
        if !self.is_enabled() {
            return Ok(None);
        }
        let entry = self.inner.stats.prefix(Self::prefix_of(key));
        let skey = self.storage_key(key);
        let (raw, generation) = self
            .raw_get_current(&entry, &skey, Self::prefix_of(key), true)
            .await;
        let value = match raw {
            Some(bytes) if codec::is_lease(&bytes) => None,
            Some(bytes) => match codec::label(&bytes, generation) {
                codec::Label::Current => self.decode(&entry, key, &bytes),
                codec::Label::Other => None,
                // Decoded only to count foreign or corrupt bytes.
                codec::Label::Unlabeled => self.decode::<T>(&entry, key, &bytes).and(None),
            },
            None => None,
        };
        self.inner.stats.record(
            &entry,
            if value.is_some() {
                Event::Hit
            } else {
                Event::Miss
            },
        );
        Ok(value)
    }

    /// Stores `value` at `key` for `ttl` (the default TTL when `None`).
    /// An oversized value is not stored and returns [`CacheError::TooLarge`].
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<(), CacheError> {
        Self::check_key(key)?;
        if !self.is_enabled() {
            return Ok(());
        }
        let entry = self.inner.stats.prefix(Self::prefix_of(key));
        let generation = self.generation_for(&entry, Self::prefix_of(key)).await;
        let bytes = self.encode(&entry, key, value, generation)?;
        let ttl = ttl.unwrap_or(self.inner.config.default_ttl);
        self.raw_set(&entry, &self.storage_key(key), bytes, ttl)
            .await;
        Ok(())
    }

    /// Deletes `key`; `true` when it existed. A delete that cannot reach Redis
    /// is remembered and replayed before Redis is trusted again.
    pub async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        Self::check_key(key)?;
        if !self.is_enabled() {
            return Ok(false);
        }
        let entry = self.inner.stats.prefix(Self::prefix_of(key));
        self.inner.stats.record(&entry, Event::Invalidation);
        Ok(self.raw_delete(&entry, &[self.storage_key(key)]).await > 0)
    }

    /// Deletes several keys at once; returns how many existed.
    pub async fn delete_many(&self, keys: &[&str]) -> Result<u64, CacheError> {
        if keys.is_empty() || !self.is_enabled() {
            return Ok(0);
        }
        for key in keys {
            Self::check_key(key)?;
        }
        let entry = self.inner.stats.prefix(Self::prefix_of(keys[0]));
        let skeys: Vec<String> = keys.iter().map(|k| self.storage_key(k)).collect();
        self.inner.stats.record(&entry, Event::Invalidation);
        Ok(self.raw_delete(&entry, &skeys).await)
    }

    /// Whether `key` holds a value. With prefix generations on, a value its
    /// prefix's invalidation left behind (stored until its TTL ends) does not
    /// count, nor does a load's lease marker: this then reads the key (a
    /// `GET`) rather than asking `EXISTS`, and [`ttl`](Self::ttl) and
    /// [`expire`](Self::expire) apply the same test. Without generations,
    /// a key whose value is being loaded right now reports the load's
    /// lease marker as present (for at most the lease TTL).
    pub async fn exists(&self, key: &str) -> Result<bool, CacheError> {
        Self::check_key(key)?;
        if !self.is_enabled() {
            return Ok(false);
        }
        let entry = self.inner.stats.prefix(Self::prefix_of(key));
        let skey = self.storage_key(key);
        if self.generations_on() {
            return Ok(self.visible(&entry, key, &skey).await);
        }
        let skey = skey.as_str();
        Ok(self
            .with_fallback(
                &entry,
                |b| async move { b.exists(skey).await },
                |f| async move { f.exists(skey).await },
            )
            .await
            .unwrap_or(false))
    }

    /// Whether `skey` holds what a read would return: not a lease marker
    /// (a load in progress), and with prefix generations not a value
    /// labeled with an older generation (invalidated). Bytes that are not
    /// ours (a counter, a foreign value) count as present, as `EXISTS` says.
    async fn visible(&self, entry: &PrefixEntry, key: &str, skey: &str) -> bool {
        let (raw, current) = self
            .raw_get_current(entry, skey, Self::prefix_of(key), false)
            .await;
        match raw {
            None => false,
            Some(bytes) if codec::is_lease(&bytes) => false,
            Some(bytes) => {
                current.is_none()
                    || !codec::is_envelope(&bytes)
                    || codec::generation_of(&bytes) == current
            }
        }
    }

    /// Sets a new TTL on `key`; `false` when it does not exist.
    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, CacheError> {
        Self::check_key(key)?;
        if !self.is_enabled() {
            return Ok(false);
        }
        let entry = self.inner.stats.prefix(Self::prefix_of(key));
        let skey = self.storage_key(key);
        if self.generations_on() && !self.visible(&entry, key, &skey).await {
            return Ok(false);
        }
        let skey = skey.as_str();
        let cap = self.fallback_ttl(ttl);
        Ok(self
            .with_fallback(
                &entry,
                |b| async move { b.expire(skey, ttl).await },
                |f| async move { f.expire(skey, cap).await },
            )
            .await
            .unwrap_or(false))
    }

    /// Remaining TTL of `key`; `None` when it does not exist (or never expires).
    pub async fn ttl(&self, key: &str) -> Result<Option<Duration>, CacheError> {
        Self::check_key(key)?;
        if !self.is_enabled() {
            return Ok(None);
        }
        let entry = self.inner.stats.prefix(Self::prefix_of(key));
        let skey = self.storage_key(key);
        if self.generations_on() && !self.visible(&entry, key, &skey).await {
            return Ok(None);
        }
        let skey = skey.as_str();
        Ok(self
            .with_fallback(
                &entry,
                |b| async move { b.ttl(skey).await },
                |f| async move { f.ttl(skey).await },
            )
            .await
            .unwrap_or(None))
    }

    /// The values at `keys`, in order (one `MGET` on Redis, split by slot on a cluster).
    pub async fn get_many<T: DeserializeOwned>(
        &self,
        keys: &[&str],
    ) -> Result<Vec<Option<T>>, CacheError> {
        for key in keys {
            Self::check_key(key)?;
        }
        if keys.is_empty() || !self.is_enabled() {
            return Ok(keys.iter().map(|_| None).collect());
        }
        let entry = self.inner.stats.prefix(Self::prefix_of(keys[0]));
        let skeys: Vec<String> = keys.iter().map(|k| self.storage_key(k)).collect();
        let skeys_ref = &skeys;
        let raw = self
            .with_fallback(
                &entry,
                |b| async move { b.get_many(skeys_ref).await },
                |f| async move { f.get_many(skeys_ref).await },
            )
            .await
            .unwrap_or_else(|_| vec![None; keys.len()]);
        let mut out = Vec::with_capacity(keys.len());
        for (key, bytes) in keys.iter().zip(raw) {
            let entry = self.inner.stats.prefix(Self::prefix_of(key));
            let value = bytes
                .filter(|b| !codec::is_lease(b))
                .and_then(|b| self.decode::<T>(&entry, key, &b));
            self.inner.stats.record(
                &entry,
                if value.is_some() {
                    Event::Hit
                } else {
                    Event::Miss
                },
            );
            out.push(value);
        }
        Ok(out)
    }

    /// Stores every `(key, value)` for `ttl` (a pipeline on Redis).
    pub async fn set_many<T: Serialize>(
        &self,
        entries: &[(&str, T)],
        ttl: Option<Duration>,
    ) -> Result<(), CacheError> {
        if entries.is_empty() || !self.is_enabled() {
            return Ok(());
        }
        let ttl = ttl.unwrap_or(self.inner.config.default_ttl);
        let mut encoded = Vec::with_capacity(entries.len());
        // One generation read per prefix, not per entry.
        let mut generations: Vec<(&str, Option<u64>)> = Vec::new();
        for (key, value) in entries {
            Self::check_key(key)?;
            let prefix = Self::prefix_of(key);
            let entry = self.inner.stats.prefix(prefix);
            let generation = match generations.iter().find(|(p, _)| *p == prefix) {
                Some((_, g)) => *g,
                None => {
                    let g = self.generation_for(&entry, prefix).await;
                    generations.push((prefix, g));
                    g
                }
            };
            encoded.push((
                self.storage_key(key),
                self.encode(&entry, key, value, generation)?,
            ));
            self.inner.stats.record(&entry, Event::Set);
        }
        let entry = self.inner.stats.prefix(Self::prefix_of(entries[0].0));
        let written: Vec<String> = if self.inner.near.is_some() {
            encoded.iter().map(|(k, _)| k.clone()).collect()
        } else {
            Vec::new()
        };
        let copy = encoded.clone();
        let cap = self.fallback_ttl(ttl);
        let result = self
            .with_fallback(
                &entry,
                |b| async move { b.set_many(encoded, ttl).await },
                |f| async move { f.set_many(copy, cap).await },
            )
            .await;
        self.near_evict(&written);
        if result.is_err() {
            tracing::debug!("set_many failed on the backend and the fallback");
        }
        Ok(())
    }

    /// Adds `delta` to the integer counter at `key` (created at 0) and returns
    /// the new value. Counters are plain integers (Redis `INCRBY`), not
    /// envelope values: read them with `incr(key, 0)`.
    pub async fn incr(&self, key: &str, delta: i64) -> Result<i64, CacheError> {
        Self::check_key(key)?;
        let entry = self.inner.stats.prefix(Self::prefix_of(key));
        let skey = self.storage_key(key);
        let skey = skey.as_str();
        if !self.is_enabled() {
            return Ok(0);
        }
        let result = self
            .with_fallback(
                &entry,
                |b| async move { b.incr_by(skey, delta).await },
                |f| async move { f.incr_by(skey, delta).await },
            )
            .await;
        self.near_evict_one(skey);
        Ok(result?)
    }

    /// Subtracts `delta`; see [`incr`](Self::incr).
    pub async fn decr(&self, key: &str, delta: i64) -> Result<i64, CacheError> {
        self.incr(key, delta.checked_neg().unwrap_or(i64::MAX))
            .await
    }

    /// The value at `key`, or the result of `load` (stored for `ttl`).
    /// Concurrent callers share one load (single-flight in the process,
    /// leases across processes); an invalidation during the load wins.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::CacheError> {
    /// let cache = cache_core::Cache::memory();
    /// let v: u32 = cache.get_or_set("answer:1", None, || async { 42 }).await?;
    /// let again: u32 = cache.get_or_set("answer:1", None, || async { 0 }).await?;
    /// assert_eq!((v, again), (42, 42));
    /// # Ok(()) }
    /// ```
    pub async fn get_or_set<T, F, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        load: F,
    ) -> Result<T, CacheError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        Self::check_key(key)?;
        let prefix = Self::prefix_of(key);
        Ok(self
            .load_through::<T, crate::__private::PlainMode, _, _>(ReadThrough {
                prefix,
                skey: crate::__private::KeyString::from(self.storage_key(key)),
                ttl,
                none_ttl: None,
                unless: |_: &T| false,
                typed: None,
                near: true,
                body: load(),
            })
            .await)
    }

    /// Deletes every key of this namespace matching the glob `pattern`
    /// (`"customer:*"`): SCAN + UNLINK in batches of 1000, on every master of
    /// a cluster; never `KEYS`. Returns how many keys were deleted.
    pub async fn delete_pattern(&self, pattern: &str) -> Result<u64, CacheError> {
        Self::check_key(pattern)?;
        if !self.is_enabled() {
            return Ok(0);
        }
        let entry = self.inner.stats.prefix(Self::prefix_of(pattern));
        self.inner.stats.record(&entry, Event::Invalidation);
        let full = format!("{}:{}", glob_literal(&self.inner.config.namespace), pattern);
        Ok(self.raw_delete_pattern(&entry, &full).await)
    }

    /// Invalidates every key of `prefix` (`"customer"` → `customer:*`); glob
    /// characters in `prefix` are taken literally. With prefix generations
    /// (the default on Redis) this replaces the prefix's generation in one
    /// write and returns 0: the old values become invisible at once and
    /// expire by their TTL. Without, it deletes them (SCAN + UNLINK) and
    /// returns how many it deleted.
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<u64, CacheError> {
        Self::check_key(prefix)?;
        if !self.is_enabled() {
            return Ok(0);
        }
        let entry = self.inner.stats.prefix(prefix);
        self.inner.stats.record(&entry, Event::Invalidation);
        if self.generations_on() {
            self.bump_generation(&entry, prefix).await;
            return Ok(0);
        }
        let full = format!(
            "{}:{}:*",
            glob_literal(&self.inner.config.namespace),
            glob_literal(prefix)
        );
        Ok(self.raw_delete_pattern(&entry, &full).await)
    }

    /// Deletes every key of this cache's namespace, and nothing else (never `FLUSHDB`).
    pub async fn clear(&self) -> Result<u64, CacheError> {
        if !self.is_enabled() {
            return Ok(0);
        }
        let entry = self.inner.stats.prefix("_all");
        let full = format!("{}:*", glob_literal(&self.inner.config.namespace));
        Ok(self.raw_delete_pattern(&entry, &full).await)
    }
}

fn seed() -> u64 {
    static COUNTER: OnceLock<AtomicU64> = OnceLock::new();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let pid = u64::from(std::process::id());
    let n = COUNTER
        .get_or_init(|| AtomicU64::new(1))
        .fetch_add(1, Ordering::Relaxed);
    // Distinct per process and per cache; only needs to be unlikely to collide.
    (nanos ^ (pid << 40) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_mul(0xBF58_476D_1CE4_E5B9)
}
