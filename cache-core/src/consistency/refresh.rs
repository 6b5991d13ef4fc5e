//! Refresh-ahead: a hit on a value past a fraction of its TTL reloads it in
//! the background, once per key across every instance, while callers keep
//! being served the value they have.
//!
//! The refresh takes the key's lease by replacing the value with a lease
//! marker that carries it (a compare-and-set on the value): every reader,
//! in any process, is served the carried value while the refresh runs, and
//! finds the lease taken, so it starts no refresh of its own. The reloaded
//! value is stored under the lease as any load's; a failed refresh puts
//! the value back with its next refresh moved by the throttle; an
//! invalidation deletes lease and value together, and then nothing is put
//! back. In this process a key being refreshed is not refreshed again
//! until that refresh ends.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::Consistency;
use super::lease::LeaseGuard;
use super::load::Loading;
use super::read::{Key, Read};
use crate::codec;
use crate::stats::PrefixEntry;
use crate::store::{Deadline, On};

/// The keys this process is refreshing.
#[derive(Default)]
pub(crate) struct Refreshing(Mutex<HashSet<String>>);

/// A key this process is refreshing; ends the refresh when dropped.
pub(crate) struct RefreshSlot<'a> {
    set: &'a Refreshing,
    key: String,
}

impl Drop for RefreshSlot<'_> {
    fn drop(&mut self) {
        self.set
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl Refreshing {
    fn contains(&self, key: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }

    fn begin(&self, key: &str) -> Option<RefreshSlot<'_>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned())
            .then(|| RefreshSlot {
                set: self,
                key: key.to_owned(),
            })
    }
}

impl Consistency {
    /// Whether this process is refreshing `skey` already.
    pub(crate) fn refreshing(&self, skey: &str) -> bool {
        self.refreshing.contains(skey)
    }

    /// Starts a refresh-ahead of `current`, the value at `key` a hit
    /// found: the lease replaces it (carrying it). `None` when this process
    /// or another is refreshing it already, or the value changed since.
    pub(crate) async fn start_refresh<'c>(
        &'c self,
        entry: &PrefixEntry,
        key: Key<'_>,
        current: &[u8],
        generation: Option<u64>,
        deadline: &Deadline,
    ) -> Option<(Loading<'c>, RefreshSlot<'c>)> {
        if !self.settings.leases {
            return None;
        }
        let slot = self.refreshing.begin(key.skey)?;
        let marker = codec::carrying_lease_marker(self.next_token(), current);
        let taken = self
            .store
            .lease_swap(entry, key.skey, current, &marker, deadline)
            .await;
        if !matches!(taken, Ok(true)) {
            return None;
        }
        // Readers now get the carried value from the store: a near copy
        // of the value is dropped with Redis' message about the swap.
        self.near_evict_one(key.skey);
        let replaced: Arc<[u8]> = Arc::from(current);
        let lease = LeaseGuard::held(
            self.store.clone(),
            key.prefix,
            key.skey,
            marker,
            Some(replaced.clone()),
        );
        Some((
            Loading {
                leader: None,
                lease,
                generation,
                deadline: deadline.clone(),
                replaced: Some(replaced),
                refresh: true,
                replaced_until: None,
            },
            slot,
        ))
    }
}

/// Longest wait of a forced refresh for another loader's lease, in lease
/// TTLs (as a miss waits).
const MOST_REFRESH_WAITS: u32 = 10;

impl Consistency {
    /// The lease for a forced reload of `key` ([`refresh`](crate::refresh)),
    /// whatever it holds: taken from the value there (carrying it, so it is
    /// put back if the reload fails), or on the missing key; while another
    /// loader holds it, waits for that load to end and takes the lease
    /// from its value (a reload asked for now must not be answered by a
    /// load that started before). `None` when the backend cannot be asked
    /// or leases are off: the body then runs and nothing is stored.
    pub(crate) async fn lease_for_refresh<'c>(
        &'c self,
        entry: &PrefixEntry,
        key: Key<'_>,
        deadline: &Deadline,
    ) -> Option<Loading<'c>> {
        if !self.settings.leases {
            return None;
        }
        let key = Key { near: false, ..key };
        let give_up = std::time::Instant::now() + self.settings.lease_ttl * MOST_REFRESH_WAITS;
        let mut deadline = deadline.clone();
        loop {
            let (read, generation) = self.read(entry, key, &deadline).await;
            let token = self.next_token();
            let mut replaced_until = None;
            let (marker, replaced, taken) = match read {
                Read::Bytes(bytes) | Read::Stale(bytes) => {
                    if codec::extended(&bytes).and_then(|h| h.times).is_none() {
                        // A plain value: its expiry is the key's, which the
                        // lease is about to replace; kept to put it back.
                        replaced_until = self.expiry_of(entry, key.skey, &deadline).await;
                    }
                    let marker = codec::carrying_lease_marker(token, &bytes);
                    let taken = self
                        .store
                        .lease_swap(entry, key.skey, &bytes, &marker, &deadline)
                        .await;
                    (marker, Some(Arc::<[u8]>::from(&*bytes)), taken)
                }
                Read::Missing { .. } | Read::Unlabeled(_) => {
                    if !matches!(read, Read::Missing { garbage: false }) {
                        let garbage = [key.skey.to_owned()];
                        self.store.delete(entry, &garbage, &deadline).await;
                    }
                    let marker = codec::lease_marker(token);
                    let taken = self
                        .store
                        .lease_try(entry, key.skey, &marker, &deadline)
                        .await;
                    (marker, None, taken)
                }
                Read::Leased(_) => (Vec::new(), None, Ok(false)),
            };
            match taken {
                Ok(true) => {
                    self.near_evict_one(key.skey);
                    self.flights.seal(key.skey);
                    let lease = LeaseGuard::held(
                        self.store.clone(),
                        key.prefix,
                        key.skey,
                        marker,
                        replaced.clone(),
                    );
                    return Some(Loading {
                        leader: None,
                        lease,
                        generation,
                        deadline,
                        replaced,
                        refresh: false,
                        replaced_until,
                    });
                }
                Ok(false) if std::time::Instant::now() < give_up => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    deadline = deadline.renewed();
                }
                _ => return None,
            }
        }
    }
}

impl Consistency {
    /// When (store clock, ms) the key `skey` expires, if it does and the
    /// store answers.
    async fn expiry_of(&self, entry: &PrefixEntry, skey: &str, deadline: &Deadline) -> Option<u64> {
        let left = self
            .store
            .with_fallback(
                entry,
                deadline,
                On::Key(skey),
                |b| async move { b.ttl(skey).await },
                |f| async move { crate::backend::Backend::ttl(&f, skey).await },
            )
            .await
            .ok()
            .flatten()?;
        Some(self.store.now_ms().saturating_add(crate::clock::ms(left)))
    }
}
