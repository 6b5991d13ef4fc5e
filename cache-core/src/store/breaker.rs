//! A lock-free circuit breaker: open after N consecutive availability
//! failures, let one probe through after the cooldown, close on its success.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::time::Duration;

use crate::clock;
use crate::stats::CircuitState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Breaker closed: call normally.
    Allowed,
    /// Cooldown over: this call is the one probe.
    Probe,
    /// Breaker open: skip the backend.
    Rejected,
}

pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    consecutive: AtomicU32,
    /// When the breaker opened ([`clock::now_ms`]); 0 while closed.
    opened_at: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            consecutive: AtomicU32::new(0),
            opened_at: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    #[inline]
    pub(crate) fn allow(&self) -> Permit {
        let opened = self.opened_at.load(Acquire);
        if opened == 0 {
            return Permit::Allowed;
        }
        if clock::within(opened, self.cooldown) {
            return Permit::Rejected;
        }
        if self
            .probing
            .compare_exchange(false, true, AcqRel, Acquire)
            .is_ok()
        {
            Permit::Probe
        } else {
            Permit::Rejected
        }
    }

    /// Returns true when this success closed an open breaker (the caller
    /// says so in its log).
    #[inline]
    pub(crate) fn on_success(&self) -> bool {
        // Write only when there is something to reset: a store on every
        // success would bounce this line between cores on the hit path.
        if self.consecutive.load(Relaxed) != 0 {
            self.consecutive.store(0, Relaxed);
        }
        if self.opened_at.load(Acquire) != 0 {
            self.opened_at.store(0, Release);
            self.probing.store(false, Release);
            return true;
        }
        false
    }

    /// Counts a failure: the failures in a row so far (this one included),
    /// and whether this one opened the breaker (the caller says so).
    pub(crate) fn on_failure(&self, permit: Permit) -> (u32, bool) {
        if permit == Permit::Probe {
            self.opened_at.store(clock::now_ms(), Release);
            self.probing.store(false, Release);
            return (self.consecutive.load(Relaxed), false);
        }
        let n = self.consecutive.fetch_add(1, AcqRel) + 1;
        let opened = n >= self.threshold
            && self
                .opened_at
                .compare_exchange(0, clock::now_ms(), AcqRel, Acquire)
                .is_ok();
        (n, opened)
    }

    /// How long it stays open before a probe.
    pub(crate) fn cooldown(&self) -> Duration {
        self.cooldown
    }

    /// A probe that ended without a verdict (e.g. cancelled) gives the slot back.
    pub(crate) fn abandon(&self, permit: Permit) {
        if permit == Permit::Probe {
            self.probing.store(false, Release);
        }
    }

    pub(crate) fn state(&self) -> CircuitState {
        let opened = self.opened_at.load(Acquire);
        if opened == 0 {
            CircuitState::Closed
        } else if clock::within(opened, self.cooldown) {
            CircuitState::Open
        } else {
            CircuitState::HalfOpen
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let b = Breaker::new(3, Duration::from_millis(30));
        for _ in 0..2 {
            assert_eq!(b.allow(), Permit::Allowed);
            b.on_failure(Permit::Allowed);
        }
        assert_eq!(b.state(), CircuitState::Closed);
        b.on_failure(Permit::Allowed);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.allow(), Permit::Rejected);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.allow(), Permit::Probe);
        assert_eq!(b.allow(), Permit::Rejected, "only one probe at a time");
        b.on_failure(Permit::Probe);
        assert_eq!(b.allow(), Permit::Rejected, "failed probe re-opens");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.allow(), Permit::Probe);
        assert!(b.on_success());
        assert_eq!(b.allow(), Permit::Allowed);
    }
}
