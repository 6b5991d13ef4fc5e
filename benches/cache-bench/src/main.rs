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
//! case goes to stdout, then a readable table; progress goes to stderr.

#[cfg(feature = "cached-crate")]
mod cached_crate;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use cache_core::{Cache, CircuitState, cached};
use cache_testkit::RedisServer;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

/// Concurrent tasks in the throughput measurements.
const TASKS: usize = 64;
/// Size of the hot key set read by the hit cases.
const HOT_KEYS: u64 = 1024;
/// First customer id (fixed-width ids keep every payload the same size).
const BASE_ID: u64 = 1_000_000;
/// Target size of the bincode-encoded payload.
const PAYLOAD_BYTES: usize = 207;
/// Keys filled for the prefix-invalidation case.
const INVALIDATE_KEYS: usize = 100_000;
/// Concurrent cold callers in the single-flight case.
const FLIGHT_CALLERS: usize = 1000;

// ----- payload ---------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Customer {
    id: u64,
    name: String,
    email: String,
    segment: String,
    country: String,
    lifetime_value_cents: u64,
    orders: u32,
    churn_score: f64,
    created_at_unix: i64,
    notes: String,
}

fn bincode_len(c: &Customer) -> usize {
    bincode::serde::encode_to_vec(c, bincode::config::standard())
        .expect("customer encodes")
        .len()
}

fn customer_base(id: u64) -> Customer {
    Customer {
        id,
        name: format!("Customer {id:010}"),
        email: format!("customer.{id:010}@example.com"),
        segment: "enterprise".to_owned(),
        country: "DE".to_owned(),
        lifetime_value_cents: 12_345_678,
        orders: 42,
        churn_score: 0.137,
        created_at_unix: 1_700_000_000,
        notes: String::new(),
    }
}

/// A customer whose bincode encoding is [`PAYLOAD_BYTES`] long.
fn customer(id: u64) -> Customer {
    static PAD: OnceLock<usize> = OnceLock::new();
    let pad = *PAD.get_or_init(|| PAYLOAD_BYTES - bincode_len(&customer_base(BASE_ID)));
    let mut c = customer_base(id);
    // The base already carries the (empty) notes' one-byte length prefix.
    c.notes = "n".repeat(pad);
    c
}

fn hot_id(i: u64) -> u64 {
    BASE_ID + i % HOT_KEYS
}

// ----- the cached functions -------------------------------------------------

static HIT_BODY_RUNS: AtomicU64 = AtomicU64::new(0);
static FLIGHT_BODY_RUNS: AtomicU64 = AtomicU64::new(0);
static COLD_IDS: AtomicU64 = AtomicU64::new(10_000_000_000);

#[cached(prefix = "customer", key = "{id}", ttl = 3600, cache = cache)]
async fn customer_by_id(cache: &Cache, id: u64) -> Result<Customer, String> {
    HIT_BODY_RUNS.fetch_add(1, Ordering::Relaxed);
    Ok(customer(id))
}

/// Same as [`customer_by_id`], for the paused-Redis case (its own body counter
/// stays out of the hit figures).
#[cached(prefix = "customer", key = "{id}", ttl = 3600, cache = cache)]
async fn customer_by_id_paused(cache: &Cache, id: u64) -> Result<Customer, String> {
    Ok(customer(id))
}

#[cached(prefix = "cold", key = "{id}", ttl = 120, cache = cache)]
async fn cold_customer(cache: &Cache, id: u64) -> Result<Customer, String> {
    Ok(customer(id))
}

#[cached(prefix = "flight", key = "{id}", ttl = 120, cache = cache)]
async fn slow_customer(cache: &Cache, id: u64) -> Result<Customer, String> {
    FLIGHT_BODY_RUNS.fetch_add(1, Ordering::Relaxed);
    // A database query that takes a while: every cold caller arrives while it runs.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(customer(id))
}

// ----- operations -----------------------------------------------------------

/// One benchmarked operation; `true` when it returned the expected value.
trait Op: Send + Sync + 'static {
    fn call(&self, i: u64) -> impl Future<Output = bool> + Send;
}

/// redis-rs GET + bincode decode on shared multiplexed connections (one for
/// the floor; several round-robin to compare with cache-core's spread).
struct RawGet {
    conns: Vec<MultiplexedConnection>,
}

impl Op for RawGet {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        let key = format!("raw:customer:{id}");
        let mut conn = self.conns[i as usize % self.conns.len()].clone();
        let bytes: Option<Vec<u8>> = match redis::cmd("GET").arg(&key).query_async(&mut conn).await
        {
            Ok(b) => b,
            Err(_) => return false,
        };
        decode_raw(bytes.as_deref(), id)
    }
}

fn decode_raw(bytes: Option<&[u8]>, id: u64) -> bool {
    let Some(bytes) = bytes else { return false };
    match bincode::serde::decode_from_slice::<Customer, _>(bytes, bincode::config::standard()) {
        Ok((c, _)) => c.id == id,
        Err(_) => false,
    }
}

/// bb8 + bb8-redis pool(16), one checkout per operation.
struct PoolGet {
    pool: bb8::Pool<bb8_redis::RedisConnectionManager>,
}

impl Op for PoolGet {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        let key = format!("raw:customer:{id}");
        let Ok(mut conn) = self.pool.get().await else {
            return false;
        };
        let bytes: Option<Vec<u8>> = match redis::cmd("GET").arg(&key).query_async(&mut *conn).await
        {
            Ok(b) => b,
            Err(_) => return false,
        };
        drop(conn);
        decode_raw(bytes.as_deref(), id)
    }
}

/// `Cache::get` (Redis or memory backend).
struct CacheGet {
    cache: Cache,
}

impl Op for CacheGet {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        let key = format!("customer:{id}");
        matches!(self.cache.get::<Customer>(&key).await, Ok(Some(c)) if c.id == id)
    }
}

/// A `#[cached]` function hit.
struct CachedFn {
    cache: Cache,
}

impl Op for CachedFn {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        customer_by_id(&self.cache, id)
            .await
            .is_ok_and(|c| c.id == id)
    }
}

/// [`customer_by_id_paused`] (the paused-Redis case).
struct PausedFn {
    cache: Cache,
}

impl Op for PausedFn {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        customer_by_id_paused(&self.cache, id)
            .await
            .is_ok_and(|c| c.id == id)
    }
}

/// moka `future::Cache::get` of the same struct (cloned out).
struct MokaGet {
    moka: moka::future::Cache<u64, Customer>,
}

impl Op for MokaGet {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        self.moka.get(&id).await.is_some_and(|c| c.id == id)
    }
}

/// moka used the way `#[cached]` has to use it: a string key
/// `{namespace}:{prefix}:{id}` formatted on every call (the key space is shared
/// with Redis and with pattern invalidation) and a TTL per entry (moka's
/// `Expiry`), the value cloned out. Not a target: it shows how much of the gap
/// to [`MokaGet`] those two requirements explain.
struct MokaKeyedGet {
    moka: moka::future::Cache<String, TtlCustomer>,
}

#[derive(Clone)]
struct TtlCustomer {
    ttl: Duration,
    customer: Customer,
}

struct PerEntryTtl;

impl moka::Expiry<String, TtlCustomer> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, value: &TtlCustomer, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

impl Op for MokaKeyedGet {
    async fn call(&self, i: u64) -> bool {
        let id = hot_id(i);
        let key = format!("bench:customer:{id}");
        self.moka
            .get(&key)
            .await
            .is_some_and(|v| v.customer.id == id)
    }
}

/// A `#[cached]` call on a key never seen before: GET miss, lease, body, store.
struct MissPath {
    cache: Cache,
}

impl Op for MissPath {
    async fn call(&self, _i: u64) -> bool {
        let id = COLD_IDS.fetch_add(1, Ordering::Relaxed);
        cold_customer(&self.cache, id)
            .await
            .is_ok_and(|c| c.id == id)
    }
}

// ----- measurement ------------------------------------------------------------

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
static LAST_CPU_US_PER_OP: std::sync::Mutex<f64> = std::sync::Mutex::new(f64::NAN);

/// ops/s over `dur` with `tasks` concurrent tasks, and the failed-op count.
async fn throughput<O: Op>(op: &Arc<O>, tasks: usize, dur: Duration) -> (f64, u64) {
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
async fn latency<O: Op>(op: &Arc<O>, dur: Duration) -> (Vec<u64>, u64) {
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
async fn paired_latency<A: Op, B: Op>(
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

fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted_ns.len() as f64 - 1.0) * p).round() as usize;
    sorted_ns[idx] as f64 / 1000.0
}

fn median(values: &[f64]) -> f64 {
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
struct Rounds {
    ops_per_s: Vec<f64>,
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    errors: u64,
    /// Case-specific figures (name → value per round).
    extra: Vec<(&'static str, Vec<f64>)>,
}

impl Rounds {
    fn push_extra(&mut self, name: &'static str, value: f64) {
        match self.extra.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(value),
            None => self.extra.push((name, vec![value])),
        }
    }

    fn extra_values(&self, name: &str) -> Option<&Vec<f64>> {
        self.extra.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    fn extra_median(&self, name: &str) -> Option<f64> {
        self.extra_values(name).map(|v| median(v))
    }

    /// The largest value over rounds (NaN when never recorded).
    fn extra_max(&self, name: &str) -> f64 {
        self.extra_values(name)
            .map_or(f64::NAN, |v| v.iter().copied().fold(0.0, f64::max))
    }
}

/// Where `--svg` writes the ops/s chart.
static SVG_PATH: OnceLock<String> = OnceLock::new();

/// `--count N`: run each selected hit case for exactly N sequential calls
/// between [`count_start`] and [`count_end`], for instruction counting.
static COUNT: OnceLock<u64> = OnceLock::new();

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

/// One `--count` measurement: 1,000 warm-up calls, then `calls` sequential
/// calls from one task between the two markers.
async fn count_calls<O: Op>(case: &str, op: &Arc<O>, calls: u64) {
    for i in 0..1000 {
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

/// Cases selected with `--only` (all when unset).
static ONLY: OnceLock<Vec<String>> = OnceLock::new();

fn selected(case: &str) -> bool {
    ONLY.get().is_none_or(|only| only.iter().any(|c| c == case))
}

#[derive(Clone, Copy)]
struct Settings {
    rounds: usize,
    throughput: Duration,
    latency: Duration,
    quick: bool,
}

async fn measure<O: Op>(rounds: &mut Rounds, op: &Arc<O>, s: Settings) {
    let (ops, failed_t) = throughput(op, TASKS, s.throughput).await;
    let cpu = *LAST_CPU_US_PER_OP.lock().unwrap_or_else(|e| e.into_inner());
    rounds.push_extra("client_cpu_us_per_op", cpu);
    let (samples, failed_l) = latency(op, s.latency).await;
    rounds.ops_per_s.push(ops);
    rounds.p50_us.push(percentile_us(&samples, 0.50));
    rounds.p99_us.push(percentile_us(&samples, 0.99));
    rounds.errors += failed_t + failed_l;
}

// ----- the special cases ----------------------------------------------------

/// 1,000 concurrent cold callers of one key; records body runs and wall time.
async fn single_flight(rounds: &mut Rounds, cache: &Cache) {
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

/// Redis paused (SIGSTOP) with the breaker open: `#[cached]` hits served by
/// the in-memory fallback. A fresh cache per round, on its own server.
async fn redis_paused(rounds: &mut Rounds, server: &mut RedisServer, s: Settings) {
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

/// Stores [`INVALIDATE_KEYS`] values under the prefix `inv` (`set_many`
/// batches); returns how long that took, in milliseconds.
async fn fill_invalidate_keys(cache: &Cache) -> f64 {
    let value = customer(BASE_ID);
    let fill_start = Instant::now();
    let keys: Vec<String> = (0..INVALIDATE_KEYS).map(|k| format!("inv:{k}")).collect();
    for chunk in keys.chunks(2000) {
        let entries: Vec<(&str, &Customer)> = chunk.iter().map(|k| (k.as_str(), &value)).collect();
        cache
            .set_many(&entries, Some(Duration::from_secs(600)))
            .await
            .expect("set_many");
    }
    fill_start.elapsed().as_secs_f64() * 1000.0
}

/// Fills 100k keys under one prefix (set_many batches), then times
/// `invalidate_prefix` (SCAN + UNLINK).
async fn invalidate_prefix(rounds: &mut Rounds, cache: &Cache, raw: &mut MultiplexedConnection) {
    let fill_ms = fill_invalidate_keys(cache).await;
    let start = Instant::now();
    let deleted = cache
        .invalidate_prefix("inv")
        .await
        .expect("invalidate_prefix");
    let elapsed = start.elapsed();
    // Every key of the prefix must be gone (counted with a SCAN of our own).
    let pattern = format!("{}:inv:*", cache.namespace());
    let mut cursor = 0u64;
    let mut left = 0usize;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(raw)
            .await
            .expect("SCAN");
        left += keys.len();
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    if deleted != INVALIDATE_KEYS as u64 || left != 0 {
        eprintln!(
            "invalidate_prefix: reported {deleted} deleted (expected {INVALIDATE_KEYS}), {left} keys left"
        );
        rounds.errors += 1;
    }
    record_invalidation(rounds, deleted as f64, elapsed, fill_ms);
}

/// What the example service's `PUT` does to the cache (delete the record's
/// key, invalidate a list prefix), timed in an empty namespace and again
/// with 300,000 keys of other applications in the same database: with the
/// default settings (prefix generations) and, for contrast, with SCAN.
/// The foreign keys are removed again at the end of the round.
async fn write_with_foreign_keys(
    rounds: &mut Rounds,
    default: &Cache,
    scanning: &Cache,
    raw: &mut MultiplexedConnection,
) {
    const FOREIGN: usize = 300_000;
    async fn write_p50(cache: &Cache, calls: usize) -> f64 {
        let mut ns = Vec::with_capacity(calls);
        for i in 0..calls {
            let start = Instant::now();
            cache
                .delete(&format!("wcustomer:{}", i % 100))
                .await
                .expect("delete");
            cache.invalidate_prefix("wquery").await.expect("invalidate");
            ns.push(start.elapsed().as_nanos() as u64);
        }
        ns.sort_unstable();
        percentile_us(&ns, 0.5)
    }
    let empty_default = write_p50(default, 500).await;
    let empty_scan = write_p50(scanning, 50).await;
    for chunk in 0..FOREIGN / 1_000 {
        let mut pipe = redis::pipe();
        for i in 0..1_000 {
            pipe.set(format!("other-app:{chunk}:{i}"), i).ignore();
        }
        let () = pipe.query_async(raw).await.expect("fill foreign keys");
    }
    let full_default = write_p50(default, 500).await;
    let full_scan = write_p50(scanning, 5).await;
    let pattern_delete = async |raw: &mut MultiplexedConnection| {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("other-app:*")
                .arg("COUNT")
                .arg(1_000)
                .query_async(raw)
                .await
                .expect("SCAN");
            if !keys.is_empty() {
                let () = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(raw)
                    .await
                    .expect("UNLINK");
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    };
    pattern_delete(raw).await;
    rounds.ops_per_s.push(1e6 / full_default);
    rounds.p50_us.push(full_default);
    rounds.push_extra("empty_p50_us", empty_default);
    rounds.push_extra("ratio_300k_vs_empty", full_default / empty_default);
    rounds.push_extra("scan_empty_p50_us", empty_scan);
    rounds.push_extra("scan_300k_p50_us", full_scan);
}

/// How long another instance's near cache keeps serving a value after a
/// write or delete returned: a writer changes (or deletes) a key, a reader
/// with a near cache polls it until it sees the change. Measured idle and
/// with the reader under load (64 tasks reading other keys, 50,000 reads
/// per second in all).
async fn near_invalidation_window(rounds: &mut Rounds, url: &str, quick: bool) {
    let trials = if quick { 2_000 } else { 10_000 };
    let build = |near: bool| async move {
        let b = Cache::builder().redis_url(url).namespace("benchwindow");
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
                "case": "near_invalidation_window",
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

/// One round of an invalidation case: keys per second, and the times.
fn record_invalidation(rounds: &mut Rounds, keys: f64, elapsed: Duration, fill_ms: f64) {
    let secs = elapsed.as_secs_f64();
    rounds.ops_per_s.push(keys / secs);
    rounds.push_extra("invalidate_ms", secs * 1000.0);
    rounds.push_extra("fill_ms", fill_ms);
    rounds.push_extra("keys", keys);
}

/// `invalidate_prefix` with prefix generations on: one write replaces the
/// prefix's generation; the 100k values stay until their TTL but are no
/// longer visible (checked on a sample).
async fn invalidate_prefix_generations(rounds: &mut Rounds, cache: &Cache) {
    let fill_ms = fill_invalidate_keys(cache).await;
    let visible_before = cache.get::<Customer>("inv:0").await.expect("get").is_some();
    let start = Instant::now();
    cache
        .invalidate_prefix("inv")
        .await
        .expect("invalidate_prefix");
    let elapsed = start.elapsed();
    let mut still_visible = 0;
    for k in (0..INVALIDATE_KEYS).step_by(997) {
        if cache
            .get::<Customer>(&format!("inv:{k}"))
            .await
            .expect("get")
            .is_some()
        {
            still_visible += 1;
        }
    }
    if !visible_before || still_visible != 0 {
        eprintln!(
            "invalidate_prefix (generations): visible before {visible_before}, {still_visible} sampled keys still visible"
        );
        rounds.errors += 1;
    }
    record_invalidation(rounds, INVALIDATE_KEYS as f64, elapsed, fill_ms);
}

// ----- main -------------------------------------------------------------------

/// Every case, in the order each round runs them.
static CASES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
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
        "p50_paired_redis",
        "moka_get",
        "moka_get_string_key_ttl",
        "cache_get_memory",
        "cached_fn_memory",
        "miss_path",
        "single_flight_1000",
        "redis_paused",
        "invalidate_prefix_100k",
        "invalidate_prefix_100k_generations",
        "write_with_300k_foreign_keys",
        "near_invalidation_window",
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

fn parse_args() -> Settings {
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
                        .expect("--rounds takes a number"),
                );
            }
            "--only" => {
                let list: Vec<String> = args
                    .next()
                    .expect("--only takes a comma-separated list of cases")
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
                    .expect("--count takes a number of calls");
                let _ = COUNT.set(calls);
            }
            "--svg" => {
                let _ = SVG_PATH.set(args.next().expect("--svg takes a file path"));
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

fn main() {
    let settings = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(settings));
}

#[allow(clippy::too_many_lines)]
async fn run(s: Settings) {
    let started = Instant::now();
    let server = RedisServer::start();
    let mut paused_server = RedisServer::start();
    let url = server.url();
    eprintln!(
        "cache-bench: redis at {url}, payload {} bytes bincode (+3 envelope), {TASKS} tasks, {} rounds{}",
        bincode_len(&customer(BASE_ID)),
        s.rounds,
        if s.quick { " (quick)" } else { "" }
    );

    // Floor: one shared multiplexed connection with redis-rs defaults (Nagle
    // on, as a user gets it and as the `cached` crate uses it) ...
    let mut raw_conn = redis::Client::open(url.as_str())
        .expect("redis client")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    // ... and the same with TCP_NODELAY, as cache-core configures its connections.
    let nodelay_conn = redis::Client::open(
        redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .expect("url")
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)),
    )
    .expect("redis client")
    .get_multiplexed_async_connection()
    .await
    .expect("raw nodelay connection");
    // cache-core spreads commands over 2 shared connections: the same, raw.
    let nodelay_conn_2 = redis::Client::open(
        redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .expect("url")
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)),
    )
    .expect("redis client")
    .get_multiplexed_async_connection()
    .await
    .expect("second raw nodelay connection");
    let mut fill = redis::pipe();
    for i in 0..HOT_KEYS {
        let id = hot_id(i);
        let bytes = bincode::serde::encode_to_vec(customer(id), bincode::config::standard())
            .expect("encode");
        fill.cmd("SET")
            .arg(format!("raw:customer:{id}"))
            .arg(bytes)
            .ignore();
    }
    let () = fill
        .query_async(&mut raw_conn)
        .await
        .expect("fill raw keys");

    let manager = bb8_redis::RedisConnectionManager::new(url.as_str()).expect("bb8 manager");
    let pool = bb8::Pool::builder()
        .max_size(16)
        .test_on_check_out(false)
        .build(manager)
        .await
        .expect("bb8 pool");

    let redis_cache = Cache::builder()
        .redis_url(url.as_str())
        .namespace("bench")
        .build()
        .await
        .expect("redis cache");
    // The same namespace (and so the same stored values) with TCP_NODELAY off,
    // as redis-rs and the `cached` crate connect by default.
    let redis_cache_nagle = Cache::builder()
        .redis_url(url.as_str())
        .namespace("bench")
        .tcp_nodelay(false)
        .build()
        .await
        .expect("redis cache, nodelay off");
    // Prefix generations off (its own namespace: values are not labeled):
    // the hit as it was before generations were the default.
    let redis_cache_gen = Cache::builder()
        .redis_url(url.as_str())
        .namespace("benchplain")
        .prefix_generations(false)
        .build()
        .await
        .expect("redis cache, prefix generations off");
    // The near cache in front of the same Redis (its own namespace).
    let redis_cache_near = Cache::builder()
        .redis_url(url.as_str())
        .namespace("benchnear")
        .near_cache(100_000)
        .build()
        .await
        .expect("redis cache, near cache");
    let memory_cache = Cache::memory();
    let hot: Vec<(String, Customer)> = (0..HOT_KEYS)
        .map(|i| (format!("customer:{}", hot_id(i)), customer(hot_id(i))))
        .collect();
    let entries: Vec<(&str, &Customer)> = hot.iter().map(|(k, c)| (k.as_str(), c)).collect();
    for cache in [
        &redis_cache,
        &memory_cache,
        &redis_cache_gen,
        &redis_cache_near,
    ] {
        cache
            .set_many(&entries, Some(Duration::from_secs(3600)))
            .await
            .expect("fill cache");
    }
    let moka = moka::future::Cache::builder().max_capacity(10_000).build();
    for i in 0..HOT_KEYS {
        moka.insert(hot_id(i), customer(hot_id(i))).await;
    }

    let moka_keyed = moka::future::Cache::builder()
        .max_capacity(10_000)
        .expire_after(PerEntryTtl)
        .build();
    for i in 0..HOT_KEYS {
        let value = TtlCustomer {
            ttl: Duration::from_secs(3600),
            customer: customer(hot_id(i)),
        };
        moka_keyed
            .insert(format!("bench:customer:{}", hot_id(i)), value)
            .await;
    }

    let raw = Arc::new(RawGet {
        conns: vec![raw_conn.clone()],
    });
    let raw_nodelay_2conn = Arc::new(RawGet {
        conns: vec![nodelay_conn.clone(), nodelay_conn_2],
    });
    let raw_nodelay = Arc::new(RawGet {
        conns: vec![nodelay_conn],
    });
    let pooled = Arc::new(PoolGet { pool });
    let get_redis = Arc::new(CacheGet {
        cache: redis_cache.clone(),
    });
    let fn_redis = Arc::new(CachedFn {
        cache: redis_cache.clone(),
    });
    let fn_redis_nagle = Arc::new(CachedFn {
        cache: redis_cache_nagle,
    });
    let fn_redis_gen = Arc::new(CachedFn {
        cache: redis_cache_gen.clone(),
    });
    let fn_near = Arc::new(CachedFn {
        cache: redis_cache_near.clone(),
    });
    let moka_op = Arc::new(MokaGet { moka });
    let moka_keyed_op = Arc::new(MokaKeyedGet { moka: moka_keyed });
    let get_memory = Arc::new(CacheGet {
        cache: memory_cache.clone(),
    });
    let fn_memory = Arc::new(CachedFn {
        cache: memory_cache.clone(),
    });
    let miss = Arc::new(MissPath {
        cache: redis_cache.clone(),
    });

    #[cfg(feature = "cached-crate")]
    let cc_get = {
        let store = cached_crate::store(&url, "bench-cached").await;
        cached_crate::fill(&store).await;
        Arc::new(cached_crate::CachedCrateGet { store })
    };

    // The cases measured by `measure` (one `Op` each), by name: `$body` runs
    // with `$op` bound to the case's op; `None` for the other cases.
    #[rustfmt::skip]
    macro_rules! with_op {
        ($name:expr, $op:ident => $body:expr) => {
            match $name {
                "raw_redis_get" => { let $op = &raw; Some($body) }
                "raw_redis_get_nodelay" => { let $op = &raw_nodelay; Some($body) }
                "raw_redis_get_nodelay_2conn" => { let $op = &raw_nodelay_2conn; Some($body) }
                "pool_checkout_get" => { let $op = &pooled; Some($body) }
                "cache_get_redis" => { let $op = &get_redis; Some($body) }
                "cached_fn_redis" => { let $op = &fn_redis; Some($body) }
                "cached_fn_redis_nagle" => { let $op = &fn_redis_nagle; Some($body) }
                "cached_fn_redis_no_generations" => { let $op = &fn_redis_gen; Some($body) }
                "cached_fn_near" => { let $op = &fn_near; Some($body) }
                "moka_get" => { let $op = &moka_op; Some($body) }
                "moka_get_string_key_ttl" => { let $op = &moka_keyed_op; Some($body) }
                "cache_get_memory" => { let $op = &get_memory; Some($body) }
                "cached_fn_memory" => { let $op = &fn_memory; Some($body) }
                "miss_path" => { let $op = &miss; Some($body) }
                #[cfg(feature = "cached-crate")]
                "cached_crate_redis_get" => { let $op = &cc_get; Some($body) }
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
                    let (raw_ns, cached_ns, diff_ns, failed) =
                        paired_latency(&raw, &fn_redis, s.latency * 2).await;
                    let raw_p50 = percentile_us(&raw_ns, 0.50);
                    let cached_p50 = percentile_us(&cached_ns, 0.50);
                    r.p50_us.push(cached_p50);
                    r.p99_us.push(percentile_us(&cached_ns, 0.99));
                    r.push_extra("raw_p50_us", raw_p50);
                    r.push_extra("p50_delta_us", cached_p50 - raw_p50);
                    let mid = diff_ns.get(diff_ns.len() / 2).copied().unwrap_or(0);
                    r.push_extra("paired_diff_median_us", mid as f64 / 1000.0);
                    r.errors += failed;
                }
                "single_flight_1000" => single_flight(r, &redis_cache).await,
                "redis_paused" => redis_paused(r, &mut paused_server, s).await,
                "invalidate_prefix_100k" => {
                    invalidate_prefix(r, &redis_cache_gen, &mut raw_conn).await;
                }
                "near_invalidation_window" => {
                    near_invalidation_window(r, &url, s.quick).await;
                }
                "write_with_300k_foreign_keys" => {
                    write_with_foreign_keys(r, &redis_cache, &redis_cache_gen, &mut raw_conn).await;
                }
                "invalidate_prefix_100k_generations" => {
                    invalidate_prefix_generations(r, &redis_cache).await;
                }
                #[cfg(feature = "cached-crate")]
                "cached_crate_flight_1000" => {
                    cached_crate::single_flight(r, &cc_get.store).await;
                }
                #[cfg(feature = "cached-crate")]
                "cached_crate_paused" => cached_crate::redis_paused(r, &mut paused_server, s).await,
                other => unreachable!("unknown case {other}"),
            }
        }
    }
    let hit_body_runs = HIT_BODY_RUNS.load(Ordering::Relaxed) - hit_body_runs_before;

    report(&results, s, hit_body_runs, started.elapsed());
}

fn json_num(v: f64) -> serde_json::Value {
    if v.is_finite() {
        serde_json::json!((v * 100.0).round() / 100.0)
    } else {
        serde_json::Value::Null
    }
}

fn report(results: &[Rounds], s: Settings, hit_body_runs: u64, elapsed: Duration) {
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

/// A horizontal bar chart of `rows` on a log10 axis.
fn svg_chart(title: &str, rows: &[(&str, f64)]) -> String {
    use std::fmt::Write as _;
    const LABEL_W: f64 = 210.0;
    const BAR_W: f64 = 560.0;
    const ROW_H: f64 = 26.0;
    const TOP: f64 = 50.0;
    let lo = 3.0; // 1k ops/s
    let hi = rows
        .iter()
        .map(|(_, v)| v.log10().ceil())
        .fold(lo + 1.0, f64::max);
    let x = |v: f64| LABEL_W + ((v.log10() - lo) / (hi - lo)).clamp(0.0, 1.0) * BAR_W;
    let height = TOP + ROW_H * rows.len() as f64 + 40.0;
    let width = LABEL_W + BAR_W + 120.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LABEL_W}" y="24" font-size="15">{title}</text>"#
    );
    let bottom = TOP + ROW_H * rows.len() as f64;
    let mut decade = lo;
    while decade <= hi {
        let gx = x(10f64.powf(decade));
        let label = match decade as i32 {
            3 => "1k".to_owned(),
            4 => "10k".to_owned(),
            5 => "100k".to_owned(),
            6 => "1M".to_owned(),
            7 => "10M".to_owned(),
            d => format!("1e{d}"),
        };
        let _ = writeln!(
            out,
            "<line x1=\"{gx:.1}\" y1=\"{TOP}\" x2=\"{gx:.1}\" y2=\"{bottom}\" stroke=\"#ddd\"/>\n<text x=\"{gx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{label}</text>",
            bottom + 18.0
        );
        decade += 1.0;
    }
    for (i, (name, v)) in rows.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        let ours = name.starts_with("cache") && !name.starts_with("cached_crate");
        let ours = ours
            || matches!(
                *name,
                "miss_path"
                    | "redis_paused"
                    | "invalidate_prefix_100k"
                    | "invalidate_prefix_100k_generations"
            );
        let fill = if ours { "#2b6cb0" } else { "#a0aec0" };
        let end = x(*v);
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{name}</text>\n<rect x=\"{LABEL_W}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            LABEL_W - 8.0,
            y + 17.0,
            y + 4.0,
            end - LABEL_W,
            ROW_H - 8.0,
            end + 6.0,
            y + 17.0,
            human(*v)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
