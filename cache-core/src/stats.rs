//! Hit/miss accounting per prefix, exported through [`Cache::stats`](crate::Cache::stats)
//! and the `metrics` crate (every series is listed in
//! [`metrics_guide`](crate::metrics_guide)).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use serde::Serialize;

use crate::error::ErrorKind;

/// Counters of one prefix (and of the total).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) sets: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) lease_waits: AtomicU64,
    pub(crate) stale_sets_prevented: AtomicU64,
    pub(crate) decode_failures: AtomicU64,
    pub(crate) oversized: AtomicU64,
    pub(crate) fallback_hits: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) near_hits: AtomicU64,
    pub(crate) fail_safe: AtomicU64,
    pub(crate) stale_hits: AtomicU64,
    pub(crate) soft_timeouts: AtomicU64,
    pub(crate) hard_timeouts: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) refresh_failures: AtomicU64,
    pub(crate) errors: [AtomicU64; ErrorKind::ALL.len()],
}

/// What happened, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Hit,
    Miss,
    Set,
    Load,
    Coalesced,
    LeaseWait,
    StaleSetPrevented,
    DecodeFailure,
    Oversized,
    FallbackHit,
    Invalidation,
    NearHit,
    FailSafe,
    StaleHit,
    SoftTimeout,
    HardTimeout,
    RefreshStarted,
    RefreshFailed,
}

// `Event as usize` indexes `Event::ALL` and `PrefixMetrics::events`.
const _: () = {
    let mut i = 0;
    while i < Event::ALL.len() {
        assert!(Event::ALL[i] as usize == i);
        i += 1;
    }
};

impl Event {
    /// Every event, in the order of [`PrefixMetrics::events`].
    const ALL: [Event; 18] = [
        Event::Hit,
        Event::Miss,
        Event::Set,
        Event::Load,
        Event::Coalesced,
        Event::LeaseWait,
        Event::StaleSetPrevented,
        Event::DecodeFailure,
        Event::Oversized,
        Event::FallbackHit,
        Event::Invalidation,
        Event::NearHit,
        Event::FailSafe,
        Event::StaleHit,
        Event::SoftTimeout,
        Event::HardTimeout,
        Event::RefreshStarted,
        Event::RefreshFailed,
    ];

    /// The name of the counter that counts this event (label `prefix`).
    const fn metric(self) -> &'static str {
        match self {
            Event::Hit => "cache_hits_total",
            Event::Miss => "cache_misses_total",
            Event::Set => "cache_sets_total",
            Event::Load => "cache_loads_total",
            Event::Coalesced => "cache_coalesced_total",
            Event::LeaseWait => "cache_lease_waits_total",
            Event::StaleSetPrevented => "cache_stale_sets_prevented_total",
            Event::DecodeFailure => "cache_decode_failures_total",
            Event::Oversized => "cache_oversized_total",
            Event::FallbackHit => "cache_fallback_hits_total",
            Event::Invalidation => "cache_invalidations_total",
            Event::NearHit => "cache_near_hits_total",
            Event::FailSafe => "cache_fail_safe_activations_total",
            Event::StaleHit => "cache_stale_hits_total",
            Event::SoftTimeout => "cache_soft_timeouts_total",
            Event::HardTimeout => "cache_hard_timeouts_total",
            Event::RefreshStarted => "cache_refreshes_total",
            Event::RefreshFailed => "cache_refresh_failures_total",
        }
    }
}

/// Counter stripes per prefix: each thread bumps its own stripe (its own
/// cache line), so hits counted on every core do not contend; a snapshot
/// sums the stripes.
const STRIPES: usize = 8;

/// One stripe, alone on its cache lines.
#[derive(Default)]
#[repr(align(128))]
struct Stripe(Counters);

/// The stripe this thread bumps, assigned round-robin at its first count.
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    MINE.try_with(|i| *i).unwrap_or(0)
}

/// The `metrics` counters of one prefix, one per [`Event`] and per
/// [`ErrorKind`], all registered when the prefix is first seen so that
/// every series exists (at 0) before anything happens: `rate()` and
/// absence alerts need the series, not just its first increment.
struct PrefixMetrics {
    events: [metrics::Counter; Event::ALL.len()],
    errors: [metrics::Counter; ErrorKind::ALL.len()],
}

impl PrefixMetrics {
    fn new(prefix: &str) -> Self {
        let label = || prefix.to_owned();
        let metrics = PrefixMetrics {
            events: Event::ALL.map(|event| metrics::counter!(event.metric(), "prefix" => label())),
            errors: ErrorKind::ALL.map(|kind| {
                metrics::counter!("cache_errors_total", "prefix" => label(), "kind" => kind.as_str())
            }),
        };
        // Registered at 0; set from a snapshot by `CacheStats::export_gauges`.
        let _ = metrics::gauge!(HIT_RATIO, "prefix" => label());
        metrics
    }
}

/// The per-prefix hit ratio gauge.
const HIT_RATIO: &str = "cache_hit_ratio";
/// The circuit breaker state gauge.
const CIRCUIT_STATE: &str = "cache_circuit_state";
/// The fallback-active gauge.
const FALLBACK_ACTIVE: &str = "cache_fallback_active";

/// The counters of one prefix plus its `metrics` handles (registered once).
pub(crate) struct PrefixEntry {
    stripes: Box<[Stripe]>,
    metrics: PrefixMetrics,
    prefix: Arc<str>,
    /// The address of a `'static` copy of the prefix that found this entry
    /// (0: none yet), so `#[cached]` calls find it without comparing names.
    static_name: std::sync::atomic::AtomicUsize,
    /// The prefix's generation as this process last saw it (prefix
    /// generations with server-assisted tracking).
    pub(crate) generation: crate::held::HeldGeneration,
}

impl PrefixEntry {
    fn new(prefix: &str) -> Self {
        PrefixEntry {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            metrics: PrefixMetrics::new(prefix),
            prefix: Arc::from(prefix),
            static_name: std::sync::atomic::AtomicUsize::new(0),
            generation: crate::held::HeldGeneration::default(),
        }
    }

    /// The prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// This thread's stripe.
    fn counters(&self) -> &Counters {
        &self.stripes[stripe_index()].0
    }

    /// The figures summed over the stripes.
    fn stats(&self) -> PrefixStats {
        let mut stats = PrefixStats::default();
        for stripe in &self.stripes {
            stats.add(&PrefixStats::from(&stripe.0));
        }
        stats
    }
}

/// Prefixes looked up without any lock or shared write (the hot path).
const FAST_PREFIXES: usize = 32;

/// All counters of a cache. The first [`FAST_PREFIXES`] prefixes live in an
/// append-only table read with plain loads, so a lookup on the hit path
/// writes no shared cache line (an `RwLock` read or an `Arc` clone would,
/// and under 64 concurrent tasks that contention costs more than the lookup
/// itself). Totals are summed at snapshot time for the same reason.
pub(crate) struct StatsRegistry {
    fast: [OnceLock<PrefixEntry>; FAST_PREFIXES],
    insert: Mutex<()>,
    overflow: RwLock<HashMap<Arc<str>, Arc<PrefixEntry>>>,
}

/// A prefix's entry: borrowed from the fast table, or shared from the overflow map.
pub(crate) enum PrefixRef<'a> {
    Fast(&'a PrefixEntry),
    Overflow(Arc<PrefixEntry>),
}

impl std::ops::Deref for PrefixRef<'_> {
    type Target = PrefixEntry;
    fn deref(&self) -> &PrefixEntry {
        match self {
            PrefixRef::Fast(e) => e,
            PrefixRef::Overflow(e) => e,
        }
    }
}

impl StatsRegistry {
    pub(crate) fn new() -> Self {
        StatsRegistry {
            fast: std::array::from_fn(|_| OnceLock::new()),
            insert: Mutex::new(()),
            overflow: RwLock::new(HashMap::new()),
        }
    }

    fn find_fast(&self, prefix: &str) -> Result<&PrefixEntry, usize> {
        for (i, slot) in self.fast.iter().enumerate() {
            match slot.get() {
                Some(entry) if *entry.prefix == *prefix => return Ok(entry),
                Some(_) => {}
                None => return Err(i),
            }
        }
        Err(FAST_PREFIXES)
    }

    /// [`prefix`](Self::prefix) of a `'static` name: found by its address
    /// once it was found by name (a `'static` string never moves or
    /// changes, so the same address and length are the same name).
    #[inline]
    pub(crate) fn prefix_static(&self, prefix: &'static str) -> PrefixRef<'_> {
        let address = prefix.as_ptr() as usize;
        for slot in &self.fast {
            match slot.get() {
                Some(entry)
                    if entry.static_name.load(Relaxed) == address
                        && entry.prefix.len() == prefix.len() =>
                {
                    return PrefixRef::Fast(entry);
                }
                Some(_) => {}
                None => break,
            }
        }
        let found = self.prefix(prefix);
        // The first `'static` copy to find the entry is the one remembered.
        let _ = found
            .static_name
            .compare_exchange(0, address, Relaxed, Relaxed);
        found
    }

    /// The entry of `prefix`, created on first use.
    pub(crate) fn prefix(&self, prefix: &str) -> PrefixRef<'_> {
        if let Ok(entry) = self.find_fast(prefix) {
            return PrefixRef::Fast(entry);
        }
        let _guard = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        match self.find_fast(prefix) {
            Ok(entry) => PrefixRef::Fast(entry),
            Err(free) if free < FAST_PREFIXES => {
                let _ = self.fast[free].set(PrefixEntry::new(prefix));
                PrefixRef::Fast(self.fast[free].get().expect("just set"))
            }
            Err(_) => {
                let mut map = self.overflow.write().unwrap_or_else(|e| e.into_inner());
                PrefixRef::Overflow(
                    map.entry(Arc::from(prefix))
                        .or_insert_with(|| Arc::new(PrefixEntry::new(prefix)))
                        .clone(),
                )
            }
        }
    }

    /// Every prefix seen so far.
    pub(crate) fn entries(&self) -> Vec<PrefixRef<'_>> {
        let mut out: Vec<PrefixRef<'_>> = self
            .fast
            .iter()
            .filter_map(|s| s.get().map(PrefixRef::Fast))
            .collect();
        out.extend(
            self.overflow
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .map(|e| PrefixRef::Overflow(e.clone())),
        );
        out
    }

    #[inline]
    pub(crate) fn record(&self, entry: &PrefixEntry, event: Event) {
        bump(entry.counters(), event);
        // `Event as usize` is its index in `Event::ALL` (checked at compile time).
        entry.metrics.events[event as usize].increment(1);
        if matches!(event, Event::Hit | Event::Miss) {
            tracing::trace!(prefix = %entry.prefix, hit = event == Event::Hit, "cache lookup");
        }
    }

    pub(crate) fn record_error(&self, entry: &PrefixEntry, kind: ErrorKind) {
        let index = ErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(ErrorKind::ALL.len() - 1);
        entry.counters().errors[index].fetch_add(1, Relaxed);
        entry.metrics.errors[index].increment(1);
    }

    pub(crate) fn snapshot(&self) -> (PrefixStats, BTreeMap<String, PrefixStats>) {
        let mut total = PrefixStats::default();
        let mut prefixes = BTreeMap::new();
        for entry in self.entries() {
            let stats = entry.stats();
            total.add(&stats);
            prefixes.insert(entry.prefix.to_string(), stats);
        }
        (total, prefixes)
    }
}

fn bump(c: &Counters, event: Event) {
    let counter = match event {
        Event::Hit => &c.hits,
        Event::Miss => &c.misses,
        Event::Set => &c.sets,
        Event::Load => &c.loads,
        Event::Coalesced => &c.coalesced,
        Event::LeaseWait => &c.lease_waits,
        Event::StaleSetPrevented => &c.stale_sets_prevented,
        Event::DecodeFailure => &c.decode_failures,
        Event::Oversized => &c.oversized,
        Event::FallbackHit => &c.fallback_hits,
        Event::Invalidation => &c.invalidations,
        Event::NearHit => &c.near_hits,
        Event::FailSafe => &c.fail_safe,
        Event::StaleHit => &c.stale_hits,
        Event::SoftTimeout => &c.soft_timeouts,
        Event::HardTimeout => &c.hard_timeouts,
        Event::RefreshStarted => &c.refreshes,
        Event::RefreshFailed => &c.refresh_failures,
    };
    counter.fetch_add(1, Relaxed);
}

/// Figures of one prefix, or of the whole cache.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PrefixStats {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that found nothing usable.
    pub misses: u64,
    /// `hits / (hits + misses)`, 0 when there were no reads.
    pub hit_rate: f64,
    /// Values stored.
    pub sets: u64,
    /// Times a cached function's body ran to fill a miss.
    pub loads: u64,
    /// Callers that waited for another caller's load in this process (single-flight).
    pub coalesced: u64,
    /// Misses that waited for another process's lease instead of loading.
    pub lease_waits: u64,
    /// Stores refused because an invalidation removed the loader's lease meanwhile.
    pub stale_sets_prevented: u64,
    /// Stored values that did not decode (foreign, corrupt, old shape): counted as misses.
    pub decode_failures: u64,
    /// Values not stored because they exceeded `max_value_bytes`.
    pub oversized: u64,
    /// Reads answered by the in-memory fallback while Redis was away.
    pub fallback_hits: u64,
    /// Keys and prefixes invalidated.
    pub invalidations: u64,
    /// Reads answered by the near cache (also counted in `hits`).
    pub near_hits: u64,
    /// Loads that failed or timed out and were answered with the stale
    /// value instead (fail-safe activations).
    pub fail_safe_activations: u64,
    /// Calls answered with a stale value (fail-safe activations, calls
    /// during the throttle after one, soft timeouts); not counted in `hits`.
    pub stale_hits: u64,
    /// Calls whose soft timeout passed while a load ran (answered stale).
    pub soft_timeouts: u64,
    /// Calls whose hard timeout passed (answered stale or with
    /// `LoadTimedOut`).
    pub hard_timeouts: u64,
    /// Refresh-aheads started (one per key across instances).
    pub refreshes: u64,
    /// Refresh-aheads whose load failed (the value stayed).
    pub refresh_failures: u64,
    /// Backend failures by kind (`timeout`, `connection`, `circuit_open`, ...).
    pub errors: BTreeMap<&'static str, u64>,
}

impl From<&Counters> for PrefixStats {
    fn from(c: &Counters) -> Self {
        let hits = c.hits.load(Relaxed);
        let misses = c.misses.load(Relaxed);
        let reads = hits + misses;
        PrefixStats {
            hits,
            misses,
            hit_rate: if reads == 0 {
                0.0
            } else {
                hits as f64 / reads as f64
            },
            sets: c.sets.load(Relaxed),
            loads: c.loads.load(Relaxed),
            coalesced: c.coalesced.load(Relaxed),
            lease_waits: c.lease_waits.load(Relaxed),
            stale_sets_prevented: c.stale_sets_prevented.load(Relaxed),
            decode_failures: c.decode_failures.load(Relaxed),
            oversized: c.oversized.load(Relaxed),
            fallback_hits: c.fallback_hits.load(Relaxed),
            invalidations: c.invalidations.load(Relaxed),
            near_hits: c.near_hits.load(Relaxed),
            fail_safe_activations: c.fail_safe.load(Relaxed),
            stale_hits: c.stale_hits.load(Relaxed),
            soft_timeouts: c.soft_timeouts.load(Relaxed),
            hard_timeouts: c.hard_timeouts.load(Relaxed),
            refreshes: c.refreshes.load(Relaxed),
            refresh_failures: c.refresh_failures.load(Relaxed),
            errors: ErrorKind::ALL
                .iter()
                .zip(&c.errors)
                .map(|(k, n)| (k.as_str(), n.load(Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

impl PrefixStats {
    fn add(&mut self, other: &PrefixStats) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.sets += other.sets;
        self.loads += other.loads;
        self.coalesced += other.coalesced;
        self.lease_waits += other.lease_waits;
        self.stale_sets_prevented += other.stale_sets_prevented;
        self.decode_failures += other.decode_failures;
        self.oversized += other.oversized;
        self.fallback_hits += other.fallback_hits;
        self.invalidations += other.invalidations;
        self.near_hits += other.near_hits;
        self.fail_safe_activations += other.fail_safe_activations;
        self.stale_hits += other.stale_hits;
        self.soft_timeouts += other.soft_timeouts;
        self.hard_timeouts += other.hard_timeouts;
        self.refreshes += other.refreshes;
        self.refresh_failures += other.refresh_failures;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        let reads = self.hits + self.misses;
        self.hit_rate = if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        };
    }

    /// Sum of all error counts.
    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// State of the circuit breaker in front of a remote backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls go to the backend.
    Closed,
    /// Calls skip the backend (the fallback answers) until the cooldown ends.
    Open,
    /// The cooldown ended; one probe call is deciding.
    HalfOpen,
    /// The backend is local; there is no breaker.
    NotApplicable,
}

/// A snapshot of a cache's figures, from [`Cache::stats`](crate::Cache::stats).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// Whether caching is on.
    pub enabled: bool,
    /// Backend in use (`redis`, `redis-sentinel`, `redis-cluster`, `memory`, `disabled`, or a custom name).
    pub backend: &'static str,
    /// Where it points (passwords redacted).
    pub target: String,
    /// Namespace of every key.
    pub namespace: String,
    /// Circuit breaker state.
    pub circuit: CircuitState,
    /// Whether the in-memory fallback holds data written while the backend was away.
    pub fallback_active: bool,
    /// Figures over every prefix.
    pub total: PrefixStats,
    /// Figures per prefix.
    pub prefixes: BTreeMap<String, PrefixStats>,
    /// The near cache's figures, when there is one.
    pub near: Option<crate::NearStats>,
}

impl CircuitState {
    /// The value of the `cache_circuit_state` gauge: 0 closed (or no
    /// breaker), 1 half-open, 2 open.
    pub fn gauge_value(self) -> f64 {
        match self {
            CircuitState::Closed | CircuitState::NotApplicable => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }
}

impl CacheStats {
    /// Sets the `metrics` gauges from this snapshot: `cache_circuit_state`,
    /// `cache_fallback_active` and `cache_hit_ratio{prefix}` for every
    /// prefix. Counters move by themselves; gauges are computed, so call
    /// this just before the metrics are rendered (for example in the
    /// `/metrics` handler):
    ///
    /// ```
    /// let cache = cache_core::Cache::memory();
    /// cache.register_prefixes(["customer", "query"]);
    /// // in the /metrics handler, before rendering:
    /// cache.stats().export_gauges();
    /// ```
    ///
    /// The gauges carry no cache label: with several caches in a process,
    /// export the one the service depends on. Every name and label is
    /// listed in [`metrics_guide`](crate::metrics_guide).
    pub fn export_gauges(&self) {
        metrics::gauge!(CIRCUIT_STATE).set(self.circuit.gauge_value());
        metrics::gauge!(FALLBACK_ACTIVE).set(if self.fallback_active { 1.0 } else { 0.0 });
        for (prefix, figures) in &self.prefixes {
            metrics::gauge!(HIT_RATIO, "prefix" => prefix.clone()).set(figures.hit_rate);
        }
    }
}
