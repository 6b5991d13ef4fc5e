//! A lease this process holds while it loads a key ("Scaling Memcache at
//! Facebook", NSDI 2013): taken on a miss, it makes other processes wait
//! for this load instead of stampeding, and makes the store fail if an
//! invalidation removed it meanwhile.
//!
//! A lease is renewed while the load runs (every third of the lease TTL),
//! so a load slower than the TTL keeps it: it is stored unless an
//! invalidation intervened, and other processes keep waiting for it. The
//! renewal stops when the load ends or its future is dropped; a lease whose
//! holder is gone (a crash) expires after one TTL.
//!
//! A lease that replaced a value (a stale value being reloaded, or a fresh
//! one refreshed ahead) puts that value back when its holder goes away
//! without storing, if the lease is still there: an invalidation deletes
//! the lease, and then nothing is put back.

use std::sync::Arc;
use std::time::Duration;

use crate::store::Store;

/// A lease held by this process; `None` inside: no lease (leases off, or
/// the backend could not be asked).
pub(crate) struct LeaseGuard(Option<Held>);

struct Held {
    store: Arc<Store>,
    prefix: String,
    skey: String,
    marker: Vec<u8>,
    renewal: Option<tokio::task::AbortHandle>,
    /// The value the lease replaced, put back if the holder goes away.
    replaced: Option<Arc<[u8]>>,
}

impl LeaseGuard {
    /// No lease.
    pub(crate) fn none() -> Self {
        LeaseGuard(None)
    }

    /// A lease `marker` holds on `skey` (replacing `replaced`, if given),
    /// renewed from now on.
    pub(crate) fn held(
        store: Arc<Store>,
        prefix: &str,
        skey: &str,
        marker: Vec<u8>,
        replaced: Option<Arc<[u8]>>,
    ) -> Self {
        let lease_ttl = store.settings().lease_ttl;
        let renewal = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let (store, prefix, skey, marker) = (
                Arc::downgrade(&store),
                prefix.to_owned(),
                skey.to_owned(),
                marker.clone(),
            );
            runtime
                .spawn(async move {
                    let every = (lease_ttl / 3).max(Duration::from_millis(5));
                    loop {
                        tokio::time::sleep(every).await;
                        let Some(store) = store.upgrade() else { return };
                        match store.lease_renew(&prefix, &skey, &marker).await {
                            Ok(true) => {}
                            // Removed by an invalidation: the value will
                            // not be stored, nothing left to renew.
                            Ok(false) => return,
                            // The backend is away for now: try again.
                            Err(_) => {}
                        }
                    }
                })
                .abort_handle()
        });
        LeaseGuard(Some(Held {
            store,
            prefix: prefix.to_owned(),
            skey: skey.to_owned(),
            marker,
            renewal,
            replaced,
        }))
    }

    /// Stops renewing and hands the marker over (to store under it, or to
    /// release it).
    pub(crate) fn take(&mut self) -> Option<Vec<u8>> {
        self.0.take().map(|mut held| {
            if let Some(renewal) = held.renewal.take() {
                renewal.abort();
            }
            std::mem::take(&mut held.marker)
        })
    }
}

impl Drop for LeaseGuard {
    /// The loader panicked or its future was dropped: the lease is released
    /// in the background so that waiters elsewhere need not sit out its TTL.
    fn drop(&mut self) {
        let Some(mut held) = self.0.take() else {
            return;
        };
        if let Some(renewal) = held.renewal.take() {
            renewal.abort();
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let marker = std::mem::take(&mut held.marker);
            runtime.spawn(async move {
                let store = &held.store;
                let left = held.replaced.as_deref().and_then(|replaced| {
                    let times = crate::codec::extended(replaced)?.times?;
                    let left = times.expires_at.saturating_sub(store.now_ms());
                    (left > 0).then(|| (replaced, Duration::from_millis(left)))
                });
                match left {
                    Some((replaced, left)) => {
                        store
                            .lease_put_back_for(&held.prefix, &held.skey, marker, replaced, left)
                            .await;
                    }
                    None => {
                        store
                            .lease_release_for(&held.prefix, &held.skey, marker)
                            .await;
                    }
                }
            });
        }
    }
}
