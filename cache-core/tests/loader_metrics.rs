//! The `metrics` series of the loader's events: fail-safe activations,
//! stale hits, soft and hard timeouts, refresh-aheads started and failed,
//! tag invalidations. Each exists (at 0 once a prefix is registered), moves
//! exactly with its `Cache::stats` figure when the event happens, and is
//! documented in the metrics guide. The events are produced for real, on
//! the test kit's backend (manual clock) and on a redis-server, through a
//! recorder installed for this test binary.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cache_core::{Cache, LoadTimedOut, Outcome, PrefixStats, cached, with_outcome};
use cache_testkit::{RedisServer, TestCache};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use tokio::sync::Notify;

#[derive(Default)]
struct Value(AtomicU64);

impl CounterFn for Value {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

impl GaugeFn for Value {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, _: f64) {}
}

impl HistogramFn for Value {
    fn record(&self, _: f64) {}
}

/// Counters by `(name, prefix label)`.
#[derive(Default)]
struct Registry(Mutex<BTreeMap<(String, String), Arc<Value>>>);

impl Recorder for Registry {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let prefix = key
            .labels()
            .find(|l| l.key() == "prefix")
            .map(|l| l.value().to_owned())
            .unwrap_or_default();
        let mut map = self.0.lock().unwrap();
        Counter::from_arc(
            map.entry((key.name().to_owned(), prefix))
                .or_default()
                .clone(),
        )
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Value::default()))
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Value::default()))
    }
}

impl Registry {
    /// `name{prefix}` summed over its other labels; `None` if never registered.
    fn counter(&self, name: &str, prefix: &str) -> Option<u64> {
        let map = self.0.lock().unwrap();
        map.get(&(name.to_owned(), prefix.to_owned()))
            .map(|v| v.0.load(Ordering::Relaxed))
    }
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<&'static Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let registry: &'static Registry = Box::leak(Box::default());
        metrics::set_global_recorder(registry).expect("no other recorder in this test binary");
        registry
    })
}

type Figure = fn(&PrefixStats) -> u64;

/// The loader's series, with the stats figure each mirrors.
const LOADER_SERIES: [(&str, Figure); 6] = [
    ("cache_fail_safe_activations_total", |s| {
        s.fail_safe_activations
    }),
    ("cache_stale_hits_total", |s| s.stale_hits),
    ("cache_soft_timeouts_total", |s| s.soft_timeouts),
    ("cache_hard_timeouts_total", |s| s.hard_timeouts),
    ("cache_refreshes_total", |s| s.refreshes),
    ("cache_refresh_failures_total", |s| s.refresh_failures),
];

/// A "database": a value, a switch that makes reads fail, a gate.
#[derive(Clone, Default)]
struct Src {
    failing: Arc<AtomicBool>,
    /// The next read waits to be released by this.
    gate: Arc<Mutex<Option<Arc<Notify>>>>,
}

impl Src {
    async fn read(&self) -> Result<u64, String> {
        let gate = self.gate.lock().unwrap().take();
        if let Some(release) = gate {
            release.notified().await;
        }
        match self.failing.load(Ordering::SeqCst) {
            true => Err("down".to_owned()),
            false => Ok(1),
        }
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// The next read waits until the returned `Notify` is notified.
    fn hold_next(&self) -> Arc<Notify> {
        let release = Arc::new(Notify::new());
        *self.gate.lock().unwrap() = Some(release.clone());
        release
    }
}

#[derive(Debug, PartialEq)]
enum ReadError {
    Db,
    TimedOut,
}

impl From<LoadTimedOut> for ReadError {
    fn from(_: LoadTimedOut) -> Self {
        ReadError::TimedOut
    }
}

#[cached(prefix = "lm_fs", key = "{id}", ttl = std::time::Duration::from_millis(500),
         fail_safe = 3600, tags = ["lm-tag:{id}"], cache = cache)]
async fn fail_safe_item(cache: &Cache, src: &Src, id: u64) -> Result<u64, String> {
    let _ = id;
    src.read().await
}

#[cached(prefix = "lm_soft", key = "{id}", ttl = std::time::Duration::from_millis(500),
         fail_safe = 3600, soft_timeout = std::time::Duration::from_millis(30), cache = cache)]
async fn soft_item(cache: &Cache, src: &Src, id: u64) -> Result<u64, String> {
    let _ = id;
    src.read().await
}

#[cached(prefix = "lm_hard", key = "{id}", hard_timeout = std::time::Duration::from_millis(50),
         cache = cache)]
async fn hard_item(cache: &Cache, src: &Src, id: u64) -> Result<u64, ReadError> {
    let _ = id;
    src.read().await.map_err(|_| ReadError::Db)
}

#[cached(prefix = "lm_ra", key = "{id}", ttl = std::time::Duration::from_millis(1500),
         refresh_ahead = 0.3, cache = cache)]
async fn refreshed_item(cache: &Cache, src: &Src, id: u64) -> Result<u64, String> {
    let _ = id;
    src.read().await
}

const PREFIXES: [&str; 4] = ["lm_fs", "lm_soft", "lm_hard", "lm_ra"];

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still not: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every event once or more on `cache`; `wait(ms)` lets time pass (the
/// manual clock, or real time).
async fn every_event(cache: &Cache, wait: impl AsyncFn(u64)) {
    let src = Src::default();
    // Fail-safe: past the TTL the reload fails, the stale value answers
    // (an activation and a stale hit); then the throttle (a stale hit).
    fail_safe_item(cache, &src, 1).await.unwrap();
    soft_item(cache, &src, 1).await.unwrap();
    refreshed_item(cache, &src, 1).await.unwrap();
    wait(600).await;
    src.fail(true);
    for _ in 0..2 {
        assert_eq!(
            with_outcome(fail_safe_item(cache, &src, 1)).await,
            (Ok(1), Outcome::Stale)
        );
    }
    src.fail(false);
    // Soft timeout: the reload is held; after 30 ms the stale value.
    let release = src.hold_next();
    assert_eq!(
        with_outcome(soft_item(cache, &src, 1)).await,
        (Ok(1), Outcome::Stale)
    );
    release.notify_one();
    // Hard timeout: nothing to answer with but the error.
    let release = src.hold_next();
    assert_eq!(hard_item(cache, &src, 1).await, Err(ReadError::TimedOut));
    release.notify_one();
    // Refresh-ahead started (past 30% of the TTL), and failed.
    src.fail(true);
    assert_eq!(
        with_outcome(refreshed_item(cache, &src, 1)).await,
        (Ok(1), Outcome::Hit)
    );
    eventually("the refresh failed", || {
        cache.stats().prefixes["lm_ra"].refresh_failures == 1
    })
    .await;
    src.fail(false);
    // A tag invalidation.
    cache.invalidate_tag("lm-tag:1").await.unwrap();
}

/// Every loader series of `prefix`, by name.
fn series(prefix: &str) -> BTreeMap<&'static str, u64> {
    LOADER_SERIES
        .iter()
        .map(|(name, _)| (*name, registry().counter(name, prefix).unwrap_or(0)))
        .collect()
}

async fn moves_with_stats(cache: &Cache, wait: impl AsyncFn(u64)) {
    cache.register_prefixes(PREFIXES);
    let before: Vec<_> = PREFIXES.iter().map(|p| series(p)).collect();
    let tags_before = registry()
        .counter("cache_invalidations_total", "_tags")
        .unwrap_or(0);
    every_event(cache, wait).await;
    let stats = cache.stats();
    for (prefix, before) in PREFIXES.iter().zip(before) {
        let figures = &stats.prefixes[*prefix];
        let after = series(prefix);
        for (name, figure) in LOADER_SERIES {
            assert_eq!(
                after[name] - before[name],
                figure(figures),
                "{name}{{prefix={prefix}}} differs from the stats: {figures:?}"
            );
        }
    }
    // Each event happened, and was counted where it belongs.
    let at = |prefix: &str, figure: Figure| figure(&stats.prefixes[prefix]);
    assert_eq!(at("lm_fs", |s| s.fail_safe_activations), 1);
    assert_eq!(at("lm_fs", |s| s.stale_hits), 2);
    assert_eq!(at("lm_soft", |s| s.soft_timeouts), 1);
    assert_eq!(at("lm_soft", |s| s.stale_hits), 1);
    assert_eq!(at("lm_hard", |s| s.hard_timeouts), 1);
    assert_eq!(at("lm_ra", |s| s.refreshes), 1);
    assert_eq!(at("lm_ra", |s| s.refresh_failures), 1);
    assert_eq!(
        registry()
            .counter("cache_invalidations_total", "_tags")
            .unwrap_or(0)
            - tags_before,
        1,
        "one tag invalidation, counted under prefix=\"_tags\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_series_move_with_their_events_on_memory_and_redis() {
    registry();
    let test = TestCache::new();
    let wait = async |ms| test.advance(Duration::from_millis(ms));
    moves_with_stats(test.cache(), wait).await;

    let server = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(server.url())
        .namespace("loader-metrics")
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let wait = async |ms| tokio::time::sleep(Duration::from_millis(ms)).await;
    moves_with_stats(&cache, wait).await;
}

#[test]
fn loader_series_exist_at_zero_and_are_documented() {
    registry();
    let cache = Cache::memory();
    cache.register_prefixes(["lm_zero"]);
    for (name, _) in LOADER_SERIES {
        assert_eq!(
            registry().counter(name, "lm_zero"),
            Some(0),
            "{name}{{prefix=\"lm_zero\"}} is not exported at 0"
        );
    }
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics_doc.md"))
        .expect("cache-core/src/metrics_doc.md");
    for (name, _) in LOADER_SERIES {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}`")))
            .unwrap_or_else(|| panic!("{name} is not in the metrics guide"));
        let meaning = row.rsplit('|').nth(1).unwrap_or_default().trim();
        assert!(
            row.contains("`prefix`") && meaning.len() > 40,
            "{name}: the row names its label and says what it counts: {row}"
        );
    }
    assert!(
        doc.contains("prefix=\"_tags\"") && doc.contains("invalidate_tag"),
        "the guide says where tag invalidations are counted"
    );
}
