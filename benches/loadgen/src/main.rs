//! Run with `cargo run -p loadgen --release -- load --addr 127.0.0.1:8080`
//! (or `check`, or `free-port`) against a running `customer-service`.
//!
//! A bounded HTTP load generator and read-after-write checker for the
//! example service, on loopback only (other targets are refused). Every run
//! stops by itself: after `--duration` seconds or `--requests` requests,
//! whichever comes first, each request bounded by `--timeout-ms`.
//!
//! ```text
//! loadgen load  [--addr 127.0.0.1:8080] [--connections 50] [--keys hot|spread]
//!               [--hot-id 42] [--spread 1000] [--warmup 1] [--duration 5]
//!               [--method GET|PUT] [--requests 5000000] [--timeout-ms 5000]
//!               [--label NAME]
//! loadgen check [--addr ...] [--read-addr ADDR] [--connections 16] [--ids 8]
//!               [--first-id 1] [--write-pct 5] [--write-from 0] [--write-until S]
//!               [--duration 5] [--phase-secs 1]
//!               [--requests 5000000] [--timeout-ms 5000] [--label NAME]
//! loadgen free-port          # prints a free loopback TCP port
//! ```
//!
//! `load` sends `GET /api/customers/{id}` over kept-alive connections, for
//! one hot id or ids spread over `1..=spread`, and prints one JSON line:
//! req/s, p50/p99/max latency, non-2xx answers, requests without an answer.
//! With `--method PUT` it sends `PUT /api/customers/{id}` instead, each
//! setting a name never used before (write latency).
//!
//! `check` mixes reads with `PUT /api/customers/{id}` writes of a fresh,
//! unique name over a small id set, so reads and writes collide. Writes to
//! one id are serialized (one in flight per id), so the database holds the
//! last acknowledged name. A read is *stale* when it started after a write
//! was acknowledged (200) and returned an older name. Reads that return the
//! name of a write whose outcome is unknown (it timed out or failed) are
//! counted apart as `stale_uncertain`, since such a write may land late.
//! A stale read's *staleness* is how long before the read started the
//! first write newer than the value it returned was acknowledged;
//! `max_stale_ms` is the longest, and `stale_at_end` counts the ids whose
//! last read of the run was still stale (an invalidation lost for good
//! shows there).
//!
//! With `--read-addr`, reads go to that address and writes to `--addr`:
//! two instances of the service on one database, the checker counting the
//! reads of the *other* instance. `--write-from`/`--write-until` (seconds
//! into the run) confine the writes to a window, so what happens after the
//! last write (a restart, a restored snapshot) is measured alone.
//! One JSON line is printed per phase (`--phase-secs` slices of the run, by
//! request start time), then one line with `"phase": "total"`.

mod http;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::http::Conn;

/// Upper bound of `--duration` and `--warmup`, in seconds.
const MAX_SECS: f64 = 600.0;
/// Upper bound of `--requests`.
const MAX_REQUESTS: u64 = 50_000_000;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Vec<String>) -> anyhow::Result<()> {
    let Some((mode, rest)) = args.split_first() else {
        bail!("usage: loadgen load|check|free-port [--flag value]... (see the crate docs)");
    };
    match mode.as_str() {
        "free-port" => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("{}", listener.local_addr()?.port());
            Ok(())
        }
        "load" => load(Opts::parse(rest, LOAD_FLAGS)?).await,
        "check" => check(Opts::parse(rest, CHECK_FLAGS)?).await,
        "-h" | "--help" | "help" => {
            println!("usage: loadgen load|check|free-port [--flag value]...");
            Ok(())
        }
        other => bail!("unknown mode `{other}`: expected load, check or free-port"),
    }
}

const COMMON_FLAGS: &[&str] = &[
    "addr",
    "connections",
    "duration",
    "requests",
    "timeout-ms",
    "label",
];
const LOAD_FLAGS: &[&str] = &["keys", "hot-id", "spread", "warmup", "method"];
const CHECK_FLAGS: &[&str] = &[
    "ids",
    "first-id",
    "write-pct",
    "phase-secs",
    "read-addr",
    "write-from",
    "write-until",
];

/// `--flag value` pairs, checked against the flags a mode knows.
#[derive(Debug)]
struct Opts(BTreeMap<String, String>);

impl Opts {
    fn parse(args: &[String], mode_flags: &[&str]) -> anyhow::Result<Opts> {
        let mut map = BTreeMap::new();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let Some(name) = flag.strip_prefix("--") else {
                bail!("expected a --flag, got `{flag}`");
            };
            if !COMMON_FLAGS.contains(&name) && !mode_flags.contains(&name) {
                bail!("unknown flag `{flag}`");
            }
            let Some(value) = it.next() else {
                bail!("flag `{flag}` needs a value");
            };
            if map.insert(name.to_owned(), value.clone()).is_some() {
                bail!("flag `{flag}` given twice");
            }
        }
        Ok(Opts(map))
    }

    fn str_or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.0.get(name).map_or(default, String::as_str)
    }

    fn num<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display>(
        &self,
        name: &str,
        default: T,
        min: T,
        max: T,
    ) -> anyhow::Result<T> {
        let Some(raw) = self.0.get(name) else {
            return Ok(default);
        };
        match raw.parse::<T>() {
            Ok(v) if v >= min && v <= max => Ok(v),
            _ => bail!("--{name} must be a number from {min} to {max}, got `{raw}`"),
        }
    }

    fn secs(&self, name: &str, default: f64, min: f64) -> anyhow::Result<Duration> {
        Ok(Duration::from_secs_f64(
            self.num(name, default, min, MAX_SECS)?,
        ))
    }
}

/// Resolves `addr` and refuses anything that is not a loopback address.
async fn loopback_target(addr: &str) -> anyhow::Result<SocketAddr> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve `{addr}` (expected host:port)"))?
        .collect();
    if resolved.is_empty() {
        bail!("`{addr}` resolves to no address");
    }
    if let Some(bad) = resolved.iter().find(|a| !a.ip().is_loopback()) {
        bail!(
            "refusing `{addr}`: {bad} is not a loopback address (this tool only loads 127.0.0.1/::1)"
        );
    }
    Ok(resolved[0])
}

/// Latencies in a log-linear histogram (1/64 relative precision), so memory
/// stays bounded whatever the request count.
#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
}

impl Histogram {
    const LINEAR: u64 = 128;
    const SUB: u64 = 64;

    fn new() -> Self {
        Histogram {
            counts: vec![0; 4096],
            total: 0,
            max_us: 0,
        }
    }

    fn bucket(us: u64) -> usize {
        if us < Self::LINEAR {
            return us as usize;
        }
        let exp = 63 - u64::from(us.leading_zeros()); // >= 7
        let sub = (us >> (exp - 6)) & (Self::SUB - 1);
        (Self::LINEAR + (exp - 7) * Self::SUB + sub) as usize
    }

    fn lower_bound(bucket: usize) -> u64 {
        let b = bucket as u64;
        if b < Self::LINEAR {
            return b;
        }
        let exp = (b - Self::LINEAR) / Self::SUB + 7;
        let sub = (b - Self::LINEAR) % Self::SUB;
        (Self::SUB + sub) << (exp - 6)
    }

    fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let b = Self::bucket(us).min(self.counts.len() - 1);
        self.counts[b] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The `q` quantile in milliseconds (bucket lower bound, capped by max).
    fn quantile_ms(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return ms(Self::lower_bound(i).min(self.max_us));
            }
        }
        ms(self.max_us)
    }
}

fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

/// A tiny xorshift generator: ids and write decisions need no quality.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Outcome of one request, as the statistics see it.
enum Outcome {
    Answer(http::Response),
    Failed,
    TimedOut,
}

async fn send(
    conn: &mut Conn,
    timeout: Duration,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Outcome {
    match tokio::time::timeout(timeout, conn.request(method, path, body)).await {
        Ok(Ok(r)) => Outcome::Answer(r),
        Ok(Err(_)) => {
            // A refused or cut connection fails at once: don't spin on it.
            tokio::time::sleep(Duration::from_millis(5)).await;
            Outcome::Failed
        }
        Err(_) => {
            conn.reset();
            Outcome::TimedOut
        }
    }
}

// ---------------------------------------------------------------- load

#[derive(Debug)]
struct LoadStats {
    hist: Histogram,
    non_2xx: u64,
    failed: u64,
    timed_out: u64,
    connects: u64,
}

async fn load(opts: Opts) -> anyhow::Result<()> {
    let addr = loopback_target(opts.str_or("addr", "127.0.0.1:8080")).await?;
    let connections: usize = opts.num("connections", 50, 1, 2000)?;
    let duration = opts.secs("duration", 5.0, 0.1)?;
    let warmup = opts.secs("warmup", 1.0, 0.0)?;
    let max_requests: u64 = opts.num("requests", 5_000_000, 1, MAX_REQUESTS)?;
    let timeout = Duration::from_millis(opts.num("timeout-ms", 5000, 1, 600_000)?);
    let label = opts.str_or("label", "").to_owned();
    let keys = opts.str_or("keys", "hot").to_owned();
    let hot_id: u64 = opts.num("hot-id", 42, 0, i64::MAX as u64)?;
    let put = match opts.str_or("method", "GET") {
        "GET" | "get" => false,
        "PUT" | "put" => true,
        other => bail!("--method must be GET or PUT, got `{other}`"),
    };
    let nonce = run_nonce();
    let spread: u64 = opts.num("spread", 1000, 1, 1_000_000)?;
    let paths: Arc<Vec<String>> = Arc::new(match keys.as_str() {
        "hot" => vec![format!("/api/customers/{hot_id}")],
        "spread" => (1..=spread)
            .map(|i| format!("/api/customers/{i}"))
            .collect(),
        other => bail!("--keys must be `hot` or `spread`, got `{other}`"),
    });

    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let budget = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for worker in 0..connections {
        let paths = Arc::clone(&paths);
        let budget = Arc::clone(&budget);
        let nonce = nonce.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(worker as u64 + 1);
            let mut sent = 0u64;
            let mut conn = Conn::new(addr);
            let mut stats = LoadStats {
                hist: Histogram::new(),
                non_2xx: 0,
                failed: 0,
                timed_out: 0,
                connects: 0,
            };
            loop {
                let t0 = Instant::now();
                if t0 >= end || budget.fetch_add(1, Ordering::Relaxed) >= max_requests {
                    break;
                }
                let path = &paths[rng.below(paths.len() as u64) as usize];
                let outcome = if put {
                    sent += 1;
                    let body =
                        json!({ "name": format!("bench-{nonce}-{worker}-{sent}") }).to_string();
                    send(&mut conn, timeout, "PUT", path, Some(body.as_bytes())).await
                } else {
                    send(&mut conn, timeout, "GET", path, None).await
                };
                if t0 < measure_from {
                    continue;
                }
                stats.hist.record(t0.elapsed());
                match outcome {
                    Outcome::Answer(r) if (200..300).contains(&r.status) => {}
                    Outcome::Answer(_) => stats.non_2xx += 1,
                    Outcome::Failed => stats.failed += 1,
                    Outcome::TimedOut => stats.timed_out += 1,
                }
            }
            stats.connects = conn.connects;
            stats
        }));
    }
    let results = join_bounded(
        tasks,
        warmup + duration + timeout * 2 + Duration::from_secs(5),
    )
    .await?;
    let measured = end
        .min(Instant::now())
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(1e-9);
    let mut hist = Histogram::new();
    let (mut non_2xx, mut failed, mut timed_out, mut connects) = (0, 0, 0, 0);
    for s in &results {
        hist.merge(&s.hist);
        non_2xx += s.non_2xx;
        failed += s.failed;
        timed_out += s.timed_out;
        connects += s.connects;
    }
    let line = json!({
        "mode": "load",
        "label": label,
        "method": if put { "PUT" } else { "GET" },
        "keys": keys,
        "ids": if keys == "hot" { json!([hot_id]) } else { json!([1, spread]) },
        "connections": connections,
        "duration_s": round3(measured),
        "requests": hist.total,
        "req_per_s": (hist.total as f64 / measured).round(),
        "p50_ms": hist.quantile_ms(0.50),
        "p99_ms": hist.quantile_ms(0.99),
        "max_ms": ms(hist.max_us),
        "non_2xx": non_2xx,
        "no_answer": failed + timed_out,
        "timeouts": timed_out,
        "connects": connects,
    });
    println!("{line}");
    Ok(())
}

/// A string unique to this run (names written by it carry it).
fn run_nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{:x}", nanos ^ (u64::from(std::process::id()) << 40))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Waits for every task, but never longer than `limit`.
async fn join_bounded<T>(
    tasks: Vec<tokio::task::JoinHandle<T>>,
    limit: Duration,
) -> anyhow::Result<Vec<T>> {
    let all = async {
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.context("a worker failed")?);
        }
        anyhow::Ok(out)
    };
    match tokio::time::timeout(limit, all).await {
        Ok(r) => r,
        Err(_) => bail!("workers did not stop within {limit:?}; giving up"),
    }
}

// --------------------------------------------------------------- check

/// What the checker knows about one id.
#[derive(Debug, Default)]
struct IdState {
    /// Highest sequence number of an acknowledged (200) write.
    acked: AtomicU64,
    /// Next sequence number to write.
    next_seq: AtomicU64,
    /// Writes whose outcome is unknown (no answer, or not 2xx).
    uncertain: Mutex<HashSet<u64>>,
    /// One write in flight per id, so acknowledgement order is commit order.
    write_lock: tokio::sync::Mutex<()>,
    /// When each acknowledged write was acknowledged, by sequence number.
    acked_at: Mutex<BTreeMap<u64, Instant>>,
    /// The start of the latest read so far, and whether it was stale.
    last_read: Mutex<Option<(Instant, bool)>>,
}

#[derive(Debug, Clone, Default)]
struct PhaseStats {
    reads: u64,
    writes: u64,
    writes_acked: u64,
    non_2xx: u64,
    no_answer: u64,
    timeouts: u64,
    stale: u64,
    stale_uncertain: u64,
    max_us: u64,
    /// Longest staleness of a stale read.
    max_stale_us: u64,
    statuses: BTreeMap<u16, u64>,
}

impl PhaseStats {
    fn merge(&mut self, o: &PhaseStats) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.writes_acked += o.writes_acked;
        self.non_2xx += o.non_2xx;
        self.no_answer += o.no_answer;
        self.timeouts += o.timeouts;
        self.stale += o.stale;
        self.stale_uncertain += o.stale_uncertain;
        self.max_us = self.max_us.max(o.max_us);
        self.max_stale_us = self.max_stale_us.max(o.max_stale_us);
        for (k, v) in &o.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "requests": self.reads + self.writes,
            "reads": self.reads,
            "writes": self.writes,
            "writes_acked": self.writes_acked,
            "non_2xx": self.non_2xx,
            "no_answer": self.no_answer,
            "timeouts": self.timeouts,
            "stale_reads": self.stale,
            "stale_uncertain": self.stale_uncertain,
            "max_ms": ms(self.max_us),
            "max_stale_ms": ms(self.max_stale_us),
            "non_2xx_statuses": self.statuses.iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect::<serde_json::Map<_, _>>(),
        })
    }
}

#[derive(Debug)]
struct Worker {
    phases: Vec<PhaseStats>,
    hist: Histogram,
    examples: Vec<Value>,
}

/// The name a write sets: unique per run, id and sequence number.
fn write_name(nonce: &str, id: u64, seq: u64) -> String {
    format!("chaos-{nonce}-{id}-{seq}")
}

/// The sequence number in a name this run wrote, or 0 for any other name.
fn name_seq(nonce: &str, id: u64, name: &str) -> u64 {
    let prefix = format!("chaos-{nonce}-{id}-");
    name.strip_prefix(&prefix)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The `name` of a customer JSON body.
fn body_name(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("name")?.as_str().map(str::to_owned)
}

struct CheckCtx {
    addr: SocketAddr,
    read_addr: SocketAddr,
    timeout: Duration,
    nonce: String,
    ids: Vec<(u64, IdState)>,
}

enum WriteResult {
    Acked,
    NotAcked {
        status: Option<u16>,
        timed_out: bool,
    },
}

impl CheckCtx {
    /// Writes a fresh name to `ids[idx]`, one write in flight per id.
    async fn write(
        &self,
        conn: &mut Conn,
        idx: usize,
        lock_deadline: Instant,
    ) -> Option<WriteResult> {
        let (id, state) = &self.ids[idx];
        let _guard = tokio::time::timeout_at(lock_deadline.into(), state.write_lock.lock())
            .await
            .ok()?;
        let seq = state.next_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let name = write_name(&self.nonce, *id, seq);
        let body = json!({ "name": name }).to_string();
        let path = format!("/api/customers/{id}");
        let outcome = send(conn, self.timeout, "PUT", &path, Some(body.as_bytes())).await;
        let result = match outcome {
            Outcome::Answer(r) if r.status == 200 => {
                if let Ok(mut at) = state.acked_at.lock() {
                    at.insert(seq, Instant::now());
                }
                state.acked.fetch_max(seq, Ordering::SeqCst);
                WriteResult::Acked
            }
            Outcome::Answer(r) => WriteResult::NotAcked {
                status: Some(r.status),
                timed_out: false,
            },
            Outcome::Failed => WriteResult::NotAcked {
                status: None,
                timed_out: false,
            },
            Outcome::TimedOut => WriteResult::NotAcked {
                status: None,
                timed_out: true,
            },
        };
        if !matches!(result, WriteResult::Acked)
            && let Ok(mut set) = state.uncertain.lock()
        {
            set.insert(seq);
        }
        Some(result)
    }
}

async fn check(opts: Opts) -> anyhow::Result<()> {
    let addr = loopback_target(opts.str_or("addr", "127.0.0.1:8080")).await?;
    let connections: usize = opts.num("connections", 16, 1, 2000)?;
    let duration = opts.secs("duration", 5.0, 0.1)?;
    let phase_len = opts.secs("phase-secs", duration.as_secs_f64(), 0.1)?;
    let max_requests: u64 = opts.num("requests", 5_000_000, 1, MAX_REQUESTS)?;
    let timeout = Duration::from_millis(opts.num("timeout-ms", 5000, 1, 600_000)?);
    let label = opts.str_or("label", "").to_owned();
    let n_ids: u64 = opts.num("ids", 8, 1, 100_000)?;
    let first_id: u64 = opts.num("first-id", 1, 0, i64::MAX as u64 - n_ids)?;
    let write_pct: f64 = opts.num("write-pct", 5.0, 0.0, 100.0)?;
    let read_addr = match opts.0.get("read-addr") {
        Some(a) => loopback_target(a).await?,
        None => addr,
    };
    let write_from = opts.secs("write-from", 0.0, 0.0)?;
    let write_until = opts.secs("write-until", MAX_SECS, 0.0)?;
    let n_phases = (duration.as_secs_f64() / phase_len.as_secs_f64())
        .ceil()
        .max(1.0) as usize;

    let nonce = run_nonce();
    let ctx = Arc::new(CheckCtx {
        addr,
        read_addr,
        timeout,
        nonce,
        ids: (first_id..first_id + n_ids)
            .map(|id| (id, IdState::default()))
            .collect(),
    });

    // Set-up: one acknowledged write per id, so that an old (seeded or
    // earlier-run) name read later counts as stale.
    let mut conn = Conn::new(addr);
    let mut setup_failures = 0u64;
    for idx in 0..ctx.ids.len() {
        let deadline = Instant::now() + timeout;
        if !matches!(
            ctx.write(&mut conn, idx, deadline).await,
            Some(WriteResult::Acked)
        ) {
            setup_failures += 1;
        }
    }

    let start = Instant::now();
    let end = start + duration;
    let budget = Arc::new(AtomicU64::new(0));
    let write_per_million = (write_pct * 10_000.0).round() as u64;
    let mut tasks = Vec::with_capacity(connections);
    for worker in 0..connections {
        let ctx = Arc::clone(&ctx);
        let budget = Arc::clone(&budget);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(worker as u64 + 7);
            let mut conn = Conn::new(ctx.addr);
            let mut read_conn = Conn::new(ctx.read_addr);
            let mut w = Worker {
                phases: vec![PhaseStats::default(); n_phases],
                hist: Histogram::new(),
                examples: Vec::new(),
            };
            loop {
                let t0 = Instant::now();
                if t0 >= end || budget.fetch_add(1, Ordering::Relaxed) >= max_requests {
                    break;
                }
                let phase = ((t0 - start).as_secs_f64() / phase_len.as_secs_f64()) as usize;
                let phase = phase.min(n_phases - 1);
                let idx = rng.below(ctx.ids.len() as u64) as usize;
                let since_start = t0 - start;
                let writing = since_start >= write_from && since_start < write_until;
                if rng.below(1_000_000) < write_per_million && writing {
                    let Some(result) = ctx.write(&mut conn, idx, end + timeout).await else {
                        continue;
                    };
                    let elapsed = t0.elapsed();
                    w.hist.record(elapsed);
                    let p = &mut w.phases[phase];
                    p.writes += 1;
                    p.max_us = p.max_us.max(elapsed.as_micros() as u64);
                    match result {
                        WriteResult::Acked => p.writes_acked += 1,
                        WriteResult::NotAcked {
                            status: Some(s), ..
                        } => {
                            p.non_2xx += 1;
                            *p.statuses.entry(s).or_default() += 1;
                        }
                        WriteResult::NotAcked {
                            status: None,
                            timed_out,
                        } => {
                            p.no_answer += 1;
                            p.timeouts += u64::from(timed_out);
                        }
                    }
                    continue;
                }
                let (id, state) = &ctx.ids[idx];
                let floor = state.acked.load(Ordering::SeqCst);
                let path = format!("/api/customers/{id}");
                let outcome = send(&mut read_conn, ctx.timeout, "GET", &path, None).await;
                let elapsed = t0.elapsed();
                w.hist.record(elapsed);
                let p = &mut w.phases[phase];
                p.reads += 1;
                p.max_us = p.max_us.max(elapsed.as_micros() as u64);
                match outcome {
                    Outcome::Answer(r) if (200..300).contains(&r.status) => {
                        let name = body_name(&r.body).unwrap_or_default();
                        let got = name_seq(&ctx.nonce, *id, &name);
                        let mut stale_now = false;
                        if got < floor {
                            let uncertain =
                                got > 0 && state.uncertain.lock().is_ok_and(|s| s.contains(&got));
                            if uncertain {
                                p.stale_uncertain += 1;
                            } else {
                                p.stale += 1;
                                stale_now = true;
                                // Since the first acknowledged write newer
                                // than what was read.
                                let since =
                                    state.acked_at.lock().ok().and_then(|at| {
                                        at.range(got + 1..).next().map(|(_, at)| *at)
                                    });
                                if let Some(since) = since {
                                    let stale_us =
                                        t0.saturating_duration_since(since).as_micros() as u64;
                                    p.max_stale_us = p.max_stale_us.max(stale_us);
                                }
                            }
                            if w.examples.len() < 3 {
                                w.examples.push(json!({
                                    "id": id,
                                    "acked_before_read": floor,
                                    "read": got,
                                    "uncertain": uncertain,
                                    "at_s": round3((t0 - start).as_secs_f64()),
                                }));
                            }
                        }
                        if let Ok(mut last) = state.last_read.lock()
                            && last.is_none_or(|(at, _)| at < t0)
                        {
                            *last = Some((t0, stale_now));
                        }
                    }
                    Outcome::Answer(r) => {
                        p.non_2xx += 1;
                        *p.statuses.entry(r.status).or_default() += 1;
                    }
                    Outcome::Failed => p.no_answer += 1,
                    Outcome::TimedOut => {
                        p.no_answer += 1;
                        p.timeouts += 1;
                    }
                }
            }
            w
        }));
    }
    let workers = join_bounded(tasks, duration + timeout * 3 + Duration::from_secs(5)).await?;
    let elapsed = start.elapsed().as_secs_f64();

    let mut phases = vec![PhaseStats::default(); n_phases];
    let mut hist = Histogram::new();
    let mut examples = Vec::new();
    for w in &workers {
        for (a, b) in phases.iter_mut().zip(&w.phases) {
            a.merge(b);
        }
        hist.merge(&w.hist);
        examples.extend(w.examples.iter().cloned());
    }
    examples.truncate(5);
    let mut total = PhaseStats::default();
    for (i, p) in phases.iter().enumerate() {
        total.merge(p);
        let mut line = p.to_json();
        if let Value::Object(m) = &mut line {
            let from = phase_len.as_secs_f64() * i as f64;
            let to = (from + phase_len.as_secs_f64()).min(duration.as_secs_f64());
            m.insert("mode".into(), json!("check"));
            m.insert("label".into(), json!(label));
            m.insert("phase".into(), json!(i));
            m.insert("from_s".into(), json!(round3(from)));
            m.insert("to_s".into(), json!(round3(to)));
        }
        println!("{line}");
    }
    let mut line = total.to_json();
    if let Value::Object(m) = &mut line {
        m.insert("mode".into(), json!("check"));
        m.insert("label".into(), json!(label));
        m.insert("phase".into(), json!("total"));
        m.insert("duration_s".into(), json!(round3(elapsed)));
        m.insert("connections".into(), json!(connections));
        m.insert("ids".into(), json!([first_id, first_id + n_ids - 1]));
        m.insert("write_pct".into(), json!(write_pct));
        m.insert(
            "req_per_s".into(),
            json!((hist.total as f64 / elapsed.max(1e-9)).round()),
        );
        m.insert("p50_ms".into(), json!(hist.quantile_ms(0.5)));
        m.insert("p99_ms".into(), json!(hist.quantile_ms(0.99)));
        m.insert("setup_failures".into(), json!(setup_failures));
        m.insert("read_addr".into(), json!(read_addr.to_string()));
        let stale_at_end = ctx
            .ids
            .iter()
            .filter(|(_, s)| {
                s.last_read
                    .lock()
                    .is_ok_and(|l| l.is_some_and(|(_, stale)| stale))
            })
            .count();
        m.insert("stale_at_end".into(), json!(stale_at_end));
        m.insert("stale_examples".into(), Value::Array(examples));
    }
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_within_two_percent() {
        let mut h = Histogram::new();
        for us in 1..=100_000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile_ms(0.5);
        let p99 = h.quantile_ms(0.99);
        assert!((p50 - 50.0).abs() / 50.0 < 0.02, "{p50}");
        assert!((p99 - 99.0).abs() / 99.0 < 0.02, "{p99}");
        assert_eq!(ms(h.max_us), 100.0);
        for us in [0, 1, 127, 128, 129, 1000, 1 << 20, 1 << 40] {
            let b = Histogram::bucket(us);
            assert!(Histogram::lower_bound(b) <= us && b < 4096, "{us}");
        }
    }

    #[test]
    fn names_round_trip() {
        let n = write_name("ab12", 7, 42);
        assert_eq!(name_seq("ab12", 7, &n), 42);
        assert_eq!(name_seq("ab12", 8, &n), 0);
        assert_eq!(name_seq("ffff", 7, &n), 0);
        assert_eq!(name_seq("ab12", 7, "Ada Lovelace"), 0);
    }

    #[tokio::test]
    async fn refuses_non_loopback_targets() {
        assert!(loopback_target("127.0.0.1:8080").await.is_ok());
        assert!(loopback_target("[::1]:8080").await.is_ok());
        let err = loopback_target("10.1.2.3:80").await.unwrap_err();
        assert!(err.to_string().contains("not a loopback"), "{err}");
        assert!(loopback_target("8.8.8.8:53").await.is_err());
        assert!(loopback_target("no-port").await.is_err());
    }
}
