//! The command line: the case names, `--quick`, `--rounds`, `--only`,
//! `--count`, `--svg` and `--help`.

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

/// Every case, in the order each round runs them.
pub(crate) static CASES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let mut cases = vec![
        "raw_redis_get",
        "raw_redis_get_nodelay",
        "raw_redis_get_nodelay_2conn",
        "pool_checkout_get",
        "cache_get_redis",
        "cached_fn_redis",
        "cached_fn_redis_nagle",
        "cached_fn_redis_no_generations",
        "cached_fn_near",
        "cached_fn_redis_fail_safe",
        "cached_fn_redis_tags",
        "cached_fn_near_fail_safe",
        "cached_fn_near_tags",
        "p50_paired_redis",
        "moka_get",
        "moka_get_string_key_ttl",
        "cache_get_memory",
        "cached_fn_memory",
        "cached_fn_memory_fail_safe",
        "cached_fn_memory_tags",
        "miss_path",
        "single_flight_1000",
        "redis_paused",
        "invalidate_prefix_100k",
        "invalidate_prefix_100k_generations",
        "write_with_300k_foreign_keys",
        "near_invalidation_window",
        "near_invalidation_window_cluster",
        "invalidate_wait_replicas",
        "sentinel_failover",
    ];
    if cfg!(feature = "cached-crate") {
        let at = |cases: &Vec<&str>, after: &str| {
            cases.iter().position(|c| *c == after).expect("case") + 1
        };
        let i = at(&cases, "cached_fn_redis");
        cases.insert(i, "cached_crate_redis_get");
        let i = at(&cases, "single_flight_1000");
        cases.insert(i, "cached_crate_flight_1000");
        let i = at(&cases, "redis_paused");
        cases.insert(i, "cached_crate_paused");
    }
    cases
});

/// Where `--svg` writes the ops/s chart.
pub(crate) static SVG_PATH: OnceLock<String> = OnceLock::new();

/// `--count N`: run each selected hit case for exactly N sequential calls
/// between the `count_start` and `count_end` markers, for instruction
/// counting (see [`crate::measure::count_calls`]).
pub(crate) static COUNT: OnceLock<u64> = OnceLock::new();

/// Cases selected with `--only` (all when unset).
pub(crate) static ONLY: OnceLock<Vec<String>> = OnceLock::new();

pub(crate) fn selected(case: &str) -> bool {
    ONLY.get().is_none_or(|only| only.iter().any(|c| c == case))
}

#[derive(Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) rounds: usize,
    pub(crate) throughput: Duration,
    pub(crate) latency: Duration,
    pub(crate) quick: bool,
}

/// Prints `message` and exits with status 2 (bad command line).
fn usage_error(message: &str) -> ! {
    eprintln!("{message} (try --help)");
    std::process::exit(2);
}

/// Reads the command line; prints usage and exits on `--help` or bad input.
pub(crate) fn parse_args() -> Settings {
    let mut quick = false;
    let mut rounds = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--rounds" => {
                rounds = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| usage_error("--rounds takes a number")),
                );
            }
            "--only" => {
                let list: Vec<String> = args
                    .next()
                    .unwrap_or_else(|| usage_error("--only takes a comma-separated list of cases"))
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                for c in &list {
                    if !CASES.contains(&c.as_str()) {
                        eprintln!("unknown case {c:?}; cases: {}", CASES.join(", "));
                        std::process::exit(2);
                    }
                }
                let _ = ONLY.set(list);
            }
            "--count" => {
                let calls = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage_error("--count takes a number of calls"));
                let _ = COUNT.set(calls);
            }
            "--svg" => {
                let path = args
                    .next()
                    .unwrap_or_else(|| usage_error("--svg takes a file path"));
                let _ = SVG_PATH.set(path);
            }
            "-h" | "--help" => {
                println!(
                    "cache-bench [--quick] [--rounds N] [--only case,case] [--svg FILE] [--count N]\n  --quick   short durations (< 1 minute)\n  --rounds  interleaved rounds (default 7, quick 3)\n  --svg     also write a bar chart of median ops/s (SVG)\n  --count   instead of timing, run each selected hit case N times in one task\n            between two marker functions, for callgrind (see count_start)\n  --only    run only these cases: {}",
                    CASES.join(", ")
                );
                std::process::exit(0);
            }
            other => {
                eprintln!("unknown argument {other:?} (try --help)");
                std::process::exit(2);
            }
        }
    }
    if quick {
        Settings {
            rounds: rounds.unwrap_or(3),
            throughput: Duration::from_millis(500),
            latency: Duration::from_millis(200),
            quick,
        }
    } else {
        Settings {
            rounds: rounds.unwrap_or(7),
            throughput: Duration::from_secs(2),
            latency: Duration::from_secs(1),
            quick,
        }
    }
}
