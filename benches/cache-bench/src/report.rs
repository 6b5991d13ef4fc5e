//! What a run prints: one JSON line per case, then a table for a reader and
//! each target with its verdict against its like-for-like baseline.

use std::time::Duration;

use crate::args::{CASES, SVG_PATH, Settings, selected};
use crate::measure::{Rounds, TASKS, median};
use crate::svg::svg_chart;

mod targets;

use targets::{Run, print_info, print_targets};

pub(crate) fn json_num(v: f64) -> serde_json::Value {
    if v.is_finite() {
        serde_json::json!((v * 100.0).round() / 100.0)
    } else {
        serde_json::Value::Null
    }
}

/// Prints the JSON lines, the table, the targets and the informational
/// ratios, and writes the `--svg` chart.
pub(crate) fn report(results: &[Rounds], s: Settings, hit_body_runs: u64, elapsed: Duration) {
    let run = Run { results };
    print_json(results, s, hit_body_runs);
    println!();
    print_table(results);
    println!();
    print_targets(&run, s);
    print_info(&run, hit_body_runs);
    println!("total time {elapsed:.1?}");
    if let Some(path) = SVG_PATH.get() {
        write_svg(path, results, s);
    }
}

fn print_json(results: &[Rounds], s: Settings, hit_body_runs: u64) {
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
}

// ----- formatting -------------------------------------------------------------

/// A duration given in microseconds, in the unit that reads best.
fn time(us: f64) -> String {
    if !us.is_finite() {
        "-".to_owned()
    } else if us.abs() < 10.0 {
        format!("{us:.2} µs")
    } else if us.abs() < 1_000.0 {
        format!("{us:.1} µs")
    } else if us.abs() < 1_000_000.0 {
        format!("{:.1} ms", us / 1_000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

/// A signed difference in microseconds (`+1.3 µs`, `-0.2 ms`).
fn delta(us: f64) -> String {
    if us.is_finite() && us >= 0.0 {
        format!("+{}", time(us))
    } else {
        time(us)
    }
}

/// A count or a rate with thousands separators (`1,841,682`).
fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

/// A ratio (`0.93×`).
fn ratio(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}×")
    } else {
        "-".to_owned()
    }
}

/// A ratio judged against a target, precise enough that the verdict can be
/// read from it (`0.951×`).
fn target_ratio(v: f64) -> String {
    if !v.is_finite() {
        "-".to_owned()
    } else if v < 10.0 {
        format!("{v:.3}×")
    } else {
        format!("{v:.1}×")
    }
}

/// Rows printed in columns as wide as their widest cell; the first column is
/// left-aligned, the others right-aligned, and the last one (notes) is not
/// padded.
fn print_columns(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width = |c: usize| {
        rows.iter()
            .filter_map(|r| r.get(c))
            .map(|cell| cell.chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..cols).map(width).collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            match c {
                0 => line.push_str(&format!("{cell:<w$}", w = widths[c])),
                _ if c + 1 == cols => line.push_str(&format!("  {cell}")),
                _ => line.push_str(&format!("  {cell:>w$}", w = widths[c])),
            }
        }
        println!("{}", line.trim_end());
    }
}

// ----- the table ----------------------------------------------------------------

/// Cases that are one operation each round (not a rate): reported as the
/// time that operation took, not as operations per second.
fn per_operation(case: &str) -> bool {
    matches!(
        case,
        "single_flight_1000"
            | "cached_crate_flight_1000"
            | "invalidate_prefix_100k"
            | "invalidate_prefix_100k_generations"
            | "write_with_300k_foreign_keys"
            | "sentinel_failover"
    )
}

fn print_table(results: &[Rounds]) {
    println!(
        "ops/s: {TASKS} concurrent tasks; p50/p99: one task; time per op: cases that run one \
         operation per round (medians over rounds)"
    );
    let mut rows = vec![
        [
            "case",
            "ops/s",
            "time per op",
            "p50",
            "p99",
            "client CPU/op",
            "errors",
            "notes",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for (name, r) in CASES.iter().zip(results) {
        if !selected(name) {
            continue;
        }
        let x = |k: &str| r.extra_median(k).unwrap_or(f64::NAN);
        let (ops, per_op, p50, p99) = if per_operation(name) {
            let per_op = match *name {
                "invalidate_prefix_100k" | "invalidate_prefix_100k_generations" => {
                    x("invalidate_ms") * 1000.0
                }
                "write_with_300k_foreign_keys" | "sentinel_failover" => median(&r.p50_us),
                _ => x("wall_ms") * 1000.0,
            };
            ("-".to_owned(), time(per_op), "-".to_owned(), "-".to_owned())
        } else {
            (
                thousands(median(&r.ops_per_s)),
                "-".to_owned(),
                time(median(&r.p50_us)),
                time(median(&r.p99_us)),
            )
        };
        rows.push(vec![
            (*name).to_owned(),
            ops,
            per_op,
            p50,
            p99,
            time(x("client_cpu_us_per_op")),
            r.errors.to_string(),
            note(name, r),
        ]);
    }
    print_columns(&rows);
}

fn note(name: &str, r: &Rounds) -> String {
    let x = |k: &str| r.extra_median(k).unwrap_or(f64::NAN);
    match name {
        "single_flight_1000" | "cached_crate_flight_1000" => format!(
            "1,000 concurrent cold callers of one key (50 ms body): body runs {} (max {})",
            x("body_runs"),
            r.extra_max("body_runs"),
        ),
        "p50_paired_redis" => format!(
            "raw_redis_get alternated with cached_fn_redis in one task: raw p50 {}, p50 delta {}, \
             median per-pair delta {}",
            time(x("raw_p50_us")),
            delta(x("p50_delta_us")),
            delta(x("paired_diff_median_us")),
        ),
        "redis_paused" => format!(
            "hits from the in-memory fallback; the same cache healthy: p99 {} ({}); breaker open \
             after {}",
            time(x("healthy_p99_us")),
            delta(x("added_p99_vs_healthy_us")),
            time(x("breaker_open_after_ms") * 1000.0),
        ),
        "cached_crate_paused" => format!(
            "{:.0} calls per round, {:.0} cut off at 2 s; healthy p99 {}",
            x("calls"),
            x("cut_off_at_2s"),
            time(x("healthy_p99_us")),
        ),
        "near_invalidation_window" | "near_invalidation_window_cluster" => format!(
            "another instance's change seen by a near cache after: idle p50 {} / p99 {}; \
             reader under load (p50/p99 columns) max {}",
            time(x("idle_p50_us")),
            time(x("idle_p99_us")),
            time(x("loaded_max_us")),
        ),
        "write_with_300k_foreign_keys" => format!(
            "p50 of delete + invalidate_prefix with 300,000 foreign keys; with none: {} (ratio {}); \
             with SCAN instead of generations: {} vs {}",
            time(x("empty_p50_us")),
            ratio(x("ratio_300k_vs_empty")),
            time(x("scan_300k_p50_us")),
            time(x("scan_empty_p50_us")),
        ),
        "invalidate_wait_replicas" => format!(
            "delete of an existing key with WAIT 1 (p50/p99 columns) vs without: {} / {} ({}); \
             invalidate_prefix {} vs {}",
            time(x("no_wait_delete_p50_us")),
            time(x("no_wait_delete_p99_us")),
            ratio(x("delete_wait_over_no_wait")),
            time(x("wait_prefix_p50_us")),
            time(x("no_wait_prefix_p50_us")),
        ),
        "sentinel_failover" => format!(
            "time per op: +switch-master to the cache following; from SENTINEL FAILOVER {}; \
             WAIT 1 replayed {} after following; deletes lost: {:.0} of {:.0} with WAIT 1, \
             {:.0} of {:.0} without",
            time(x("asked_to_followed_ms") * 1000.0),
            time(x("wait_replayed_after_followed_ms") * 1000.0),
            x("wait_deletes_lost"),
            x("wait_deletes"),
            x("no_wait_deletes_lost"),
            x("no_wait_deletes"),
        ),
        "invalidate_prefix_100k" | "invalidate_prefix_100k_generations" => format!(
            "invalidate_prefix over {} keys ({}); filling them took {}",
            thousands(x("keys")),
            if name.ends_with("generations") {
                "prefix generations: one write"
            } else {
                "SCAN + UNLINK"
            },
            time(x("fill_ms") * 1000.0),
        ),
        _ => String::new(),
    }
}

fn write_svg(path: &str, results: &[Rounds], s: Settings) {
    let rows: Vec<(&str, f64)> = CASES
        .iter()
        .zip(results)
        .filter(|(name, _)| !per_operation(name))
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
