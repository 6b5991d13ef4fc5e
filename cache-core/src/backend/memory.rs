//! In-process backend on moka's `future::Cache` with per-entry expiry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::Expiry;
use moka::ops::compute::{CompResult, Op};

use super::{Backend, BackendInfo, BackendKind};
use crate::error::{BackendError, ErrorKind};
use crate::keys::glob_match;

/// A decoded copy of a stored value, kept beside its bytes (see
/// `__private::TypedCopy`).
pub(crate) type Decoded = Arc<dyn std::any::Any + Send + Sync>;

/// A stored value: its key, its bytes, and (once a typed reader asked) a
/// decoded copy.
pub(crate) struct Slot {
    key: Box<str>,
    pub(crate) bytes: Box<[u8]>,
    pub(crate) decoded: std::sync::OnceLock<Decoded>,
}

impl std::ops::Deref for Slot {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

pub(crate) fn slot(key: &str, bytes: Vec<u8>) -> Arc<Slot> {
    Arc::new(Slot {
        key: key.into(),
        bytes: bytes.into_boxed_slice(),
        decoded: std::sync::OnceLock::new(),
    })
}

#[derive(Clone)]
struct Entry {
    slot: Arc<Slot>,
    expires_at: Option<Instant>,
}

impl Entry {
    /// The entry, if it is `key`'s (not another key's with the same [`KeyId`]).
    fn of(self, key: &str) -> Option<Entry> {
        (*self.slot.key == *key).then_some(self)
    }
}

/// moka's key: a seeded 128-bit hash of the storage key. Hashing the string
/// once and letting moka work on an integer (with [`PreHashed`], no second
/// hash) makes a lookup cost about what a `u64`-keyed moka lookup costs; a
/// string key cost ~100 ns more per lookup here. The entry keeps its key
/// and every read checks it, so even a collision never returns another
/// key's value (it only evicts it).
type KeyId = u128;

/// A [`std::hash::BuildHasher`] for keys that already are uniform hashes:
/// folds the 128 bits to 64 instead of hashing them again.
#[derive(Clone, Copy, Default)]
struct PreHashed;

impl std::hash::BuildHasher for PreHashed {
    type Hasher = Folded;
    fn build_hasher(&self) -> Folded {
        Folded(0)
    }
}

struct Folded(u64);

impl std::hash::Hasher for Folded {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u128(&mut self, id: u128) {
        // Truncation is the point: fold the 128 bits to 64.
        #[allow(clippy::cast_possible_truncation)]
        let folded = (id as u64) ^ ((id >> 64) as u64);
        self.0 ^= folded;
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `u128` keys; still a fine hash for anything else.
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
}

struct EntryExpiry;

impl Expiry<KeyId, Entry> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &KeyId,
        value: &Entry,
        created_at: Instant,
    ) -> Option<Duration> {
        value
            .expires_at
            .map(|at| at.saturating_duration_since(created_at))
    }
    fn expire_after_update(
        &self,
        _key: &KeyId,
        value: &Entry,
        updated_at: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        value
            .expires_at
            .map(|at| at.saturating_duration_since(updated_at))
    }
}

/// An in-process store: moka `future::Cache` with a TTL per entry, bounded by
/// entry count. Used as the backend when no Redis is configured and as the
/// fallback while Redis is away.
#[derive(Clone)]
pub struct MemoryBackend {
    entries: moka::future::Cache<KeyId, Entry, PreHashed>,
    /// Random per store, so nobody can precompute colliding keys.
    seed: u64,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl MemoryBackend {
    /// A store holding at most `capacity` entries.
    pub fn new(capacity: u64) -> Self {
        MemoryBackend {
            entries: moka::future::Cache::builder()
                .max_capacity(capacity)
                .expire_after(EntryExpiry)
                .build_with_hasher(PreHashed),
            seed: std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                0u8,
            ),
        }
    }

    fn id(&self, key: &str) -> KeyId {
        xxhash_rust::xxh3::xxh3_128_with_seed(key.as_bytes(), self.seed)
    }

    /// The live entry of `key`, if any.
    async fn current(&self, key: &str) -> Option<Entry> {
        self.entries.get(&self.id(key)).await?.of(key)
    }

    /// moka's per-key compute, given `key`'s own entry (`None` when absent,
    /// or when the entry at its id is another key's: a collision is replaced,
    /// never read).
    async fn compute_own(
        &self,
        key: &str,
        decide: impl FnOnce(Option<Entry>) -> Op<Entry>,
    ) -> CompResult<KeyId, Entry> {
        self.entries
            .entry(self.id(key))
            .and_compute_with(|current| {
                std::future::ready(decide(current.and_then(|e| e.into_value().of(key))))
            })
            .await
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }

    /// Drops the entries whose key `doomed` picks (the fallback's entries of
    /// the cluster slots that are back on Redis).
    pub(crate) async fn clear_where(&self, doomed: impl Fn(&str) -> bool) {
        let ids: Vec<KeyId> = self
            .entries
            .iter()
            .filter(|(_, e)| doomed(&e.slot.key))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.entries.invalidate(&id).await;
        }
    }

    /// Approximate number of entries.
    pub fn len(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Whether the store is (approximately) empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn live(entry: Option<Entry>) -> Option<Entry> {
        entry.filter(|e| e.expires_at.is_none_or(|at| at > Instant::now()))
    }

    fn entry(key: &str, bytes: Vec<u8>, ttl: Duration) -> Entry {
        Entry {
            slot: slot(key, bytes),
            expires_at: Instant::now().checked_add(ttl),
        }
    }

    /// Removes `key` through moka's per-key compute lock, so a delete is
    /// ordered with the compare-and-set of a lease (a plain `remove` is not,
    /// and could let a loader's stale value land after an invalidation).
    async fn remove_serialized(&self, key: &str) -> bool {
        let result = self
            .compute_own(key, |own| match own {
                Some(_) => Op::Remove,
                None => Op::Nop,
            })
            .await;
        match result {
            CompResult::Removed(e) => Self::live(Some(e.into_value())).is_some(),
            _ => false,
        }
    }

    /// The raw bytes at `key` without the async machinery (hot path).
    pub(crate) async fn get_bytes(&self, key: &str) -> Option<Arc<Slot>> {
        // moka's expiry policy never returns an expired entry from `get`, so
        // the hot path skips our own clock read.
        self.current(key).await.map(|e| e.slot)
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Memory
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.get_bytes(key).await.map(|b| b.to_vec()))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get_bytes(key).await.map(|b| b.to_vec()));
        }
        Ok(out)
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), BackendError> {
        self.entries
            .insert(self.id(key), Self::entry(key, value, ttl))
            .await;
        Ok(())
    }

    async fn set_many(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        for (key, value) in entries {
            self.entries
                .insert(self.id(&key), Self::entry(&key, value, ttl))
                .await;
        }
        Ok(())
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, BackendError> {
        let mut deleted = 0;
        for key in keys {
            if self.remove_serialized(key).await {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    async fn exists(&self, key: &str) -> Result<bool, BackendError> {
        Ok(self.get_bytes(key).await.is_some())
    }

    async fn expire(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        let result = self
            .compute_own(key, |own| match Self::live(own) {
                Some(mut e) => {
                    e.expires_at = Instant::now().checked_add(ttl);
                    Op::Put(e)
                }
                None => Op::Nop,
            })
            .await;
        Ok(matches!(result, CompResult::ReplacedWith(_)))
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, BackendError> {
        Ok(Self::live(self.current(key).await)
            .and_then(|e| e.expires_at)
            .map(|at| at.saturating_duration_since(Instant::now())))
    }

    async fn incr_by(&self, key: &str, delta: i64) -> Result<i64, BackendError> {
        let mut outcome: Result<i64, BackendError> = Ok(0);
        self.compute_own(key, |own| {
            let current = Self::live(own);
            let (value, expires_at) = match &current {
                Some(e) => match std::str::from_utf8(&e.slot)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                {
                    Some(v) => (v, e.expires_at),
                    None => {
                        outcome = Err(BackendError::new(
                            ErrorKind::WrongType,
                            "value is not an integer",
                        ));
                        return Op::Nop;
                    }
                },
                None => (0, None),
            };
            match value.checked_add(delta) {
                Some(next) => {
                    outcome = Ok(next);
                    Op::Put(Entry {
                        slot: slot(key, next.to_string().into_bytes()),
                        expires_at,
                    })
                }
                None => {
                    outcome = Err(BackendError::new(
                        ErrorKind::WrongType,
                        "increment would overflow",
                    ));
                    Op::Nop
                }
            }
        })
        .await;
        outcome
    }

    async fn delete_pattern(&self, pattern: &str) -> Result<u64, BackendError> {
        let doomed: Vec<Arc<Slot>> = self
            .entries
            .iter()
            .filter(|(_, e)| glob_match(pattern.as_bytes(), e.slot.key.as_bytes()))
            .map(|(_, e)| e.slot)
            .collect();
        let mut deleted = 0;
        for slot in doomed {
            if self.remove_serialized(&slot.key).await {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    async fn try_lease(
        &self,
        key: &str,
        marker: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let result = self
            .compute_own(key, |own| match Self::live(own) {
                Some(_) => Op::Nop,
                None => Op::Put(Self::entry(key, marker, ttl)),
            })
            .await;
        Ok(matches!(
            result,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        ))
    }

    async fn set_if_lease(
        &self,
        key: &str,
        marker: Vec<u8>,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let result = self
            .compute_own(key, |own| match Self::live(own) {
                Some(e) if **e.slot == *marker => Op::Put(Self::entry(key, value, ttl)),
                _ => Op::Nop,
            })
            .await;
        Ok(matches!(result, CompResult::ReplacedWith(_)))
    }

    async fn release_lease(&self, key: &str, marker: Vec<u8>) -> Result<(), BackendError> {
        self.compute_own(key, |own| match own {
            Some(e) if **e.slot == *marker => Op::Remove,
            _ => Op::Nop,
        })
        .await;
        Ok(())
    }

    async fn renew_lease(
        &self,
        key: &str,
        marker: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let result = self
            .compute_own(key, |own| match Self::live(own) {
                Some(mut e) if **e.slot == *marker => {
                    e.expires_at = Instant::now().checked_add(ttl);
                    Op::Put(e)
                }
                _ => Op::Nop,
            })
            .await;
        Ok(matches!(result, CompResult::ReplacedWith(_)))
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }

    async fn info(&self) -> Result<BackendInfo, BackendError> {
        self.entries.run_pending_tasks().await;
        // Computed on demand (an O(n) walk, for stats and health only) so the
        // hot path carries no accounting. Counts key and value bytes plus a
        // per-entry estimate of moka's bookkeeping.
        const PER_ENTRY_OVERHEAD: u64 = 96;
        let used: u64 = self
            .entries
            .iter()
            .map(|(_, v)| (v.slot.key.len() + v.slot.len()) as u64 + PER_ENTRY_OVERHEAD)
            .sum();
        Ok(BackendInfo {
            version: None,
            used_memory_bytes: Some(used),
            connected_clients: None,
            total_keys: Some(self.entries.entry_count()),
            primary: None,
            missing_permissions: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_entry_is_only_returned_for_its_own_key() {
        // Plant `b`'s entry where `a` would live, as a hash collision would.
        let store = MemoryBackend::new(100);
        let ttl = Duration::from_secs(60);
        store
            .entries
            .insert(
                store.id("a"),
                MemoryBackend::entry("b", b"b's".to_vec(), ttl),
            )
            .await;
        assert!(store.get_bytes("a").await.is_none());
        assert!(!store.exists("a").await.unwrap());
        assert_eq!(store.ttl("a").await.unwrap(), None);
        assert_eq!(store.delete(&["a".to_owned()]).await.unwrap(), 0);
        assert!(store.try_lease("a", b"m".to_vec(), ttl).await.unwrap());
        assert_eq!(&*store.get_bytes("a").await.unwrap().bytes, b"m");
        assert_eq!(store.delete_pattern("b").await.unwrap(), 0);
    }
}
