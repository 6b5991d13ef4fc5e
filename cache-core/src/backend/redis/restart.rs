//! Restarts with old data: a server restarted from a snapshot or an
//! append-only file can bring back values invalidated after the save. The
//! namespace records the `run_id` of the server that last used it; a new
//! connection that finds another one reports the restart, and the store
//! clears the namespace before it trusts the server again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::connection::{SingleNode, TrackedConnection};
use crate::error::{BackendError, ErrorKind};

impl SingleNode {
    /// Before a new connection serves anything: whether the server's data
    /// comes from another lifetime of the server than the one this
    /// namespace was last used with (a restart from a snapshot or an
    /// append-only file, which can bring back values invalidated since).
    /// The marker key holds the `run_id` of the server that last used the
    /// namespace; a different one (set anew here) fails this connection
    /// with a [`ErrorKind::Connection`] error and raises the flag
    /// [`take_restart`](Self::take_restart) reads, so the store clears the
    /// namespace before it trusts the server again. A server that has no
    /// marker (new, or without persistence) has nothing to distrust.
    pub(super) async fn check_run(&self, tracked: &TrackedConnection) -> Result<(), BackendError> {
        let Some(marker) = &self.restart_marker else {
            return Ok(());
        };
        let mut conn = tracked.conn.clone();
        let info: String = match redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
        {
            Ok(info) => info,
            // Not allowed or not answered: nothing to compare.
            Err(_) => return Ok(()),
        };
        let Some(run_id) = info
            .lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(str::trim)
        else {
            return Ok(());
        };
        let seen: Option<String> = redis::cmd("GET")
            .arg(marker)
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        if seen.as_deref() == Some(run_id) {
            return Ok(());
        }
        let _: Result<(), _> = redis::cmd("SET")
            .arg(marker)
            .arg(run_id)
            .query_async(&mut conn)
            .await;
        match seen {
            Some(previous) => {
                tracing::warn!(
                    previous,
                    run_id,
                    "Redis restarted with data of an earlier run (a snapshot or an append-only file): the cache's namespace is cleared before Redis is trusted again"
                );
                self.restarted.store(true, Ordering::Release);
                Err(BackendError::new(
                    ErrorKind::Connection,
                    "Redis restarted with data of an earlier run",
                ))
            }
            None => Ok(()),
        }
    }

    /// Records the server's `run_id` in the namespace's marker if it has
    /// none (after the namespace was cleared).
    pub(crate) async fn mark_run(&self) {
        let found = match self.current() {
            Some(found) => Ok(found),
            None => self.connection().await,
        };
        if let Ok((conn, id)) = found {
            let tracked = TrackedConnection {
                conn,
                broken: Arc::new(AtomicBool::new(false)),
            };
            if self.check_run(&tracked).await.is_err() {
                self.mark_broken(id);
            }
        }
    }

    /// Whether [`check_run`](Self::check_run) saw a restart since the last
    /// call (the flag is cleared).
    pub(crate) fn take_restart(&self) -> bool {
        self.restarted.load(Ordering::Acquire) && self.restarted.swap(false, Ordering::AcqRel)
    }
}
