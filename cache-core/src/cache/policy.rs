//! What a read-through call does around its load besides reading and
//! storing: fail-safe, loader timeouts, refresh-ahead, TTL jitter, per-value
//! and sliding expiry, tags. `#[cached]` builds a [`Policy`] from its
//! arguments; the cache's own settings fill in what the function leaves
//! open (`CacheBuilder::fail_safe`, `CacheBuilder::ttl_jitter`).

use std::time::{Duration, Instant};

use crate::codec::{Meta, Times};
use crate::config::CacheConfig;
use crate::consistency::load::Patience;
use crate::error::LoadTimedOut;

/// The longest fail-safe throttle when none is given: `min(30 s, ttl)`.
const MOST_DEFAULT_THROTTLE: Duration = Duration::from_secs(30);

/// How a `#[cached]` call behaves around its load. Built by the generated
/// code; not a public API.
pub struct Policy<'a, R, S> {
    /// Fail-safe: how long past its TTL a value is kept to answer when a
    /// load fails or times out.
    pub fail_safe: Option<Duration>,
    /// How long after a failed load its stale value answers without a new
    /// load (default `min(30 s, ttl)`).
    pub fail_safe_throttle: Option<Duration>,
    /// With a stale value at hand: how long a call waits for the load
    /// before it answers with the stale value (the load goes on).
    pub soft_timeout: Option<Duration>,
    /// How long a call waits for a load at all.
    pub hard_timeout: Option<Duration>,
    /// The function's result for a load past `hard_timeout` with no stale
    /// value: `Err(E::from(LoadTimedOut))`.
    pub timed_out: Option<fn(LoadTimedOut) -> R>,
    /// The fraction of the TTL after which a hit reloads the value in the
    /// background.
    pub refresh_ahead: Option<f64>,
    /// Spread of the TTL: `0.1` stores for a TTL drawn from ±10%.
    pub jitter: Option<f64>,
    /// A hit restarts the TTL.
    pub sliding: bool,
    /// The TTL computed from the value to store.
    pub ttl_from: Option<fn(&S) -> Duration>,
    /// The tags the value is loaded under.
    pub tags: &'a [String],
}

impl<R, S> Clone for Policy<'_, R, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R, S> Copy for Policy<'_, R, S> {}

impl<R, S> Policy<'_, R, S> {
    /// Nothing besides reading and storing.
    pub const fn none() -> Self {
        Policy {
            fail_safe: None,
            fail_safe_throttle: None,
            soft_timeout: None,
            hard_timeout: None,
            timed_out: None,
            refresh_ahead: None,
            jitter: None,
            sliding: false,
            ttl_from: None,
            tags: &[],
        }
    }
}

/// A function's policy with the cache's settings filled in, for one load.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Effective {
    pub(crate) fail_safe: Option<Duration>,
    pub(crate) throttle: Option<Duration>,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
    pub(crate) refresh_ahead: Option<f64>,
    pub(crate) jitter: f64,
}

impl Effective {
    pub(crate) fn of<R, S>(policy: Option<&Policy<'_, R, S>>, config: &CacheConfig) -> Self {
        let none = Policy::none();
        let policy = policy.unwrap_or(&none);
        Effective {
            fail_safe: policy.fail_safe.or(config.fail_safe_max_stale),
            throttle: policy.fail_safe_throttle.or(config.fail_safe_throttle),
            soft_timeout: policy.soft_timeout,
            hard_timeout: policy.hard_timeout,
            refresh_ahead: policy.refresh_ahead,
            jitter: policy.jitter.unwrap_or(config.ttl_jitter),
        }
    }

    /// How long a call that must load waits, from now.
    pub(crate) fn patience(&self) -> Patience {
        let stale_ok = self.fail_safe.is_some();
        if self.soft_timeout.is_none() && self.hard_timeout.is_none() {
            // No clock read when there is nothing to time.
            return Patience {
                stale_ok,
                ..Patience::default()
            };
        }
        let now = Instant::now();
        Patience {
            soft: self.soft_timeout.map(|t| now + t),
            hard: self.hard_timeout.map(|t| now + t),
            stale_ok,
        }
    }

    /// How long failed loads of a value of TTL `ttl` are not retried.
    pub(crate) fn throttle(&self, ttl: Duration) -> Duration {
        self.throttle.unwrap_or(ttl.min(MOST_DEFAULT_THROTTLE))
    }

    /// The TTL to store for `ttl`, spread by the jitter.
    pub(crate) fn jittered(&self, ttl: Duration) -> Duration {
        // Written so that NaN (a `CacheConfig` built by hand) is no jitter.
        if self.jitter.is_nan() || self.jitter <= 0.0 {
            return ttl;
        }
        let spread = self.jitter.min(0.5) * (2.0 * unit_random() - 1.0);
        // Checked: a TTL near `Duration::MAX` must not overflow.
        Duration::try_from_secs_f64(ttl.as_secs_f64() * (1.0 + spread).max(0.0))
            .unwrap_or(ttl)
            .max(Duration::from_millis(1))
    }

    /// The envelope fields and the physical TTL of a value stored now for
    /// (jittered) `ttl`: with fail-safe or refresh-ahead the value carries
    /// when it turns stale, and the store keeps it `fail_safe` longer.
    pub(crate) fn timing(
        &self,
        now_ms: u64,
        ttl: Duration,
    ) -> (Option<Times>, Option<u64>, Duration) {
        if self.fail_safe.is_none() && self.refresh_ahead.is_none() {
            return (None, None, ttl);
        }
        let physical = ttl.saturating_add(self.fail_safe.unwrap_or_default());
        let times = Times {
            fresh_until: now_ms.saturating_add(crate::clock::ms(ttl)),
            expires_at: now_ms.saturating_add(crate::clock::ms(physical)),
        };
        let refresh_at = self.refresh_ahead.map(|f| {
            let fraction = if f.is_nan() { 1.0 } else { f.clamp(0.0, 1.0) };
            now_ms.saturating_add(crate::clock::ms(ttl.mul_f64(fraction)))
        });
        (Some(times), refresh_at, physical)
    }
}

/// A uniform draw from [0, 1) (xorshift, per thread; TTL spread needs no
/// more than that).
fn unit_random() -> f64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(
            crate::backend::system_now_ms() ^ 0x9E37_79B9_7F4A_7C15 ^ (crate::clock::now_us() << 20),
        );
    }
    STATE.with(|state| {
        let mut x = state.get() | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// The envelope of a loaded value: its generation, times and tags.
pub(crate) fn meta<'t>(
    generation: Option<u64>,
    timing: (Option<Times>, Option<u64>),
    tags: &'t [(String, u64)],
) -> Meta<'t> {
    Meta {
        generation,
        times: timing.0,
        refresh_at: timing.1,
        throttled: false,
        tags,
    }
}
