//! The one read operation: what a key holds, as far as any caller may see
//! it. Every read API of the cache (`get`, `get_many`, `exists`, `ttl`,
//! `expire`, `get_or_set`, the code `#[cached]` generates) asks
//! [`Consistency::read`], which applies, in one place: the prefix
//! generation label, the near level (only while tracking is established,
//! with tickets), lease markers (a load in progress is not a value, but
//! the value a refresh carries is), logical expiry (a value past it is
//! stale: kept for fail-safe, never a plain hit), tags (a value labeled
//! with another generation of one of its tags is gone), and garbage (bytes
//! of another type or another generation, to overwrite).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::Consistency;
use super::near::NearCache;
use crate::backend::RawBytes;
use crate::backend::memory::{MemoryBackend, Slot};
use crate::codec;
use crate::stats::{Event, PrefixEntry};
use crate::store::Deadline;

/// What a read found, before decoding.
pub(crate) enum Read {
    /// Bytes of a value (not a lease, of the current prefix generation and
    /// tags, not past its logical expiry).
    Bytes(RawBytes),
    /// A value past its logical expiry (or put back as stale after a failed
    /// load), of the current generation and tags: never a plain hit; a load
    /// replaces it, and fail-safe serves it when that load fails.
    Stale(RawBytes),
    /// Another loader's lease: a load is in progress. It may carry the
    /// stale value it is replacing (fail-safe's reserve meanwhile).
    Leased(Option<RawBytes>),
    /// Nothing usable; `garbage` when something is there that must be overwritten.
    Missing { garbage: bool },
    /// Bytes without a generation label although generations are on: never
    /// served (they may predate an invalidation), but decoded once by a
    /// typed reader to count foreign or corrupt bytes.
    Unlabeled(RawBytes),
}

/// What [`Consistency::read_now`] found.
pub(crate) enum Local {
    /// The read, complete.
    Read(Read, Option<u64>),
    /// A read whose tags' generations are not held here: to check with
    /// [`Consistency::with_tags_checked`].
    TagsUnchecked(Read, Option<u64>),
    /// Nothing local answers, and the read is one plain store read,
    /// checked against this generation: [`Consistency::plain_get`], then
    /// [`Consistency::classified`].
    Plain(Option<u64>),
    /// Nothing local answers: [`Consistency::read_awaited`].
    Remote,
}

/// One key to read.
#[derive(Clone, Copy)]
pub(crate) struct Key<'a> {
    /// The storage key, `{namespace}:{prefix}:{rest}`.
    pub(crate) skey: &'a str,
    /// Its prefix.
    pub(crate) prefix: &'a str,
    /// Whether the near level may answer (and keep what is read).
    pub(crate) near: bool,
}

/// A boxed step: every remote read but the plain one (which the hit path
/// awaits in place) and the awaited tag checks. The box keeps their
/// futures out of every caller's.
type Step<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The memory backend's read, polled once in place: it completes without
/// waiting (moka's lookup is synchronous behind its `async` signature), and
/// `None` (still pending) sends the caller to the awaited read. Polling here
/// instead of awaiting keeps moka's future, dozens of types deep, out of
/// the state of every `#[cached]` future, whose layout and auto traits a
/// caller's crate computes through every future held inline (bounded by the
/// default `recursion_limit`); a box would cost an allocation per hit.
fn memory_get_now(memory: &MemoryBackend, skey: &str) -> Option<Option<Arc<Slot>>> {
    let read = std::pin::pin!(memory.get_bytes(skey));
    match read.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(found) => Some(found),
        std::task::Poll::Pending => None,
    }
}

impl Consistency {
    /// The one read: what `key` holds for a caller, and the prefix
    /// generation it was checked against (with generations on). A memory
    /// read and a near hit complete without awaiting anything
    /// ([`read_now`](Self::read_now)); any other read is awaited. A caller
    /// on the hit path may make the same three steps itself, so a local hit
    /// builds no future.
    pub(crate) async fn read(
        &self,
        entry: &PrefixEntry,
        key: Key<'_>,
        deadline: &Deadline,
    ) -> (Read, Option<u64>) {
        let local = match self.read_now(entry, key) {
            Local::Plain(current) => {
                let raw = self.plain_get(entry, key, deadline).await;
                self.classified(raw, current)
            }
            local => local,
        };
        match local {
            Local::Read(read, current) => (read, current),
            Local::TagsUnchecked(read, current) => {
                self.with_tags_checked(read, current, deadline).await
            }
            Local::Plain(_) | Local::Remote => self.read_awaited(entry, key, deadline).await,
        }
    }

    /// The first step of [`read`](Self::read): a memory read or a near hit,
    /// classified, and checked against its tags' generations when they are
    /// held here.
    #[inline]
    pub(crate) fn read_now(&self, entry: &PrefixEntry, key: Key<'_>) -> Local {
        let Some((raw, current)) = self.raw_now(entry, key) else {
            return match self.plain_remote(entry, key) {
                Some(current) => Local::Plain(current),
                None => Local::Remote,
            };
        };
        self.classified_here(raw, current)
    }

    /// The store read of a [`Local::Plain`] read: the store's own future,
    /// for the caller to await with no future of this layer around it.
    #[inline]
    pub(crate) fn plain_get<'a>(
        &'a self,
        entry: &'a PrefixEntry,
        key: Key<'a>,
        deadline: &'a Deadline,
    ) -> impl std::future::Future<Output = Option<RawBytes>> + Send + 'a {
        self.store.get(entry, key.skey, deadline)
    }

    /// Bytes read for a reader that expects generation `current`,
    /// classified, and checked against their tags' generations when they
    /// are held here. Not inlined: after a remote read it is cheap beside
    /// the round trip, and it stays out of every function's future.
    #[inline(never)]
    pub(crate) fn classified(&self, raw: Option<RawBytes>, current: Option<u64>) -> Local {
        self.classified_here(raw, current)
    }

    /// [`classified`](Self::classified), inlined into a local read.
    #[inline(always)]
    fn classified_here(&self, raw: Option<RawBytes>, current: Option<u64>) -> Local {
        let read = self.classify(raw, current);
        match read.tagged().map(|bytes| self.tags_current_now(bytes)) {
            None | Some(Some(true)) => Local::Read(read, current),
            Some(Some(false)) => Local::Read(read.without_value(), current),
            Some(None) => Local::TagsUnchecked(read, current),
        }
    }

    /// `read` once its tags' generations are read (from the store: they are
    /// not held here), without its value if one of them moved.
    pub(crate) async fn with_tags_checked(
        &self,
        read: Read,
        current: Option<u64>,
        deadline: &Deadline,
    ) -> (Read, Option<u64>) {
        let current_tags = match read.tagged() {
            None => true,
            Some(bytes) => {
                let check: Step<'_, _> = Box::pin(self.tags_current(bytes, deadline));
                check.await
            }
        };
        match current_tags {
            true => (read, current),
            false => (read.without_value(), current),
        }
    }

    /// The bytes at `key` from the memory backend or the near level, when
    /// they answer without waiting.
    #[inline]
    fn raw_now(
        &self,
        entry: &PrefixEntry,
        key: Key<'_>,
    ) -> Option<(Option<RawBytes>, Option<u64>)> {
        if let Some(memory) = self.store.memory()
            && !self.generations_on()
            && let Some(found) = memory_get_now(memory, key.skey)
        {
            return Some((found.map(RawBytes::Shared), None));
        }
        if key.near
            && let Some((slot, current)) = self.near_hit_now(entry, key.skey)
        {
            return Some((Some(RawBytes::Shared(slot)), current));
        }
        None
    }

    /// The rest of [`read`](Self::read) when [`read_now`](Self::read_now)
    /// found nothing local: a remote read (or one that waits for a
    /// generation), classified and checked.
    pub(crate) async fn read_awaited(
        &self,
        entry: &PrefixEntry,
        key: Key<'_>,
        deadline: &Deadline,
    ) -> (Read, Option<u64>) {
        let (raw, current) = match self.plain_remote(entry, key) {
            // The common remote read, one store read with nothing around
            // it: its future is the store's, one level less.
            Some(current) => (self.store.get(entry, key.skey, deadline).await, current),
            None => {
                let read: Step<'_, _> = Box::pin(self.read_remote(entry, key, deadline));
                read.await
            }
        };
        let read = self.classify(raw, current);
        match read.tagged().map(|bytes| self.tags_current_now(bytes)) {
            None | Some(Some(true)) => (read, current),
            Some(Some(false)) => (read.without_value(), current),
            Some(None) => self.with_tags_checked(read, current, deadline).await,
        }
    }

    /// What raw bytes are to a reader that expects generation `current`.
    #[inline]
    fn classify(&self, raw: Option<RawBytes>, current: Option<u64>) -> Read {
        match raw {
            None => Read::Missing { garbage: false },
            Some(bytes) if codec::is_lease(&bytes) => self.classify_lease(bytes, current),
            Some(bytes) => match codec::label(&bytes, current) {
                codec::Label::Current if codec::is_extended(&bytes) => self.classify_timed(bytes),
                codec::Label::Current => Read::Bytes(bytes),
                codec::Label::Other => Read::Missing { garbage: true },
                codec::Label::Unlabeled => Read::Unlabeled(bytes),
            },
        }
    }

    /// A value of the extended envelope: fresh, stale (past its logical
    /// expiry, or put back after a failed load) or gone.
    fn classify_timed(&self, bytes: RawBytes) -> Read {
        let Some(header) = codec::extended(&bytes) else {
            return Read::Unlabeled(bytes);
        };
        let Some(times) = header.times else {
            return Read::Bytes(bytes);
        };
        let now = self.store.now_ms();
        if now >= times.expires_at {
            Read::Missing { garbage: true }
        } else if header.throttled || now >= times.fresh_until {
            Read::Stale(bytes)
        } else {
            Read::Bytes(bytes)
        }
    }

    /// A lease marker: a load in progress. When it carries the value it
    /// replaces (a refresh), that value is what readers see while it is
    /// fresh, and the stale reserve once it is not.
    #[cold]
    fn classify_lease(&self, bytes: RawBytes, current: Option<u64>) -> Read {
        let Some(carried) = codec::carried(&bytes) else {
            return Read::Leased(None);
        };
        if codec::label(carried, current) != codec::Label::Current {
            return Read::Leased(None);
        }
        match self.classify_timed(RawBytes::Owned(carried.to_vec())) {
            Read::Bytes(value) => Read::Bytes(value),
            Read::Stale(value) => Read::Leased(Some(value)),
            _ => Read::Leased(None),
        }
    }

    /// When a remote read of `key` is one plain store read: the generation
    /// it is checked against (`Some(None)` with generations off), when it
    /// is held and no near level is in the way.
    #[inline]
    fn plain_remote(&self, entry: &PrefixEntry, key: Key<'_>) -> Option<Option<u64>> {
        if key.near && self.near.is_some() {
            return None;
        }
        match self.generations_on() {
            false => Some(None),
            true => entry.generation.held().map(Some),
        }
    }

    /// A read that may wait: the prefix generation first (a value read
    /// after a prefix invalidation this process saw is checked against the
    /// new one), then the value, through the near level when it may answer.
    /// [`read_awaited`](Self::read_awaited) makes the plain case (a
    /// generation held or none needed, no near level in the way) itself
    /// and comes here, boxed, for the others.
    async fn read_remote(
        &self,
        entry: &PrefixEntry,
        key: Key<'_>,
        deadline: &Deadline,
    ) -> (Option<RawBytes>, Option<u64>) {
        let current = match self.generations_on() {
            false => None,
            true => match entry.generation.held() {
                Some(g) => Some(g),
                None => {
                    let read: Step<'_, _> =
                        Box::pin(self.read_without_held_generation(entry, key, deadline));
                    return read.await;
                }
            },
        };
        if key.near && self.near.is_some() {
            let read: Step<'_, _> = Box::pin(self.near_or_get(entry, key, current, deadline));
            return (read.await, current);
        }
        (self.store.get(entry, key.skey, deadline).await, current)
    }

    /// [`read_remote`](Self::read_remote) when no generation is held: one
    /// is read (and held, under tracking), or read with the value (`MGET`).
    async fn read_without_held_generation(
        &self,
        entry: &PrefixEntry,
        key: Key<'_>,
        deadline: &Deadline,
    ) -> (Option<RawBytes>, Option<u64>) {
        if let Some(g) = self.tracked_generation(entry, key.prefix, deadline).await {
            return (
                self.near_or_get(entry, key, Some(g), deadline).await,
                Some(g),
            );
        }
        self.read_with_generation(entry, key.skey, key.prefix, deadline)
            .await
    }

    /// Reads `key` through the near level when there is one and tracking
    /// is established (`current`: the generation the value must carry).
    async fn near_or_get(
        &self,
        entry: &PrefixEntry,
        key: Key<'_>,
        current: Option<u64>,
        deadline: &Deadline,
    ) -> Option<RawBytes> {
        let (Some(near), Some(tracker), true) = (&self.near, &self.tracker, key.near) else {
            return self.store.get(entry, key.skey, deadline).await;
        };
        if !tracker.live() {
            self.reconnect_tracking(tracker);
            return self.store.get(entry, key.skey, deadline).await;
        }
        if let Some(slot) = self.near_current(near, entry, key.skey, current) {
            return Some(RawBytes::Shared(slot));
        }
        let ticket = near.ticket(key.skey);
        match self.store.get_with_ttl(entry, key.skey, deadline).await {
            (Some(RawBytes::Owned(bytes)), left)
                if !bytes.is_empty() && !codec::is_lease(&bytes) && tracker.live() =>
            {
                Some(RawBytes::Shared(
                    near.install(ticket, key.skey, bytes, left),
                ))
            }
            (other, _) => other,
        }
    }

    /// The near level's entry at `skey` when it can be served without
    /// awaiting anything: tracking established, the prefix's generation
    /// held (with generations on), and the entry labeled with it.
    #[inline]
    fn near_hit_now(&self, entry: &PrefixEntry, skey: &str) -> Option<(Arc<Slot>, Option<u64>)> {
        let (near, tracker) = (self.near.as_ref()?, self.tracker.as_ref()?);
        if !tracker.live() {
            return None;
        }
        let current = match self.generations_on() {
            true => Some(entry.generation.held()?),
            false => None,
        };
        Some((self.near_current(near, entry, skey, current)?, current))
    }

    /// A near hit: the entry at `skey`, if it carries the generation
    /// `current` (counted as a near hit).
    #[inline]
    fn near_current(
        &self,
        near: &NearCache,
        entry: &PrefixEntry,
        skey: &str,
        current: Option<u64>,
    ) -> Option<Arc<Slot>> {
        let slot = near.get(skey)?;
        if codec::label(&slot, current) != codec::Label::Current {
            return None;
        }
        self.stats.record(entry, Event::NearHit);
        Some(slot)
    }
}

impl Read {
    /// The value bytes this read would hand out, when they carry tags
    /// (whose generations must then be checked).
    #[inline]
    fn tagged(&self) -> Option<&RawBytes> {
        let bytes = match self {
            Read::Bytes(b) | Read::Stale(b) | Read::Leased(Some(b)) => b,
            _ => return None,
        };
        (codec::is_extended(bytes) && codec::extended(bytes).is_some_and(|h| h.has_tags()))
            .then_some(bytes)
    }

    /// This read after its value turned out to be invalidated (one of its
    /// tags changed): a miss to overwrite, or a lease without a reserve.
    fn without_value(self) -> Read {
        match self {
            Read::Leased(_) => Read::Leased(None),
            _ => Read::Missing { garbage: true },
        }
    }
}
