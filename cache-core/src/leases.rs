//! The lease protocol's backend steps (try, store-if-lease, release), with
//! the same semantics on the fallback, and the repairs that keep a lease
//! from stalling loaders (orphaned markers, refused stores).

use std::time::Duration;

use crate::backend::Backend;
use crate::cache::Cache;
use crate::error::{BackendError, ErrorKind};
use crate::stats::PrefixEntry;

impl Cache {
    // ----- leases ---------------------------------------------------------------
    //
    // The lease protocol's three steps, with the same semantics on the
    // fallback: while the backend is away a loader leases the key in the
    // fallback, and an invalidation (which always deletes from the fallback
    // too) removes that lease, so a load older than the invalidation is never
    // stored there either. A store goes where the lease can still be found:
    // a lease taken on one side and looked for on the other is not found,
    // and the value is simply not stored (one more miss, never a stale value).

    /// Tries to take the lease on `skey` with `marker`: `Ok(false)` when
    /// another loader holds it or a value is stored.
    pub(crate) async fn lease_try(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        marker: Vec<u8>,
    ) -> Result<bool, BackendError> {
        if self.scripts_off() {
            return Err(BackendError::new(
                ErrorKind::Auth,
                "leases off: the Redis user may not run scripts (NOPERM)",
            ));
        }
        let lease_ttl = self.inner.config.lease_ttl;
        let copy = self.inner.resilience.as_ref().map(|_| marker.clone());
        let retry = marker.clone();
        let mut result = self
            .on_primary(entry, self.inner.config.timeout, |b| async move {
                b.try_lease(skey, marker, lease_ttl).await
            })
            .await;
        if matches!(result, Ok(false)) && self.remove_orphaned_lease(entry, skey).await {
            result = self
                .on_primary(entry, self.inner.config.timeout, |b| async move {
                    b.try_lease(skey, retry, lease_ttl).await
                })
                .await;
        }
        match (result, &self.inner.resilience, copy) {
            (Err(e), Some(res), Some(marker)) if Self::unavailable(&e) => {
                res.fallback.try_lease(skey, marker, lease_ttl).await
            }
            (result, _, _) => result,
        }
    }

    /// What refused a lease can be something no loader will ever clear: a
    /// lease marker without expiry (its TTL removed, for example by a
    /// `PERSIST` or a restore without TTLs), or a value of another type
    /// (a list, a set). Each would make every loader wait out its lease
    /// deadline: remove it (a marker only if it is still that marker) and
    /// say so. Costs a `PTTL` when a lease is refused, which only happens
    /// on misses contended across processes.
    async fn remove_orphaned_lease(&self, entry: &PrefixEntry, skey: &str) -> bool {
        let timeout = self.inner.config.timeout;
        // Everything this cache writes expires: only a key without expiry
        // can be an orphan.
        match self
            .on_primary(entry, timeout, |b| async move { b.ttl(skey).await })
            .await
        {
            Ok(None) => {}
            _ => return false,
        }
        let stored = match self
            .on_primary(entry, timeout, |b| async move { b.get(skey).await })
            .await
        {
            Ok(Some(stored)) if crate::codec::is_lease(&stored) => stored,
            Err(e) if e.kind == ErrorKind::WrongType => {
                tracing::warn!(key = skey, "replacing a value of another type");
                let keys = [skey.to_owned()];
                let keys = &keys;
                return self
                    .on_primary(entry, timeout, |b| async move { b.delete(keys).await })
                    .await
                    .is_ok();
            }
            _ => return false,
        };
        tracing::warn!(key = skey, "removing a lease marker without expiry");
        self.on_primary(entry, timeout, |b| async move {
            b.release_lease(skey, stored).await
        })
        .await
        .is_ok()
    }

    /// Stores `bytes` only if `marker` still holds the lease: `Ok(false)`
    /// when an invalidation removed it during the load.
    pub(crate) async fn lease_store(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        marker: Vec<u8>,
        bytes: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let copy = self
            .inner
            .resilience
            .as_ref()
            .map(|_| (marker.clone(), bytes.clone()));
        let ours = marker.clone();
        let result = self
            .on_primary(entry, self.inner.config.timeout, |b| async move {
                b.set_if_lease(skey, marker, bytes, ttl).await
            })
            .await;
        self.near_evict_one(skey);
        if let Err(e) = &result {
            // The store did not happen (connection cut, command refused):
            // the lease would make every other loader wait out its TTL.
            self.release_in_background(skey, ours);
            if e.is_permission_denied()
                && let Some(res) = &self.inner.resilience
                && res.scripts_refused()
            {
                tracing::error!(
                    error = %e,
                    "the Redis user may not run scripts: loaded values are not stored (storing without a lease could store a value older than an invalidation); grant +@scripting (EVAL, EVALSHA) to fix"
                );
            }
        }
        match (result, &self.inner.resilience, copy) {
            (Err(e), Some(res), Some((marker, bytes))) if Self::unavailable(&e) => {
                let stored = res
                    .fallback
                    .set_if_lease(skey, marker, bytes, self.fallback_ttl(ttl))
                    .await;
                if matches!(stored, Ok(true)) {
                    self.mark_fallback_written();
                }
                stored
            }
            (Ok(stored), Some(res), _) => {
                res.note_write(Ok(()));
                Ok(stored)
            }
            (Err(e), Some(res), _) => {
                res.note_write(Err(&e));
                Err(e)
            }
            (result, None, _) => result,
        }
    }

    /// Releases a lease whose store failed, retrying (every 50 to 250 ms)
    /// until the lease would have expired. If the backend refuses the
    /// compare-and-delete itself (no permission to run scripts), the key is
    /// deleted (retried the same way while that is refused too): whatever
    /// is there then is at worst a miss.
    fn release_in_background(&self, skey: &str, marker: Vec<u8>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cache = self.clone();
        let skey = skey.to_owned();
        runtime.spawn(async move {
            let entry = cache
                .inner
                .stats
                .prefix(skey.split(':').nth(1).unwrap_or(""));
            // Until the lease would have expired anyway: a lease that
            // outlives the fault that stranded it stalls every loader.
            let deadline = tokio::time::Instant::now() + cache.inner.config.lease_ttl;
            let mut delay = Duration::ZERO;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).clamp(Duration::from_millis(50), Duration::from_millis(250));
                let marker = marker.clone();
                let skey_ref = skey.as_str();
                match cache
                    .on_primary(&entry, cache.inner.config.timeout, |b| async move {
                        b.release_lease(skey_ref, marker).await
                    })
                    .await
                {
                    Ok(()) => return,
                    // Scripts refused for good: delete the key instead.
                    Err(e) if !Self::unavailable(&e) || e.is_permission_denied() => {
                        let keys = [skey.clone()];
                        let keys = &keys;
                        if cache
                            .on_primary(&entry, cache.inner.config.timeout, |b| async move {
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

    /// Gives the lease back (nothing was stored), wherever it was taken.
    pub(crate) async fn lease_release(&self, entry: &PrefixEntry, skey: &str, marker: Vec<u8>) {
        if let Some(res) = &self.inner.resilience {
            let _ = res.fallback.release_lease(skey, marker.clone()).await;
        }
        let _ = self
            .on_primary(entry, self.inner.config.timeout, |b| async move {
                b.release_lease(skey, marker).await
            })
            .await;
    }

    /// The lease scripts were refused lately: loads store nothing (see
    /// `Resilience::scripts_off`).
    pub(crate) fn scripts_off(&self) -> bool {
        self.inner
            .resilience
            .as_ref()
            .is_some_and(|res| res.scripts_off())
    }

    /// The backend could not be asked (down, slow, or the breaker is open).
    pub(crate) fn unavailable(error: &BackendError) -> bool {
        error.kind.is_availability() || error.kind == ErrorKind::CircuitOpen
    }
}
