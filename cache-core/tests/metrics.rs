//! The `metrics` series a cache exports: every per-prefix counter exists
//! (at 0) as soon as a prefix is registered, each counter moves with the
//! matching `Cache::stats` figure, the gauges follow the circuit breaker and
//! the fallback, and every exported name is documented with its labels.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cache_core::{Cache, CacheStats, CircuitState, ErrorKind, PrefixStats};
use cache_testkit::TestCache;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use tokio::sync::Notify;

/// A series: name plus sorted labels.
type SeriesKey = (String, Vec<(String, String)>);

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
    fn increment(&self, value: f64) {
        self.set(f64::from_bits(self.0.load(Ordering::Relaxed)) + value);
    }
    fn decrement(&self, value: f64) {
        self.set(f64::from_bits(self.0.load(Ordering::Relaxed)) - value);
    }
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
}

impl HistogramFn for Value {
    fn record(&self, _value: f64) {}
}

/// A recorder that keeps every registered series and its value.
#[derive(Default)]
struct Registry {
    counters: Mutex<BTreeMap<SeriesKey, Arc<Value>>>,
    gauges: Mutex<BTreeMap<SeriesKey, Arc<Value>>>,
}

fn series_key(key: &Key) -> SeriesKey {
    let mut labels: Vec<(String, String)> = key
        .labels()
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect();
    labels.sort();
    (key.name().to_owned(), labels)
}

impl Recorder for Registry {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut map = self.counters.lock().unwrap();
        Counter::from_arc(map.entry(series_key(key)).or_default().clone())
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut map = self.gauges.lock().unwrap();
        Gauge::from_arc(map.entry(series_key(key)).or_default().clone())
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Value::default()))
    }
}

impl Registry {
    /// The value of `name{labels}`, `None` when the series was never registered.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        let map = self.counters.lock().unwrap();
        map.get(&(name.to_owned(), labels))
            .map(|v| v.0.load(Ordering::Relaxed))
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        let map = self.gauges.lock().unwrap();
        map.get(&(name.to_owned(), labels))
            .map(|v| f64::from_bits(v.0.load(Ordering::Relaxed)))
    }

    /// Every series name with the label names it was seen with.
    fn names(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for map in [&self.counters, &self.gauges] {
            for (name, labels) in map.lock().unwrap().keys() {
                out.entry(name.clone())
                    .or_default()
                    .extend(labels.iter().map(|(k, _)| k.clone()));
            }
        }
        out
    }
}

/// The process-wide recorder of this test binary. Tests use prefixes of
/// their own, so they run in parallel without seeing each other's counts.
fn registry() -> &'static Arc<Registry> {
    static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let registry = Arc::new(Registry::default());
        metrics::set_global_recorder(ArcRecorder(registry.clone()))
            .expect("no other recorder in this test binary");
        registry
    })
}

struct ArcRecorder(Arc<Registry>);

impl Recorder for ArcRecorder {
    fn describe_counter(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.0.describe_counter(k, u, d);
    }
    fn describe_gauge(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.0.describe_gauge(k, u, d);
    }
    fn describe_histogram(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.0.describe_histogram(k, u, d);
    }
    fn register_counter(&self, key: &Key, m: &Metadata<'_>) -> Counter {
        self.0.register_counter(key, m)
    }
    fn register_gauge(&self, key: &Key, m: &Metadata<'_>) -> Gauge {
        self.0.register_gauge(key, m)
    }
    fn register_histogram(&self, key: &Key, m: &Metadata<'_>) -> Histogram {
        self.0.register_histogram(key, m)
    }
}

/// Reads one figure of a `PrefixStats`.
type Figure = fn(&PrefixStats) -> u64;

/// Each per-prefix counter with the `PrefixStats` figure it mirrors.
const COUNTERS: [(&str, Figure); 12] = [
    ("cache_hits_total", |s| s.hits),
    ("cache_misses_total", |s| s.misses),
    ("cache_sets_total", |s| s.sets),
    ("cache_loads_total", |s| s.loads),
    ("cache_coalesced_total", |s| s.coalesced),
    ("cache_lease_waits_total", |s| s.lease_waits),
    ("cache_stale_sets_prevented_total", |s| {
        s.stale_sets_prevented
    }),
    ("cache_decode_failures_total", |s| s.decode_failures),
    ("cache_oversized_total", |s| s.oversized),
    ("cache_fallback_hits_total", |s| s.fallback_hits),
    ("cache_invalidations_total", |s| s.invalidations),
    ("cache_near_hits_total", |s| s.near_hits),
];

#[test]
fn registered_prefixes_have_every_series_at_zero() {
    let registry = registry();
    let cache = Cache::memory();
    cache.register_prefixes(["zero_a", "zero_b"]);
    for prefix in ["zero_a", "zero_b"] {
        for (name, _) in COUNTERS {
            assert_eq!(
                registry.counter(name, &[("prefix", prefix)]),
                Some(0),
                "{name}{{prefix={prefix}}} is not exported at 0"
            );
        }
        for kind in ErrorKind::ALL {
            assert_eq!(
                registry.counter(
                    "cache_errors_total",
                    &[("prefix", prefix), ("kind", kind.as_str())]
                ),
                Some(0),
                "cache_errors_total{{prefix={prefix},kind={}}} is not exported at 0",
                kind.as_str()
            );
        }
        assert_eq!(
            registry.gauge("cache_hit_ratio", &[("prefix", prefix)]),
            Some(0.0),
            "cache_hit_ratio{{prefix={prefix}}} is not exported"
        );
        // Registered prefixes are part of the stats too, at zero.
        assert_eq!(cache.stats().prefixes[prefix], PrefixStats::default());
    }
    // Registering twice, or an empty name, changes nothing and never panics.
    cache.register_prefixes(["zero_a", ""]);
    assert_eq!(
        cache.stats().prefixes.keys().collect::<Vec<_>>(),
        ["zero_a", "zero_b"]
    );
}

/// Waits until `cond` holds, bounded.
async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within {within:?}: {what}");
}

/// A load into `cache` for `key` that stalls until `release` is notified;
/// `started` is notified when the body runs.
fn stalled_load(
    cache: &Cache,
    key: &'static str,
    started: Arc<Notify>,
    release: Arc<Notify>,
) -> tokio::task::JoinHandle<u64> {
    let cache = cache.clone();
    tokio::spawn(async move {
        cache
            .get_or_set(key, None, || async move {
                started.notify_one();
                release.notified().await;
                7u64
            })
            .await
            .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counter_moves_with_its_stats_figure() {
    let registry = registry();
    let test = TestCache::builder()
        .circuit_breaker(1, Duration::from_secs(30))
        .max_value_bytes(256)
        .build();
    let other = test.another_instance();
    let cache = test.cache().clone();

    // Miss, load, store; then a hit.
    assert_eq!(
        cache
            .get_or_set("moves:1", None, || async { 1u64 })
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        cache
            .get_or_set("moves:1", None, || async { 2u64 })
            .await
            .unwrap(),
        1
    );

    // A second caller in this process joins the first one's load.
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let leader = stalled_load(&cache, "moves:2", started.clone(), release.clone());
    started.notified().await;
    let follower = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_set("moves:2", None, || async { 8u64 })
                .await
                .unwrap()
        })
    };
    eventually("the follower joins", Duration::from_secs(5), || {
        cache.stats().prefixes["moves"].coalesced == 1
    })
    .await;
    release.notify_one();
    assert_eq!(leader.await.unwrap(), 7);
    assert_eq!(follower.await.unwrap(), 7);

    // Another process waits for this one's lease.
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let leader = stalled_load(&cache, "moves:3", started.clone(), release.clone());
    started.notified().await;
    let waiter = {
        let other = other.cache().clone();
        tokio::spawn(async move {
            other
                .get_or_set("moves:3", None, || async { 9u64 })
                .await
                .unwrap()
        })
    };
    eventually("the other process waits", Duration::from_secs(5), || {
        other
            .stats()
            .prefixes
            .get("moves")
            .is_some_and(|s| s.lease_waits > 0)
    })
    .await;
    release.notify_one();
    assert_eq!(leader.await.unwrap(), 7);
    assert_eq!(waiter.await.unwrap(), 7);

    // An invalidation during a load: the loaded value is not stored.
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let loader = stalled_load(&cache, "moves:4", started.clone(), release.clone());
    started.notified().await;
    cache.delete("moves:4").await.unwrap();
    release.notify_one();
    assert_eq!(loader.await.unwrap(), 7);

    // Bytes that do not decode, and a value too large to store.
    test.put_raw("moves:5", b"not an envelope".to_vec());
    assert_eq!(cache.get::<u64>("moves:5").await.unwrap(), None);
    assert!(cache.set("moves:6", &"x".repeat(1024), None).await.is_err());

    // Redis away: the breaker opens; the fallback stores and answers.
    test.go_down();
    assert_eq!(cache.get::<u64>("moves:7").await.unwrap(), None);
    assert_eq!(cache.stats().circuit, CircuitState::Open);
    cache.set("moves:8", &8u64, None).await.unwrap();
    assert_eq!(cache.get::<u64>("moves:8").await.unwrap(), Some(8));

    let (a, b) = (cache.stats(), other.stats());
    let (a, b) = (&a.prefixes["moves"], &b.prefixes["moves"]);
    for (what, figure) in [
        ("coalesced", a.coalesced),
        ("lease_waits", b.lease_waits),
        ("stale_sets_prevented", a.stale_sets_prevented),
        ("decode_failures", a.decode_failures),
        ("oversized", a.oversized),
        ("fallback_hits", a.fallback_hits),
        ("errors", a.total_errors()),
    ] {
        assert!(figure > 0, "the scenario did not produce {what}: {a:?}");
    }
    // Both instances count into the same series (one label set per prefix).
    for (name, figure) in COUNTERS {
        assert_eq!(
            registry.counter(name, &[("prefix", "moves")]),
            Some(figure(a) + figure(b)),
            "{name}{{prefix=\"moves\"}} differs from the stats ({a:?}, {b:?})"
        );
    }
    for kind in ErrorKind::ALL {
        let kind = kind.as_str();
        let figure =
            a.errors.get(kind).copied().unwrap_or(0) + b.errors.get(kind).copied().unwrap_or(0);
        assert_eq!(
            registry.counter("cache_errors_total", &[("prefix", "moves"), ("kind", kind)]),
            Some(figure),
            "cache_errors_total{{kind={kind}}} differs from the stats"
        );
    }
}

/// Exports `stats`' gauges into a recorder of this call only, so the
/// unlabelled gauges of parallel tests don't mix.
fn exported(stats: &CacheStats) -> Registry {
    let local = Registry::default();
    metrics::with_local_recorder(&local, || stats.export_gauges());
    local
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_follow_the_breaker_the_fallback_and_the_hit_ratio() {
    let test = TestCache::builder()
        .timeout(Duration::from_millis(100))
        .circuit_breaker(1, Duration::from_secs(30))
        .build();
    let cache = test.cache().clone();
    cache.register_prefixes(["ratio"]);

    let gauges = exported(&cache.stats());
    assert_eq!(gauges.gauge("cache_circuit_state", &[]), Some(0.0));
    assert_eq!(gauges.gauge("cache_fallback_active", &[]), Some(0.0));
    assert_eq!(
        gauges.gauge("cache_hit_ratio", &[("prefix", "ratio")]),
        Some(0.0)
    );

    cache.set("ratio:1", &1u64, None).await.unwrap();
    for _ in 0..3 {
        assert_eq!(cache.get::<u64>("ratio:1").await.unwrap(), Some(1));
    }
    assert_eq!(cache.get::<u64>("ratio:2").await.unwrap(), None);
    let gauges = exported(&cache.stats());
    assert_eq!(
        gauges.gauge("cache_hit_ratio", &[("prefix", "ratio")]),
        Some(0.75)
    );

    // Redis away: the breaker opens, and a write lands in the fallback.
    test.go_down();
    assert_eq!(cache.get::<u64>("ratio:3").await.unwrap(), None);
    cache.set("ratio:3", &3u64, None).await.unwrap();
    let stats = cache.stats();
    assert_eq!(stats.circuit, CircuitState::Open);
    assert!(stats.fallback_active);
    let gauges = exported(&stats);
    assert_eq!(gauges.gauge("cache_circuit_state", &[]), Some(2.0));
    assert_eq!(gauges.gauge("cache_fallback_active", &[]), Some(1.0));

    // Back: the probe closes the breaker and the fallback is cleared.
    test.come_back();
    eventually("the breaker closes", Duration::from_secs(10), || {
        let stats = cache.stats();
        stats.circuit == CircuitState::Closed && !stats.fallback_active
    })
    .await;
    let gauges = exported(&cache.stats());
    assert_eq!(gauges.gauge("cache_circuit_state", &[]), Some(0.0));
    assert_eq!(gauges.gauge("cache_fallback_active", &[]), Some(0.0));
}

#[test]
fn every_exported_series_is_documented_with_its_labels() {
    let cache = Cache::memory();
    let local = Registry::default();
    metrics::with_local_recorder(&local, || {
        cache.register_prefixes(["documented"]);
        cache.stats().export_gauges();
    });
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics_doc.md"))
        .expect("cache-core/src/metrics_doc.md");
    let names = local.names();
    assert!(names.len() >= COUNTERS.len() + 4, "{names:?}");
    for (name, labels) in &names {
        let row = doc
            .lines()
            .find(|l| l.starts_with('|') && l.contains(&format!("`{name}`")))
            .unwrap_or_else(|| panic!("{name} is exported but not in the metrics list"));
        for label in labels {
            assert!(
                row.contains(&format!("`{label}`")),
                "the row of {name} does not name its label {label}: {row}"
            );
        }
    }
    // And the list names nothing that is not exported.
    for line in doc.lines().filter(|l| l.starts_with("| `cache_")) {
        let name = line
            .trim_start_matches("| `")
            .split('`')
            .next()
            .unwrap_or_default();
        assert!(
            names.contains_key(name),
            "{name} is documented but not exported"
        );
    }
}
