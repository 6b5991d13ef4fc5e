//! How a case is measured: throughput with concurrent tasks, single-task
//! latency, paired latency, the per-round figures, and the `--count` loop
//! between two marker functions for callgrind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::args::Settings;
use crate::ops::Op;
use crate::payload::HOT_KEYS;

/// Concurrent tasks in the throughput measurements.
pub(crate) const TASKS: usize = 64;

/// CPU time (user + system) this process has used, from `/proc/self/stat`
/// (clock ticks, assumed 100 Hz). Excludes redis-server (another process).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Client CPU microseconds per operation of the last [`throughput`] run.
pub(crate) static LAST_CPU_US_PER_OP: std::sync::Mutex<f64> = std::sync::Mutex::new(f64::NAN);

/// ops/s over `dur` with `tasks` concurrent tasks, and the failed-op count.
pub(crate) async fn throughput<O: Op>(op: &Arc<O>, tasks: usize, dur: Duration) -> (f64, u64) {
    let cpu_before = process_cpu();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let op = op.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut i = t as u64 * 7919;
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    if op.call(i).await {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                    i = i.wrapping_add(1);
                }
                (ok, failed)
            })
        })
        .collect();
    // An OS thread ends the run: tasks that never yield (moka) could starve a tokio timer.
    let timer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(dur);
            stop.store(true, Ordering::Relaxed);
        })
    };
    let (mut ok, mut failed) = (0u64, 0u64);
    for h in handles {
        let (o, f) = h.await.expect("benchmark task panicked");
        ok += o;
        failed += f;
    }
    let elapsed = start.elapsed();
    timer.join().expect("timer thread");
    let cpu_us_per_op = match (cpu_before, process_cpu()) {
        (Some(a), Some(b)) if ok + failed > 0 => {
            (b.saturating_sub(a)).as_secs_f64() * 1e6 / (ok + failed) as f64
        }
        _ => f64::NAN,
    };
    *LAST_CPU_US_PER_OP.lock().unwrap_or_else(|e| e.into_inner()) = cpu_us_per_op;
    ((ok + failed) as f64 / elapsed.as_secs_f64(), failed)
}

/// Single-task latency samples (nanoseconds, sorted) over `dur`, and the failed-op count.
pub(crate) async fn latency<O: Op>(op: &Arc<O>, dur: Duration) -> (Vec<u64>, u64) {
    let op = op.clone();
    tokio::spawn(async move {
        let mut samples = Vec::with_capacity(1 << 16);
        let mut failed = 0;
        let end = Instant::now() + dur;
        let mut i = 0u64;
        loop {
            let t = Instant::now();
            if !op.call(i).await {
                failed += 1;
            }
            samples.push(t.elapsed().as_nanos() as u64);
            i += 1;
            if t >= end || samples.len() >= 1_000_000 {
                break;
            }
        }
        samples.sort_unstable();
        (samples, failed)
    })
    .await
    .expect("latency task panicked")
}

/// Single-task latency of `a` and `b` called alternately (a, b, a, b, ...)
/// over `dur`: both see the same machine state, which separate phases on
/// this VM do not (single-task p50 is bimodal from phase to phase). Returns
/// the sorted samples of each (nanoseconds), the per-pair differences
/// `b - a` (sorted), and the failed-op count.
pub(crate) async fn paired_latency<A: Op, B: Op>(
    a: &Arc<A>,
    b: &Arc<B>,
    dur: Duration,
) -> (Vec<u64>, Vec<u64>, Vec<i64>, u64) {
    let (a, b) = (a.clone(), b.clone());
    tokio::spawn(async move {
        let (mut sa, mut sb, mut diff) = (Vec::new(), Vec::new(), Vec::new());
        let mut failed = 0;
        let end = Instant::now() + dur;
        let mut i = 0u64;
        loop {
            let t = Instant::now();
            if !a.call(i).await {
                failed += 1;
            }
            let ta = t.elapsed().as_nanos() as u64;
            let t = Instant::now();
            if !b.call(i).await {
                failed += 1;
            }
            let tb = t.elapsed().as_nanos() as u64;
            sa.push(ta);
            sb.push(tb);
            diff.push(tb as i64 - ta as i64);
            i += 1;
            if t >= end || sa.len() >= 1_000_000 {
                break;
            }
        }
        sa.sort_unstable();
        sb.sort_unstable();
        diff.sort_unstable();
        (sa, sb, diff, failed)
    })
    .await
    .expect("paired latency task panicked")
}

pub(crate) fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted_ns.len() as f64 - 1.0) * p).round() as usize;
    sorted_ns[idx] as f64 / 1000.0
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per-round figures of one case.
#[derive(Default)]
pub(crate) struct Rounds {
    pub(crate) ops_per_s: Vec<f64>,
    pub(crate) p50_us: Vec<f64>,
    pub(crate) p99_us: Vec<f64>,
    pub(crate) errors: u64,
    /// Case-specific figures (name → value per round).
    pub(crate) extra: Vec<(&'static str, Vec<f64>)>,
}

impl Rounds {
    pub(crate) fn push_extra(&mut self, name: &'static str, value: f64) {
        match self.extra.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(value),
            None => self.extra.push((name, vec![value])),
        }
    }

    pub(crate) fn extra_values(&self, name: &str) -> Option<&Vec<f64>> {
        self.extra.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub(crate) fn extra_median(&self, name: &str) -> Option<f64> {
        self.extra_values(name).map(|v| median(v))
    }

    /// The largest value over rounds (NaN when never recorded).
    pub(crate) fn extra_max(&self, name: &str) -> f64 {
        self.extra_values(name)
            .map_or(f64::NAN, |v| v.iter().copied().fold(0.0, f64::max))
    }
}

/// Marks where a `--count` loop starts: run under
/// `valgrind --tool=callgrind --zero-before='*count_start*' --dump-before='*count_end*'`
/// and the dump holds only the counted calls (every thread: the caller, the
/// runtime's workers, redis-rs's connection driver). This VM exposes no
/// hardware counters to `perf stat`, and instruction counts are what its
/// noise does not move.
#[inline(never)]
fn count_start(case: &str, calls: u64) {
    eprintln!("counting {calls} calls of {case}");
    std::hint::black_box(case);
}

/// Marks where a `--count` loop ends (see [`count_start`]).
#[inline(never)]
fn count_end(case: &str, elapsed: Duration) {
    std::hint::black_box(case);
    eprintln!("counted {case} in {elapsed:.2?}");
}

/// One `--count` measurement: warm-up calls over the whole hot set (so a
/// near cache holds every key before counting starts, and a short count is
/// not inflated by first reads), then `calls` sequential calls from one task
/// between the two markers.
pub(crate) async fn count_calls<O: Op>(case: &str, op: &Arc<O>, calls: u64) {
    for i in 0..2 * HOT_KEYS {
        assert!(op.call(i).await, "{case}: warm-up call failed");
    }
    let started = Instant::now();
    count_start(case, calls);
    let mut failed = 0u64;
    for i in 0..calls {
        if !std::hint::black_box(op.call(i).await) {
            failed += 1;
        }
    }
    count_end(case, started.elapsed());
    assert_eq!(failed, 0, "{case}: {failed} counted calls failed");
}

pub(crate) async fn measure<O: Op>(rounds: &mut Rounds, op: &Arc<O>, s: Settings) {
    let (ops, failed_t) = throughput(op, TASKS, s.throughput).await;
    let cpu = *LAST_CPU_US_PER_OP.lock().unwrap_or_else(|e| e.into_inner());
    rounds.push_extra("client_cpu_us_per_op", cpu);
    let (samples, failed_l) = latency(op, s.latency).await;
    rounds.ops_per_s.push(ops);
    rounds.p50_us.push(percentile_us(&samples, 0.50));
    rounds.p99_us.push(percentile_us(&samples, 0.99));
    rounds.errors += failed_t + failed_l;
}
