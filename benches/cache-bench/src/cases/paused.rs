//! Redis paused (SIGSTOP) with the circuit breaker open.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{Cache, CircuitState};
use cache_testkit::RedisServer;

use crate::args::Settings;
use crate::measure::{Rounds, TASKS, latency, percentile_us, throughput};
use crate::ops::{Op, PausedFn};
use crate::payload::{BASE_ID, Customer, HOT_KEYS, customer};

/// Redis paused (SIGSTOP) with the breaker open: `#[cached]` hits served by
/// the in-memory fallback. A fresh cache per round, on its own server.
pub(crate) async fn redis_paused(rounds: &mut Rounds, server: &mut RedisServer, s: Settings) {
    let cache = Cache::builder()
        .redis_url(server.url())
        .namespace("paused")
        .circuit_breaker(3, Duration::from_secs(3600))
        .build()
        .await
        .expect("cache for the paused server");
    let op = Arc::new(PausedFn {
        cache: cache.clone(),
    });
    // Healthy first: warm Redis, measure the normal hit latency on this cache.
    for i in 0..HOT_KEYS {
        op.call(i).await;
    }
    let (healthy, _) = latency(&op, s.latency / 2).await;

    server.pause();
    let trip_start = Instant::now();
    let trips: Vec<_> = (0..8)
        .map(|k| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get::<Customer>(&format!("customer:{k}")).await })
        })
        .collect();
    for t in trips {
        if !matches!(t.await, Ok(Ok(_))) {
            rounds.errors += 1;
        }
    }
    while cache.stats().circuit != CircuitState::Open {
        if trip_start.elapsed() > Duration::from_secs(10) {
            panic!("breaker did not open within 10 s of SIGSTOP");
        }
        let _ = cache.get::<Customer>("customer:trip").await;
    }
    let trip_ms = trip_start.elapsed().as_secs_f64() * 1000.0;
    // First call per key runs the body and fills the fallback; then measure.
    for i in 0..HOT_KEYS {
        op.call(i).await;
    }
    let (samples, failed_l) = latency(&op, s.latency).await;
    let (ops, failed_t) = throughput(&op, TASKS, s.throughput).await;
    // Direct API while paused: errors must be 0 (the fallback absorbs the outage).
    let mut direct_errors = 0u64;
    for k in 0..200u64 {
        let key = format!("direct:{k}");
        if cache.set(&key, &customer(BASE_ID + k), None).await.is_err() {
            direct_errors += 1;
        }
        if cache.get::<Customer>(&key).await.is_err() {
            direct_errors += 1;
        }
    }
    let still_open = cache.stats().circuit == CircuitState::Open;
    server.resume();

    let p99 = percentile_us(&samples, 0.99);
    let healthy_p99 = percentile_us(&healthy, 0.99);
    rounds.ops_per_s.push(ops);
    rounds.p50_us.push(percentile_us(&samples, 0.50));
    rounds.p99_us.push(p99);
    rounds.errors += failed_l + failed_t + direct_errors;
    rounds.push_extra("healthy_p50_us", percentile_us(&healthy, 0.50));
    rounds.push_extra("healthy_p99_us", healthy_p99);
    rounds.push_extra("added_p99_vs_healthy_us", p99 - healthy_p99);
    rounds.push_extra("breaker_open_after_ms", trip_ms);
    rounds.push_extra("breaker_stayed_open", f64::from(u8::from(still_open)));
}
