//! The read-through path shared by `#[cached]` and [`Cache::get_or_set`]:
//! hit → decode; miss → single-flight in the process, a lease across
//! processes, load, compare-and-set store.
//!
//! Only [`Cache::load_through`] is generic: it builds nothing but what
//! depends on the function's types (decode, encode, the typed copy, which
//! part of the result is stored) and awaits the body itself, so the caller's
//! future is `Send` exactly when the body is. Everything else is a
//! non-generic step on bytes, compiled once: [`Cache::read_raw`] (inline,
//! the hit path), and on a miss [`Cache::join_flight`],
//! [`Cache::acquire_lease`] and [`Cache::store_with_lease`], each awaited
//! behind a box. The boxes keep the miss path's state out of every caller's
//! future and, with the one around a remote read, keep the generated future
//! types shallow: a caller in another crate computes their layout and
//! auto traits through every nested future it holds inline, and that walk
//! is bounded by the default `recursion_limit`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::__private::Mode;
use crate::__private::TypedCopy;
use crate::backend::RawBytes;
use crate::cache::Cache;
use crate::codec;
use crate::flight::{self, Leader, Role, Waited};
use crate::stats::{Event, PrefixEntry};

/// One read-through call: the key, how long to keep a loaded value, and
/// what to run on a miss.
pub(crate) struct ReadThrough<'p, S, F, U> {
    /// The key's prefix (stats, generations).
    pub(crate) prefix: &'p str,
    /// The storage key, `{namespace}:{prefix}:{rest}`.
    pub(crate) skey: crate::__private::KeyString,
    pub(crate) ttl: Option<Duration>,
    /// TTL of a negative entry (`None` under `cache_none`).
    pub(crate) none_ttl: Option<Duration>,
    /// A loaded value this returns `true` for is not stored.
    pub(crate) unless: U,
    pub(crate) typed: Option<TypedCopy<S>>,
    /// Whether the near cache may serve and keep this value.
    pub(crate) near: bool,
    /// The load.
    pub(crate) body: F,
}

/// What a read found, before decoding.
pub(crate) enum Read {
    /// Bytes of a value (not a lease, of the current prefix generation).
    Bytes(RawBytes),
    /// Another loader's lease.
    Leased,
    /// Nothing usable; `garbage` when something is there that must be overwritten.
    Missing { garbage: bool },
    /// Bytes without a generation label although generations are on: never
    /// served (they may predate an invalidation), but decoded once on the
    /// hit path to count foreign or corrupt bytes.
    Unlabeled(RawBytes),
}

/// Bytes of a value found on the miss path.
pub(crate) enum Bytes {
    /// Read from the backend.
    Raw(RawBytes),
    /// Published by this process's leader.
    Shared(Arc<[u8]>),
}

/// What [`Cache::join_flight`] decided.
pub(crate) enum Joined<'c> {
    /// Found a value (read, or from this process's leader): decode it.
    Value(Bytes),
    /// The leader's result was not cacheable: run the body, store nothing.
    RunUncached,
    /// This call loads.
    Lead {
        leader: Leader<'c>,
        garbage: bool,
        generation: Option<u64>,
    },
}

/// What [`Cache::acquire_lease`] decided.
pub(crate) enum Leased {
    /// Load, then store under this lease (none: a plain store).
    Load {
        lease: LeaseGuard,
        generation: Option<u64>,
    },
    /// Another process stored a value while we waited: decode it.
    Value(RawBytes, Option<u64>),
}

/// The memory backend's read, polled once in place: it completes without
/// waiting (moka's lookup is synchronous behind its `async` signature), and
/// `None` (still pending) sends the caller to the awaited read. Polling here
/// instead of awaiting keeps moka's future, dozens of types deep, out of
/// the state of every `#[cached]` future, whose layout and auto traits a
/// caller's crate computes through every future held inline (bounded by the
/// default `recursion_limit`); a box would cost an allocation per hit.
fn memory_get_now(
    memory: &crate::backend::memory::MemoryBackend,
    skey: &str,
) -> Option<Option<Arc<crate::backend::memory::Slot>>> {
    let read = std::pin::pin!(memory.get_bytes(skey));
    match read.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(found) => Some(found),
        std::task::Poll::Pending => None,
    }
}

/// A boxed step of the miss path.
type Step<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Cache {
    /// Reads the stored bytes; with prefix generations on, also the current
    /// generation, and a value labeled with an older one counts as missing
    /// (it is overwritten like garbage). A memory read completes in one
    /// synchronous poll ([`memory_get_now`]) and a near hit is synchronous;
    /// any other read is awaited behind a box (it is a round trip anyway).
    /// Either way no backend's future nests into the caller's.
    pub(crate) async fn read_raw(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        prefix: &str,
        near: bool,
    ) -> (Read, Option<u64>) {
        let memory_now = match self.inner.primary.memory() {
            Some(memory) if !self.generations_on() => memory_get_now(memory, skey),
            _ => None,
        };
        // A near hit needs no await either: no box for it.
        let near_now = match memory_now {
            None if near => self.near_hit_now(entry, skey),
            _ => None,
        };
        let (raw, current) = match (memory_now, near_now) {
            (Some(found), _) => (found.map(RawBytes::Shared), None),
            (None, Some((slot, current))) => (Some(RawBytes::Shared(slot)), current),
            (None, None) => {
                let read: Step<'_, _> = Box::pin(self.raw_get_current(entry, skey, prefix, near));
                read.await
            }
        };
        let read = match raw {
            None => Read::Missing { garbage: false },
            Some(bytes) if codec::is_lease(&bytes) => Read::Leased,
            Some(bytes) => match codec::label(&bytes, current) {
                codec::Label::Current => Read::Bytes(bytes),
                codec::Label::Other => Read::Missing { garbage: true },
                codec::Label::Unlabeled => Read::Unlabeled(bytes),
            },
        };
        (read, current)
    }

    /// Decodes a found value, through the typed copy kept beside a memory
    /// slot when the payload has one (a hit then clones, decoding once).
    fn decode_found<S: serde::de::DeserializeOwned>(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        bytes: &Bytes,
        typed: Option<TypedCopy<S>>,
    ) -> Option<S> {
        match (bytes, typed) {
            (Bytes::Raw(RawBytes::Shared(slot)), Some(typed)) => {
                if let Some(value) = slot.decoded.get().and_then(|d| (typed.take)(d)) {
                    return Some(value);
                }
                let value = self.decode::<S>(entry, skey, slot)?;
                let _ = slot.decoded.set((typed.keep)(&value));
                Some(value)
            }
            (Bytes::Raw(raw), _) => self.decode::<S>(entry, skey, raw),
            (Bytes::Shared(shared), _) => self.decode::<S>(entry, skey, shared),
        }
    }

    /// The generic shell of a read-through call: what depends on the
    /// value's type, and the body, awaited here.
    pub(crate) async fn load_through<R, M, F, U>(&self, call: ReadThrough<'_, M::Stored, F, U>) -> R
    where
        M: Mode<R>,
        F: Future<Output = R>,
        U: FnOnce(&M::Stored) -> bool,
    {
        let ReadThrough {
            prefix,
            skey,
            ttl,
            none_ttl,
            unless,
            typed,
            near,
            body,
        } = call;
        if self.backend_kind() == crate::BackendKind::Disabled {
            return body.await;
        }
        let entry = self.inner.stats.prefix(prefix);
        // The prefix generation seen by the last read before the load: the
        // value is labeled with it, so a prefix invalidation during the load
        // leaves the value invisible.
        let (mut read, mut generation) = self.read_raw(&entry, &skey, prefix, near).await;
        if let Read::Bytes(bytes) = read {
            let bytes = Bytes::Raw(bytes);
            if let Some(v) = self.decode_found::<M::Stored>(&entry, &skey, &bytes, typed) {
                self.inner.stats.record(&entry, Event::Hit);
                return M::from_stored(v);
            }
            read = Read::Missing { garbage: true };
        } else if let Read::Unlabeled(bytes) = read {
            let _ = self.decode::<M::Stored>(&entry, &skey, &bytes);
            read = Read::Missing { garbage: true };
        }

        // Miss: join this process's flight for the key, or lead it.
        let (leader, mut garbage) = loop {
            let joined: Step<'_, _> =
                Box::pin(self.join_flight(&entry, &skey, prefix, read, generation));
            match joined.await {
                Joined::Value(bytes) => {
                    if let Some(v) = self.decode_found::<M::Stored>(&entry, &skey, &bytes, typed) {
                        self.inner.stats.record(&entry, Event::Hit);
                        return M::from_stored(v);
                    }
                    read = Read::Missing { garbage: true };
                }
                Joined::RunUncached => return body.await,
                Joined::Lead {
                    leader,
                    garbage,
                    generation: seen,
                } => {
                    generation = seen;
                    break (leader, garbage);
                }
            }
        };

        // Lead: take the lease, or take the value another process stores meanwhile.
        // Read the clock only on a miss: the hit path needs no deadline.
        let lease_deadline = Instant::now() + self.inner.config.lease_ttl;
        let lease = loop {
            let leased: Step<'_, _> = Box::pin(self.acquire_lease(
                &entry,
                &skey,
                prefix,
                &leader,
                garbage,
                generation,
                lease_deadline,
            ));
            match leased.await {
                Leased::Load {
                    lease,
                    generation: seen,
                } => {
                    generation = seen;
                    break lease;
                }
                Leased::Value(raw, seen) => {
                    let bytes = Bytes::Raw(raw);
                    if let Some(v) = self.decode_found::<M::Stored>(&entry, &skey, &bytes, typed) {
                        self.inner.stats.record(&entry, Event::Hit);
                        // Share the value with local followers.
                        leader.finish(Some(Arc::from(&*bytes)));
                        return M::from_stored(v);
                    }
                    (garbage, generation) = (true, seen);
                }
            }
        };

        let result = body.await;
        self.inner.stats.record(&entry, Event::Load);
        leader.seal();
        let encoded = M::stored(&result).filter(|s| !unless(s)).and_then(|value| {
            let bytes = self.encode(&entry, &skey, value, generation).ok()?;
            let ttl = if M::is_negative(value) {
                none_ttl.or(ttl)
            } else {
                ttl
            };
            Some((bytes, ttl.unwrap_or(self.inner.config.default_ttl)))
        });
        let store: Step<'_, ()> =
            Box::pin(self.store_with_lease(&entry, &skey, leader, lease, encoded));
        store.await;
        result
    }

    /// Miss step 1: re-reads (unless `first` is what the caller just read)
    /// until a value turns up, the leader of this process's flight for the
    /// key publishes one, or this call becomes the leader.
    async fn join_flight<'c>(
        &'c self,
        entry: &PrefixEntry,
        skey: &str,
        prefix: &str,
        first: Read,
        mut generation: Option<u64>,
    ) -> Joined<'c> {
        let mut garbage = false;
        let mut first = Some(first);
        loop {
            let found = match first.take() {
                Some(found) => found,
                None => {
                    let (read, seen) = self.read_raw(entry, skey, prefix, false).await;
                    generation = seen;
                    read
                }
            };
            match found {
                Read::Bytes(bytes) => return Joined::Value(Bytes::Raw(bytes)),
                Read::Missing { garbage: g } => garbage |= g,
                Read::Unlabeled(_) => garbage = true,
                Read::Leased => {}
            }
            match self.inner.flights.join(skey) {
                Role::Leader(leader) => {
                    self.inner.stats.record(entry, Event::Miss);
                    return Joined::Lead {
                        leader,
                        garbage,
                        generation,
                    };
                }
                Role::Follower(rx) => {
                    self.inner.stats.record(entry, Event::Coalesced);
                    match flight::wait(rx).await {
                        Waited::Done(Some(bytes)) => return Joined::Value(Bytes::Shared(bytes)),
                        // The leader's result was not cacheable: run our own body.
                        Waited::Done(None) => {
                            self.inner.stats.record(entry, Event::Miss);
                            return Joined::RunUncached;
                        }
                        Waited::LeaderGone => {}
                    }
                }
                Role::Late(rx) => {
                    self.inner.stats.record(entry, Event::Coalesced);
                    let _ = flight::wait(rx).await;
                }
            }
        }
    }

    /// Miss step 2 (the leader): takes a lease so that other processes wait
    /// for us, and so that an invalidation during our load makes our store
    /// fail. While another process holds it, waits for that process's value
    /// until `deadline`, then loads without a lease.
    #[allow(clippy::too_many_arguments)]
    async fn acquire_lease(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        prefix: &str,
        leader: &Leader<'_>,
        garbage: bool,
        mut generation: Option<u64>,
        deadline: Instant,
    ) -> Leased {
        if garbage {
            self.raw_delete(entry, &[skey.to_owned()]).await;
        }
        let unleased = |generation| Leased::Load {
            lease: LeaseGuard(None),
            generation,
        };
        if !self.inner.config.leases {
            return unleased(generation);
        }
        loop {
            let candidate = self.next_lease_marker();
            match self.lease_try(entry, skey, candidate.clone()).await {
                Ok(true) => {
                    return Leased::Load {
                        lease: LeaseGuard(Some((self.clone(), skey.to_owned(), candidate))),
                        generation,
                    };
                }
                // Another process holds the lease (or just stored): wait for its value.
                Ok(false) => {
                    if Instant::now() >= deadline {
                        return unleased(generation);
                    }
                    self.inner.stats.record(entry, Event::LeaseWait);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    leader.seal();
                    let (read, seen) = self.read_raw(entry, skey, prefix, false).await;
                    generation = seen;
                    match read {
                        Read::Bytes(bytes) => return Leased::Value(bytes, generation),
                        Read::Leased | Read::Missing { garbage: false } => {}
                        Read::Missing { garbage: true } | Read::Unlabeled(_) => {
                            self.raw_delete(entry, &[skey.to_owned()]).await;
                        }
                    }
                }
                // Backend unavailable: load without a lease (the store goes to the fallback).
                Err(_) => return unleased(generation),
            }
        }
    }

    /// Miss step 3 (the leader, after the load): stores `encoded` (bytes
    /// and TTL; `None` when the result is not stored) under the lease,
    /// releases a lease it did not use, and publishes the outcome to this
    /// process's followers.
    async fn store_with_lease(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        leader: Leader<'_>,
        mut lease: LeaseGuard,
        encoded: Option<(Vec<u8>, Duration)>,
    ) {
        let shared = match encoded {
            Some((bytes, ttl)) => {
                let shared: Arc<[u8]> = Arc::from(bytes.as_slice());
                match lease.take() {
                    Some(marker) => match self.lease_store(entry, skey, marker, bytes, ttl).await {
                        Ok(true) => {
                            self.inner.stats.record(entry, Event::Set);
                            Some(shared)
                        }
                        // An invalidation removed our lease while we loaded: the
                        // value may predate it, so it is neither stored nor
                        // handed to callers that joined after the invalidation.
                        Ok(false) => {
                            self.inner.stats.record(entry, Event::StaleSetPrevented);
                            tracing::debug!(key = %skey, "lease lost to an invalidation; value not stored");
                            None
                        }
                        // Refused while Redis answers (out of memory, no
                        // permission; `lease_store` already tried the
                        // fallback when Redis was away): not stored, and the
                        // lease is released in the background.
                        Err(_) => None,
                    },
                    // No lease because Redis refuses the lease scripts: a
                    // plain store could land after an invalidation that
                    // raced the load, so nothing is stored.
                    None if self.inner.config.leases && self.scripts_off() => None,
                    None => {
                        self.raw_set(entry, skey, bytes, ttl).await;
                        Some(shared)
                    }
                }
            }
            None => None,
        };
        if let Some(marker) = lease.take() {
            self.lease_release(entry, skey, marker).await;
        }
        leader.finish(shared);
    }

    pub(crate) async fn release_lease_now(&self, skey: &str, marker: Vec<u8>) {
        let entry = self
            .inner
            .stats
            .prefix(skey.split(':').nth(1).unwrap_or(""));
        self.lease_release(&entry, skey, marker).await;
    }
}

/// A lease this process holds. If the loader panics or its future is dropped,
/// the lease is released in the background so that waiters in other
/// processes need not sit out the lease TTL.
pub(crate) struct LeaseGuard(Option<(Cache, String, Vec<u8>)>);

impl LeaseGuard {
    fn take(&mut self) -> Option<Vec<u8>> {
        self.0.take().map(|(_, _, marker)| marker)
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some((cache, skey, marker)) = self.0.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move { cache.release_lease_now(&skey, marker).await });
        }
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Raw(raw) => raw,
            Bytes::Shared(shared) => shared,
        }
    }
}
