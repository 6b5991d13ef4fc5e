//! The direct API. Every read goes through the consistency layer's one read
//! operation and every removal through its one invalidation operation.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Cache;
use super::shell::{PrefixName, ReadThrough, Ready};
use crate::codec;
use crate::consistency::invalidate::Invalidation;
use crate::consistency::read::{Key, Read};
use crate::error::CacheError;
use crate::join::join_all;
use crate::keys::glob_literal;
use crate::stats::{Event, PrefixEntry};
use crate::store::Deadline;

impl Cache {
    /// The value at `key` (`"prefix:rest"`), or `None` when absent, expired,
    /// or not decodable as `T` (counted as a decode failure).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, CacheError> {
        Self::check_key(key)?;
        if !self.is_enabled() {
            return Ok(None);
        }
        let skey = self.storage_key(key);
        let deadline = self.inner.layer.store().deadline();
        Ok(self.get_one(key, &skey, &deadline).await)
    }

    /// One typed read through the read operation, counted as a hit or a miss.
    async fn get_one<T: DeserializeOwned>(
        &self,
        key: &str,
        skey: &str,
        deadline: &Deadline,
    ) -> Option<T> {
        let prefix = Self::prefix_of(key);
        let entry = self.inner.stats.prefix(prefix);
        let read_key = Key {
            skey,
            prefix,
            near: true,
        };
        let (read, _) = self.inner.layer.read(&entry, read_key, deadline).await;
        let value = match read {
            Read::Bytes(bytes) => self.decode(&entry, key, &bytes),
            // Decoded only to count foreign or corrupt bytes.
            Read::Unlabeled(bytes) => self.decode::<T>(&entry, key, &bytes).and(None),
            Read::Stale(_) | Read::Leased(_) | Read::Missing { .. } => None,
        };
        let event = if value.is_some() {
            Event::Hit
        } else {
            Event::Miss
        };
        self.inner.stats.record(&entry, event);
        value
    }

    /// Whether `key` holds what a read would return: not a lease marker (a
    /// load in progress), not a value an invalidation left behind (with
    /// prefix generations, an older generation's value stays stored until
    /// its TTL ends). Bytes that are not ours (a counter, a foreign value)
    /// count as present, as Redis' `EXISTS` says.
    async fn visible(
        &self,
        entry: &PrefixEntry,
        key: &str,
        skey: &str,
        deadline: &Deadline,
    ) -> bool {
        self.visible_until(entry, key, skey, deadline)
            .await
            .is_some()
    }

    /// [`visible`](Self::visible), with when (store clock, ms) the value
    /// turns stale if it says so itself (fail-safe, refresh-ahead: its key
    /// lives longer, as the stale reserve): `None` when not visible.
    async fn visible_until(
        &self,
        entry: &PrefixEntry,
        key: &str,
        skey: &str,
        deadline: &Deadline,
    ) -> Option<Option<u64>> {
        let read_key = Key {
            skey,
            prefix: Self::prefix_of(key),
            near: false,
        };
        match self.inner.layer.read(entry, read_key, deadline).await.0 {
            Read::Bytes(bytes) => Some(
                codec::extended(&bytes)
                    .and_then(|h| h.times)
                    .map(|t| t.fresh_until),
            ),
            Read::Unlabeled(bytes) => (!codec::is_envelope(&bytes)).then_some(None),
            Read::Stale(_) | Read::Leased(_) | Read::Missing { .. } => None,
        }
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
        let prefix = Self::prefix_of(key);
        let entry = self.inner.stats.prefix(prefix);
        let layer = &self.inner.layer;
        let deadline = layer.store().deadline();
        let generation = layer.generation_for(&entry, prefix, &deadline).await;
        let bytes = self.encode(&entry, key, value, generation)?;
        let ttl = ttl.unwrap_or(self.inner.config.default_ttl);
        layer
            .write(&entry, &self.storage_key(key), bytes, ttl, &deadline)
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
        let keys = [self.storage_key(key)];
        let deleted = self
            .invalidate(Invalidation {
                keys: &keys,
                ..Invalidation::default()
            })
            .await;
        Ok(deleted > 0)
    }

    /// Deletes several keys at once; returns how many existed.
    pub async fn delete_many(&self, keys: &[&str]) -> Result<u64, CacheError> {
        for key in keys {
            Self::check_key(key)?;
        }
        if keys.is_empty() || !self.is_enabled() {
            return Ok(0);
        }
        let skeys: Vec<String> = keys.iter().map(|k| self.storage_key(k)).collect();
        Ok(self
            .invalidate(Invalidation {
                keys: &skeys,
                ..Invalidation::default()
            })
            .await)
    }

    /// Whether `key` holds a value: not a load's lease marker, and (with
    /// prefix generations) not a value its prefix's invalidation left
    /// behind. It reads the key (a `GET`, the same read every other read
    /// API makes) rather than asking `EXISTS`; [`ttl`](Self::ttl) and
    /// [`expire`](Self::expire) apply the same test.
    pub async fn exists(&self, key: &str) -> Result<bool, CacheError> {
        Self::check_key(key)?;
        if !self.is_enabled() {
            return Ok(false);
        }
        let entry = self.inner.stats.prefix(Self::prefix_of(key));
        let deadline = self.inner.layer.store().deadline();
        Ok(self
            .visible(&entry, key, &self.storage_key(key), &deadline)
            .await)
    }

    /// Sets a new TTL on `key`; `false` when it does not exist.
    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, CacheError> {
        Self::check_key(key)?;
        if !self.is_enabled() {
            return Ok(false);
        }
        let entry = self.inner.stats.prefix(Self::prefix_of(key));
        let skey = self.storage_key(key);
        let store = self.inner.layer.store();
        let deadline = store.deadline();
        if !self.visible(&entry, key, &skey, &deadline).await {
            return Ok(false);
        }
        let skey = skey.as_str();
        let cap = store.fallback_ttl(ttl);
        Ok(store
            .with_fallback(
                &entry,
                &deadline,
                crate::store::On::Key(skey),
                |b| async move { b.expire(skey, ttl).await },
                |f| async move { crate::backend::Backend::expire(&f, skey, cap).await },
            )
            .await
            .unwrap_or(false))
    }

    /// Remaining TTL of `key`; `None` when it does not exist (or never
    /// expires). For a value kept past its TTL as a stale reserve
    /// (fail-safe), the time until it turns stale, as `get` sees it.
    pub async fn ttl(&self, key: &str) -> Result<Option<Duration>, CacheError> {
        Self::check_key(key)?;
        if !self.is_enabled() {
            return Ok(None);
        }
        let entry = self.inner.stats.prefix(Self::prefix_of(key));
        let skey = self.storage_key(key);
        let store = self.inner.layer.store();
        let deadline = store.deadline();
        let Some(fresh_until) = self.visible_until(&entry, key, &skey, &deadline).await else {
            return Ok(None);
        };
        let skey = skey.as_str();
        let physical = store
            .with_fallback(
                &entry,
                &deadline,
                crate::store::On::Key(skey),
                |b| async move { b.ttl(skey).await },
                |f| async move { crate::backend::Backend::ttl(&f, skey).await },
            )
            .await
            .unwrap_or(None);
        let Some(until) = fresh_until else {
            return Ok(physical);
        };
        let fresh = Duration::from_millis(until.saturating_sub(store.now_ms()));
        Ok(Some(physical.map_or(fresh, |p| p.min(fresh))))
    }

    /// The values at `keys`, in order. Each key is read by the same read
    /// operation as [`get`](Self::get), all at once: on Redis the reads are
    /// pipelined on one connection (one round trip), and on a cluster sent
    /// to their nodes concurrently.
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
        let skeys: Vec<String> = keys.iter().map(|k| self.storage_key(k)).collect();
        let deadline = self.inner.layer.store().deadline();
        let reads: Vec<_> = keys
            .iter()
            .zip(&skeys)
            .map(|(key, skey)| Box::pin(self.get_one::<T>(key, skey, &deadline)))
            .collect();
        Ok(join_all(reads).await)
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
        let layer = &self.inner.layer;
        let deadline = layer.store().deadline();
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
                    let g = layer.generation_for(&entry, prefix, &deadline).await;
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
        layer.write_many(&entry, encoded, ttl, &deadline).await;
        Ok(())
    }

    /// Adds `delta` to the integer counter at `key` (created at 0) and returns
    /// the new value. Counters are plain integers (Redis `INCRBY`), not
    /// envelope values: read them with `incr(key, 0)`.
    pub async fn incr(&self, key: &str, delta: i64) -> Result<i64, CacheError> {
        Self::check_key(key)?;
        if !self.is_enabled() {
            return Ok(0);
        }
        let entry = self.inner.stats.prefix(Self::prefix_of(key));
        let skey = self.storage_key(key);
        Ok(self.inner.layer.increment(&entry, &skey, delta).await?)
    }

    /// Subtracts `delta`; see [`incr`](Self::incr).
    pub async fn decr(&self, key: &str, delta: i64) -> Result<i64, CacheError> {
        self.incr(key, delta.checked_neg().unwrap_or(i64::MAX))
            .await
    }

    /// The read-through call of [`get_or_set`](Self::get_or_set) and
    /// [`try_get_or_set`](Self::try_get_or_set) on a checked `key`: every
    /// value is stored, none has a typed copy, the near cache may keep it.
    fn keyed_call<'k, R, S, Fut>(
        &self,
        key: &'k str,
        ttl: Option<Duration>,
        body: Fut,
    ) -> KeyedCall<'k, R, S, Fut> {
        ReadThrough {
            prefix: PrefixName::Borrowed(Self::prefix_of(key)),
            skey: super::typed::KeyString::from(self.storage_key(key)),
            ttl,
            none_ttl: None,
            unless: |_| false,
            typed: None,
            near: true,
            body: Ready(body),
            policy: None,
        }
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
        let call = self.keyed_call::<T, T, _>(key, ttl, load());
        let (value, _) = Self::load_through::<T, super::typed::PlainMode, _, _>(
            Some(self),
            call,
            None,
            None,
            None,
        )
        .await;
        Ok(value)
    }

    /// [`get_or_set`](Self::get_or_set) for a loader that can fail: only
    /// `Ok` values are stored, an `Err` is returned and never cached (the
    /// outer `Err` is an invalid key, as for `get_or_set`). With the
    /// cache's fail-safe ([`CacheBuilder::fail_safe`](crate::CacheBuilder::fail_safe)),
    /// a failed reload of a stale value answers with that value instead.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::CacheError> {
    /// let cache = cache_core::Cache::memory();
    /// let failed: Result<u32, String> =
    ///     cache.try_get_or_set("rate:eur", None, || async { Err("db down".to_owned()) }).await?;
    /// assert!(failed.is_err());
    /// assert!(!cache.exists("rate:eur").await?); // the error was not stored
    /// let ok: Result<u32, String> = cache.try_get_or_set("rate:eur", None, || async { Ok(108) }).await?;
    /// assert_eq!(ok, Ok(108));
    /// assert_eq!(cache.get::<u32>("rate:eur").await?, Some(108));
    /// # Ok(()) }
    /// ```
    pub async fn try_get_or_set<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        load: F,
    ) -> Result<Result<T, E>, CacheError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        Self::check_key(key)?;
        let call = self.keyed_call::<Result<T, E>, T, _>(key, ttl, load());
        let (result, _) = Self::load_through::<Result<T, E>, super::typed::ResultMode, _, _>(
            Some(self),
            call,
            None,
            None,
            None,
        )
        .await;
        Ok(result)
    }

    /// Deletes every key of this namespace matching the glob `pattern`
    /// (`"customer:*"`): SCAN + UNLINK in batches of 1000, on every master of
    /// a cluster; never `KEYS`. Returns how many keys were deleted.
    pub async fn delete_pattern(&self, pattern: &str) -> Result<u64, CacheError> {
        Self::check_key(pattern)?;
        if !self.is_enabled() {
            return Ok(0);
        }
        let patterns = [format!(
            "{}:{}",
            glob_literal(&self.inner.config.namespace),
            pattern
        )];
        Ok(self
            .invalidate(Invalidation {
                patterns: &patterns,
                ..Invalidation::default()
            })
            .await)
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
        Ok(self
            .invalidate(Invalidation {
                prefixes: &[prefix],
                ..Invalidation::default()
            })
            .await)
    }

    /// Invalidates every value loaded under `tag` (`#[cached(tags = [..])]`),
    /// however many keys carry it: one write (the tag's generation), in this
    /// process before it returns, in other instances once Redis' message
    /// about it arrives (the prefix generations' window). The values stay
    /// stored until their TTL ends, never served again.
    ///
    /// `tag` is the tag as a template produced it: the values substituted
    /// into a template are escaped as in keys, so build it the same way,
    /// `format!("segment:{}", keys::escape(segment))`, when a value may hold
    /// `:`, `*`, `?`, brackets, braces or `%`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use cache_core::{cached, Cache};
    /// #[cached(prefix = "order", key = "{id}", tags = ["customer:{customer}"])]
    /// async fn order(id: u64, customer: u64) -> (u64, u64) { (id, customer) }
    ///
    /// let cache = Cache::memory();
    /// cache.scope(async { order(1, 7).await; order(2, 7).await; order(3, 8).await }).await;
    /// cache.invalidate_tag("customer:7").await.unwrap();
    /// assert!(!cache.exists(&order_cache_key(&1)).await.unwrap());
    /// assert!(!cache.exists(&order_cache_key(&2)).await.unwrap());
    /// assert!(cache.exists(&order_cache_key(&3)).await.unwrap());
    /// # }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        Self::check_key(tag)?;
        if !self.is_enabled() {
            return Ok(());
        }
        let tags = [tag.to_owned()];
        self.invalidate(Invalidation {
            tags: &tags,
            ..Invalidation::default()
        })
        .await;
        Ok(())
    }

    /// Deletes every key of this cache's namespace, and nothing else (never `FLUSHDB`).
    pub async fn clear(&self) -> Result<u64, CacheError> {
        if !self.is_enabled() {
            return Ok(0);
        }
        Ok(self
            .invalidate(Invalidation {
                everything: true,
                ..Invalidation::default()
            })
            .await)
    }

    /// Whether an invalidation made now would reach Redis: `Ok` while the
    /// backend is trusted (a memory cache always is), else why not (its
    /// circuit breaker is open, or invalidations it missed await replay).
    /// On a Redis Cluster this is the whole cluster: `Err` while any
    /// master's breaker is open or any slot awaits a replay.
    /// `#[invalidates(fail_closed)]` refuses writes on an `Err` (on a
    /// cluster, for an invalidation of keys only, it asks about those
    /// keys' masters and slots alone).
    ///
    /// ```
    /// let cache = cache_core::Cache::memory();
    /// assert!(cache.check_deliverable().is_ok());
    /// ```
    pub fn check_deliverable(&self) -> Result<(), crate::WriteRefused> {
        match self.inner.layer.store().undeliverable(None) {
            Some(why) => Err(crate::WriteRefused::new(why)),
            None => Ok(()),
        }
    }

    /// [`check_deliverable`](Self::check_deliverable) for an invalidation
    /// of `keys` (logical `"prefix:rest"` keys) and `prefixes`: without
    /// prefixes, on a cluster, only the keys' masters and slots count.
    pub(crate) fn check_deliverable_for(
        &self,
        keys: &[String],
        prefixes: &[&str],
    ) -> Result<(), crate::WriteRefused> {
        if !prefixes.is_empty() || keys.is_empty() {
            return self.check_deliverable();
        }
        let skeys: Vec<String> = keys.iter().map(|k| self.storage_key(k)).collect();
        match self.inner.layer.store().undeliverable(Some(&skeys)) {
            Some(why) => Err(crate::WriteRefused::new(why)),
            None => Ok(()),
        }
    }

    /// One call of the consistency layer's invalidation operation.
    async fn invalidate(&self, what: Invalidation<'_>) -> u64 {
        self.inner.layer.invalidate(what).await.deleted
    }

    /// Runs an invalidation of `keys` (logical `"prefix:rest"` keys) and
    /// `prefixes` as one call of the invalidation operation (what
    /// `#[invalidates]` does after its body). Returns whether the backend
    /// confirmed all of it (what it did not is remembered and replayed).
    pub(crate) async fn invalidate_all(
        &self,
        keys: &[String],
        prefixes: &[&str],
        tags: &[String],
    ) -> bool {
        if !self.is_enabled() {
            return true;
        }
        let skeys: Vec<String> = keys.iter().map(|k| self.storage_key(k)).collect();
        self.inner
            .layer
            .invalidate(Invalidation {
                keys: &skeys,
                prefixes,
                tags,
                ..Invalidation::default()
            })
            .await
            .delivered
    }
}

/// A read-through call made by [`Cache::get_or_set`] or
/// [`Cache::try_get_or_set`]: a ready body, nothing refused.
type KeyedCall<'k, R, S, Fut> = ReadThrough<'k, R, S, Ready<Fut>, fn(&S) -> bool>;
