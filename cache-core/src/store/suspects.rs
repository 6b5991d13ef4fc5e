//! Keys whose last read timed out while the backend kept answering
//! (typically a value far too large to read in time): their size is
//! checked before they are read again, so one bad key cannot open the
//! breaker for every key.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Most keys remembered as suspect.
const MAX_SUSPECT_KEYS: usize = 1024;

#[derive(Default)]
pub(super) struct Suspects {
    keys: Mutex<HashSet<String>>,
    /// Whether `keys` holds any: the check on every read is one load.
    any: AtomicBool,
}

impl Suspects {
    fn keys(&self) -> MutexGuard<'_, HashSet<String>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Suspects `key`; returns whether it is news.
    pub(super) fn add(&self, key: &str) -> bool {
        let mut keys = self.keys();
        if keys.len() >= MAX_SUSPECT_KEYS {
            return false;
        }
        let added = keys.insert(key.to_owned());
        self.any.store(true, Ordering::Release);
        added
    }

    #[inline]
    pub(super) fn contains(&self, key: &str) -> bool {
        self.any.load(Ordering::Acquire) && self.keys().contains(key)
    }

    pub(super) fn clear(&self, key: &str) {
        let mut keys = self.keys();
        keys.remove(key);
        if keys.is_empty() {
            self.any.store(false, Ordering::Release);
        }
    }
}
