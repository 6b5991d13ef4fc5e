//! Refresh-ahead: a hit past `refresh_ahead` of the TTL answers at once
//! with the value it found and starts one background reload per key, across
//! every instance sharing the store; the reload stores the new value, a
//! failed one keeps the old value (counted, its next refresh throttled),
//! and an invalidation that lands while it runs is not undone by its store.
//! On the test kit's manual clock, and with real TTLs on a redis-server (and
//! a cluster), two `Cache` instances on one store.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{Kind, on};
use cache_core::{Cache, Outcome, cached, invalidates, with_outcome};
use cache_testkit::TestCache;
use tokio::sync::Notify;

/// A gate a read waits at: `entered` when a read reached it, `release` to
/// let it go on.
#[derive(Clone, Default)]
pub(crate) struct Gate {
    pub(crate) entered: Arc<Notify>,
    pub(crate) release: Arc<Notify>,
}

impl Gate {
    /// Waits (bounded) until a read reached the gate.
    pub(crate) async fn reached(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.entered.notified())
            .await
            .expect("no read reached the gate");
    }
}

/// The "database" a background reload can use: cheap to clone (the reload
/// owns its copy), a value, a switch that makes reads fail, a read count and
/// a gate to hold a read at.
#[derive(Clone, Default)]
pub(crate) struct Src {
    value: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
    reads: Arc<AtomicUsize>,
    gate: Arc<Mutex<Option<Gate>>>,
}

impl Src {
    pub(crate) fn new(value: u64) -> Src {
        let src = Src::default();
        src.set(value);
        src
    }

    pub(crate) async fn read(&self) -> Result<u64, String> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            gate.entered.notify_one();
            gate.release.notified().await;
        }
        match self.failing.load(Ordering::SeqCst) {
            true => Err("database unavailable".to_owned()),
            false => Ok(self.value.load(Ordering::SeqCst)),
        }
    }

    pub(crate) fn set(&self, value: u64) {
        self.value.store(value, Ordering::SeqCst);
    }

    pub(crate) fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    pub(crate) fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    /// The next read waits at a gate; returns it.
    pub(crate) fn hold_next(&self) -> Gate {
        let gate = Gate::default();
        *self.gate.lock().unwrap() = Some(gate.clone());
        gate
    }
}

/// Waits (bounded) until `check` holds.
pub(crate) async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still not: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cached(prefix = "ra", key = "{id}", ttl = 1000, refresh_ahead = 0.8, tags = ["ra-tag:{id}"], cache = cache)]
async fn item(cache: &Cache, src: &Src, id: u64) -> Result<u64, String> {
    let _ = id;
    src.read().await
}

#[invalidates(item(id), cache = cache)]
async fn write_item(cache: &Cache, id: u64) {}

/// The same with TTLs a real server's clock can run through.
#[cached(
    prefix = "rar",
    key = "{id}",
    ttl = std::time::Duration::from_millis(3000),
    refresh_ahead = 0.5,
    tags = ["rar-tag:{id}"],
    cache = cache
)]
async fn quick_item(cache: &Cache, src: &Src, id: u64) -> Result<u64, String> {
    let _ = id;
    src.read().await
}

#[invalidates(quick_item(id), cache = cache)]
async fn write_quick_item(cache: &Cache, id: u64) {}

fn refreshes(caches: &[&Cache], prefix: &str) -> (u64, u64) {
    caches
        .iter()
        .filter_map(|c| c.stats().prefixes.get(prefix).cloned())
        .fold((0, 0), |(r, f), s| {
            (r + s.refreshes, f + s.refresh_failures)
        })
}

/// Values stored plus stores an invalidation prevented: moves when a load
/// (a refresh's too) tried to store.
fn store_attempts(caches: &[&Cache], prefix: &str) -> u64 {
    caches
        .iter()
        .filter_map(|c| c.stats().prefixes.get(prefix).cloned())
        .map(|s| s.sets + s.stale_sets_prevented)
        .sum()
}

#[tokio::test]
async fn a_hit_past_the_fraction_answers_at_once_and_reloads_once_across_instances() {
    let test = TestCache::new();
    let other = test.another_instance();
    let (a, b) = (test.cache(), other.cache());
    let src = Src::new(1);
    assert_eq!(with_outcome(item(a, &src, 1)).await, (Ok(1), Outcome::Miss));
    // Before the fraction: a plain hit, no reload.
    test.advance(Duration::from_secs(700));
    assert_eq!(with_outcome(item(a, &src, 1)).await, (Ok(1), Outcome::Hit));
    assert_eq!(src.reads(), 1);
    assert_eq!(refreshes(&[a, b], "ra"), (0, 0));

    // Past 80% of the TTL: the hit answers with the value it has while the
    // reload waits at the gate.
    test.advance(Duration::from_secs(101));
    src.set(2);
    let gate = src.hold_next();
    assert_eq!(with_outcome(item(a, &src, 1)).await, (Ok(1), Outcome::Hit));
    gate.reached().await;
    assert_eq!(src.reads(), 2, "one reload started");
    // Meanwhile both instances answer with the current value and start
    // nothing more.
    for cache in [a, b, a, b] {
        assert_eq!(
            with_outcome(item(cache, &src, 1)).await,
            (Ok(1), Outcome::Hit)
        );
    }
    assert_eq!(src.reads(), 2, "no second reload, in any instance");
    assert_eq!(refreshes(&[a, b], "ra"), (1, 0));

    gate.release.notify_one();
    let key = item_cache_key(&1);
    eventually("the reloaded value is stored", async || {
        a.get::<u64>(&key).await.unwrap() == Some(2)
    })
    .await;
    assert_eq!(with_outcome(item(b, &src, 1)).await, (Ok(2), Outcome::Hit));
    // Stored with a whole new TTL.
    let ttl = a.ttl(&key).await.unwrap().unwrap();
    assert!(ttl > Duration::from_secs(990), "{ttl:?}");
    assert_eq!(src.reads(), 2);
    assert_eq!(refreshes(&[a, b], "ra"), (1, 0));
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_value_is_counted_and_throttled() {
    let test = TestCache::new();
    let cache = test.cache();
    let src = Src::new(1);
    item(cache, &src, 2).await.unwrap();
    test.advance(Duration::from_secs(801));
    src.fail(true);
    assert_eq!(
        with_outcome(item(cache, &src, 2)).await,
        (Ok(1), Outcome::Hit)
    );
    eventually("the refresh failed", async || {
        refreshes(&[cache], "ra") == (1, 1)
    })
    .await;
    let key = item_cache_key(&2);
    assert_eq!(cache.get::<u64>(&key).await.unwrap(), Some(1), "kept");
    let ttl = cache.ttl(&key).await.unwrap().unwrap();
    assert!(
        ttl <= Duration::from_secs(199) && ttl > Duration::from_secs(190),
        "its expiry did not move: {ttl:?}"
    );
    // The next refresh waits for the throttle (min(30 s, ttl)).
    let reads = src.reads();
    test.advance(Duration::from_secs(29));
    assert_eq!(
        with_outcome(item(cache, &src, 2)).await,
        (Ok(1), Outcome::Hit)
    );
    tokio::task::yield_now().await;
    assert_eq!(src.reads(), reads, "no refresh during the throttle");
    // Then it is tried again, and this time it succeeds.
    src.fail(false);
    src.set(5);
    test.advance(Duration::from_secs(2));
    assert_eq!(
        with_outcome(item(cache, &src, 2)).await,
        (Ok(1), Outcome::Hit)
    );
    eventually("the second refresh stored", async || {
        cache.get::<u64>(&key).await.unwrap() == Some(5)
    })
    .await;
    assert_eq!(refreshes(&[cache], "ra"), (2, 1));
    assert_eq!(src.reads(), reads + 1);
}

/// How a value is invalidated while its refresh runs.
#[derive(Clone, Copy, Debug)]
enum Removal {
    Delete,
    Prefix,
    Tag,
    Macro,
}

const REMOVALS: [Removal; 4] = [
    Removal::Delete,
    Removal::Prefix,
    Removal::Tag,
    Removal::Macro,
];

/// The refresh reads 2 and waits; the invalidation lands; the database
/// becomes 3; the refresh finishes and tries to store 2. Its store must not
/// undo the invalidation: the next call loads 3.
async fn invalidated_while_refreshing(
    caches: [&Cache; 2],
    removal: Removal,
    id: u64,
    quick: bool,
    advance: impl AsyncFn(),
) {
    let [a, b] = caches;
    let (prefix, key) = match quick {
        false => ("ra", item_cache_key(&id)),
        true => ("rar", quick_item_cache_key(&id)),
    };
    let call = async |cache: &Cache, src: &Src| match quick {
        false => with_outcome(item(cache, src, id)).await,
        true => with_outcome(quick_item(cache, src, id)).await,
    };
    let src = Src::new(1);
    assert_eq!(call(a, &src).await, (Ok(1), Outcome::Miss));
    advance().await;
    src.set(2);
    let gate = src.hold_next();
    assert_eq!(call(b, &src).await, (Ok(1), Outcome::Hit));
    gate.reached().await;
    let attempts = store_attempts(&[a, b], prefix);
    match removal {
        Removal::Delete => {
            a.delete(&key).await.unwrap();
        }
        Removal::Prefix => {
            a.invalidate_prefix(prefix).await.unwrap();
        }
        Removal::Tag => {
            a.invalidate_tag(&format!("{prefix}-tag:{id}"))
                .await
                .unwrap();
        }
        Removal::Macro if quick => write_quick_item(a, id).await,
        Removal::Macro => write_item(a, id).await,
    }
    assert_eq!(a.get::<u64>(&key).await.unwrap(), None, "{removal:?}");
    src.set(3);
    gate.release.notify_one();
    eventually("the refresh tried to store", async || {
        store_attempts(&[a, b], prefix) > attempts
    })
    .await;
    assert_eq!(
        a.get::<u64>(&key).await.unwrap(),
        None,
        "{removal:?}: the refresh's store undid the invalidation"
    );
    // The refreshing instance follows within the tracking window.
    eventually(
        "the refreshing instance sees the invalidation",
        async || b.get::<u64>(&key).await.unwrap().is_none(),
    )
    .await;
    assert_eq!(
        call(a, &src).await,
        (Ok(3), Outcome::Miss),
        "{removal:?}: after the invalidation the next call loads"
    );
    assert_eq!(call(b, &src).await, (Ok(3), Outcome::Hit), "{removal:?}");
}

#[tokio::test]
async fn an_invalidation_during_a_refresh_wins_on_memory() {
    for (n, removal) in REMOVALS.into_iter().enumerate() {
        let test = TestCache::new();
        let other = test.another_instance();
        let advance = async || test.advance(Duration::from_secs(801));
        invalidated_while_refreshing(
            [test.cache(), other.cache()],
            removal,
            10 + n as u64,
            false,
            advance,
        )
        .await;
    }
}

async fn build(kind: Kind, namespace: &str, generations: bool) -> Cache {
    let builder = Cache::builder()
        .namespace(namespace)
        .timeout(Duration::from_secs(2))
        .lease_ttl(Duration::from_millis(500))
        .prefix_generations(generations);
    on(kind, builder).build().await.unwrap()
}

/// Past half the 3 s TTL (real time).
async fn past_the_fraction() {
    tokio::time::sleep(Duration::from_millis(1600)).await;
}

async fn reloads_once_across_instances(kind: Kind) {
    let namespace = format!("ra-once-{kind:?}").to_lowercase();
    let (a, b) = (
        build(kind, &namespace, false).await,
        build(kind, &namespace, false).await,
    );
    let src = Src::new(1);
    assert_eq!(
        with_outcome(quick_item(&a, &src, 1)).await,
        (Ok(1), Outcome::Miss)
    );
    assert_eq!(
        with_outcome(quick_item(&b, &src, 1)).await,
        (Ok(1), Outcome::Hit)
    );
    past_the_fraction().await;
    src.set(2);
    let gate = src.hold_next();
    // Both instances at once: each answers with the value it found.
    let (x, y) = tokio::join!(
        with_outcome(quick_item(&a, &src, 1)),
        with_outcome(quick_item(&b, &src, 1))
    );
    assert_eq!((x, y), ((Ok(1), Outcome::Hit), (Ok(1), Outcome::Hit)));
    gate.reached().await;
    for cache in [&a, &b, &a, &b] {
        assert_eq!(
            with_outcome(quick_item(cache, &src, 1)).await,
            (Ok(1), Outcome::Hit)
        );
    }
    assert_eq!(
        src.reads(),
        2,
        "{kind:?}: the body ran once for the refresh"
    );
    assert_eq!(refreshes(&[&a, &b], "rar"), (1, 0));
    gate.release.notify_one();
    let key = quick_item_cache_key(&1);
    eventually("the reloaded value is stored", async || {
        b.get::<u64>(&key).await.unwrap() == Some(2)
    })
    .await;
    assert_eq!(
        with_outcome(quick_item(&a, &src, 1)).await,
        (Ok(2), Outcome::Hit)
    );
    let ttl = a.ttl(&key).await.unwrap().unwrap();
    assert!(ttl > Duration::from_millis(2000), "a new TTL: {ttl:?}");
    assert_eq!(src.reads(), 2);

    // A failed refresh keeps the value, in both instances, and is counted.
    past_the_fraction().await;
    src.fail(true);
    assert_eq!(
        with_outcome(quick_item(&b, &src, 1)).await,
        (Ok(2), Outcome::Hit)
    );
    eventually("the refresh failed", async || {
        refreshes(&[&a, &b], "rar") == (2, 1)
    })
    .await;
    for cache in [&a, &b] {
        assert_eq!(
            with_outcome(quick_item(cache, &src, 1)).await,
            (Ok(2), Outcome::Hit)
        );
    }
    assert_eq!(src.reads(), 3, "{kind:?}: throttled after the failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_once_across_instances_on_redis_and_a_cluster() {
    reloads_once_across_instances(Kind::Redis).await;
    reloads_once_across_instances(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_a_refresh_wins_on_redis() {
    for generations in [false, true] {
        for (n, removal) in REMOVALS.into_iter().enumerate() {
            let namespace = format!("ra-inv-{generations}-{removal:?}").to_lowercase();
            let (a, b) = (
                build(Kind::Redis, &namespace, generations).await,
                build(Kind::Redis, &namespace, generations).await,
            );
            invalidated_while_refreshing([&a, &b], removal, 20 + n as u64, true, past_the_fraction)
                .await;
        }
    }
}
