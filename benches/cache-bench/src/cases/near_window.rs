//! How long another instance's near cache serves a value after a change.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cache_core::Cache;

use crate::measure::{Rounds, percentile_us};

/// Where the two instances of the window case connect.
#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    /// One redis-server.
    Single(&'a str),
    /// A Redis Cluster (its node URLs).
    Cluster(&'a [String]),
}

/// How long another instance's near cache keeps serving a value after a
/// write or delete returned: a writer changes (or deletes) a key, a reader
/// with a near cache polls it until it sees the change. Measured idle and
/// with the reader under load (64 tasks reading other keys, 50,000 reads
/// per second in all). `case` names the JSON lines.
pub(crate) async fn near_invalidation_window(
    rounds: &mut Rounds,
    target: Target<'_>,
    quick: bool,
    case: &str,
) {
    let trials = if quick { 2_000 } else { 10_000 };
    let build = |near: bool| async move {
        let b = match target {
            Target::Single(url) => Cache::builder().redis_url(url),
            Target::Cluster(urls) => Cache::builder().redis_cluster(urls.to_vec()),
        }
        .namespace("benchwindow");
        if near { b.near_cache(10_000) } else { b }
            .build()
            .await
            .expect("cache")
    };
    let writer = build(false).await;
    let reader = build(true).await;
    let mut results = Vec::new();
    for loaded in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = Vec::new();
        if loaded {
            for t in 0..64u64 {
                let (reader, stop) = (reader.clone(), stop.clone());
                let key = format!("load:{}", t % 8);
                reader.set(&key, &t, None).await.expect("set");
                // 64 tasks, 50,000 reads per second in all (a busy service,
                // not a saturated machine: a reader that takes both cores
                // measures the scheduler, not the invalidation).
                load.push(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_micros(64 * 20));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let _ = reader.get::<u64>(&key).await;
                    }
                }));
            }
        }
        let mut ns = Vec::with_capacity(trials);
        let mut unconverged = 0u64;
        writer.set("window:1", &0u64, None).await.expect("set");
        for i in 1..=trials as u64 {
            // Warm the reader's near entry, then change it behind its back.
            let warm_until = Instant::now() + Duration::from_secs(1);
            while reader.get::<u64>("window:1").await.expect("get") != Some(i - 1)
                && Instant::now() < warm_until
            {
                tokio::task::yield_now().await;
            }
            let want = if i % 2 == 0 { Some(i) } else { None };
            match want {
                Some(v) => writer.set("window:1", &v, None).await.expect("set"),
                None => {
                    writer.delete("window:1").await.expect("delete");
                }
            }
            let written = Instant::now();
            let deadline = written + Duration::from_secs(1);
            loop {
                if reader.get::<u64>("window:1").await.expect("get") == want {
                    ns.push(written.elapsed().as_nanos() as u64);
                    break;
                }
                if Instant::now() > deadline {
                    unconverged += 1;
                    break;
                }
                tokio::task::yield_now().await;
            }
            if want.is_none() {
                writer.set("window:1", &i, None).await.expect("set");
            }
        }
        stop.store(true, Ordering::Relaxed);
        for task in load {
            let _ = task.await;
        }
        ns.sort_unstable();
        results.push((loaded, ns, unconverged));
    }
    for (loaded, ns, unconverged) in &results {
        let tag = if *loaded { "loaded" } else { "idle" };
        println!(
            "{}",
            serde_json::json!({
                "case": case,
                "reader": tag,
                "trials": trials,
                "p50_us": percentile_us(ns, 0.50),
                "p99_us": percentile_us(ns, 0.99),
                "max_us": ns.last().map_or(f64::NAN, |n| *n as f64 / 1000.0),
                "unconverged": unconverged,
            })
        );
        rounds.errors += *unconverged;
    }
    let (_, loaded_ns, _) = &results[1];
    let (_, idle_ns, _) = &results[0];
    rounds.p50_us.push(percentile_us(loaded_ns, 0.50));
    rounds.p99_us.push(percentile_us(loaded_ns, 0.99));
    rounds.push_extra("idle_p50_us", percentile_us(idle_ns, 0.50));
    rounds.push_extra("idle_p99_us", percentile_us(idle_ns, 0.99));
    rounds.push_extra(
        "loaded_max_us",
        loaded_ns.last().map_or(f64::NAN, |n| *n as f64 / 1000.0),
    );
}
