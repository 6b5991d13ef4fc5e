//! Prefix generations: O(1) prefix invalidation.
//!
//! Each prefix has a generation, a random 64-bit value stored at
//! `{namespace}:%gen:{prefix}`. Values are labeled with the generation read
//! before their load, and a value labeled with another generation is a miss.
//! `invalidate_prefix` replaces the generation: one write, whatever the
//! number of keys and whatever else the database holds.
//!
//! On Redis (a single server or a cluster) each process holds the
//! generations it has read and Redis tells it when one changes
//! (server-assisted client tracking, [`Tracker`](crate::tracking::Tracker)),
//! so a hit stays one `GET`:
//! - the instance that invalidates installs the new generation before
//!   `invalidate_prefix` returns: its next read sees it;
//! - other instances drop theirs when Redis' invalidation message arrives
//!   (docs/BENCHMARKS.md measures that window);
//! - while tracking is not established (connecting, lost, Redis away), no
//!   generation is held and every read fetches the value and the generation
//!   together in one `MGET`.
//!
//! Without tracking (custom backends, memory) reads always use the `MGET`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::backend::Backend;
use crate::backend::RawBytes;
use crate::cache::Cache;
use crate::error::ErrorKind;
use crate::resilience::Missed;
use crate::stats::{Event, PrefixEntry};
use crate::tracking::parse_generation;

/// Lifetime of a prefix generation key; refreshed by every invalidation. If
/// it lapses, a new random generation hides older values (misses, never stale).
pub(crate) const GENERATION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl Cache {
    /// Whether prefix generations are in use.
    pub(crate) fn generations_on(&self) -> bool {
        self.inner.generations
    }

    pub(crate) fn generation_key(&self, prefix: &str) -> String {
        format!("{}:%gen:{}", self.inner.config.namespace, prefix)
    }

    pub(crate) fn fresh_generation(&self) -> u64 {
        let n = self.inner.lease_tokens.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // splitmix64: generations must never repeat (a value labeled with an
        // old generation would become visible again), so they are random.
        let mut z = n ^ nanos.rotate_left(32);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The generation of `prefix` held under tracking, or read (and, where
    /// tracking is up, held) now.
    async fn tracked_generation(&self, entry: &PrefixEntry, prefix: &str) -> Option<u64> {
        let tracker = self.inner.tracker.as_ref()?;
        if let Some(g) = entry.generation.held() {
            return Some(g);
        }
        if !tracker.live() {
            tracker.ensure_connecting(&self.inner);
            return None;
        }
        // Ticket first, then the read: see `HeldGeneration`.
        let epoch = tracker.epoch();
        let ticket = entry.generation.ticket();
        let gkey = self.generation_key(prefix);
        let generation = if tracker.reads_on_tracking_connection() {
            match tracker.read(&self.inner, &gkey).await? {
                Some(g) => g,
                None => {
                    self.init_generation(entry, &gkey).await;
                    tracker.read(&self.inner, &gkey).await??
                }
            }
        } else {
            // Broadcast mode: Redis reports every change of a generation
            // key, wherever it was read.
            match self.read_generation_strict(entry, &gkey).await? {
                Some(g) => g,
                None => self.init_generation(entry, &gkey).await,
            }
        };
        entry.generation.install(ticket, generation, tracker, epoch);
        Some(generation)
    }

    /// The current generation of `prefix` (created when missing), or `None`
    /// when generations are off.
    pub(crate) async fn generation_for(&self, entry: &PrefixEntry, prefix: &str) -> Option<u64> {
        if !self.generations_on() {
            return None;
        }
        if let Some(g) = self.tracked_generation(entry, prefix).await {
            return Some(g);
        }
        let gkey = self.generation_key(prefix);
        match self.read_generation(entry, &gkey).await {
            Some(g) => Some(g),
            None => Some(self.init_generation(entry, &gkey).await),
        }
    }

    /// The generation stored at `gkey` as the backend itself answers it
    /// (`None`: the backend did not answer; the fallback is not asked).
    async fn read_generation_strict(&self, entry: &PrefixEntry, gkey: &str) -> Option<Option<u64>> {
        let stored = self
            .on_primary(entry, self.inner.config.timeout, |b| async move {
                b.get(gkey).await
            })
            .await
            .ok()?;
        Some(stored.as_deref().and_then(parse_generation))
    }

    /// The generation stored at `gkey`, if it holds one.
    async fn read_generation(&self, entry: &PrefixEntry, gkey: &str) -> Option<u64> {
        let stored = self
            .with_fallback(
                entry,
                |b| async move { b.get(gkey).await },
                |f| async move { f.get(gkey).await },
            )
            .await
            .ok()
            .flatten();
        stored.as_deref().and_then(parse_generation)
    }

    async fn init_generation(&self, entry: &PrefixEntry, gkey: &str) -> u64 {
        let candidate = self.fresh_generation();
        let bytes = candidate.to_string().into_bytes();
        let copy = bytes.clone();
        let won = self
            .with_fallback(
                entry,
                |b| async move { b.try_lease(gkey, bytes, GENERATION_TTL).await },
                |f| async move { f.try_lease(gkey, copy, GENERATION_TTL).await },
            )
            .await;
        if let Ok(true) = won {
            return candidate;
        }
        self.read_generation(entry, gkey).await.unwrap_or(candidate)
    }

    /// Reads `skey` and, with generations on, its prefix's current
    /// generation: held under tracking (the read is one `GET`), else in the
    /// same round trip (`MGET`).
    pub(crate) async fn raw_get_current(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        prefix: &str,
        near: bool,
    ) -> (Option<RawBytes>, Option<u64>) {
        if !self.generations_on() {
            return (self.near_or_raw_get(entry, skey, None, near).await, None);
        }
        // The generation is read before the value: a value read after a
        // prefix invalidation this process saw is checked against the new one.
        if let Some(g) = self.tracked_generation(entry, prefix).await {
            return (
                self.near_or_raw_get(entry, skey, Some(g), near).await,
                Some(g),
            );
        }
        let gkey = self.generation_key(prefix);
        let (value, generation) = if let Some(memory) = self.inner.primary.memory() {
            (
                memory.get_bytes(skey).await.map(RawBytes::Shared),
                memory.get_bytes(&gkey).await.map(|s| s.to_vec()),
            )
        } else {
            let keys = [skey.to_owned(), gkey.clone()];
            let keys_ref = &keys;
            let read = self
                .on_primary(entry, self.inner.config.timeout, |b| async move {
                    b.get_many(keys_ref).await
                })
                .await;
            match (read, &self.inner.resilience) {
                (Ok(mut pair), _) if pair.len() == 2 => {
                    let generation = pair.pop().flatten();
                    (pair.pop().flatten().map(RawBytes::Owned), generation)
                }
                // Redis is away: the fallback answers, generation included
                // (created there if it has none: one timeout per call at most).
                (Err(e), Some(res))
                    if e.kind.is_availability() || e.kind == ErrorKind::CircuitOpen =>
                {
                    self.mark_fallback_written();
                    let value = res.fallback.get_bytes(skey).await;
                    if value.is_some() {
                        self.inner.stats.record(entry, Event::FallbackHit);
                    }
                    let generation = match res.fallback.get_bytes(&gkey).await {
                        Some(g) => parse_generation(&g),
                        None => None,
                    };
                    let generation = match generation {
                        Some(g) => g,
                        None => {
                            let fresh = self.fresh_generation();
                            let bytes = fresh.to_string().into_bytes();
                            match res.fallback.try_lease(&gkey, bytes, GENERATION_TTL).await {
                                Ok(false) => res
                                    .fallback
                                    .get_bytes(&gkey)
                                    .await
                                    .and_then(|g| parse_generation(&g))
                                    .unwrap_or(fresh),
                                _ => fresh,
                            }
                        }
                    };
                    return (value.map(RawBytes::Shared), Some(generation));
                }
                _ => (None, None),
            }
        };
        let generation = match generation.as_deref().and_then(parse_generation) {
            Some(g) => g,
            None => self.init_generation(entry, &gkey).await,
        };
        (value, Some(generation))
    }

    /// Replaces the generation of `prefix`: every value labeled with the old
    /// one becomes invisible at once, in this process before this returns.
    /// If the backend cannot be reached, the prefix is remembered and its
    /// generation replaced before the backend is trusted again.
    pub(crate) async fn bump_generation(&self, entry: &PrefixEntry, prefix: &str) {
        let gkey = self.generation_key(prefix);
        let generation = self.fresh_generation();
        let bytes = generation.to_string().into_bytes();
        let gkey_ref = gkey.as_str();
        let copy = bytes.clone();
        let result = self
            .on_primary(entry, self.inner.config.timeout, |b| async move {
                b.set(gkey_ref, copy, GENERATION_TTL).await
            })
            .await;
        // This process's next read fetches the new generation (and has Redis
        // track it again): held generations are only those Redis tracks.
        entry.generation.invalidate();
        self.inner
            .flights
            .seal_all(&format!("{}:{prefix}:", self.inner.config.namespace));
        if let Some(res) = &self.inner.resilience {
            let _ = res.fallback.set(&gkey, bytes, GENERATION_TTL).await;
            if result.is_err() {
                self.remember_invalidation(res, Missed::Prefix(prefix));
            }
        }
    }

    /// Reads `skey` through the near level when there is one and tracking
    /// is established (`current`: the generation the value must carry).
    async fn near_or_raw_get(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        current: Option<u64>,
        use_near: bool,
    ) -> Option<RawBytes> {
        let (Some(near), Some(tracker), true) = (&self.inner.near, &self.inner.tracker, use_near)
        else {
            return self.raw_get(entry, skey).await;
        };
        if !tracker.live() {
            tracker.ensure_connecting(&self.inner);
            return self.raw_get(entry, skey).await;
        }
        if let Some(slot) = self.near_current(near, entry, skey, current) {
            return Some(RawBytes::Shared(slot));
        }
        let ticket = near.ticket(skey);
        match self.raw_get_with_ttl(entry, skey).await {
            (Some(RawBytes::Owned(bytes)), left)
                if !bytes.is_empty() && !crate::codec::is_lease(&bytes) && tracker.live() =>
            {
                Some(RawBytes::Shared(near.install(ticket, skey, bytes, left)))
            }
            (other, _) => other,
        }
    }

    /// The near level's entry at `skey` when it can be served without
    /// awaiting anything: tracking established, the prefix's generation
    /// held (with generations on), and the entry labeled with it. The same
    /// answer [`near_or_raw_get`](Self::near_or_raw_get) gives for a hit.
    pub(crate) fn near_hit_now(
        &self,
        entry: &PrefixEntry,
        skey: &str,
    ) -> Option<(std::sync::Arc<crate::backend::memory::Slot>, Option<u64>)> {
        let (near, tracker) = (self.inner.near.as_ref()?, self.inner.tracker.as_ref()?);
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
        near: &crate::near::NearCache,
        entry: &PrefixEntry,
        skey: &str,
        current: Option<u64>,
    ) -> Option<std::sync::Arc<crate::backend::memory::Slot>> {
        let slot = near.get(skey)?;
        if crate::codec::label(&slot, current) != crate::codec::Label::Current {
            return None;
        }
        self.inner.stats.record(entry, Event::NearHit);
        Some(slot)
    }

    /// This process changed `skeys`: its near level must not serve them
    /// again (Redis' own message about the change arrives later).
    pub(crate) fn near_evict(&self, skeys: &[String]) {
        if let Some(near) = &self.inner.near {
            for skey in skeys {
                near.invalidate(skey.as_bytes());
            }
        }
    }

    /// [`near_evict`](Self::near_evict) for one key.
    pub(crate) fn near_evict_one(&self, skey: &str) {
        if let Some(near) = &self.inner.near {
            near.invalidate(skey.as_bytes());
        }
    }

    /// This process changed keys it cannot list (a pattern delete).
    pub(crate) fn near_flush(&self) {
        if let Some(near) = &self.inner.near {
            near.flush();
        }
    }

    /// Starts the tracking connection (when there is one to start).
    pub(crate) fn start_tracking(&self) {
        if let Some(tracker) = &self.inner.tracker {
            tracker.ensure_connecting(&self.inner);
        }
    }
}
