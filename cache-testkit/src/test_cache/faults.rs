//! Fault injection: what the next backend calls run into (fail, drop,
//! delay, down) and how it shows in the log ([`Fault`]).

use std::fmt;
use std::time::Duration;

use cache_core::{BackendError, ErrorKind};

use super::TestCache;

/// An injected fault that a logged call ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// [`TestCache::fail_next`] / [`TestCache::fail_next_with`]: the call
    /// returned a [`BackendError`] of this kind.
    Failed(ErrorKind),
    /// [`TestCache::go_down`]: the call returned a `Connection` error.
    Down,
    /// [`TestCache::drop_next`]: the call never answered (the cache's timeout
    /// gave up on it).
    Dropped,
    /// [`TestCache::delay_next`]: the caller stopped waiting (normally the
    /// cache's timeout) before the delay was over; the operation never ran.
    /// A delayed call that outlives its delay runs and is logged normally.
    Cancelled,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Failed(kind) => write!(f, "FAILED ({kind}, injected)"),
            Fault::Down => f.write_str("FAILED (backend down)"),
            Fault::Dropped => f.write_str("DROPPED (never answered)"),
            Fault::Cancelled => f.write_str("CANCELLED (caller gave up during the delay)"),
        }
    }
}

/// The faults pending for the next backend calls.
#[derive(Default)]
pub(super) struct Faults {
    down: bool,
    fail: u64,
    fail_kind: Option<ErrorKind>,
    drop: u64,
    delay: u64,
    delay_by: Duration,
}

/// What a backend call does before (or instead of) running.
pub(super) enum Gate {
    Pass,
    Delay(Duration),
    Drop,
    Fail(BackendError),
}

impl Faults {
    /// The gate for the next call, using up one pending fault (in the order
    /// down, fail, drop, delay), and the fault to log for it, if any (a delay
    /// is only logged when the caller gives up).
    pub(super) fn next_gate(&mut self) -> (Gate, Option<Fault>) {
        if self.down {
            (
                Gate::Fail(BackendError::new(
                    ErrorKind::Connection,
                    "test backend is down (TestCache::go_down)",
                )),
                Some(Fault::Down),
            )
        } else if self.fail > 0 {
            self.fail -= 1;
            let kind = self.fail_kind.unwrap_or(ErrorKind::Connection);
            (
                Gate::Fail(BackendError::new(
                    kind,
                    "injected failure (TestCache::fail_next)",
                )),
                Some(Fault::Failed(kind)),
            )
        } else if self.drop > 0 {
            self.drop -= 1;
            (Gate::Drop, Some(Fault::Dropped))
        } else if self.delay > 0 {
            self.delay -= 1;
            (Gate::Delay(self.delay_by), None)
        } else {
            (Gate::Pass, None)
        }
    }
}

/// Fault injection.
impl TestCache {
    /// The next `n` backend calls fail with a `Connection` error.
    pub fn fail_next(&self, n: u64) {
        self.fail_next_with(n, ErrorKind::Connection);
    }

    /// The next `n` backend calls fail with an error of `kind` (for example
    /// `ErrorKind::WrongType`, which the breaker does not count).
    pub fn fail_next_with(&self, n: u64, kind: ErrorKind) {
        let mut state = self.backend.lock();
        state.faults.fail = n;
        state.faults.fail_kind = Some(kind);
    }

    /// The next `n` backend calls never answer; the cache's timeout gives up
    /// on them.
    pub fn drop_next(&self, n: u64) {
        self.backend.lock().faults.drop = n;
    }

    /// The next `n` backend calls wait `by` (real time, `tokio::time::sleep`)
    /// before running. Longer than the timeout: the cache gives up and the
    /// call never runs (logged as [`Fault::Cancelled`]); shorter: it runs
    /// late.
    pub fn delay_next(&self, n: u64, by: Duration) {
        let mut state = self.backend.lock();
        state.faults.delay = n;
        state.faults.delay_by = by;
    }

    /// Every backend call fails with a `Connection` error until
    /// [`come_back`](Self::come_back).
    pub fn go_down(&self) {
        self.backend.lock().faults.down = true;
    }

    /// Ends [`go_down`](Self::go_down). The data stored before is still there.
    pub fn come_back(&self) {
        self.backend.lock().faults.down = false;
    }

    /// Cancels every pending fault (and [`come_back`](Self::come_back)).
    pub fn clear_faults(&self) {
        self.backend.lock().faults = Faults::default();
    }
}
