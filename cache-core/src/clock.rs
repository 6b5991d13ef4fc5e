//! Instants that fit in an atomic: milliseconds since the first use in this
//! process, plus one, so that `0` can mean "never" in an `AtomicU64`.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since this process first asked, plus one (never `0`).
pub(crate) fn now_ms() -> u64 {
    START.elapsed().as_millis() as u64 + 1
}

/// `duration` in the unit of [`now_ms`] (saturating: a `Duration` can
/// hold more milliseconds than a `u64`).
pub(crate) fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Whether `stamp` (a [`now_ms`] value, `0` for never) lies less than
/// `window` in the past.
pub(crate) fn within(stamp: u64, window: Duration) -> bool {
    stamp != 0 && now_ms().saturating_sub(stamp) < ms(window)
}

/// Microseconds since this process first asked, plus one (never `0`).
pub(crate) fn now_us() -> u64 {
    START.elapsed().as_micros() as u64 + 1
}
