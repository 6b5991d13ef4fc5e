//! The lease protocol's backend steps (take, renew, store-if-held,
//! release), with the same semantics on the fallback, and the repairs that
//! keep a lease from stalling loaders (orphaned markers, refused stores).
//!
//! While the backend is away a loader leases the key in the fallback, and
//! an invalidation (which always deletes from the fallback too) removes
//! that lease, so a load older than the invalidation is never stored there
//! either. A store goes where the lease can still be found: a lease taken
//! on one side and looked for on the other is not found, and the value is
//! simply not stored (one more miss, never a stale value).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Deadline, On, Store};
use crate::backend::Backend;
use crate::clock;
use crate::error::{BackendError, ErrorKind};
use crate::stats::PrefixEntry;

/// How long after the backend refused the lease scripts they are not tried
/// again (an ACL change may be undone: leases come back by themselves).
const SCRIPTS_RETRY: Duration = Duration::from_secs(10);

/// When the backend last refused to run the lease scripts (an ACL without
/// `@scripting`), a [`clock::now_ms`] (0: never): for [`SCRIPTS_RETRY`]
/// after that, misses load without a lease and store nothing.
#[derive(Default)]
pub(super) struct ScriptsRefused(AtomicU64);

impl ScriptsRefused {
    /// Returns whether this is news (the first refusal since scripts last worked).
    fn refused(&self) -> bool {
        self.0.swap(clock::now_ms(), Ordering::Relaxed) == 0
    }

    fn off(&self) -> bool {
        match self.0.load(Ordering::Relaxed) {
            0 => false,
            since if clock::within(since, SCRIPTS_RETRY) => true,
            _ => {
                self.0.store(0, Ordering::Relaxed);
                false
            }
        }
    }
}

impl Store {
    /// The lease scripts were refused lately: loads store nothing.
    pub(crate) fn scripts_off(&self) -> bool {
        self.guard.as_ref().is_some_and(|guard| guard.scripts.off())
    }

    /// Tries to take the lease on `skey` with `marker`: `Ok(false)` when
    /// another loader holds it or a value is stored.
    pub(crate) async fn lease_try(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        marker: &[u8],
        deadline: &Deadline,
    ) -> Result<bool, BackendError> {
        if self.scripts_off() {
            return Err(BackendError::new(
                ErrorKind::Auth,
                "leases off: the Redis user may not run scripts (NOPERM)",
            ));
        }
        let lease_ttl = self.settings.lease_ttl;
        let take = |marker: Vec<u8>| {
            self.call(entry, deadline, On::Key(skey), move |b| async move {
                b.try_lease(skey, marker, lease_ttl).await
            })
        };
        let mut result = take(marker.to_vec()).await;
        if matches!(result, Ok(false)) && self.remove_orphaned_lease(entry, skey, deadline).await {
            result = take(marker.to_vec()).await;
        }
        match (result, self.fallback()) {
            (Err(e), Some(fallback)) if Self::unavailable(&e) => {
                fallback.try_lease(skey, marker.to_vec(), lease_ttl).await
            }
            (result, _) => result,
        }
    }

    /// What refused a lease can be something no loader will ever clear: a
    /// lease marker without expiry (its TTL removed, for example by a
    /// `PERSIST` or a restore without TTLs), or a value of another type (a
    /// list, a set). Each would make every loader wait: remove it (a marker
    /// only if it is still that marker) and say so. Costs a `PTTL` when a
    /// lease is refused, which only happens on misses contended across
    /// processes.
    async fn remove_orphaned_lease(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        deadline: &Deadline,
    ) -> bool {
        // Everything this cache writes expires: only a key without expiry
        // can be an orphan.
        match self
            .call(entry, deadline, On::Key(skey), |b| async move {
                b.ttl(skey).await
            })
            .await
        {
            Ok(None) => {}
            _ => return false,
        }
        let stored = match self
            .call(entry, deadline, On::Key(skey), |b| async move {
                b.get(skey).await
            })
            .await
        {
            Ok(Some(stored)) if crate::codec::is_lease(&stored) => stored,
            Err(e) if e.kind == ErrorKind::WrongType => {
                tracing::warn!(key = skey, "replacing a value of another type");
                let keys = [skey.to_owned()];
                let keys = &keys;
                return self
                    .call(entry, deadline, On::Key(skey), |b| async move {
                        b.delete(keys).await
                    })
                    .await
                    .is_ok();
            }
            _ => return false,
        };
        tracing::warn!(key = skey, "removing a lease marker without expiry");
        self.call(entry, deadline, On::Key(skey), |b| async move {
            b.release_lease(skey, stored).await
        })
        .await
        .is_ok()
    }

    /// Takes the lease on `skey` by replacing the value `expected` with
    /// `marker` (a compare-and-set on the whole value): `Ok(false)` when
    /// the key holds anything else by now (another loader's lease, a new
    /// value, nothing).
    pub(crate) async fn lease_swap(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        expected: &[u8],
        marker: &[u8],
        deadline: &Deadline,
    ) -> Result<bool, BackendError> {
        if self.scripts_off() {
            return Err(BackendError::new(
                ErrorKind::Auth,
                "leases off: the Redis user may not run scripts (NOPERM)",
            ));
        }
        let lease_ttl = self.settings.lease_ttl;
        let result = self
            .call(entry, deadline, On::Key(skey), |b| async move {
                b.set_if_lease(skey, expected.to_vec(), marker.to_vec(), lease_ttl)
                    .await
            })
            .await;
        match (result, self.fallback()) {
            (Err(e), Some(fallback)) if Self::unavailable(&e) => {
                fallback
                    .set_if_lease(skey, expected.to_vec(), marker.to_vec(), lease_ttl)
                    .await
            }
            (result, _) => result,
        }
    }

    /// Puts `value` back at `skey` for `ttl` if the lease `marker` still
    /// holds it (its holder went away without storing).
    pub(crate) async fn lease_put_back_for(
        &self,
        prefix: &str,
        skey: &str,
        marker: Vec<u8>,
        value: &[u8],
        ttl: Duration,
    ) {
        let entry = self.stats.prefix(prefix);
        let deadline = self.deadline();
        let _ = self
            .lease_store(&entry, skey, &marker, value.to_vec(), ttl, &deadline)
            .await;
    }

    /// Extends the lease `marker` holds on `skey` by the lease TTL, where it
    /// was taken: `Ok(false)` when it is no longer held (an invalidation
    /// removed it).
    pub(crate) async fn lease_renew(
        &self,
        prefix: &str,
        skey: &str,
        marker: &[u8],
    ) -> Result<bool, BackendError> {
        let entry = self.stats.prefix(prefix);
        let lease_ttl = self.settings.lease_ttl;
        if let Some(fallback) = self.fallback()
            && fallback
                .renew_lease(skey, marker.to_vec(), lease_ttl)
                .await
                .unwrap_or(false)
        {
            return Ok(true);
        }
        let marker = marker.to_vec();
        self.call(&entry, &self.deadline(), On::Key(skey), |b| async move {
            b.renew_lease(skey, marker, lease_ttl).await
        })
        .await
    }

    /// Stores `bytes` only if `marker` still holds the lease: `Ok(false)`
    /// when an invalidation removed it during the load.
    pub(crate) async fn lease_store(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        marker: &[u8],
        bytes: Vec<u8>,
        ttl: Duration,
        deadline: &Deadline,
    ) -> Result<bool, BackendError> {
        let copy = self.guard.as_ref().map(|_| bytes.clone());
        let ours = marker.to_vec();
        let result = self
            .call(entry, deadline, On::Key(skey), |b| async move {
                b.set_if_lease(skey, ours, bytes, ttl).await
            })
            .await;
        let Some(guard) = &self.guard else {
            return result;
        };
        if let Err(e) = &result {
            // The store did not happen (connection cut, command refused):
            // the lease would make every other loader wait out its TTL.
            self.release_in_background(entry, skey, marker.to_vec());
            if e.is_permission_denied() && guard.scripts.refused() {
                tracing::error!(
                    error = %e,
                    "the Redis user may not run scripts: loaded values are not stored (storing without a lease could store a value older than an invalidation); grant +@scripting (EVAL, EVALSHA) to fix"
                );
            }
        }
        match (result, copy) {
            (Err(e), Some(bytes)) if Self::unavailable(&e) => {
                let stored = guard
                    .fallback
                    .set_if_lease(skey, marker.to_vec(), bytes, self.fallback_ttl(ttl))
                    .await;
                if matches!(stored, Ok(true)) {
                    self.mark_fallback_written(On::Key(skey));
                }
                stored
            }
            (Ok(stored), _) => {
                guard.write_failure.note(Ok(()));
                Ok(stored)
            }
            (Err(e), _) => {
                guard.write_failure.note(Err(&e));
                Err(e)
            }
        }
    }

    /// [`lease_release`](Self::lease_release) for a key of `prefix` (a
    /// lease whose holder went away).
    pub(crate) async fn lease_release_for(&self, prefix: &str, skey: &str, marker: Vec<u8>) {
        let entry = self.stats.prefix(prefix);
        self.lease_release(&entry, skey, marker).await;
    }

    /// Gives the lease back (nothing was stored), wherever it was taken.
    pub(crate) async fn lease_release(&self, entry: &PrefixEntry, skey: &str, marker: Vec<u8>) {
        if let Some(fallback) = self.fallback() {
            let _ = fallback.release_lease(skey, marker.clone()).await;
        }
        let _ = self
            .call(entry, &self.deadline(), On::Key(skey), |b| async move {
                b.release_lease(skey, marker).await
            })
            .await;
    }

    /// Releases a lease whose store failed, retrying (every 50 to 250 ms)
    /// until the lease would have expired. If the backend refuses the
    /// compare-and-delete itself (no permission to run scripts), the key is
    /// deleted (retried the same way while that is refused too): whatever
    /// is there then is at worst a miss.
    pub(crate) fn release_in_background(&self, entry: &PrefixEntry, skey: &str, marker: Vec<u8>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.me.clone();
        let skey = skey.to_owned();
        let prefix = entry.prefix().to_owned();
        runtime.spawn(async move {
            // Until the lease would have expired anyway: a lease that
            // outlives the fault that stranded it stalls every loader.
            let Some(lease_ttl) = store.upgrade().map(|s| s.settings.lease_ttl) else {
                return;
            };
            let until = tokio::time::Instant::now() + lease_ttl;
            let mut delay = Duration::ZERO;
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).clamp(Duration::from_millis(50), Duration::from_millis(250));
                let Some(store) = store.upgrade() else { return };
                let entry = store.stats.prefix(&prefix);
                let marker = marker.clone();
                let skey_ref = skey.as_str();
                let deadline = store.deadline();
                match store
                    .call(&entry, &deadline, On::Key(skey_ref), |b| async move {
                        b.release_lease(skey_ref, marker).await
                    })
                    .await
                {
                    Ok(()) => return,
                    // Scripts refused for good: delete the key instead.
                    Err(e) if !Self::unavailable(&e) || e.is_permission_denied() => {
                        let keys = [skey.clone()];
                        let keys = &keys;
                        if store
                            .call(&entry, &deadline, On::Key(skey_ref), |b| async move {
                                b.delete(keys).await
                            })
                            .await
                            .is_ok()
                        {
                            return;
                        }
                    }
                    Err(_) => {}
                }
            }
        });
    }
}
