//! The JSON lines and the readable table.

use std::time::Duration;

use crate::args::{CASES, SVG_PATH, Settings, selected};
use crate::measure::{Rounds, TASKS, median};
use crate::svg::svg_chart;

pub(crate) fn json_num(v: f64) -> serde_json::Value {
    if v.is_finite() {
        serde_json::json!((v * 100.0).round() / 100.0)
    } else {
        serde_json::Value::Null
    }
}

pub(crate) fn report(results: &[Rounds], s: Settings, hit_body_runs: u64, elapsed: Duration) {
    let case = |c: &str| &results[CASES.iter().position(|n| *n == c).expect("case")];
    let med = |c: &str, f: fn(&Rounds) -> &Vec<f64>| median(f(case(c)));
    for (name, r) in CASES.iter().zip(results) {
        if !selected(name) {
            continue;
        }
        let mut line = serde_json::Map::new();
        line.insert("case".into(), serde_json::json!(name));
        line.insert("ops_per_s".into(), json_num(median(&r.ops_per_s)));
        line.insert("p50_us".into(), json_num(median(&r.p50_us)));
        line.insert("p99_us".into(), json_num(median(&r.p99_us)));
        line.insert("errors".into(), serde_json::json!(r.errors));
        line.insert("rounds".into(), serde_json::json!(s.rounds));
        for (key, values) in [
            ("ops_per_s_rounds", &r.ops_per_s),
            ("p50_us_rounds", &r.p50_us),
            ("p99_us_rounds", &r.p99_us),
        ] {
            if !values.is_empty() {
                line.insert(
                    key.into(),
                    serde_json::Value::Array(values.iter().map(|v| json_num(*v)).collect()),
                );
            }
        }
        for (k, v) in &r.extra {
            line.insert((*k).into(), json_num(median(v)));
            if *k == "body_runs" {
                line.insert("body_runs_max".into(), json_num(r.extra_max("body_runs")));
            }
        }
        if name.starts_with("cached_fn") {
            line.insert(
                "hit_body_runs_during_run".into(),
                serde_json::json!(hit_body_runs),
            );
        }
        println!("{}", serde_json::Value::Object(line));
    }

    println!();
    println!(
        "{:<28} {:>14} {:>10} {:>10} {:>9} {:>7}  notes",
        "case", "ops/s (64t)", "p50 us", "p99 us", "cpu us/op", "errors"
    );
    for (name, r) in CASES.iter().zip(results) {
        if !selected(name) {
            continue;
        }
        let note = match *name {
            "single_flight_1000" | "cached_crate_flight_1000" => format!(
                "body runs {} (max {}), wall {:.1} ms",
                r.extra_median("body_runs").unwrap_or(f64::NAN),
                r.extra_max("body_runs"),
                r.extra_median("wall_ms").unwrap_or(f64::NAN)
            ),
            "p50_paired_redis" => format!(
                "raw_redis_get p50 {:.1} us in the same phase; p50 delta {:+.1} us, median per-pair delta {:+.1} us",
                r.extra_median("raw_p50_us").unwrap_or(f64::NAN),
                r.extra_median("p50_delta_us").unwrap_or(f64::NAN),
                r.extra_median("paired_diff_median_us").unwrap_or(f64::NAN)
            ),
            "redis_paused" => format!(
                "same cache healthy p99 {:.1} us ({:+.1} us), breaker open after {:.0} ms",
                r.extra_median("healthy_p99_us").unwrap_or(f64::NAN),
                r.extra_median("added_p99_vs_healthy_us")
                    .unwrap_or(f64::NAN),
                r.extra_median("breaker_open_after_ms").unwrap_or(f64::NAN)
            ),
            "cached_crate_paused" => format!(
                "{:.0} calls per round, {:.0} cut off at 2 s; healthy p99 {:.1} us",
                r.extra_median("calls").unwrap_or(f64::NAN),
                r.extra_median("cut_off_at_2s").unwrap_or(f64::NAN),
                r.extra_median("healthy_p99_us").unwrap_or(f64::NAN)
            ),
            "near_invalidation_window" => format!(
                "another instance's change reaches a near cache in p50 {:.1} / p99 {:.1} us idle; loaded: p99 {:.1} us, max {:.1} us (target p99 <= 500 us)",
                r.extra_median("idle_p50_us").unwrap_or(f64::NAN),
                r.extra_median("idle_p99_us").unwrap_or(f64::NAN),
                r.p99_us.first().copied().unwrap_or(f64::NAN),
                r.extra_median("loaded_max_us").unwrap_or(f64::NAN)
            ),
            "write_with_300k_foreign_keys" => format!(
                "p50 {:.1} us with 300k foreign keys vs {:.1} us empty (x{:.2}, target <= 2); with SCAN: {:.0} us vs {:.0} us",
                r.extra_median("ratio_300k_vs_empty").unwrap_or(f64::NAN)
                    * r.extra_median("empty_p50_us").unwrap_or(f64::NAN),
                r.extra_median("empty_p50_us").unwrap_or(f64::NAN),
                r.extra_median("ratio_300k_vs_empty").unwrap_or(f64::NAN),
                r.extra_median("scan_300k_p50_us").unwrap_or(f64::NAN),
                r.extra_median("scan_empty_p50_us").unwrap_or(f64::NAN)
            ),
            "invalidate_prefix_100k" | "invalidate_prefix_100k_generations" => format!(
                "{:.0} keys in {:.1} ms (fill {:.0} ms); ops/s = keys/s",
                r.extra_median("keys").unwrap_or(f64::NAN),
                r.extra_median("invalidate_ms").unwrap_or(f64::NAN),
                r.extra_median("fill_ms").unwrap_or(f64::NAN)
            ),
            _ => String::new(),
        };
        let fmt = |v: f64| {
            if v.is_nan() {
                "-".to_owned()
            } else {
                format!("{v:.1}")
            }
        };
        println!(
            "{:<28} {:>14} {:>10} {:>10} {:>9} {:>7}  {note}",
            name,
            fmt(median(&r.ops_per_s).round()),
            fmt(median(&r.p50_us)),
            fmt(median(&r.p99_us)),
            r.extra_median("client_cpu_us_per_op")
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
            r.errors
        );
    }

    let ops = |c: &str| med(c, |r| &r.ops_per_s);
    let p50 = |c: &str| med(c, |r| &r.p50_us);
    // The same ratio taken within each round (both cases ran back to back),
    // as "median [min-max]": steadier than a ratio of medians on a busy machine.
    let per_round = |a: &str, b: &str| {
        let at = |c: &str| &case(c).ops_per_s;
        let mut r: Vec<f64> = at(a).iter().zip(at(b)).map(|(x, y)| x / y).collect();
        r.retain(|v| v.is_finite());
        r.sort_by(f64::total_cmp);
        match (r.first(), r.last()) {
            (Some(lo), Some(hi)) => format!("; per round {:.2} [{lo:.2}-{hi:.2}]", median(&r)),
            _ => String::new(),
        }
    };
    let ratio_redis = ops("cached_fn_redis") / ops("raw_redis_get");
    let p50_delta = p50("cached_fn_redis") - p50("raw_redis_get");
    let ratio_mem = ops("cached_fn_memory") / ops("moka_get");
    let flight_max = case("single_flight_1000").extra_max("body_runs");
    if cfg!(feature = "cached-crate") {
        let runs = case("cached_crate_flight_1000")
            .extra_median("body_runs")
            .unwrap_or(f64::NAN);
        println!(
            "  cached crate (get, miss -> body -> set) body runs for 1000 cold callers = {runs} (median)"
        );
        let paused = case("cached_crate_paused");
        println!(
            "  cached crate with Redis paused: p50 {:.0} us, errors {} of {} calls",
            median(&paused.p50_us),
            paused.errors,
            paused
                .extra_values("calls")
                .map_or(0.0, |v| v.iter().sum::<f64>())
        );
    }
    let paused_p99 = med("redis_paused", |r| &r.p99_us);
    let added = paused_p99 - med("cached_fn_redis", |r| &r.p99_us);
    let paused_errors = case("redis_paused").errors;
    let verdict = |ok: bool| if ok { "MET" } else { "MISSED (or not run)" };
    println!();
    println!("targets (medians of {} interleaved rounds):", s.rounds);
    println!(
        "  cached_fn_redis / raw_redis_get ops/s    = {ratio_redis:.3} (target >= 0.95) {}{}",
        verdict(ratio_redis >= 0.95),
        per_round("cached_fn_redis", "raw_redis_get")
    );
    println!(
        "  cached_fn_redis p50 - raw p50            = {p50_delta:+.1} us (separate phases; informational)"
    );
    let paired_delta = case("p50_paired_redis")
        .extra_median("p50_delta_us")
        .unwrap_or(f64::NAN);
    println!(
        "  cached_fn_redis p50 - raw p50, paired     = {paired_delta:+.1} us (calls alternated in one phase; target <= +10 us) {}",
        verdict(paired_delta <= 10.0)
    );
    if cfg!(feature = "cached-crate") {
        let ratio = ops("cached_fn_redis") / ops("cached_crate_redis_get");
        println!(
            "  cached_fn_redis / cached_crate_redis_get = {ratio:.3} (target >= 0.95) {}{}",
            verdict(ratio >= 0.95),
            per_round("cached_fn_redis", "cached_crate_redis_get")
        );
    }
    println!(
        "  cached_fn_memory / moka_get ops/s        = {ratio_mem:.3} (target >= 0.8) {}{}",
        verdict(ratio_mem >= 0.8),
        per_round("cached_fn_memory", "moka_get")
    );
    println!(
        "  single-flight body runs (max over rounds) = {flight_max} (target 1) {}",
        verdict(flight_max == 1.0)
    );
    println!(
        "  paused Redis p99 (breaker open)           = {paused_p99:.1} us absolute, {added:+.1} us vs cached_fn_redis p99, errors {paused_errors} (target: added <= 1000 us, 0 errors) {}",
        verdict(paused_p99.max(added) <= 1000.0 && paused_errors == 0)
    );
    // Informational ratios: what each difference between cases costs.
    let info = |a: &str, b: &str, note: &str, rounds: bool| {
        println!(
            "  {:<40} = {:.3} ({note}){}",
            format!("{a} / {b}"),
            ops(a) / ops(b),
            if rounds {
                per_round(a, b)
            } else {
                String::new()
            }
        );
    };
    info(
        "cached_fn_redis_nagle",
        "raw_redis_get",
        "the same with CacheBuilder::tcp_nodelay(false)",
        true,
    );
    info(
        "cached_fn_redis",
        "raw_redis_get_nodelay",
        "cache-core's own overhead, same TCP settings",
        true,
    );
    info(
        "raw_redis_get_nodelay_2conn",
        "raw_redis_get_nodelay",
        "what a second connection costs; cache-core uses one",
        false,
    );
    info(
        "raw_redis_get_nodelay",
        "raw_redis_get",
        &format!("what TCP_NODELAY costs or gains at {TASKS} tasks"),
        false,
    );
    info(
        "moka_get_string_key_ttl",
        "moka_get",
        "what a string key and a TTL per entry cost moka itself",
        true,
    );
    info(
        "cached_fn_memory",
        "moka_get_string_key_ttl",
        "cache-core's own overhead over moka used that way",
        true,
    );
    info(
        "pool_checkout_get",
        "raw_redis_get",
        "why the pool is not on the hit path",
        false,
    );
    println!(
        "  #[cached] hit bodies run during the measured rounds: {hit_body_runs} (0 = every measured call was a hit)"
    );
    println!("total time {elapsed:.1?}");

    if let Some(path) = SVG_PATH.get() {
        let rows: Vec<(&str, f64)> = CASES
            .iter()
            .zip(results)
            .map(|(name, r)| (*name, median(&r.ops_per_s)))
            .filter(|(name, v)| selected(name) && v.is_finite() && *v > 0.0)
            .collect();
        let title = format!(
            "median ops/s, {TASKS} tasks, {} interleaved rounds{} (log scale)",
            s.rounds,
            if s.quick { ", --quick" } else { "" }
        );
        match std::fs::write(path, svg_chart(&title, &rows)) {
            Ok(()) => eprintln!("wrote {path}"),
            Err(e) => eprintln!("could not write {path}: {e}"),
        }
    }
}
