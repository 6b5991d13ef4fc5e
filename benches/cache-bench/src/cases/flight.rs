//! Single flight: many concurrent cold callers of one key.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use cache_core::Cache;

use crate::measure::Rounds;
use crate::payload::{COLD_IDS, FLIGHT_BODY_RUNS, slow_customer};

/// Concurrent cold callers in the single-flight case.
pub(crate) const FLIGHT_CALLERS: usize = 1000;

/// 1,000 concurrent cold callers of one key; records body runs and wall time.
pub(crate) async fn single_flight(rounds: &mut Rounds, cache: &Cache) {
    let id = COLD_IDS.fetch_add(1, Ordering::Relaxed);
    let before = FLIGHT_BODY_RUNS.load(Ordering::Relaxed);
    let barrier = Arc::new(tokio::sync::Barrier::new(FLIGHT_CALLERS));
    let start = Instant::now();
    let handles: Vec<_> = (0..FLIGHT_CALLERS)
        .map(|_| {
            let cache = cache.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                slow_customer(&cache, id).await.is_ok_and(|c| c.id == id)
            })
        })
        .collect();
    let mut failed = 0;
    for h in handles {
        if !h.await.expect("caller panicked") {
            failed += 1;
        }
    }
    let wall = start.elapsed();
    let runs = FLIGHT_BODY_RUNS.load(Ordering::Relaxed) - before;
    rounds.errors += failed;
    rounds.push_extra("body_runs", runs as f64);
    rounds.push_extra("wall_ms", wall.as_secs_f64() * 1000.0);
}
