//! What this process holds of a prefix's generation, kept beside the
//! prefix's counters (one lookup on the hit path finds both). The
//! consistency layer fills and empties it; see its `generations` module.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A prefix's generation as this process holds it.
///
/// Invariant: `value` is non-zero only while Redis tracks it for this
/// process. Installing a generation read from Redis is refused if an
/// invalidation of it (or a loss of tracking) was processed after the read
/// began: the read takes a ticket (`changes`, and the tracker's epoch) before
/// it is sent, and the install compares the ticket under `lock`, which the
/// invalidation also takes. Without the ticket, a reply installed after the
/// invalidation that overtook it would be held forever (Redis reports a
/// tracked key's change once).
#[derive(Default)]
pub(crate) struct HeldGeneration {
    /// The generation, or 0 when none is held.
    value: AtomicU64,
    /// Bumped by every invalidation of this prefix's generation.
    changes: AtomicU64,
    lock: Mutex<()>,
}

impl HeldGeneration {
    #[inline]
    pub(crate) fn held(&self) -> Option<u64> {
        match self.value.load(Ordering::Acquire) {
            0 => None,
            g => Some(g),
        }
    }

    pub(crate) fn ticket(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Installs `generation` if nothing changed since `ticket` was taken
    /// and `still_tracked()` (asked under the lock) says tracking was not
    /// lost meanwhile.
    pub(crate) fn install(
        &self,
        ticket: u64,
        generation: u64,
        still_tracked: impl FnOnce() -> bool,
    ) {
        let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.changes.load(Ordering::Acquire) == ticket && still_tracked() {
            self.value.store(generation, Ordering::Release);
        }
    }

    /// Drops the held generation (Redis says it changed, or tracking is lost).
    pub(crate) fn invalidate(&self) {
        let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.value.store(0, Ordering::Release);
    }
}

/// A generation as stored: its decimal digits.
pub(crate) fn parse_generation(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}
