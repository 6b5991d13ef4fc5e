//! Reads and writes of storage keys through the resilience layer: the
//! backend when it answers, the in-memory fallback when it does not, with
//! the near cache and the single-flight table told about every change.

use std::future::Future;
use std::time::Duration;

use crate::backend::RawBytes;
use crate::backend::{Backend, MemoryBackend};
use crate::cache::Cache;
use crate::error::{BackendError, ErrorKind};
use crate::resilience::{Missed, Resilience};
use crate::stats::{Event, PrefixEntry};

impl Cache {
    /// Before reading a suspect key: its size, and if it is too large to
    /// be a value of ours, it is deleted and read as missing.
    async fn oversized(&self, entry: &PrefixEntry, res: &Resilience, skey: &str) -> bool {
        let len = self
            .on_primary(entry, self.inner.config.timeout, |b| async move {
                b.value_len(skey).await
            })
            .await;
        let limit = self.inner.config.max_value_bytes as u64 + 64;
        match len {
            Ok(Some(len)) if len > limit => {
                self.inner.stats.record(entry, Event::Oversized);
                tracing::warn!(
                    key = skey,
                    bytes = len,
                    "deleting a value too large to read"
                );
                let keys = [skey.to_owned()];
                let keys = &keys;
                if self
                    .on_primary(entry, self.inner.config.timeout, |b| async move {
                        b.delete(keys).await
                    })
                    .await
                    .is_ok()
                {
                    res.clear_suspect(skey);
                }
                true
            }
            Ok(_) => {
                res.clear_suspect(skey);
                false
            }
            Err(_) => false,
        }
    }

    // ----- raw operations with fallback (storage keys) ------------------------

    pub(crate) async fn raw_get(&self, entry: &PrefixEntry, skey: &str) -> Option<RawBytes> {
        if let Some(memory) = self.inner.primary.memory() {
            return memory.get_bytes(skey).await.map(RawBytes::Shared);
        }
        if self.suspect_too_large(entry, skey).await {
            return None;
        }
        let timeout = self.inner.config.timeout;
        let read = match self.inner.primary.redis() {
            Some(redis) => {
                self.on_primary_for(entry, timeout, Some(skey), |_| redis.get_direct(skey))
                    .await
            }
            None => {
                self.on_primary_for(
                    entry,
                    timeout,
                    Some(skey),
                    |b| async move { b.get(skey).await },
                )
                .await
            }
        };
        match read {
            Ok(v) => v.map(RawBytes::Owned),
            Err(e) => self.failed_remote_read(entry, skey, &e).await,
        }
    }

    /// [`raw_get`](Self::raw_get) of a Redis key with the time it has left
    /// (`None` when it never expires or the answer came from the fallback),
    /// for the near cache, whose entries must not outlive their Redis key.
    pub(crate) async fn raw_get_with_ttl(
        &self,
        entry: &PrefixEntry,
        skey: &str,
    ) -> (Option<RawBytes>, Option<Duration>) {
        let Some(redis) = self.inner.primary.redis() else {
            return (self.raw_get(entry, skey).await, None);
        };
        if self.suspect_too_large(entry, skey).await {
            return (None, None);
        }
        let timeout = self.inner.config.timeout;
        let read = self
            .on_primary_for(entry, timeout, Some(skey), |_| redis.get_with_ttl(skey))
            .await;
        match read {
            Ok((v, left)) => (v.map(RawBytes::Owned), left),
            Err(e) => (self.failed_remote_read(entry, skey, &e).await, None),
        }
    }

    /// Whether `skey`, whose last read timed out, turned out too large to
    /// read (it is then deleted and counted).
    async fn suspect_too_large(&self, entry: &PrefixEntry, skey: &str) -> bool {
        match &self.inner.resilience {
            Some(res) if res.is_suspect(skey) => self.oversized(entry, res, skey).await,
            _ => false,
        }
    }

    /// What a failed read of the remote primary returns: a mark for a key
    /// of another type, else the fallback's answer.
    async fn failed_remote_read(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        error: &BackendError,
    ) -> Option<RawBytes> {
        // Something other than a string sits at the key: unreadable bytes,
        // so the caller counts it, deletes it and stores anew (instead of
        // waiting on a lease it can never take).
        if error.kind == ErrorKind::WrongType {
            return Some(RawBytes::Owned(Vec::new()));
        }
        let res = self.inner.resilience.as_ref()?;
        let v = res.fallback.get_bytes(skey).await.map(RawBytes::Shared);
        if v.is_some() {
            self.inner.stats.record(entry, Event::FallbackHit);
        }
        v
    }

    pub(crate) async fn raw_set(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        bytes: Vec<u8>,
        ttl: Duration,
    ) {
        if let Some(memory) = self.inner.primary.memory() {
            let _ = memory.set(skey, bytes, ttl).await;
            self.inner.stats.record(entry, Event::Set);
            return;
        }
        let copy = self.inner.resilience.as_ref().map(|_| bytes.clone());
        let result = self
            .on_primary(entry, self.inner.config.timeout, |b| async move {
                b.set(skey, bytes, ttl).await
            })
            .await;
        self.near_evict_one(skey);
        self.inner.stats.record(entry, Event::Set);
        let Some(res) = &self.inner.resilience else {
            return;
        };
        match result {
            Ok(()) => res.note_write(Ok(())),
            // The backend answers but refuses the write (out of memory,
            // wrong type): reads still go to it, so a fallback copy would
            // never be read.
            Err(e) if !Self::unavailable(&e) => res.note_write(Err(&e)),
            Err(_) => {
                if let Some(copy) = copy {
                    let _ = res.fallback.set(skey, copy, self.fallback_ttl(ttl)).await;
                    self.mark_fallback_written();
                }
            }
        }
    }

    pub(crate) async fn raw_delete(&self, entry: &PrefixEntry, skeys: &[String]) -> u64 {
        // Evicted again after the delete: a read between the two could
        // have installed the old value.
        self.near_evict(skeys);
        let _evict_after = NearEvictOnDrop(self, skeys);
        for skey in skeys {
            self.inner.flights.seal(skey);
        }
        let mut fallback_deleted = 0;
        if let Some(res) = &self.inner.resilience {
            fallback_deleted = res.fallback.delete(skeys).await.unwrap_or(0);
        }
        match self
            .on_primary(entry, self.inner.config.timeout, |b| async move {
                b.delete(skeys).await
            })
            .await
        {
            Ok(n) => n,
            Err(_) => {
                if let Some(res) = &self.inner.resilience {
                    self.remember_invalidation(res, Missed::Keys(skeys));
                }
                fallback_deleted
            }
        }
    }

    pub(crate) async fn raw_delete_pattern(&self, entry: &PrefixEntry, pattern: &str) -> u64 {
        self.near_flush();
        let _flush_after = NearFlushOnDrop(self);
        self.inner.flights.seal_all("");
        let mut fallback_deleted = 0;
        if let Some(res) = &self.inner.resilience {
            fallback_deleted = res.fallback.delete_pattern(pattern).await.unwrap_or(0);
        }
        match self
            .on_primary(entry, self.bulk_timeout(), |b| async move {
                b.delete_pattern(pattern).await
            })
            .await
        {
            Ok(n) => n,
            Err(_) => {
                if let Some(res) = &self.inner.resilience {
                    self.remember_invalidation(res, Missed::Pattern(pattern));
                }
                fallback_deleted
            }
        }
    }

    /// Tries the primary, then the fallback, for the simple single-key calls.
    pub(crate) async fn with_fallback<'s, T, Fut, FFut>(
        &'s self,
        entry: &PrefixEntry,
        op: impl FnOnce(&'s dyn Backend) -> Fut,
        fallback: impl FnOnce(MemoryBackend) -> FFut,
    ) -> Result<T, BackendError>
    where
        Fut: Future<Output = Result<T, BackendError>>,
        FFut: Future<Output = Result<T, BackendError>>,
    {
        match self.on_primary(entry, self.inner.config.timeout, op).await {
            Ok(v) => Ok(v),
            Err(e) => match &self.inner.resilience {
                Some(res) if e.kind.is_availability() || e.kind == ErrorKind::CircuitOpen => {
                    // Whatever the fallback now holds must be reconciled on recovery.
                    self.mark_fallback_written();
                    fallback(res.fallback.clone()).await
                }
                _ => Err(e),
            },
        }
    }
}

/// Evicts keys from the near level when the delete that changed them ends
/// (also if its future is dropped).
struct NearEvictOnDrop<'a>(&'a Cache, &'a [String]);

impl Drop for NearEvictOnDrop<'_> {
    fn drop(&mut self) {
        self.0.near_evict(self.1);
    }
}

/// Drops the near level when the pattern delete ends.
struct NearFlushOnDrop<'a>(&'a Cache);

impl Drop for NearFlushOnDrop<'_> {
    fn drop(&mut self) {
        self.0.near_flush();
    }
}
