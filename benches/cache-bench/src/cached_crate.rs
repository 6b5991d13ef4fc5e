//! The `cached` crate's Redis store (`AsyncRedisCache`, one multiplexed
//! connection, MessagePack values) on the same payload. Built only with
//! `--features cached-crate`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cache_testkit::RedisServer;
use cached::{AsyncRedisCache, ConcurrentCachedAsync};

use crate::args::Settings;
use crate::cases::FLIGHT_CALLERS;
use crate::measure::{Rounds, latency, percentile_us};
use crate::ops::Op;
use crate::payload::{BASE_ID, COLD_IDS, Customer, HOT_KEYS, customer, hot_id};

static FLIGHT_BODY_RUNS: AtomicU64 = AtomicU64::new(0);

/// A store on `url` with a one-hour TTL.
pub(crate) async fn store(url: &str, prefix: &str) -> AsyncRedisCache<u64, Customer> {
    AsyncRedisCache::builder(prefix)
        .ttl(Duration::from_secs(3600))
        .connection_string(url)
        .build()
        .await
        .expect("cached AsyncRedisCache")
}

/// Fills the hot set.
pub(crate) async fn fill(store: &AsyncRedisCache<u64, Customer>) {
    for i in 0..HOT_KEYS {
        store
            .async_cache_set(hot_id(i), customer(hot_id(i)))
            .await
            .expect("cached: fill");
    }
}

/// `async_cache_get` hit.
pub(crate) struct CachedCrateGet {
    pub(crate) store: AsyncRedisCache<u64, Customer>,
}

impl Op for CachedCrateGet {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        matches!(self.store.async_cache_get(&id).await, Ok(Some(c)) if c.id == id)
    }
}

/// What an `#[io_cached]` function does with this store: get; on a miss run
/// the body and set. No coalescing, so every cold caller runs the body.
async fn cache_aside(store: &AsyncRedisCache<u64, Customer>, id: u64) -> Result<Customer, String> {
    if let Some(c) = store
        .async_cache_get(&id)
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(c);
    }
    FLIGHT_BODY_RUNS.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = customer(id);
    store
        .async_cache_set(id, c.clone())
        .await
        .map_err(|e| e.to_string())?;
    Ok(c)
}

/// 1,000 concurrent cold callers of one key through the cache-aside pattern.
pub(crate) async fn single_flight(rounds: &mut Rounds, store: &AsyncRedisCache<u64, Customer>) {
    let id = COLD_IDS.fetch_add(1, Ordering::Relaxed);
    let before = FLIGHT_BODY_RUNS.load(Ordering::Relaxed);
    let barrier = Arc::new(tokio::sync::Barrier::new(FLIGHT_CALLERS));
    let start = Instant::now();
    let handles: Vec<_> = (0..FLIGHT_CALLERS)
        .map(|_| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                cache_aside(&store, id).await.is_ok_and(|c| c.id == id)
            })
        })
        .collect();
    let mut failed = 0;
    for h in handles {
        if !h.await.expect("caller panicked") {
            failed += 1;
        }
    }
    rounds.errors += failed;
    rounds.push_extra(
        "body_runs",
        (FLIGHT_BODY_RUNS.load(Ordering::Relaxed) - before) as f64,
    );
    rounds.push_extra("wall_ms", start.elapsed().as_secs_f64() * 1000.0);
}

/// Calls timed per round while Redis is paused (each one waits for its
/// answer, ~0.5 s): 5, or 3 with `--quick`.
fn paused_calls(s: Settings) -> usize {
    if s.quick { 3 } else { 5 }
}
/// How long the benchmark waits for one call before counting it as failed.
const PAUSED_CUTOFF: Duration = Duration::from_secs(2);

/// Redis paused (SIGSTOP): single-task `async_cache_get` latency and errors.
/// A call with no answer within [`PAUSED_CUTOFF`] is cut off and counted as
/// an error (the caller would still be waiting).
pub(crate) async fn redis_paused(rounds: &mut Rounds, server: &mut RedisServer, s: Settings) {
    let store = store(&server.url(), "cached-paused").await;
    fill(&store).await;
    let op = Arc::new(CachedCrateGet {
        store: store.clone(),
    });
    let (healthy, _) = latency(&op, s.latency / 2).await;
    server.pause();
    let calls = paused_calls(s);
    let mut samples = Vec::with_capacity(calls);
    let (mut errors, mut cut_off) = (0u64, 0u64);
    for i in 0..calls as u64 {
        let t = Instant::now();
        match tokio::time::timeout(PAUSED_CUTOFF, store.async_cache_get(&(BASE_ID + i))).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) | Ok(Err(_)) => errors += 1,
            Err(_) => {
                errors += 1;
                cut_off += 1;
            }
        }
        samples.push(t.elapsed().as_nanos() as u64);
    }
    server.resume();
    samples.sort_unstable();
    rounds.p50_us.push(percentile_us(&samples, 0.50));
    rounds.p99_us.push(percentile_us(&samples, 0.99));
    rounds.errors += errors;
    rounds.push_extra("calls", calls as f64);
    rounds.push_extra("cut_off_at_2s", cut_off as f64);
    rounds.push_extra("healthy_p99_us", percentile_us(&healthy, 0.99));
}
