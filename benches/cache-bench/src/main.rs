//! `cache-bench`: the cached path side by side with what a user would pick
//! instead (raw redis-rs, a bb8 pool, moka), in one run, on one ~207-byte
//! customer payload, against a redis-server this binary starts itself.
//!
//! ```text
//! cargo run -p cache-bench --release -- --quick   # < 1 minute
//! cargo run -p cache-bench --release              # full run, < 10 minutes
//! ```
//!
//! Instruction counts per call (what a noisy shared machine does not move):
//!
//! ```text
//! cargo build -p cache-bench --release
//! TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind \
//!     --zero-before='*count_start*' --dump-before='*count_end*' \
//!     target/release/cache-bench --count 200000 --only cached_fn_memory
//! # instructions per call = the dump's `totals:` / 200000
//! ```
//!
//! Every throughput figure is ops/s with 64 concurrent tasks; every latency
//! figure is single-task p50/p99. Cases are interleaved (A B C … A B C …) for
//! several rounds and the median over rounds is reported. One JSON line per
//! case goes to stdout, then a readable table and each target with its
//! like-for-like baseline and verdict; progress goes to stderr.
//!
//! Modules: [`args`] (the command line and the case names), [`payload`] (the
//! record and the `#[cached]` functions), [`ops`] (one call per hit case, and
//! the setup they share), [`measure`](mod@measure) (throughput, latency, rounds, the
//! `--count` markers), [`cases`] (the cases that are not one call repeated),
//! [`report`] (JSON lines, the table, the targets) and [`svg`].

#[cfg(feature = "cached-crate")]
mod cached_crate;

mod args;
mod cases;
mod measure;
mod ops;
mod payload;
mod report;
mod svg;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cache_testkit::{RedisCluster, RedisSentinel, RedisServer};

use crate::args::{CASES, COUNT, Settings, parse_args, selected};
use crate::measure::{Rounds, TASKS, count_calls, measure};
use crate::ops::Setup;
use crate::payload::{BASE_ID, HIT_BODY_RUNS, bincode_len, customer};

fn main() {
    let settings = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(settings));
}

/// Starts the servers, builds every case, runs the selected cases for
/// `s.rounds` interleaved rounds (or counts calls with `--count`) and prints
/// the report.
async fn run(s: Settings) {
    let started = Instant::now();
    let server = RedisServer::start();
    let mut paused_server = RedisServer::start();
    // Started on first use: only the cluster case needs it.
    let mut cluster: Option<RedisCluster> = None;
    // Likewise, for the Sentinel cases.
    let mut sentinel: Option<std::sync::Arc<RedisSentinel>> = None;
    let url = server.url();
    eprintln!(
        "cache-bench: redis at {url}, payload {} bytes bincode (+3 envelope), {TASKS} tasks, {} rounds{}",
        bincode_len(&customer(BASE_ID)),
        s.rounds,
        if s.quick { " (quick)" } else { "" }
    );
    let mut hit = Setup::new(&url).await;

    // The cases measured by `measure` (one `Op` each), by name: `$body` runs
    // with `$op` bound to the case's op; `None` for the other cases.
    #[rustfmt::skip]
    macro_rules! with_op {
        ($name:expr, $op:ident => $body:expr) => {
            match $name {
                "raw_redis_get" => { let $op = &hit.raw; Some($body) }
                "raw_redis_get_nodelay" => { let $op = &hit.raw_nodelay; Some($body) }
                "raw_redis_get_nodelay_2conn" => { let $op = &hit.raw_nodelay_2conn; Some($body) }
                "pool_checkout_get" => { let $op = &hit.pooled; Some($body) }
                "cache_get_redis" => { let $op = &hit.get_redis; Some($body) }
                "cached_fn_redis" => { let $op = &hit.fn_redis; Some($body) }
                "cached_fn_redis_nagle" => { let $op = &hit.fn_redis_nagle; Some($body) }
                "cached_fn_redis_no_generations" => { let $op = &hit.fn_redis_gen; Some($body) }
                "cached_fn_near" => { let $op = &hit.fn_near; Some($body) }
                "moka_get" => { let $op = &hit.moka_op; Some($body) }
                "moka_get_string_key_ttl" => { let $op = &hit.moka_keyed_op; Some($body) }
                "cache_get_memory" => { let $op = &hit.get_memory; Some($body) }
                "cached_fn_memory" => { let $op = &hit.fn_memory; Some($body) }
                "cached_fn_redis_fail_safe" => { let $op = &hit.fn_redis_fail_safe; Some($body) }
                "cached_fn_redis_tags" => { let $op = &hit.fn_redis_tags; Some($body) }
                "cached_fn_near_fail_safe" => { let $op = &hit.fn_near_fail_safe; Some($body) }
                "cached_fn_near_tags" => { let $op = &hit.fn_near_tags; Some($body) }
                "cached_fn_memory_fail_safe" => { let $op = &hit.fn_memory_fail_safe; Some($body) }
                "cached_fn_memory_tags" => { let $op = &hit.fn_memory_tags; Some($body) }
                "miss_path" => { let $op = &hit.miss; Some($body) }
                #[cfg(feature = "cached-crate")]
                "cached_crate_redis_get" => { let $op = &hit.cc_get; Some($body) }
                _ => None,
            }
        };
    }

    if let Some(&calls) = COUNT.get() {
        for name in CASES.iter().filter(|c| selected(c)) {
            if with_op!(*name, op => count_calls(name, op, calls).await).is_none() {
                eprintln!("--count: {name} is not a single-call case; skipped");
            }
        }
        return;
    }

    // Warm-up: every hit op once over the hot set (checks the fills too).
    let warm = Settings {
        throughput: Duration::from_millis(200),
        latency: Duration::from_millis(50),
        ..s
    };
    let mut scratch = Rounds::default();
    for name in CASES.iter().filter(|c| selected(c) && **c != "miss_path") {
        with_op!(*name, op => measure(&mut scratch, op, warm).await);
    }
    assert_eq!(
        scratch.errors, 0,
        "warm-up: a hit case returned a wrong value or an error"
    );
    let hit_body_runs_before = HIT_BODY_RUNS.load(Ordering::Relaxed);

    let mut results: Vec<Rounds> = CASES.iter().map(|_| Rounds::default()).collect();
    for round in 0..s.rounds {
        eprintln!(
            "round {}/{} ({:.0?} elapsed)",
            round + 1,
            s.rounds,
            started.elapsed()
        );
        for (c, name) in CASES.iter().enumerate() {
            if !selected(name) {
                continue;
            }
            let r = &mut results[c];
            if with_op!(*name, op => measure(r, op, s).await).is_some() {
                continue;
            }
            match *name {
                "p50_paired_redis" => {
                    cases::paired_p50(r, &hit.raw, &hit.fn_redis, s.latency * 2).await;
                }
                "single_flight_1000" => cases::single_flight(r, &hit.redis_cache).await,
                "redis_paused" => cases::redis_paused(r, &mut paused_server, s).await,
                "invalidate_prefix_100k" => {
                    cases::invalidate_prefix(r, &hit.redis_cache_gen, &mut hit.raw_conn).await;
                }
                "near_invalidation_window" => {
                    let target = cases::Target::Single(&url);
                    cases::near_invalidation_window(r, target, s.quick, name).await;
                }
                "near_invalidation_window_cluster" => {
                    let urls = cluster.get_or_insert_with(|| RedisCluster::start(3)).urls();
                    let target = cases::Target::Cluster(&urls);
                    cases::near_invalidation_window(r, target, s.quick, name).await;
                }
                "write_with_300k_foreign_keys" => {
                    cases::write_with_foreign_keys(
                        r,
                        &hit.redis_cache,
                        &hit.redis_cache_gen,
                        &mut hit.raw_conn,
                    )
                    .await;
                }
                "invalidate_prefix_100k_generations" => {
                    cases::invalidate_prefix_generations(r, &hit.redis_cache).await;
                }
                "invalidate_wait_replicas" => {
                    let fixture = sentinel.get_or_insert_with(|| RedisSentinel::start().into());
                    cases::invalidate_wait_replicas(r, fixture, s).await;
                }
                "sentinel_failover" => {
                    let fixture = sentinel.get_or_insert_with(|| RedisSentinel::start().into());
                    cases::sentinel_failover(r, fixture).await;
                }
                #[cfg(feature = "cached-crate")]
                "cached_crate_flight_1000" => {
                    cached_crate::single_flight(r, &hit.cc_get.store).await;
                }
                #[cfg(feature = "cached-crate")]
                "cached_crate_paused" => cached_crate::redis_paused(r, &mut paused_server, s).await,
                other => unreachable!("unknown case {other}"),
            }
        }
    }
    let hit_body_runs = HIT_BODY_RUNS.load(Ordering::Relaxed) - hit_body_runs_before;

    report::report(&results, s, hit_body_runs, started.elapsed());
}
