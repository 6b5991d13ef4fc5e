//! The store's operations on storage keys: the backend when it answers,
//! the fallback when it does not, and every missed invalidation remembered.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::recovery::Missed;
use super::{Deadline, On, Store};
use crate::backend::redis::cluster::Cluster;
use crate::backend::{Backend, InvalidationWrite, MemoryBackend, RawBytes};
use crate::error::{BackendError, ErrorKind};
use crate::join::{Boxed, join_all};
use crate::stats::{Event, PrefixEntry};

/// A boxed step, for paths the hit path does not take.
type Step<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long a failed write keeps `health()` degraded without another write.
const WRITE_FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// The last write the backend refused for a reason of its own (out of
/// memory, read-only replica, ...) while answering reads.
#[derive(Default)]
pub(super) struct WriteFailure {
    last: Mutex<Option<(Instant, String)>>,
    /// Whether `last` holds one: a successful store (every miss) checks
    /// this instead of taking the lock.
    failing: AtomicBool,
}

impl WriteFailure {
    pub(super) fn note(&self, outcome: Result<(), &BackendError>) {
        if outcome.is_ok() && !self.failing.load(Ordering::Acquire) {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = outcome
            .err()
            .map(|e| (Instant::now(), format!("writes are failing: {e}")));
        self.failing.store(last.is_some(), Ordering::Release);
    }

    fn recent(&self) -> Option<String> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < WRITE_FAILURE_MEMORY)
            .map(|(_, what)| what.clone())
    }
}

/// A read of a value and of the key holding its prefix's generation.
pub(crate) struct PairRead {
    pub(crate) value: Option<RawBytes>,
    pub(crate) generation: Option<Vec<u8>>,
}

impl Store {
    /// The bytes at `skey`: from the backend, else (unavailable) from the
    /// fallback. Something of another type at the key reads as empty bytes
    /// (garbage, to be overwritten).
    pub(crate) async fn get(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        deadline: &Deadline,
    ) -> Option<RawBytes> {
        if let Some(memory) = self.primary.memory() {
            // Boxed: moka's future is large, and this is not the Redis hit path.
            let read: Step<'_, _> = Box::pin(memory.get_bytes(skey));
            return read.await.map(RawBytes::Shared);
        }
        if self.suspected(skey) {
            let check: Step<'_, bool> = Box::pin(self.too_large(entry, skey, deadline));
            if check.await {
                return None;
            }
        }
        let read = match self.redis_get(entry, skey, deadline).await {
            Some(read) => read,
            None => {
                let read: Step<'_, _> =
                    Box::pin(self.call(entry, deadline, On::Read(skey), |b| async move {
                        b.get(skey).await
                    }));
                read.await
            }
        };
        match read {
            Ok(v) => v.map(RawBytes::Owned),
            Err(e) => {
                let failed: Step<'_, _> =
                    Box::pin(async move { self.failed_read(entry, skey, &e).await });
                failed.await
            }
        }
    }

    /// Whether `skey` is suspected of being too large to read (one atomic
    /// load while no key is).
    #[inline]
    fn suspected(&self, skey: &str) -> bool {
        self.guard
            .as_ref()
            .is_some_and(|guard| guard.suspects.contains(skey))
    }

    /// [`get`](Self::get) of a Redis key with the time it has left (`None`
    /// when it never expires or the answer came from the fallback), for the
    /// near level, whose entries must not outlive their Redis key.
    pub(crate) async fn get_with_ttl(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        deadline: &Deadline,
    ) -> (Option<RawBytes>, Option<Duration>) {
        let Some(redis) = self.primary.redis() else {
            return (self.get(entry, skey, deadline).await, None);
        };
        // Only a key whose last read timed out has its size checked first,
        // as in `get`: every other read is the one round trip.
        if self.suspected(skey) && self.too_large(entry, skey, deadline).await {
            return (None, None);
        }
        let read = self
            .call(entry, deadline, On::Read(skey), |_| {
                redis.get_with_ttl(skey)
            })
            .await;
        match read {
            Ok((v, left)) => (v.map(RawBytes::Owned), left),
            Err(e) => (self.failed_read(entry, skey, &e).await, None),
        }
    }

    /// The value at `skey` and the bytes at `gkey` in one round trip
    /// (`MGET`), from the fallback when the backend is away. `None` when
    /// neither answered.
    pub(crate) async fn get_pair(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        gkey: &str,
        deadline: &Deadline,
    ) -> Option<PairRead> {
        if let Some(memory) = self.primary.memory() {
            return Some(PairRead {
                value: memory.get_bytes(skey).await.map(RawBytes::Shared),
                generation: memory.get_bytes(gkey).await.map(|s| s.to_vec()),
            });
        }
        let read = self.read_pair(entry, skey, gkey, deadline).await;
        match read {
            Ok(mut pair) if pair.len() == 2 => {
                let generation = pair.pop().flatten();
                Some(PairRead {
                    value: pair.pop().flatten().map(RawBytes::Owned),
                    generation,
                })
            }
            Err(e) if Self::unavailable(&e) => {
                let fallback = self.fallback()?;
                let value = fallback.get_bytes(skey).await;
                if value.is_some() {
                    self.stats.record(entry, Event::FallbackHit);
                }
                Some(PairRead {
                    value: value.map(RawBytes::Shared),
                    generation: fallback.get_bytes(gkey).await.map(|s| s.to_vec()),
                })
            }
            _ => None,
        }
    }

    /// `skey` and `gkey` in one round trip (`MGET`); on a cluster, where
    /// they may live on two masters, two reads at once, each through its
    /// master's breaker (a generation whose master is down cannot be
    /// read, so neither is the value).
    async fn read_pair(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        gkey: &str,
        deadline: &Deadline,
    ) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        if self.cluster().is_some() && self.guard.is_some() {
            let value = Box::pin(self.call(entry, deadline, On::Key(skey), |b| async move {
                b.get(skey).await
            }));
            let generation = Box::pin(self.call(entry, deadline, On::Key(gkey), |b| async move {
                b.get(gkey).await
            }));
            let (value, generation) = both(value, generation).await;
            return Ok(vec![value?, generation?]);
        }
        let keys = [skey.to_owned(), gkey.to_owned()];
        let keys_ref = &keys;
        self.call(entry, deadline, On::Any, |b| async move {
            b.get_many(keys_ref).await
        })
        .await
    }

    /// Whether `skey`, whose last read timed out, turned out too large to
    /// read (it is then deleted and counted).
    async fn too_large(&self, entry: &PrefixEntry, skey: &str, deadline: &Deadline) -> bool {
        let Some(guard) = &self.guard else {
            return false;
        };
        let len = self
            .call(entry, deadline, On::Key(skey), |b| async move {
                b.value_len(skey).await
            })
            .await;
        let limit = self.settings.max_value_bytes as u64 + 64;
        match len {
            Ok(Some(len)) if len > limit => {
                self.stats.record(entry, Event::Oversized);
                tracing::warn!(
                    key = skey,
                    bytes = len,
                    "deleting a value too large to read"
                );
                let keys = [skey.to_owned()];
                let keys = &keys;
                let deleted = self
                    .call(entry, &deadline.renewed(), On::Key(skey), |b| async move {
                        b.delete(keys).await
                    })
                    .await;
                if deleted.is_ok() {
                    guard.suspects.clear(skey);
                }
                true
            }
            Ok(_) => {
                guard.suspects.clear(skey);
                false
            }
            Err(_) => false,
        }
    }

    /// What a failed read of the backend returns: empty bytes for a key of
    /// another type (garbage: counted, deleted, stored anew instead of
    /// waiting on a lease that can never be taken), else the fallback's answer.
    async fn failed_read(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        error: &BackendError,
    ) -> Option<RawBytes> {
        if error.kind == ErrorKind::WrongType {
            return Some(RawBytes::Owned(Vec::new()));
        }
        let v = self.fallback()?.get_bytes(skey).await.map(RawBytes::Shared);
        if v.is_some() {
            self.stats.record(entry, Event::FallbackHit);
        }
        v
    }

    /// Stores `bytes` at `skey` for `ttl`; in the fallback (TTL capped)
    /// when the backend is away.
    pub(crate) async fn set(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        bytes: Vec<u8>,
        ttl: Duration,
        deadline: &Deadline,
    ) {
        if let Some(memory) = self.primary.memory() {
            let _ = memory.set(skey, bytes, ttl).await;
            return;
        }
        let copy = self.guard.as_ref().map(|_| bytes.clone());
        let result = self
            .call(entry, deadline, On::Key(skey), |b| async move {
                b.set(skey, bytes, ttl).await
            })
            .await;
        let Some(guard) = &self.guard else { return };
        match result {
            Ok(()) => guard.write_failure.note(Ok(())),
            // The backend answers but refuses the write (out of memory,
            // wrong type): reads still go to it, so a fallback copy would
            // never be read.
            Err(e) if !Self::unavailable(&e) => guard.write_failure.note(Err(&e)),
            Err(_) => {
                if let Some(copy) = copy {
                    let _ = guard.fallback.set(skey, copy, self.fallback_ttl(ttl)).await;
                    self.mark_fallback_written(On::Key(skey));
                }
            }
        }
    }

    /// Stores every entry for `ttl` (a pipeline on Redis).
    pub(crate) async fn set_many(
        &self,
        entry: &PrefixEntry,
        entries: Vec<(String, Vec<u8>)>,
        ttl: Duration,
        deadline: &Deadline,
    ) {
        let copy = self.guard.as_ref().map(|_| entries.clone());
        let cap = self.fallback_ttl(ttl);
        let result = self
            .call(entry, deadline, On::Any, |b| async move {
                b.set_many(entries, ttl).await
            })
            .await;
        if let (Err(e), Some(copy), Some(fallback)) = (&result, copy, self.fallback())
            && Self::unavailable(e)
        {
            for (key, _) in &copy {
                self.mark_fallback_written(On::Key(key));
            }
            let _ = fallback.set_many(copy, cap).await;
        }
    }

    /// Deletes `skeys` from the backend and the fallback; a delete the
    /// backend did not receive is remembered and replayed. Returns how many
    /// existed, and whether the backend confirmed the delete.
    pub(crate) async fn delete(
        &self,
        entry: &PrefixEntry,
        skeys: &[String],
        deadline: &Deadline,
    ) -> (u64, bool) {
        let mut fallback_deleted = 0;
        if let Some(fallback) = self.fallback() {
            fallback_deleted = fallback.delete(skeys).await.unwrap_or(0);
        }
        // On a cluster, each master confirms its own keys.
        if let Some(cluster) = self.cluster()
            && self.guard.is_some()
            && let Some((n, delivered)) =
                self.delete_per_node(entry, cluster, skeys, deadline).await
        {
            return (
                if delivered {
                    n
                } else {
                    n.max(fallback_deleted)
                },
                delivered,
            );
        }
        match self
            .call(entry, deadline, On::Any, |b| {
                self.invalidate_on(b, InvalidationWrite::Delete(skeys), deadline)
            })
            .await
        {
            Ok((n, true)) => (n, true),
            Ok((n, false)) => {
                self.unreplicated(entry);
                self.remember(Missed::Keys(skeys));
                (n, false)
            }
            Err(_) => {
                self.remember(Missed::Keys(skeys));
                (fallback_deleted, false)
            }
        }
    }

    /// Deletes `skeys` on a cluster, one call per master (at once), each
    /// admitted by its master's breaker; the keys of a master that did not
    /// confirm are remembered (gating their slots). How many existed, and
    /// whether every master confirmed.
    async fn delete_per_node(
        &self,
        entry: &PrefixEntry,
        cluster: &Cluster,
        skeys: &[String],
        deadline: &Deadline,
    ) -> Option<(u64, bool)> {
        let groups = cluster.by_node(skeys.iter().map(|k| k.as_bytes())).ok()?;
        let calls = groups
            .into_iter()
            .map(|(_, at)| {
                let keys: Vec<String> = at.into_iter().map(|i| skeys[i].clone()).collect();
                Box::pin(async move {
                    let first = keys[0].clone();
                    let keys_ref = &keys;
                    let result = self
                        .call(entry, deadline, On::Key(&first), |b| async move {
                            b.delete(keys_ref).await
                        })
                        .await;
                    (keys, result)
                }) as Boxed<'_, (Vec<String>, Result<u64, BackendError>)>
            })
            .collect();
        let mut deleted = 0;
        let mut delivered = true;
        for (keys, result) in join_all(calls).await {
            match result {
                Ok(n) => deleted += n,
                Err(_) => {
                    delivered = false;
                    self.remember(Missed::Keys(&keys));
                }
            }
        }
        Some((deleted, delivered))
    }

    /// Deletes every key matching `pattern` (SCAN + UNLINK), in the
    /// fallback too; remembered and replayed when the backend missed it.
    pub(crate) async fn delete_pattern(&self, entry: &PrefixEntry, pattern: &str) -> (u64, bool) {
        let mut fallback_deleted = 0;
        if let Some(fallback) = self.fallback() {
            fallback_deleted = fallback.delete_pattern(pattern).await.unwrap_or(0);
        }
        let deadline = Deadline::after(self.bulk_timeout());
        match self
            .call(entry, &deadline, On::Any, |b| {
                self.invalidate_on(b, InvalidationWrite::DeletePattern(pattern), &deadline)
            })
            .await
        {
            Ok((n, true)) => (n, true),
            Ok((n, false)) => {
                self.unreplicated(entry);
                self.remember(Missed::Pattern(pattern));
                (n, false)
            }
            Err(_) => {
                self.remember(Missed::Pattern(pattern));
                (fallback_deleted, false)
            }
        }
    }

    /// The whole namespace was deleted: the server's record of its run
    /// (kept in the namespace, to detect restarts with old data) is written
    /// again.
    pub(crate) async fn namespace_cleared(&self) {
        if let Some(redis) = self.primary.redis() {
            redis.mark_run().await;
        }
    }

    /// Writes `bytes` at `key` as part of an invalidation (a prefix
    /// generation): in the fallback too, and remembered and replayed with
    /// the same bytes when the backend missed it.
    pub(crate) async fn write_invalidation(
        &self,
        entry: &PrefixEntry,
        key: &str,
        bytes: Vec<u8>,
        ttl: Duration,
        deadline: &Deadline,
    ) -> bool {
        if let Some(fallback) = self.fallback() {
            let _ = fallback.set(key, bytes.clone(), ttl).await;
        }
        let write = InvalidationWrite::Write {
            key,
            value: &bytes,
            ttl,
        };
        let result = self
            .call(entry, deadline, On::Key(key), |b| {
                self.invalidate_on(b, write, deadline)
            })
            .await;
        if let Ok((_, false)) = result {
            self.unreplicated(entry);
        }
        if !matches!(result, Ok((_, true))) {
            self.remember(Missed::Write(key, &bytes, ttl));
            return false;
        }
        true
    }

    /// Stores `marker` at `key` only if the key is absent, in the backend,
    /// or in the fallback when the backend is away. `Ok(false)`: taken.
    pub(crate) async fn set_if_absent(
        &self,
        entry: &PrefixEntry,
        key: &str,
        bytes: Vec<u8>,
        ttl: Duration,
        deadline: &Deadline,
    ) -> Result<bool, BackendError> {
        let copy = bytes.clone();
        self.with_fallback(
            entry,
            deadline,
            On::Key(key),
            |b| async move { b.try_lease(key, bytes, ttl).await },
            |f| async move { f.try_lease(key, copy, ttl).await },
        )
        .await
    }

    /// Tries the backend, then the fallback, for the simple single-key calls.
    pub(crate) async fn with_fallback<'s, T, Fut, FFut>(
        &'s self,
        entry: &PrefixEntry,
        deadline: &Deadline,
        on: On<'_>,
        op: impl FnOnce(&'s dyn Backend) -> Fut,
        fallback: impl FnOnce(MemoryBackend) -> FFut,
    ) -> Result<T, BackendError>
    where
        Fut: Future<Output = Result<T, BackendError>>,
        FFut: Future<Output = Result<T, BackendError>>,
    {
        match self.call(entry, deadline, on, op).await {
            Ok(v) => Ok(v),
            Err(e) => match self.fallback() {
                Some(spare) if Self::unavailable(&e) => {
                    // Whatever the fallback now holds must be reconciled on recovery.
                    self.mark_fallback_written(on);
                    fallback(spare.clone()).await
                }
                _ => Err(e),
            },
        }
    }

    /// The write failure health should report, if a recent write failed.
    pub(crate) fn write_failure(&self) -> Option<String> {
        self.guard.as_ref()?.write_failure.recent()
    }

    /// Records the outcome of a write health made itself.
    pub(crate) fn note_write(&self, outcome: Result<(), &BackendError>) {
        if let Some(guard) = &self.guard {
            guard.write_failure.note(outcome);
        }
    }
}

/// Both futures, polled together.
async fn both<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            ra = match a.as_mut().poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            };
        }
        if rb.is_none() {
            rb = match b.as_mut().poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            };
        }
        if ra.is_some() && rb.is_some() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    (
        ra.expect("polled to completion"),
        rb.expect("polled to completion"),
    )
}
