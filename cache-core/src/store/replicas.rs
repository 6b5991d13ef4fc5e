//! Invalidations that must reach replicas: with
//! [`wait_replicas`](super::Settings::wait_replicas) set, an invalidation
//! is delivered only once that many replicas acknowledge it (the backend's
//! `WAIT`, within the call's deadline); one acknowledged by fewer is
//! remembered and replayed like one the backend missed, and its replay
//! waits for the replicas too. So a replica promoted by a failover holds
//! every invalidation this store counted as delivered.
//!
//! A replay that fails for want of replicas (after a failover the new
//! primary has one replica fewer until the old primary is made one) is
//! retried by the recovery task, but calls do not wait for it: they go to
//! the fallback at once instead of spending their deadline on a replay
//! that cannot finish yet.

use std::sync::atomic::Ordering;

use super::{Deadline, Guard, Store};
use crate::backend::{Backend, InvalidationWrite};
use crate::error::{BackendError, ErrorKind};
use crate::stats::PrefixEntry;

impl Store {
    /// Makes `write` on `backend`; with replicas to wait for, waits for
    /// them within `deadline`. Returns the keys deleted and whether the
    /// invalidation is delivered (enough replicas acknowledged it).
    pub(super) async fn invalidate_on(
        &self,
        backend: &dyn Backend,
        write: InvalidationWrite<'_>,
        deadline: &Deadline,
    ) -> Result<(u64, bool), BackendError> {
        let want = self.settings.wait_replicas;
        if want == 0 {
            let deleted = match write {
                InvalidationWrite::Delete(keys) => backend.delete(keys).await?,
                InvalidationWrite::DeletePattern(pattern) => {
                    backend.delete_pattern(pattern).await?
                }
                InvalidationWrite::Write { key, value, ttl } => {
                    backend.set(key, value.to_vec(), ttl).await?;
                    0
                }
            };
            return Ok((deleted, true));
        }
        let Some(left) = deadline.remaining() else {
            return Err(BackendError::new(
                ErrorKind::Timeout,
                "the call's time was spent before the invalidation",
            ));
        };
        let (deleted, acked) = backend.invalidate_replicated(write, want, left).await?;
        Ok((deleted, acked >= want))
    }

    /// An invalidation fewer replicas acknowledged than configured: counted
    /// as a timeout (not against the breaker: the primary answered).
    pub(super) fn unreplicated(&self, entry: &PrefixEntry) {
        self.stats.record_error(entry, ErrorKind::Timeout);
        tracing::debug!(
            replicas = self.settings.wait_replicas,
            "an invalidation was not acknowledged by enough replicas in time; it is replayed"
        );
    }

    /// Replays one remembered invalidation: an error unless it is delivered.
    pub(super) async fn replay_one(
        &self,
        primary: &dyn Backend,
        write: InvalidationWrite<'_>,
    ) -> Result<(), BackendError> {
        let deadline = Deadline::after(self.bulk_timeout());
        let (_, delivered) = self.invalidate_on(primary, write, &deadline).await?;
        if let Some(guard) = &self.guard {
            guard.replicas_behind.store(!delivered, Ordering::Release);
        }
        match delivered {
            true => Ok(()),
            false => Err(BackendError::new(
                ErrorKind::Timeout,
                "a replayed invalidation was not acknowledged by enough replicas",
            )),
        }
    }

    /// Whether the last replay failed for want of replicas, so a call
    /// should not wait for the next one.
    pub(super) fn waiting_for_replicas(&self, guard: &Guard) -> bool {
        self.settings.wait_replicas > 0 && guard.replicas_behind.load(Ordering::Acquire)
    }
}
