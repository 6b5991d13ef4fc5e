//! The read-through path's byte-level steps, shared by `#[cached]` and
//! `Cache::get_or_set`: after a miss, join this process's flight for the key
//! or lead it; the leader takes a lease (or waits for another process's
//! load); after the load, the leader stores under the lease and publishes
//! the outcome to its followers.
//!
//! None of it is generic: the typed shell around the body (decode, encode,
//! the body itself) lives with the cache handle and calls
//! [`Consistency::after_miss`] and [`Consistency::complete`], each awaited
//! behind a box, so the miss path is compiled once and its state stays out
//! of every caller's future.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Consistency;
use super::flight::{self, Leader, Role, Waited};
use super::lease::LeaseGuard;
use super::read::{Key, Read};
use crate::backend::RawBytes;
use crate::codec;
use crate::stats::{Event, PrefixEntry};
use crate::store::Deadline;

/// Bytes of a value found on the miss path.
pub(crate) enum Found {
    /// Read from the store.
    Raw(RawBytes),
    /// Published by this process's leader.
    Shared(Arc<[u8]>),
}

impl std::ops::Deref for Found {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Found::Raw(raw) => raw,
            Found::Shared(shared) => shared,
        }
    }
}

/// What [`Consistency::after_miss`] decided.
// Returned once per miss, by value: boxing the load would cost every miss
// an allocation to save a copy of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
pub(crate) enum AfterMiss<'c> {
    /// A value turned up (read, this process's leader's, or another
    /// process's): decode it. It may be a stale value a failed load put
    /// back (see [`codec::extended`]'s `throttled`).
    Value(Found),
    /// The leader's result was not cacheable: run the body, store nothing.
    RunUncached,
    /// This call loads: run the body, then [`Consistency::complete`].
    Load(Loading<'c>),
    /// No value came within the caller's patience (its loader timeouts):
    /// the stale value it may serve instead, if it has one.
    Late(Option<Found>),
}

/// A load this call leads.
pub(crate) struct Loading<'c> {
    /// This process's flight for the key (none for a refresh-ahead, whose
    /// readers are served the value the lease carries).
    pub(super) leader: Option<Leader<'c>>,
    pub(super) lease: LeaseGuard,
    /// The generation to label the loaded value with.
    pub(super) generation: Option<u64>,
    /// The call's deadline as the load starts (a wait for another process's
    /// load gave it a new one).
    pub(super) deadline: Deadline,
    /// The value the lease replaced (a stale value, or a fresh one being
    /// refreshed ahead): put back if the load fails.
    pub(super) replaced: Option<Arc<[u8]>>,
    /// Whether this is a refresh-ahead (the replaced value is fresh).
    pub(super) refresh: bool,
    /// When (store clock, ms) the replaced value expires, for a value
    /// that does not carry its expiry ([`refresh`](crate::refresh) of a
    /// plain value): how long it lives if it is put back.
    pub(super) replaced_until: Option<u64>,
}

impl Loading<'_> {
    /// The generation the loaded value must be labeled with.
    pub(crate) fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// The call's deadline as the load started.
    pub(crate) fn deadline(&self) -> Deadline {
        self.deadline.clone()
    }

    /// Whether this load is a refresh-ahead.
    pub(crate) fn is_refresh(&self) -> bool {
        self.refresh
    }
}

/// How long a caller waits for a value when it must load: past the soft
/// bound it takes the stale value it has (if it may serve stale values),
/// past the hard bound it gives up with or without one.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Patience {
    pub(crate) soft: Option<Instant>,
    pub(crate) hard: Option<Instant>,
    /// Whether stale values may be served (fail-safe).
    pub(crate) stale_ok: bool,
}

impl Patience {
    /// When the wait ends, given whether a stale value is at hand.
    pub(crate) fn until(&self, have_stale: bool) -> Option<Instant> {
        let soft = self.soft.filter(|_| have_stale && self.stale_ok);
        match (soft, self.hard) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What a load ended with, for [`Consistency::complete`].
pub(crate) enum Completion {
    /// Store these bytes for this TTL.
    Store { bytes: Vec<u8>, ttl: Duration },
    /// Nothing to store (the result is not cached): the lease is released,
    /// and with it any value it replaced.
    Skip,
    /// The load failed (an error, or it was abandoned): the value the lease
    /// replaced is put back, marked as stale and served without loading
    /// until `throttle` from now (fail-safe) when given, else as it was.
    Failed { throttle: Option<Duration> },
}

/// Longest wait for another process's load of the same key, in lease TTLs:
/// its lease is renewed while it runs, so waiting is right as long as it
/// runs, but not forever if it hangs.
const MOST_LEASE_WAITS: u32 = 10;

/// A stale value at hand while waiting: the one to swap for a lease (read
/// at the key), and the one to serve if the wait runs out.
#[derive(Default, Clone)]
struct Reserve {
    /// Stale bytes stored at the key itself (a lease replaces them).
    at_key: Option<Arc<[u8]>>,
    /// Stale bytes to serve if the caller's patience runs out (at the key,
    /// or carried by another loader's lease).
    serve: Option<Arc<[u8]>>,
}

impl Reserve {
    fn found(&self) -> Option<Found> {
        self.serve.clone().map(Found::Shared)
    }
}

/// Waits for `fut` until `until` (forever without one); `None` when the
/// time ran out.
async fn within<F: std::future::Future>(until: Option<Instant>, fut: F) -> Option<F::Output> {
    match until {
        None => Some(fut.await),
        Some(at) => tokio::time::timeout_at(at.into(), fut).await.ok(),
    }
}

impl Consistency {
    /// After a miss (`first`: what the caller's read found): re-reads until
    /// a value turns up, this process's leader for the key publishes one,
    /// or this call becomes the leader; the leader then takes the lease
    /// (swapping it for the stale value at the key, if there is one). A
    /// wait ends at the caller's `patience`.
    pub(crate) async fn after_miss<'c>(
        &'c self,
        entry: &PrefixEntry,
        key: Key<'_>,
        first: Read,
        generation: Option<u64>,
        deadline: &Deadline,
        patience: Patience,
    ) -> AfterMiss<'c> {
        let (leader, garbage, generation, reserve) = match self
            .join_flight(entry, key, first, generation, deadline, patience)
            .await
        {
            Joined::Lead {
                leader,
                garbage,
                generation,
                reserve,
            } => (leader, garbage, generation, reserve),
            Joined::Value(found) => return AfterMiss::Value(found),
            Joined::RunUncached => return AfterMiss::RunUncached,
            Joined::Late(found) => return AfterMiss::Late(found),
        };
        let after = self
            .lease(
                entry, key, leader, garbage, generation, reserve, deadline, patience,
            )
            .await;
        // The leader's call is a miss unless, waiting on another process's
        // lease, it got that loader's value (counted as a hit when it is
        // answered): one call, one count.
        if !matches!(after, AfterMiss::Value(_)) {
            self.stats.record(entry, Event::Miss);
        }
        after
    }

    async fn join_flight<'c>(
        &'c self,
        entry: &PrefixEntry,
        key: Key<'_>,
        first: Read,
        mut generation: Option<u64>,
        deadline: &Deadline,
        patience: Patience,
    ) -> Joined<'c> {
        let mut garbage = false;
        let mut first = Some(first);
        let mut reserve = Reserve::default();
        // The flight's reads skip the near level: what it holds was just read.
        let key = Key { near: false, ..key };
        loop {
            let found = match first.take() {
                Some(found) => found,
                None => {
                    let (read, seen) = self.read(entry, key, deadline).await;
                    generation = seen;
                    read
                }
            };
            match found {
                Read::Bytes(bytes) => return Joined::Value(Found::Raw(bytes)),
                Read::Stale(bytes) => {
                    let stale: Arc<[u8]> = Arc::from(&*bytes);
                    reserve = Reserve {
                        at_key: Some(stale.clone()),
                        serve: Some(stale),
                    };
                }
                Read::Missing { garbage: g } => {
                    garbage |= g;
                    reserve.at_key = None;
                }
                Read::Unlabeled(_) => {
                    garbage = true;
                    reserve.at_key = None;
                }
                Read::Leased(carried) => {
                    reserve.at_key = None;
                    if let Some(carried) = carried {
                        reserve.serve = Some(Arc::from(&*carried));
                    }
                }
            }
            let until = patience.until(reserve.serve.is_some());
            match self.flights.join(key.skey) {
                Role::Leader(leader) => {
                    return Joined::Lead {
                        leader,
                        garbage,
                        generation,
                        reserve,
                    };
                }
                Role::Follower(rx) => {
                    self.stats.record(entry, Event::Coalesced);
                    match within(until, flight::wait(rx)).await {
                        Some(Waited::Done(Some(bytes))) => {
                            return Joined::Value(Found::Shared(bytes));
                        }
                        // The leader's result was not cacheable: run our own body.
                        Some(Waited::Done(None)) => {
                            self.stats.record(entry, Event::Miss);
                            return Joined::RunUncached;
                        }
                        Some(Waited::LeaderGone) => {}
                        None => return Joined::Late(reserve.found()),
                    }
                }
                Role::Late(rx) => {
                    self.stats.record(entry, Event::Coalesced);
                    if within(until, flight::wait(rx)).await.is_none() {
                        return Joined::Late(reserve.found());
                    }
                }
            }
        }
    }

    /// The leader takes a lease so that other processes wait for it, and so
    /// that an invalidation during its load makes its store fail: on a
    /// missing key a plain lease, on a stale value a lease that replaces it
    /// and carries it (compare-and-set on the value). While another process
    /// holds the lease (renewed while that process loads), waits for its
    /// value; loads without a lease when the backend cannot be asked, or
    /// after [`MOST_LEASE_WAITS`] lease TTLs.
    #[allow(clippy::too_many_arguments)]
    async fn lease<'c>(
        &'c self,
        entry: &PrefixEntry,
        key: Key<'_>,
        leader: Leader<'c>,
        garbage: bool,
        mut generation: Option<u64>,
        mut reserve: Reserve,
        deadline: &Deadline,
        patience: Patience,
    ) -> AfterMiss<'c> {
        let skey = key.skey;
        if garbage {
            self.store
                .delete(entry, std::slice::from_ref(&skey.to_owned()), deadline)
                .await;
        }
        let unleased = |leader, generation, deadline| {
            AfterMiss::Load(Loading {
                leader: Some(leader),
                lease: LeaseGuard::none(),
                generation,
                deadline,
                replaced: None,
                refresh: false,
                replaced_until: None,
            })
        };
        if !self.settings.leases {
            return unleased(leader, generation, deadline.clone());
        }
        let give_up = Instant::now() + self.settings.lease_ttl * MOST_LEASE_WAITS;
        let mut pause = Duration::from_millis(5);
        let mut deadline = deadline.clone();
        let key = Key { near: false, ..key };
        loop {
            let token = self.next_token();
            let (marker, taken) = match &reserve.at_key {
                None => {
                    let marker = codec::lease_marker(token);
                    let taken = self.store.lease_try(entry, skey, &marker, &deadline).await;
                    (marker, taken)
                }
                Some(stale) => {
                    let marker = codec::carrying_lease_marker(token, stale);
                    let taken = self
                        .store
                        .lease_swap(entry, skey, stale, &marker, &deadline)
                        .await;
                    (marker, taken)
                }
            };
            match taken {
                Ok(true) => {
                    let replaced = reserve.at_key.take();
                    let lease = LeaseGuard::held(
                        self.store.clone(),
                        key.prefix,
                        skey,
                        marker,
                        replaced.clone(),
                    );
                    return AfterMiss::Load(Loading {
                        leader: Some(leader),
                        lease,
                        generation,
                        deadline,
                        replaced,
                        refresh: false,
                        replaced_until: None,
                    });
                }
                // Another process holds the lease (or the key changed): wait for its value.
                Ok(false) => {
                    if Instant::now() >= give_up {
                        return unleased(leader, generation, deadline.renewed());
                    }
                    let until = patience.until(reserve.serve.is_some());
                    if until.is_some_and(|at| Instant::now() >= at) {
                        return AfterMiss::Late(reserve.found());
                    }
                    self.stats.record(entry, Event::LeaseWait);
                    let nap = match until {
                        Some(at) => pause.min(at.saturating_duration_since(Instant::now())),
                        None => pause,
                    };
                    tokio::time::sleep(nap).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                    // Each look is a cache call of its own: waiting for
                    // another loader is not waiting for the backend.
                    deadline = deadline.renewed();
                    leader.seal();
                    let (read, seen) = self.read(entry, key, &deadline).await;
                    generation = seen;
                    reserve.at_key = None;
                    match read {
                        Read::Bytes(bytes) => {
                            // Share the value with this process's followers.
                            leader.finish(Some(Arc::from(&*bytes)));
                            return AfterMiss::Value(Found::Raw(bytes));
                        }
                        Read::Stale(bytes) => {
                            let stale: Arc<[u8]> = Arc::from(&*bytes);
                            reserve = Reserve {
                                at_key: Some(stale.clone()),
                                serve: Some(stale),
                            };
                        }
                        Read::Leased(carried) => {
                            if let Some(carried) = carried {
                                reserve.serve = Some(Arc::from(&*carried));
                            }
                        }
                        Read::Missing { garbage: false } => {}
                        Read::Missing { garbage: true } | Read::Unlabeled(_) => {
                            self.store
                                .delete(entry, std::slice::from_ref(&skey.to_owned()), &deadline)
                                .await;
                        }
                    }
                }
                // Backend unavailable: load without a lease (the store goes to the fallback).
                Err(_) => return unleased(leader, generation, deadline),
            }
        }
    }

    /// After the load: stores the value (or puts back the one the lease
    /// replaced, or neither; see [`Completion`]) under the lease, releases
    /// a lease it did not use, and publishes the outcome to this process's
    /// followers. Returns the stale value it put back after a failure, if
    /// it could (no invalidation removed the lease meanwhile): what
    /// fail-safe may serve.
    pub(crate) async fn complete(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        loading: Loading<'_>,
        completion: Completion,
        deadline: &Deadline,
    ) -> Option<Arc<[u8]>> {
        let Loading {
            leader,
            mut lease,
            replaced,
            refresh,
            replaced_until,
            ..
        } = loading;
        if let Some(leader) = &leader {
            leader.seal();
        }
        let (shared, restored) = match completion {
            Completion::Store { bytes, ttl } => (
                self.store_loaded(entry, skey, &mut lease, bytes, ttl, deadline)
                    .await,
                None,
            ),
            Completion::Skip => (None, None),
            Completion::Failed { throttle } => {
                let restored = match (replaced, lease.take()) {
                    (Some(replaced), Some(marker)) => {
                        let put = self
                            .put_back(
                                entry,
                                skey,
                                marker,
                                (&replaced, replaced_until),
                                throttle,
                                refresh,
                                deadline,
                            )
                            .await;
                        match put {
                            Some(put) if !refresh => {
                                self.still_current(entry, skey, put, deadline).await
                            }
                            other => other,
                        }
                    }
                    (_, marker) => {
                        if let Some(marker) = marker {
                            self.store.lease_release(entry, skey, marker).await;
                        }
                        None
                    }
                };
                // Followers take a stale value only as fail-safe's answer.
                let shared = restored.clone().filter(|_| throttle.is_some() && !refresh);
                (shared, restored)
            }
        };
        self.near_evict_one(skey);
        if let Some(marker) = lease.take() {
            self.store.lease_release(entry, skey, marker).await;
        }
        if let Some(leader) = leader {
            leader.finish(shared);
        }
        restored
    }

    /// Stores a loaded value under the lease (or, without one, plainly
    /// when that is safe): the bytes to share with followers if stored.
    async fn store_loaded(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        lease: &mut LeaseGuard,
        bytes: Vec<u8>,
        ttl: Duration,
        deadline: &Deadline,
    ) -> Option<Arc<[u8]>> {
        let shared: Arc<[u8]> = Arc::from(bytes.as_slice());
        match lease.take() {
            Some(marker) => match self
                .store
                .lease_store(entry, skey, &marker, bytes, ttl, deadline)
                .await
            {
                Ok(true) => {
                    self.stats.record(entry, Event::Set);
                    Some(shared)
                }
                // An invalidation removed our lease while we loaded: the
                // value may predate it, so it is neither stored nor
                // handed to callers that joined after the invalidation.
                Ok(false) => {
                    self.stats.record(entry, Event::StaleSetPrevented);
                    tracing::debug!(key = %skey, "lease lost to an invalidation; value not stored");
                    None
                }
                // Refused while the backend answers (out of memory,
                // no permission; the fallback was tried when it was
                // away): not stored, the lease released in the background.
                Err(_) => None,
            },
            // No lease because Redis refuses the lease scripts: a
            // plain store could land after an invalidation that
            // raced the load, so nothing is stored.
            None if self.settings.leases && self.store.scripts_off() => None,
            None => {
                self.write(entry, skey, bytes, ttl, deadline).await;
                Some(shared)
            }
        }
    }

    /// `put` (just put back) if a read now returns it: a prefix or tag
    /// invalidation does not remove the lease, but makes the value
    /// invisible, and then it must not be served either.
    async fn still_current(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        put: Arc<[u8]>,
        deadline: &Deadline,
    ) -> Option<Arc<[u8]>> {
        let key = Key {
            skey,
            prefix: entry.prefix(),
            near: false,
        };
        match self.read(entry, key, deadline).await.0 {
            Read::Stale(read) | Read::Bytes(read) if *read == *put => Some(put),
            _ => None,
        }
    }

    /// Puts `replaced` back where the lease `marker` is, if it still is (an
    /// invalidation deletes the lease, and then nothing may be put back):
    /// marked stale until `throttle` from now for a failed load with
    /// fail-safe, with its refresh-ahead moved that far for a failed
    /// refresh, else as it was. Its physical expiry does not move (`until`:
    /// that expiry, for a value that does not carry it).
    #[allow(clippy::too_many_arguments)]
    async fn put_back(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        marker: Vec<u8>,
        (replaced, until): (&[u8], Option<u64>),
        throttle: Option<Duration>,
        refresh: bool,
        deadline: &Deadline,
    ) -> Option<Arc<[u8]>> {
        let now = self.store.now_ms();
        let times = codec::extended(replaced).and_then(|h| h.times);
        let expires_at = times.map(|t| t.expires_at).or(until).unwrap_or(0);
        let left = expires_at.saturating_sub(now);
        if left == 0 {
            self.store.lease_release(entry, skey, marker).await;
            return None;
        }
        // A value still fresh (a forced reload failed) goes back as it was.
        let stale = times.is_some_and(|t| now >= t.fresh_until);
        let bytes = match throttle {
            Some(t) if refresh => codec::with_refresh_at(replaced, now + crate::clock::ms(t)),
            Some(t) if stale => codec::throttled(replaced, now + crate::clock::ms(t))?,
            _ => replaced.to_vec(),
        };
        let shared: Arc<[u8]> = Arc::from(bytes.as_slice());
        match self
            .store
            .lease_store(
                entry,
                skey,
                &marker,
                bytes,
                Duration::from_millis(left),
                deadline,
            )
            .await
        {
            Ok(true) => Some(shared),
            _ => None,
        }
    }
}

/// What [`Consistency::join_flight`] decided.
enum Joined<'c> {
    Value(Found),
    RunUncached,
    Late(Option<Found>),
    Lead {
        leader: Leader<'c>,
        garbage: bool,
        generation: Option<u64>,
        reserve: Reserve,
    },
}
