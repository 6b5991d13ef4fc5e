//! In-process backend on moka's `future::Cache` with per-entry expiry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::Expiry;
use moka::ops::compute::Op;

use super::{Backend, BackendInfo, BackendKind};
use crate::error::{BackendError, ErrorKind};
use crate::keys::glob_match;

/// A decoded copy of a stored value, kept beside its bytes (see
/// `__private::TypedCopy`).
pub(crate) type Decoded = Arc<dyn std::any::Any + Send + Sync>;

/// A stored value: its bytes, and (once a typed reader asked) a decoded copy.
pub(crate) struct Slot {
    pub(crate) bytes: Box<[u8]>,
    pub(crate) decoded: std::sync::OnceLock<Decoded>,
}

impl std::ops::Deref for Slot {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

fn slot(bytes: Vec<u8>) -> Arc<Slot> {
    Arc::new(Slot {
        bytes: bytes.into_boxed_slice(),
        decoded: std::sync::OnceLock::new(),
    })
}

#[derive(Clone)]
struct Entry {
    slot: Arc<Slot>,
    expires_at: Option<Instant>,
}

struct EntryExpiry;

impl Expiry<Arc<str>, Entry> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Entry,
        created_at: Instant,
    ) -> Option<Duration> {
        value
            .expires_at
            .map(|at| at.saturating_duration_since(created_at))
    }
    fn expire_after_update(
        &self,
        _key: &Arc<str>,
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
    entries: moka::future::Cache<Arc<str>, Entry>,
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
                .build(),
        }
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.entries.invalidate_all();
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

    fn entry(bytes: Vec<u8>, ttl: Duration) -> Entry {
        Entry {
            slot: slot(bytes),
            expires_at: Instant::now().checked_add(ttl),
        }
    }

    /// Removes `key` through moka's per-key compute lock, so a delete is
    /// ordered with the compare-and-set of a lease (a plain `remove` is not,
    /// and could let a loader's stale value land after an invalidation).
    async fn remove_serialized(&self, key: Arc<str>) -> bool {
        let result = self
            .entries
            .entry(key)
            .and_compute_with(|current| {
                std::future::ready(match current {
                    Some(_) => Op::Remove,
                    None => Op::Nop,
                })
            })
            .await;
        match result {
            moka::ops::compute::CompResult::Removed(e) => {
                Self::live(Some(e.into_value())).is_some()
            }
            _ => false,
        }
    }

    /// The raw bytes at `key` without the async machinery (hot path).
    pub(crate) async fn get_bytes(&self, key: &str) -> Option<Arc<Slot>> {
        // moka's expiry policy never returns an expired entry from `get`, so
        // the hot path skips our own clock read.
        self.entries.get(key).await.map(|e| e.slot)
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
            .insert(Arc::from(key), Self::entry(value, ttl))
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
                .insert(Arc::from(key), Self::entry(value, ttl))
                .await;
        }
        Ok(())
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, BackendError> {
        let mut deleted = 0;
        for key in keys {
            if self.remove_serialized(Arc::from(key.as_str())).await {
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
            .entries
            .entry(Arc::from(key))
            .and_compute_with(|current| {
                let op = match Self::live(current.map(|e| e.into_value())) {
                    Some(mut e) => {
                        e.expires_at = Instant::now().checked_add(ttl);
                        Op::Put(e)
                    }
                    None => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        Ok(matches!(
            result,
            moka::ops::compute::CompResult::ReplacedWith(_)
        ))
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, BackendError> {
        Ok(Self::live(self.entries.get(key).await)
            .and_then(|e| e.expires_at)
            .map(|at| at.saturating_duration_since(Instant::now())))
    }

    async fn incr_by(&self, key: &str, delta: i64) -> Result<i64, BackendError> {
        let mut outcome: Result<i64, BackendError> = Ok(0);
        self.entries
            .entry(Arc::from(key))
            .and_compute_with(|current| {
                let current = Self::live(current.map(|e| e.into_value()));
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
                            return std::future::ready(Op::Nop);
                        }
                    },
                    None => (0, None),
                };
                let op = match value.checked_add(delta) {
                    Some(next) => {
                        outcome = Ok(next);
                        Op::Put(Entry {
                            slot: slot(next.to_string().into_bytes()),
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
                };
                std::future::ready(op)
            })
            .await;
        outcome
    }

    async fn delete_pattern(&self, pattern: &str) -> Result<u64, BackendError> {
        let doomed: Vec<Arc<str>> = self
            .entries
            .iter()
            .filter(|(k, _)| glob_match(pattern.as_bytes(), k.as_bytes()))
            .map(|(k, _)| Arc::clone(&*k))
            .collect();
        let mut deleted = 0;
        for key in doomed {
            if self.remove_serialized(key).await {
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
            .entries
            .entry(Arc::from(key))
            .and_compute_with(|current| {
                let op = match Self::live(current.map(|e| e.into_value())) {
                    Some(_) => Op::Nop,
                    None => Op::Put(Self::entry(marker, ttl)),
                };
                std::future::ready(op)
            })
            .await;
        Ok(matches!(
            result,
            moka::ops::compute::CompResult::Inserted(_)
                | moka::ops::compute::CompResult::ReplacedWith(_)
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
            .entries
            .entry(Arc::from(key))
            .and_compute_with(|current| {
                let op = match Self::live(current.map(|e| e.into_value())) {
                    Some(e) if **e.slot == *marker => Op::Put(Self::entry(value, ttl)),
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        Ok(matches!(
            result,
            moka::ops::compute::CompResult::ReplacedWith(_)
        ))
    }

    async fn release_lease(&self, key: &str, marker: Vec<u8>) -> Result<(), BackendError> {
        self.entries
            .entry(Arc::from(key))
            .and_compute_with(|current| {
                let op = match current {
                    Some(e) if **e.value().slot == *marker => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        Ok(())
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
            .map(|(k, v)| (k.len() + v.slot.len()) as u64 + PER_ENTRY_OVERHEAD)
            .sum();
        Ok(BackendInfo {
            version: None,
            used_memory_bytes: Some(used),
            connected_clients: None,
            total_keys: Some(self.entries.entry_count()),
        })
    }
}
