//! The targets, each judged against its like-for-like baseline, and the
//! informational ratios between cases.

use crate::args::{CASES, Settings, selected};
use crate::measure::{Rounds, TASKS, median};

use super::{delta, ratio, target_ratio, time};

/// Lookups into one run's results by case name.
pub(super) struct Run<'a> {
    pub(super) results: &'a [Rounds],
}

impl Run<'_> {
    /// The case's rounds, when it exists in this build and was selected.
    fn case(&self, name: &str) -> Option<&Rounds> {
        let i = CASES.iter().position(|c| *c == name)?;
        selected(name).then(|| &self.results[i])
    }

    /// `a`'s ops/s over `b`'s, and the same ratio taken within each round
    /// (both cases ran back to back) as "median [min–max]": steadier than a
    /// ratio of medians on a busy machine.
    fn ratio(&self, a: &str, b: &str) -> (f64, String) {
        let (Some(ra), Some(rb)) = (self.case(a), self.case(b)) else {
            return (f64::NAN, String::new());
        };
        let mut per: Vec<f64> = ra
            .ops_per_s
            .iter()
            .zip(&rb.ops_per_s)
            .map(|(x, y)| x / y)
            .filter(|v| v.is_finite())
            .collect();
        per.sort_by(f64::total_cmp);
        let rounds = match (per.first(), per.last()) {
            (Some(lo), Some(hi)) if per.len() > 1 => {
                format!(" (per round {:.2} [{lo:.2}–{hi:.2}])", median(&per))
            }
            _ => String::new(),
        };
        (median(&ra.ops_per_s) / median(&rb.ops_per_s), rounds)
    }

    /// Why a target has no verdict: the cases it needs that this run did not
    /// measure (not built in, or left out by `--only`); `None` when all ran.
    fn missing(&self, needs: &[&str]) -> Option<String> {
        if needs.iter().any(|c| !CASES.contains(c)) {
            return Some("not measured in this run (build with --features cached-crate)".into());
        }
        let left_out: Vec<&str> = needs.iter().copied().filter(|c| !selected(c)).collect();
        (!left_out.is_empty()).then(|| {
            format!(
                "not measured in this run (needs {} in --only)",
                left_out.join(", ")
            )
        })
    }
}

/// One target: `what` (the case against its baseline), then the measured
/// value, the target and the verdict ("met" / "missed"), or why it was not
/// measured.
fn target(
    run: &Run<'_>,
    needs: &[&str],
    what: &str,
    value: impl FnOnce() -> (String, &'static str, bool),
) {
    match run.missing(needs) {
        Some(why) => println!("  {what}: {why}"),
        None => {
            let (value, target, ok) = value();
            let verdict = if ok { "met" } else { "missed" };
            println!("  {what}: {value} — target {target}: {verdict}");
        }
    }
}

#[allow(clippy::too_many_lines)]
pub(super) fn print_targets(run: &Run<'_>, s: Settings) {
    println!(
        "targets (medians of {} interleaved round{}; each against its like-for-like baseline):",
        s.rounds,
        if s.rounds == 1 { "" } else { "s" }
    );
    target(
        run,
        &["cached_fn_redis", "raw_redis_get_nodelay"],
        "cached_fn_redis vs raw redis-rs GET, same TCP setting (raw_redis_get_nodelay)",
        || {
            let (v, rounds) = run.ratio("cached_fn_redis", "raw_redis_get_nodelay");
            (
                format!("{} ops/s{rounds}", target_ratio(v)),
                "≥ 0.95×",
                v >= 0.95,
            )
        },
    );
    target(
        run,
        &["p50_paired_redis"],
        "cached_fn_redis vs raw redis-rs GET, one task, calls alternated (p50_paired_redis)",
        || {
            let d = run
                .case("p50_paired_redis")
                .and_then(|r| r.extra_median("p50_delta_us"))
                .unwrap_or(f64::NAN);
            (format!("p50 {}", delta(d)), "≤ +10 µs", d <= 10.0)
        },
    );
    target(
        run,
        &["cached_fn_redis", "cached_fn_redis_no_generations"],
        "cached_fn_redis_no_generations vs cached_fn_redis (what prefix generations cost a Redis \
         hit)",
        || {
            let (v, rounds) = run.ratio("cached_fn_redis_no_generations", "cached_fn_redis");
            (
                format!("{} ops/s{rounds}", target_ratio(v)),
                "≤ 1.05×",
                v <= 1.05,
            )
        },
    );
    target(
        run,
        &["cached_fn_redis", "cached_crate_redis_get"],
        "cached_fn_redis vs the cached crate's Redis hit (cached_crate_redis_get)",
        || {
            let (v, rounds) = run.ratio("cached_fn_redis", "cached_crate_redis_get");
            (
                format!("{} ops/s{rounds}", target_ratio(v)),
                "≥ 0.95×",
                v >= 0.95,
            )
        },
    );
    target(
        run,
        &["cached_fn_memory", "moka_get_string_key_ttl"],
        "cached_fn_memory vs moka keyed the same way (moka_get_string_key_ttl)",
        || {
            let (v, rounds) = run.ratio("cached_fn_memory", "moka_get_string_key_ttl");
            (
                format!("{} ops/s{rounds}", target_ratio(v)),
                "≥ 0.8×",
                v >= 0.8,
            )
        },
    );
    target(
        run,
        &["cached_fn_near", "moka_get_string_key_ttl"],
        "cached_fn_near vs moka keyed the same way (moka_get_string_key_ttl)",
        || {
            let (v, rounds) = run.ratio("cached_fn_near", "moka_get_string_key_ttl");
            (
                format!("{} ops/s{rounds}", target_ratio(v)),
                "≥ 0.8×",
                v >= 0.8,
            )
        },
    );
    target(
        run,
        &["cached_fn_near", "cached_crate_redis_get"],
        "cached_fn_near vs the cached crate's Redis hit (cached_crate_redis_get)",
        || {
            let (v, rounds) = run.ratio("cached_fn_near", "cached_crate_redis_get");
            (
                format!("{} ops/s{rounds}", target_ratio(v)),
                "≥ 20×",
                v >= 20.0,
            )
        },
    );
    target(
        run,
        &["single_flight_1000"],
        "1,000 concurrent cold callers of one key (single_flight_1000)",
        || {
            let max = run
                .case("single_flight_1000")
                .map_or(f64::NAN, |r| r.extra_max("body_runs"));
            (
                format!("body runs {max} (max over rounds)"),
                "1",
                max == 1.0,
            )
        },
    );
    target(
        run,
        &["redis_paused"],
        "Redis paused, breaker open (redis_paused) vs a healthy Redis hit",
        || {
            let Some(r) = run.case("redis_paused") else {
                return (String::new(), "", false);
            };
            let paused = median(&r.p99_us);
            // The healthy cached_fn_redis case when it ran; otherwise the same
            // cache measured healthy just before the pause.
            let (baseline, healthy) = match run.case("cached_fn_redis") {
                Some(h) => ("cached_fn_redis", median(&h.p99_us)),
                None => (
                    "the same cache before the pause",
                    r.extra_median("healthy_p99_us").unwrap_or(f64::NAN),
                ),
            };
            let added = paused - healthy;
            (
                format!(
                    "p99 {} ({} vs {baseline}), {} errors",
                    time(paused),
                    delta(added),
                    r.errors
                ),
                "added ≤ 1 ms and 0 errors",
                paused.max(added) <= 1000.0 && r.errors == 0,
            )
        },
    );
    for (case, label) in [
        (
            "near_invalidation_window",
            "another instance's change reaches a near cache (near_invalidation_window)",
        ),
        (
            "near_invalidation_window_cluster",
            "the same on a 3-master Redis Cluster (near_invalidation_window_cluster)",
        ),
    ] {
        target(run, &[case], label, || {
            let Some(r) = run.case(case) else {
                return (String::new(), "", false);
            };
            let idle = r.extra_median("idle_p99_us").unwrap_or(f64::NAN);
            let loaded = median(&r.p99_us);
            (
                format!(
                    "p99 {} idle, {} with the reader under load",
                    time(idle),
                    time(loaded)
                ),
                "≤ 500 µs",
                idle.max(loaded) <= 500.0,
            )
        });
    }
    target(
        run,
        &["write_with_300k_foreign_keys"],
        "a write with 300,000 foreign keys vs the same write in an empty database \
         (write_with_300k_foreign_keys)",
        || {
            let v = run
                .case("write_with_300k_foreign_keys")
                .and_then(|r| r.extra_median("ratio_300k_vs_empty"))
                .unwrap_or(f64::NAN);
            (format!("p50 {}", target_ratio(v)), "≤ 2×", v <= 2.0)
        },
    );
}

// ----- informational ratios -------------------------------------------------------

/// What each difference between cases costs; no targets.
pub(super) fn print_info(run: &Run<'_>, hit_body_runs: u64) {
    let mut lines = Vec::new();
    let mut info = |a: &str, b: &str, note: &str| {
        if run.missing(&[a, b]).is_none() {
            let (v, rounds) = run.ratio(a, b);
            lines.push(format!("{a} vs {b}: {} ops/s{rounds} — {note}", ratio(v)));
        }
    };
    info(
        "cached_fn_redis",
        "raw_redis_get",
        "against redis-rs defaults (Nagle on), a different TCP setting",
    );
    info(
        "cached_fn_redis_nagle",
        "raw_redis_get",
        "the same with CacheBuilder::tcp_nodelay(false)",
    );
    info(
        "raw_redis_get_nodelay_2conn",
        "raw_redis_get_nodelay",
        "what a second connection costs; cache-core uses one",
    );
    info(
        "raw_redis_get_nodelay",
        "raw_redis_get",
        &format!("what TCP_NODELAY costs or gains at {TASKS} tasks"),
    );
    info(
        "moka_get_string_key_ttl",
        "moka_get",
        "what a string key and a TTL per entry cost moka itself",
    );
    info(
        "cached_fn_memory",
        "moka_get",
        "against moka with a u64 key and no TTL, which #[cached] cannot use",
    );
    info(
        "pool_checkout_get",
        "raw_redis_get",
        "why the pool is not on the hit path",
    );
    for (with, plain) in [
        ("cached_fn_redis_fail_safe", "cached_fn_redis"),
        ("cached_fn_redis_tags", "cached_fn_redis"),
        ("cached_fn_near_fail_safe", "cached_fn_near"),
        ("cached_fn_near_tags", "cached_fn_near"),
        ("cached_fn_memory_fail_safe", "cached_fn_memory"),
        ("cached_fn_memory_tags", "cached_fn_memory"),
    ] {
        info(with, plain, "what fail_safe or one tag costs a hit");
    }
    if run.missing(&["cached_fn_redis", "raw_redis_get"]).is_none() {
        let p50 = |c: &str| run.case(c).map_or(f64::NAN, |r| median(&r.p50_us));
        lines.push(format!(
            "cached_fn_redis vs raw_redis_get, single-task p50: {} — separate phases, see \
             p50_paired_redis for the same phase",
            delta(p50("cached_fn_redis") - p50("raw_redis_get"))
        ));
    }
    if let Some(r) = run.case("cached_crate_flight_1000") {
        lines.push(format!(
            "the cached crate (get, miss -> body -> set), 1,000 cold callers of one key: the \
             body ran {} times (median)",
            r.extra_median("body_runs").unwrap_or(f64::NAN)
        ));
    }
    if let Some(r) = run.case("cached_crate_paused") {
        lines.push(format!(
            "the cached crate with Redis paused: p50 {}, errors {} of {} calls",
            time(median(&r.p50_us)),
            r.errors,
            r.extra_values("calls")
                .map_or(0.0, |v| v.iter().sum::<f64>())
        ));
    }
    if CASES
        .iter()
        .any(|c| c.starts_with("cached_fn") && selected(c))
    {
        lines.push(format!(
            "#[cached] hit bodies run during the measured rounds: {hit_body_runs} (0 = every \
             measured call was a hit)"
        ));
    }
    if !lines.is_empty() {
        println!();
        println!("for context (no targets):");
        for line in lines {
            println!("  {line}");
        }
    }
}
