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
pub(crate) enum AfterMiss<'c> {
    /// A value turned up (read, this process's leader's, or another
    /// process's): decode it.
    Value(Found),
    /// The leader's result was not cacheable: run the body, store nothing.
    RunUncached,
    /// This call loads: run the body, then [`Consistency::complete`].
    Load(Loading<'c>),
}

/// A load this call leads.
pub(crate) struct Loading<'c> {
    leader: Leader<'c>,
    lease: LeaseGuard,
    /// The generation to label the loaded value with.
    generation: Option<u64>,
    /// The call's deadline as the load starts (a wait for another process's
    /// load gave it a new one).
    deadline: Deadline,
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
}

/// Longest wait for another process's load of the same key, in lease TTLs:
/// its lease is renewed while it runs, so waiting is right as long as it
/// runs, but not forever if it hangs.
const MOST_LEASE_WAITS: u32 = 10;

impl Consistency {
    /// After a miss (`first`: what the caller's read found): re-reads until
    /// a value turns up, this process's leader for the key publishes one,
    /// or this call becomes the leader; the leader then takes the lease.
    pub(crate) async fn after_miss<'c>(
        &'c self,
        entry: &PrefixEntry,
        key: Key<'_>,
        first: Read,
        generation: Option<u64>,
        deadline: &Deadline,
    ) -> AfterMiss<'c> {
        let (leader, garbage, generation) = match self
            .join_flight(entry, key, first, generation, deadline)
            .await
        {
            Joined::Lead {
                leader,
                garbage,
                generation,
            } => (leader, garbage, generation),
            Joined::Value(found) => return AfterMiss::Value(found),
            Joined::RunUncached => return AfterMiss::RunUncached,
        };
        self.lease(entry, key, leader, garbage, generation, deadline)
            .await
    }

    async fn join_flight<'c>(
        &'c self,
        entry: &PrefixEntry,
        key: Key<'_>,
        first: Read,
        mut generation: Option<u64>,
        deadline: &Deadline,
    ) -> Joined<'c> {
        let mut garbage = false;
        let mut first = Some(first);
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
                Read::Missing { garbage: g } => garbage |= g,
                Read::Unlabeled(_) => garbage = true,
                Read::Leased => {}
            }
            match self.flights.join(key.skey) {
                Role::Leader(leader) => {
                    self.stats.record(entry, Event::Miss);
                    return Joined::Lead {
                        leader,
                        garbage,
                        generation,
                    };
                }
                Role::Follower(rx) => {
                    self.stats.record(entry, Event::Coalesced);
                    match flight::wait(rx).await {
                        Waited::Done(Some(bytes)) => return Joined::Value(Found::Shared(bytes)),
                        // The leader's result was not cacheable: run our own body.
                        Waited::Done(None) => {
                            self.stats.record(entry, Event::Miss);
                            return Joined::RunUncached;
                        }
                        Waited::LeaderGone => {}
                    }
                }
                Role::Late(rx) => {
                    self.stats.record(entry, Event::Coalesced);
                    let _ = flight::wait(rx).await;
                }
            }
        }
    }

    /// The leader takes a lease so that other processes wait for it, and so
    /// that an invalidation during its load makes its store fail. While
    /// another process holds the lease (renewed while that process loads),
    /// waits for its value; loads without a lease when the backend cannot
    /// be asked, or after [`MOST_LEASE_WAITS`] lease TTLs.
    async fn lease<'c>(
        &'c self,
        entry: &PrefixEntry,
        key: Key<'_>,
        leader: Leader<'c>,
        garbage: bool,
        mut generation: Option<u64>,
        deadline: &Deadline,
    ) -> AfterMiss<'c> {
        let skey = key.skey;
        if garbage {
            self.store
                .delete(entry, std::slice::from_ref(&skey.to_owned()), deadline)
                .await;
        }
        let unleased = |leader, generation, deadline| {
            AfterMiss::Load(Loading {
                leader,
                lease: LeaseGuard::none(),
                generation,
                deadline,
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
            let marker = codec::lease_marker(self.next_token());
            match self.store.lease_try(entry, skey, &marker, &deadline).await {
                Ok(true) => {
                    let lease = LeaseGuard::held(self.store.clone(), key.prefix, skey, marker);
                    return AfterMiss::Load(Loading {
                        leader,
                        lease,
                        generation,
                        deadline,
                    });
                }
                // Another process holds the lease (or just stored): wait for its value.
                Ok(false) => {
                    if Instant::now() >= give_up {
                        return unleased(leader, generation, deadline.renewed());
                    }
                    self.stats.record(entry, Event::LeaseWait);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                    // Each look is a cache call of its own: waiting for
                    // another loader is not waiting for the backend.
                    deadline = deadline.renewed();
                    leader.seal();
                    let (read, seen) = self.read(entry, key, &deadline).await;
                    generation = seen;
                    match read {
                        Read::Bytes(bytes) => {
                            // Share the value with this process's followers.
                            leader.finish(Some(Arc::from(&*bytes)));
                            return AfterMiss::Value(Found::Raw(bytes));
                        }
                        Read::Leased | Read::Missing { garbage: false } => {}
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

    /// After the load: stores `encoded` (bytes and TTL; `None` when the
    /// result is not stored) under the lease, releases a lease it did not
    /// use, and publishes the outcome to this process's followers.
    pub(crate) async fn complete(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        loading: Loading<'_>,
        encoded: Option<(Vec<u8>, Duration)>,
        deadline: &Deadline,
    ) {
        let Loading {
            leader, mut lease, ..
        } = loading;
        leader.seal();
        let shared = match encoded {
            Some((bytes, ttl)) => {
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
            None => None,
        };
        self.near_evict_one(skey);
        if let Some(marker) = lease.take() {
            self.store.lease_release(entry, skey, marker).await;
        }
        leader.finish(shared);
    }
}

/// What [`Consistency::join_flight`] decided.
enum Joined<'c> {
    Value(Found),
    RunUncached,
    Lead {
        leader: Leader<'c>,
        garbage: bool,
        generation: Option<u64>,
    },
}
