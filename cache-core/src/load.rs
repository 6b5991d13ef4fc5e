//! The read-through path shared by `#[cached]` and [`Cache::get_or_set`]:
//! hit → decode; miss → single-flight in the process, a lease across
//! processes, load, compare-and-set store.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::__private::Mode;
use crate::__private::TypedCopy;
use crate::cache::{Cache, RawBytes};
use crate::codec;
use crate::flight::{self, Role, Waited};
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
    /// The load.
    pub(crate) body: F,
}

/// What the first read found.
enum Found<S> {
    Value(S),
    Leased,
    Missing { garbage: bool },
}

impl Cache {
    /// Reads the stored value; with prefix generations on, also the current
    /// generation (written to `generation`), and a value labeled with an
    /// older one counts as missing (it is overwritten like garbage).
    async fn read_stored<S: serde::de::DeserializeOwned>(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        prefix: &str,
        typed: Option<TypedCopy<S>>,
        generation: &mut Option<u64>,
    ) -> Found<S> {
        let (raw, current) = self.raw_get_current(entry, skey, prefix).await;
        *generation = current;
        match raw {
            None => Found::Missing { garbage: false },
            Some(bytes) if codec::is_lease(&bytes) => Found::Leased,
            Some(bytes) => match codec::label(&bytes, current) {
                codec::Label::Current => self.decode_found(entry, skey, bytes, typed),
                codec::Label::Other => Found::Missing { garbage: true },
                // Decoded only to count foreign or corrupt bytes.
                codec::Label::Unlabeled => {
                    let _ = self.decode::<S>(entry, skey, &bytes);
                    Found::Missing { garbage: true }
                }
            },
        }
    }

    /// Decodes a value found with the current generation.
    fn decode_found<S: serde::de::DeserializeOwned>(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        bytes: RawBytes,
        typed: Option<TypedCopy<S>>,
    ) -> Found<S> {
        match bytes {
            // Memory hit of a `Clone` payload: clone the decoded copy kept
            // beside the bytes, decoding only the first time.
            RawBytes::Shared(slot) if typed.is_some() => {
                let typed = typed.expect("checked");
                if let Some(value) = slot.decoded.get().and_then(|d| (typed.take)(d)) {
                    return Found::Value(value);
                }
                match self.decode::<S>(entry, skey, &slot) {
                    Some(value) => {
                        let _ = slot.decoded.set((typed.keep)(&value));
                        Found::Value(value)
                    }
                    None => Found::Missing { garbage: true },
                }
            }
            bytes => match self.decode::<S>(entry, skey, &bytes) {
                Some(v) => Found::Value(v),
                None => Found::Missing { garbage: true },
            },
        }
    }

    pub(crate) async fn load_through<R, M, F, U>(&self, call: ReadThrough<'_, M::Stored, F, U>) -> R
    where
        M: Mode<R>,
        F: Future<Output = R>,
        U: FnOnce(&M::Stored) -> bool,
    {
        if self.backend_kind() == crate::BackendKind::Disabled {
            return call.body.await;
        }
        let entry = self.inner.stats.prefix(call.prefix);
        // The prefix generation seen by the last read before the load: the
        // value is labeled with it, so a prefix invalidation during the load
        // leaves the value invisible.
        let mut generation = None;
        let first = self
            .read_stored::<M::Stored>(&entry, &call.skey, call.prefix, call.typed, &mut generation)
            .await;
        if let Found::Value(v) = first {
            self.inner.stats.record(&entry, Event::Hit);
            return M::from_stored(v);
        }
        // The miss path is a boxed future of its own: every caller up the
        // chain moves this future by value, and a hit should not pay for
        // copying the (much larger) state of a load.
        Box::pin(self.load_after_miss::<R, M, F, U>(&entry, call, first, generation)).await
    }

    /// [`Cache::load_through`] after its first read found no value.
    async fn load_after_miss<R, M, F, U>(
        &self,
        entry: &PrefixEntry,
        call: ReadThrough<'_, M::Stored, F, U>,
        first: Found<M::Stored>,
        mut generation: Option<u64>,
    ) -> R
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
            body,
        } = call;
        let mut garbage = false;
        let mut first = Some(first);
        let leader = loop {
            let found = match first.take() {
                Some(found) => found,
                None => {
                    self.read_stored::<M::Stored>(entry, &skey, prefix, typed, &mut generation)
                        .await
                }
            };
            match found {
                Found::Value(v) => {
                    self.inner.stats.record(entry, Event::Hit);
                    return M::from_stored(v);
                }
                Found::Missing { garbage: g } => garbage |= g,
                Found::Leased => {}
            }
            match self.inner.flights.join(&skey) {
                Role::Leader(leader) => break leader,
                Role::Follower(rx) => {
                    self.inner.stats.record(entry, Event::Coalesced);
                    match flight::wait(rx).await {
                        Waited::Done(Some(bytes)) => {
                            if let Some(v) = self.decode::<M::Stored>(entry, &skey, &bytes) {
                                self.inner.stats.record(entry, Event::Hit);
                                return M::from_stored(v);
                            }
                        }
                        // The leader's result was not cacheable: run our own body.
                        Waited::Done(None) => {
                            self.inner.stats.record(entry, Event::Miss);
                            return body.await;
                        }
                        Waited::LeaderGone => continue,
                    }
                }
                Role::Late(rx) => {
                    self.inner.stats.record(entry, Event::Coalesced);
                    let _ = flight::wait(rx).await;
                }
            }
        };
        self.inner.stats.record(entry, Event::Miss);
        // Read the clock only on a miss: the hit path needs no deadline.
        let lease_deadline = Instant::now() + self.inner.config.lease_ttl;

        // Take a lease so that other processes wait for us, and so that an
        // invalidation during our load makes our store fail.
        if garbage {
            self.raw_delete(entry, std::slice::from_ref(&skey)).await;
        }
        let mut marker = LeaseGuard(None);
        let leases = self.inner.config.leases;
        #[allow(clippy::while_immutable_condition)] // left by break or return
        while leases {
            let candidate = self.next_lease_marker();
            let attempt = self.lease_try(entry, &skey, candidate.clone()).await;
            match attempt {
                Ok(true) => {
                    marker = LeaseGuard(Some((self.clone(), skey.to_string(), candidate)));
                    break;
                }
                Ok(false) => {
                    // Another process holds the lease (or just stored): wait for its value.
                    if Instant::now() >= lease_deadline {
                        break;
                    }
                    self.inner.stats.record(entry, Event::LeaseWait);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    leader.seal();
                    match self
                        .read_stored::<M::Stored>(entry, &skey, prefix, typed, &mut generation)
                        .await
                    {
                        Found::Value(v) => {
                            self.inner.stats.record(entry, Event::Hit);
                            // Share the value with local followers.
                            let shared = codec::encode(self.inner.config.codec, &v)
                                .ok()
                                .map(Arc::from);
                            leader.finish(shared);
                            return M::from_stored(v);
                        }
                        Found::Leased => {}
                        Found::Missing { garbage: true } => {
                            self.raw_delete(entry, std::slice::from_ref(&skey)).await;
                        }
                        Found::Missing { garbage: false } => {}
                    }
                }
                // Backend unavailable: load without a lease (the store goes to the fallback).
                Err(_) => break,
            }
        }

        let result = body.await;
        self.inner.stats.record(entry, Event::Load);
        leader.seal();
        let stored = M::stored(&result).filter(|s| !unless(s));
        let shared = match stored {
            Some(value) => match self.encode(entry, &skey, value, generation) {
                Ok(bytes) => {
                    let ttl = if M::is_negative(value) {
                        none_ttl.or(ttl)
                    } else {
                        ttl
                    }
                    .unwrap_or(self.inner.config.default_ttl);
                    let shared: Arc<[u8]> = Arc::from(bytes.as_slice());
                    match marker.take() {
                        Some(marker) => {
                            let stored = self.lease_store(entry, &skey, marker, bytes, ttl).await;
                            match stored {
                                Ok(true) => {
                                    self.inner.stats.record(entry, Event::Set);
                                    Some(shared)
                                }
                                // An invalidation removed our lease while we loaded: the
                                // value may predate it, so it is neither stored nor
                                // handed to callers that joined after the invalidation.
                                Ok(false) => {
                                    self.inner.stats.record(entry, Event::StaleSetPrevented);
                                    tracing::debug!(key = %*skey, "lease lost to an invalidation; value not stored");
                                    None
                                }
                                Err(_) => {
                                    self.raw_set_fallback_only(&skey, shared.to_vec(), ttl)
                                        .await;
                                    None
                                }
                            }
                        }
                        None => {
                            self.raw_set(entry, &skey, bytes, ttl).await;
                            Some(shared)
                        }
                    }
                }
                Err(_) => None,
            },
            None => None,
        };
        if let Some(marker) = marker.take() {
            self.lease_release(entry, &skey, marker).await;
        }
        leader.finish(shared);
        result
    }

    pub(crate) async fn release_lease_now(&self, skey: &str, marker: Vec<u8>) {
        let entry = self
            .inner
            .stats
            .prefix(skey.split(':').nth(1).unwrap_or(""));
        self.lease_release(&entry, skey, marker).await;
    }

    async fn raw_set_fallback_only(&self, skey: &str, bytes: Vec<u8>, ttl: Duration) {
        if let Some(res) = &self.inner.resilience {
            let cap = ttl.min(self.inner.config.fallback_ttl_cap);
            let _ = crate::Backend::set(&res.fallback, skey, bytes, cap).await;
            self.mark_fallback_written();
        }
    }
}

/// A lease this process holds. If the loader panics or its future is dropped,
/// the lease is released in the background so that waiters in other
/// processes need not sit out the lease TTL.
struct LeaseGuard(Option<(Cache, String, Vec<u8>)>);

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
