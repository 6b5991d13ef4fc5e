//! Single-task p50 of raw redis-rs and a `#[cached]` hit, calls alternated.

use std::sync::Arc;
use std::time::Duration;

use crate::measure::{Rounds, paired_latency, percentile_us};
use crate::ops::{CachedFn, RawGet};

/// `raw` and `cached` called alternately from one task for `dur`: both see
/// the same machine state. Records the cached p50/p99, the raw p50, their
/// difference and the median per-pair difference.
pub(crate) async fn paired_p50(
    r: &mut Rounds,
    raw: &Arc<RawGet>,
    cached: &Arc<CachedFn>,
    dur: Duration,
) {
    let (raw_ns, cached_ns, diff_ns, failed) = paired_latency(raw, cached, dur).await;
    let raw_p50 = percentile_us(&raw_ns, 0.50);
    let cached_p50 = percentile_us(&cached_ns, 0.50);
    r.p50_us.push(cached_p50);
    r.p99_us.push(percentile_us(&cached_ns, 0.99));
    r.push_extra("raw_p50_us", raw_p50);
    r.push_extra("p50_delta_us", cached_p50 - raw_p50);
    let mid = diff_ns.get(diff_ns.len() / 2).copied().unwrap_or(0);
    r.push_extra("paired_diff_median_us", mid as f64 / 1000.0);
    r.errors += failed;
}
