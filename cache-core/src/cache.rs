//! The [`Cache`] handle and the direct API. How a cache is made is in
//! `builder.rs`; what happens on the way to the backend (resilience,
//! generations, the near level, leases) has a module each.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::Backend;
use crate::backend::{BackendKind, Primary};
use crate::codec;
use crate::config::CacheConfig;
use crate::error::CacheError;
use crate::flight::Flights;
use crate::keys::glob_literal;
use crate::load::ReadThrough;
use crate::near::NearCache;
use crate::resilience::Resilience;
use crate::stats::{Event, PrefixEntry, StatsRegistry};
use crate::tracking::Tracker;

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
    pub(crate) primary: Primary,
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
