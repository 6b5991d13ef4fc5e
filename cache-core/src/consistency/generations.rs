//! Prefix generations: O(1) prefix invalidation.
//!
//! Each prefix has a generation, a random 64-bit value stored at
//! `{namespace}:%gen:{prefix}`. Values are labeled with the generation read
//! before their load, and a value labeled with another generation is a miss.
//! Invalidating a prefix replaces its generation: one write, whatever the
//! number of keys and whatever else the database holds.
//!
//! On Redis (a single server or a cluster) each process holds the
//! generations it has read and Redis tells it when one changes
//! (server-assisted client tracking), so a hit stays one `GET`:
//! - the instance that invalidates drops what it holds before the
//!   invalidation returns: its next read fetches the new generation;
//! - other instances drop theirs when Redis' invalidation message arrives
//!   (docs/BENCHMARKS.md measures that window);
//! - while tracking is not established (connecting, lost, Redis away), no
//!   generation is held and every read fetches the value and the generation
//!   together in one `MGET`.
//!
//! Without tracking (custom backends, memory) reads always use the `MGET`.

use std::time::Duration;

use super::Consistency;
use crate::backend::RawBytes;
use crate::backend::redis::tracking::ReadFailure;
use crate::held::parse_generation;
use crate::stats::PrefixEntry;
use crate::store::{Deadline, On};

/// Lifetime of a prefix generation key; refreshed by every invalidation. If
/// it lapses, a new random generation hides older values (misses, never stale).
pub(crate) const GENERATION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl Consistency {
    pub(crate) fn generation_key(&self, prefix: &str) -> String {
        format!("{}:%gen:{}", self.settings.namespace, prefix)
    }

    /// A generation never seen before: generations must never repeat (a
    /// value labeled with an old generation would become visible again), so
    /// they are random.
    pub(super) fn fresh_generation(&self) -> u64 {
        let n = self.next_token();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // splitmix64
        let mut z = n ^ nanos.rotate_left(32);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The generation of `prefix` held under tracking, or read (and held)
    /// now; `None` when tracking is not established.
    pub(super) async fn tracked_generation(
        &self,
        entry: &PrefixEntry,
        prefix: &str,
        deadline: &Deadline,
    ) -> Option<u64> {
        let tracker = self.tracker.as_ref()?;
        if let Some(g) = entry.generation.held() {
            return Some(g);
        }
        if !tracker.live() {
            self.reconnect_tracking(tracker);
            return None;
        }
        // Ticket first, then the read: see `HeldGeneration`.
        let epoch = tracker.epoch();
        let ticket = entry.generation.ticket();
        let gkey = self.generation_key(prefix);
        let generation = if tracker.reads_on_tracking_connection() {
            match self.read_tracked(entry, &gkey, deadline).await? {
                Some(g) => g,
                None => {
                    self.init_generation(entry, &gkey, deadline).await;
                    self.read_tracked(entry, &gkey, deadline).await??
                }
            }
        } else {
            // Broadcast mode: Redis reports every change of a generation
            // key, wherever it was read; the fallback must not answer.
            let stored = self
                .store
                .call(entry, deadline, On::Key(&gkey), |b| {
                    let gkey = gkey.as_str();
                    async move { b.get(gkey).await }
                })
                .await
                .ok()?;
            match stored.as_deref().and_then(parse_generation) {
                Some(g) => g,
                None => {
                    self.init_generation(entry, &self.generation_key(prefix), deadline)
                        .await
                }
            }
        };
        entry
            .generation
            .install(ticket, generation, || tracker.is_current(epoch));
        Some(generation)
    }

    /// Reads `gkey` on the tracking connection, as a call of the store (its
    /// deadline, and a failure counted against the breaker like any other
    /// call to the backend). `None`: the read failed (tracking is then given
    /// up); `Some(None)`: no generation stored.
    pub(super) async fn read_tracked(
        &self,
        entry: &PrefixEntry,
        gkey: &str,
        deadline: &Deadline,
    ) -> Option<Option<u64>> {
        let tracker = self.tracker.as_ref()?;
        // A timeout counts against the breaker like any call to Redis; a
        // connection that is merely gone (its runtime ended) does not.
        let read = self
            .store
            .call(entry, deadline, On::Key(gkey), |_| async move {
                match tracker.read(gkey).await {
                    Some(Ok(read)) => Ok(Some(read)),
                    Some(Err(ReadFailure::Timeout)) => Err(crate::BackendError::new(
                        crate::ErrorKind::Timeout,
                        "no answer on the tracking connection",
                    )),
                    Some(Err(ReadFailure::Gone)) | None => Ok(None),
                }
            })
            .await
            .ok()??;
        Some(read.as_deref().and_then(parse_generation))
    }

    /// The current generation of `prefix` (created when missing), or `None`
    /// when generations are off: what a value written now is labeled with.
    pub(crate) async fn generation_for(
        &self,
        entry: &PrefixEntry,
        prefix: &str,
        deadline: &Deadline,
    ) -> Option<u64> {
        if !self.generations_on() {
            return None;
        }
        if let Some(g) = self.tracked_generation(entry, prefix, deadline).await {
            return Some(g);
        }
        let gkey = self.generation_key(prefix);
        match self.read_generation(entry, &gkey, deadline).await {
            Some(g) => Some(g),
            None => Some(self.init_generation(entry, &gkey, deadline).await),
        }
    }

    /// The generation stored at `gkey` (the fallback answers while the
    /// backend is away), if it holds one.
    pub(super) async fn read_generation(
        &self,
        entry: &PrefixEntry,
        gkey: &str,
        deadline: &Deadline,
    ) -> Option<u64> {
        let stored = self
            .store
            .with_fallback(
                entry,
                deadline,
                On::Key(gkey),
                |b| async move { b.get(gkey).await },
                |f| async move { crate::backend::Backend::get(&f, gkey).await },
            )
            .await
            .ok()
            .flatten();
        stored.as_deref().and_then(parse_generation)
    }

    /// Creates the generation at `gkey` unless another process did first;
    /// returns the one in place.
    pub(super) async fn init_generation(
        &self,
        entry: &PrefixEntry,
        gkey: &str,
        deadline: &Deadline,
    ) -> u64 {
        let candidate = self.fresh_generation();
        let bytes = candidate.to_string().into_bytes();
        let won = self
            .store
            .set_if_absent(entry, gkey, bytes, GENERATION_TTL, deadline)
            .await;
        if let Ok(true) = won {
            return candidate;
        }
        self.read_generation(entry, gkey, deadline)
            .await
            .unwrap_or(candidate)
    }

    /// Reads `skey` and its prefix's current generation in one round trip
    /// (`MGET`), for reads made while no generation is held.
    pub(super) async fn read_with_generation(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        prefix: &str,
        deadline: &Deadline,
    ) -> (Option<RawBytes>, Option<u64>) {
        let gkey = self.generation_key(prefix);
        let Some(pair) = self.store.get_pair(entry, skey, &gkey, deadline).await else {
            return (None, None);
        };
        let generation = match pair.generation.as_deref().and_then(parse_generation) {
            Some(g) => g,
            // Created where the read was answered: the fallback's is
            // created there (the backend is away, and the call's time spent).
            None => self.init_generation(entry, &gkey, deadline).await,
        };
        (pair.value, Some(generation))
    }

    /// Replaces the generation of `prefix`: every value labeled with the old
    /// one becomes invisible at once, in this process before this returns.
    /// If the backend cannot be reached, the new generation is remembered
    /// and written before the backend is trusted again (and this returns
    /// `false`: not delivered yet).
    pub(super) async fn bump_generation(
        &self,
        entry: &PrefixEntry,
        prefix: &str,
        deadline: &Deadline,
    ) -> bool {
        let gkey = self.generation_key(prefix);
        let bytes = self.fresh_generation().to_string().into_bytes();
        let delivered = self
            .store
            .write_invalidation(entry, &gkey, bytes, GENERATION_TTL, deadline)
            .await;
        // This process's next read fetches the new generation (and has Redis
        // track it again): held generations are only those Redis tracks.
        entry.generation.invalidate();
        self.flights
            .seal_all(&format!("{}:{prefix}:", self.settings.namespace));
        delivered
    }
}
