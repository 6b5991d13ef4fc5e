//! The near cache: a process-local level in front of Redis, kept correct by
//! Redis server-assisted client tracking in broadcast mode.
//!
//! The tracking connection subscribes to every key of the namespace
//! (`CLIENT TRACKING ON BCAST PREFIX {namespace}:`), so any write, delete,
//! expiry or eviction of one of our keys by any client evicts it here.
//! Entries hold the stored bytes and, once a typed reader asked, the decoded
//! value, so a near hit of a `Clone` payload clones it and never decodes.
//!
//! A read that is in flight when the invalidation of its key arrives must
//! not install its (possibly older) reply: the read takes a ticket (the
//! tracker's epoch and a counter of the key's stripe) before it is sent, and
//! installs only if neither moved. The push handler bumps the counter and
//! evicts under the stripe's lock, and installs check under the same lock,
//! so an invalidation processed at any point either refuses the install or
//! evicts what it installed. This process's own writes and deletes evict
//! before they return, so it reads its own invalidations at once; other
//! instances see them once the push is processed. When tracking is lost
//! (disconnect, Redis away, `FLUSHALL`) the whole level is dropped and not
//! used again until tracking is back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64;

use crate::backend::memory::{Slot, slot};

/// Key stripes for tickets: enough that unrelated keys rarely refuse each
/// other's installs.
const STRIPES: usize = 1024;

/// Largest value kept in the near level (larger ones are read from Redis
/// every time): bounds its memory at about capacity × this.
pub(crate) const NEAR_MAX_VALUE_BYTES: usize = 64 * 1024;

#[derive(Default)]
struct KeyStripe {
    changes: AtomicU64,
    lock: Mutex<()>,
}

#[derive(Clone)]
struct NearEntry {
    slot: Arc<Slot>,
    ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<String, NearEntry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        entry: &NearEntry,
        _now: Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Hashes the near level's keys with xxh3, seeded at random per level:
/// moka's default (SipHash) cost more than the rest of a near hit's lookup
/// together. The seed keeps anyone from precomputing keys that collide
/// here (as the memory backend's seeded ids do); moka still compares whole
/// keys, so a collision only costs time, never returns another key's entry.
#[derive(Clone)]
struct SeededXxh3(u64);

impl SeededXxh3 {
    fn random() -> Self {
        SeededXxh3(std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            0u8,
        ))
    }
}

impl std::hash::BuildHasher for SeededXxh3 {
    type Hasher = Xxh3Hasher;
    fn build_hasher(&self) -> Xxh3Hasher {
        Xxh3Hasher(self.0)
    }
}

struct Xxh3Hasher(u64);

impl std::hash::Hasher for Xxh3Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_u8(&mut self, byte: u8) {
        // A `str`'s terminator: mixed in without a second pass of xxh3.
        self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// What a read must show to install its reply: taken before the read.
#[derive(Clone, Copy)]
pub(crate) struct NearTicket {
    epoch: u64,
    stripe: usize,
    changes: u64,
}

/// The near level.
pub(crate) struct NearCache {
    entries: moka::sync::Cache<String, NearEntry, SeededXxh3>,
    stripes: Box<[KeyStripe]>,
    /// Bumped when the whole level is dropped.
    epoch: AtomicU64,
    ttl: Duration,
    evictions: AtomicU64,
    flushes: AtomicU64,
}

/// Near-cache figures of a [`CacheStats`](crate::CacheStats).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct NearStats {
    /// Entries held now.
    pub entries: u64,
    /// Entries evicted because Redis reported their key changed (or this
    /// process changed it).
    pub evictions: u64,
    /// Times the whole level was dropped (tracking lost, flush).
    pub flushes: u64,
}

impl NearCache {
    /// A near level of at most `capacity` entries and about `max_bytes`
    /// bytes, each entry kept at most `ttl` (and never longer than its Redis
    /// key had left when it was read).
    ///
    /// One moka weigher enforces both bounds: an entry weighs one unit per
    /// `max_bytes / capacity` bytes (at least one), and the total weight is
    /// capped at `capacity`, so neither the entries nor the bytes can pass
    /// their bound.
    pub(crate) fn new(capacity: u64, max_bytes: u64, ttl: Duration) -> Self {
        let unit = (max_bytes / capacity.max(1)).max(1);
        NearCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .weigher(move |key: &String, entry: &NearEntry| {
                    let bytes = (key.len() + entry.slot.bytes.len()) as u64;
                    u32::try_from(bytes.div_ceil(unit).max(1)).unwrap_or(u32::MAX)
                })
                .expire_after(PerEntryTtl)
                .build_with_hasher(SeededXxh3::random()),
            stripes: (0..STRIPES).map(|_| KeyStripe::default()).collect(),
            epoch: AtomicU64::new(0),
            ttl,
            evictions: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    fn stripe_of(key: &[u8]) -> usize {
        (xxh3_64(key) as usize) % STRIPES
    }

    /// The entry at `skey`, if held.
    pub(crate) fn get(&self, skey: &str) -> Option<Arc<Slot>> {
        self.entries.get(skey).map(|e| e.slot)
    }

    /// Taken before reading `skey` from Redis.
    pub(crate) fn ticket(&self, skey: &str) -> NearTicket {
        let stripe = Self::stripe_of(skey.as_bytes());
        NearTicket {
            epoch: self.epoch.load(Ordering::Acquire),
            stripe,
            changes: self.stripes[stripe].changes.load(Ordering::Acquire),
        }
    }

    /// Keeps `bytes` (read with `ticket`) at `skey` for at most `remaining`
    /// (the Redis key's TTL when it was read; `None`: no expiry) unless an
    /// invalidation of it (or of everything) was processed since the ticket
    /// was taken. Returns the slot to read through, installed or not.
    pub(crate) fn install(
        &self,
        ticket: NearTicket,
        skey: &str,
        bytes: Vec<u8>,
        remaining: Option<Duration>,
    ) -> Arc<Slot> {
        let slot = slot(skey, bytes);
        let ttl = remaining.map_or(self.ttl, |left| left.min(self.ttl));
        if slot.bytes.len() > NEAR_MAX_VALUE_BYTES || ttl.is_zero() {
            return slot;
        }
        let stripe = &self.stripes[ticket.stripe];
        let _lock = stripe.lock.lock().unwrap_or_else(|e| e.into_inner());
        if stripe.changes.load(Ordering::Acquire) == ticket.changes
            && self.epoch.load(Ordering::Acquire) == ticket.epoch
        {
            self.entries.insert(
                skey.to_owned(),
                NearEntry {
                    slot: slot.clone(),
                    ttl,
                },
            );
        }
        slot
    }

    /// `key` changed (a push from Redis, or this process wrote it).
    pub(crate) fn invalidate(&self, key: &[u8]) {
        let stripe = &self.stripes[Self::stripe_of(key)];
        let _lock = stripe.lock.lock().unwrap_or_else(|e| e.into_inner());
        stripe.changes.fetch_add(1, Ordering::AcqRel);
        if let Ok(key) = std::str::from_utf8(key)
            && self.entries.remove(key).is_some()
        {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops everything, and refuses every install begun before.
    pub(crate) fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate_all();
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> NearStats {
        NearStats {
            entries: self.entries.entry_count(),
            evictions: self.evictions.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(near: &NearCache, key: &str, len: usize, remaining: Option<Duration>) {
        let ticket = near.ticket(key);
        near.install(ticket, key, vec![7; len], remaining);
    }

    #[test]
    fn an_entry_lives_no_longer_than_its_redis_key_had_left() {
        let near = NearCache::new(100, 1 << 20, Duration::from_secs(60));
        install(&near, "k:short", 10, Some(Duration::from_millis(50)));
        install(&near, "k:forever", 10, None);
        install(&near, "k:gone", 10, Some(Duration::ZERO));
        assert!(near.get("k:short").is_some());
        assert!(near.get("k:gone").is_none(), "no time left: not kept");
        std::thread::sleep(Duration::from_millis(120));
        assert!(near.get("k:short").is_none(), "expired with its Redis key");
        assert!(near.get("k:forever").is_some(), "kept for the cache's TTL");
    }

    #[test]
    fn bytes_are_bounded_as_well_as_entries() {
        // 1,000 entries or 20,000 bytes: 100 values of 1,000 bytes are far
        // fewer entries than allowed, but five times the bytes.
        let near = NearCache::new(1_000, 20_000, Duration::from_secs(60));
        for i in 0..100 {
            install(&near, &format!("k:{i}"), 1_000, None);
        }
        near.entries.run_pending_tasks();
        let held: u64 = near
            .entries
            .iter()
            .map(|(k, e)| (k.len() + e.slot.bytes.len()) as u64)
            .sum();
        assert!(held <= 20_000 + 1_100, "{held} bytes held");
        assert!(
            near.entries.entry_count() >= 10,
            "the bound still admits entries"
        );
        // Small values: the entry bound applies.
        let near = NearCache::new(50, 1 << 30, Duration::from_secs(60));
        for i in 0..200 {
            install(&near, &format!("k:{i}"), 10, None);
        }
        near.entries.run_pending_tasks();
        assert!(near.entries.entry_count() <= 50);
    }
}
