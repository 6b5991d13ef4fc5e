//! Fail-safe: a value is kept `fail_safe` past its TTL, and a reload that
//! fails answers with it (then failed reloads are throttled), on the test
//! kit's manual clock and on a real redis-server and cluster. The negative
//! side, on every configuration: a value an invalidation removed (a key
//! delete, a prefix generation change, a tag) is never answered this way,
//! not even by a load that was running when the invalidation came.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{Kind, on};
use cache_core::{Cache, Outcome, cached, invalidates, with_outcome};
use cache_testkit::TestCache;
use tokio::sync::Notify;

/// The "database": a value, a switch that makes reads fail, a read count,
/// and an optional gate a read waits at (to race it with an invalidation).
#[derive(Default)]
pub(crate) struct Db {
    pub(crate) value: AtomicU64,
    pub(crate) failing: AtomicBool,
    pub(crate) reads: AtomicUsize,
    pub(crate) gate: Option<(Arc<Notify>, Arc<Notify>)>,
}

impl Db {
    pub(crate) fn new(value: u64) -> Db {
        Db {
            value: AtomicU64::new(value),
            ..Db::default()
        }
    }

    pub(crate) async fn read(&self) -> Result<u64, String> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if let Some((entered, release)) = &self.gate {
            entered.notify_one();
            release.notified().await;
        }
        match self.failing.load(Ordering::SeqCst) {
            true => Err("database unavailable".to_owned()),
            false => Ok(self.value.load(Ordering::SeqCst)),
        }
    }

    pub(crate) fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    pub(crate) fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

#[cached(prefix = "fs", key = "{id}", ttl = 60, fail_safe = 3600, tags = ["fs-tag:{id}"], cache = cache)]
async fn item(cache: &Cache, db: &Db, id: u64) -> Result<u64, String> {
    let _ = id;
    db.read().await
}

/// The same, with TTLs short enough for a real server's clock.
#[cached(
    prefix = "fsr",
    key = "{id}",
    ttl = std::time::Duration::from_millis(300),
    fail_safe = 3600,
    fail_safe_throttle = std::time::Duration::from_millis(300),
    tags = ["fsr-tag:{id}"],
    cache = cache
)]
async fn quick_item(cache: &Cache, db: &Db, id: u64) -> Result<u64, String> {
    let _ = id;
    db.read().await
}

#[invalidates(quick_item(id), cache = cache)]
async fn write_quick_item(cache: &Cache, id: u64) {}

#[invalidates(tags = ["fsr-tag:{id}"], cache = cache)]
async fn write_quick_item_tag(cache: &Cache, id: u64) {}

#[tokio::test]
async fn a_failed_reload_answers_with_the_stale_value_then_is_throttled() {
    let test = TestCache::new();
    let cache = test.cache();
    let db = Db::new(1);
    assert_eq!(
        with_outcome(item(cache, &db, 1)).await,
        (Ok(1), Outcome::Miss)
    );
    // Past the TTL, within the stale window, the database fails.
    test.advance(Duration::from_secs(61));
    db.fail(true);
    assert_eq!(
        with_outcome(item(cache, &db, 1)).await,
        (Ok(1), Outcome::Stale)
    );
    assert_eq!(db.reads(), 2, "the reload was tried");
    // Throttled for min(30 s, ttl): the stale value, without a load.
    test.advance(Duration::from_secs(29));
    assert_eq!(
        with_outcome(item(cache, &db, 1)).await,
        (Ok(1), Outcome::Stale)
    );
    assert_eq!(db.reads(), 2, "no reload while throttled");
    // After the throttle the reload is tried again.
    test.advance(Duration::from_secs(2));
    assert_eq!(
        with_outcome(item(cache, &db, 1)).await,
        (Ok(1), Outcome::Stale)
    );
    assert_eq!(db.reads(), 3);
    // The database is back: the next reload after the throttle stores.
    db.fail(false);
    db.value.store(2, Ordering::SeqCst);
    test.advance(Duration::from_secs(31));
    assert_eq!(
        with_outcome(item(cache, &db, 1)).await,
        (Ok(2), Outcome::Miss)
    );
    assert_eq!(
        with_outcome(item(cache, &db, 1)).await,
        (Ok(2), Outcome::Hit)
    );
    let stats = &cache.stats().prefixes["fs"];
    assert_eq!(stats.fail_safe_activations, 2);
    assert_eq!(stats.stale_hits, 3);
    // Past the stale window the value is gone: a failure is an error.
    test.advance(Duration::from_secs(3600 + 61));
    db.fail(true);
    assert!(item(cache, &db, 1).await.is_err());
}

#[tokio::test]
async fn a_stale_value_is_not_a_plain_hit() {
    let test = TestCache::new();
    let cache = test.cache();
    let db = Db::new(1);
    item(cache, &db, 1).await.unwrap();
    let key = item_cache_key(&1);
    assert_eq!(cache.get::<u64>(&key).await.unwrap(), Some(1));
    test.advance(Duration::from_secs(61));
    assert_eq!(
        cache.get::<u64>(&key).await.unwrap(),
        None,
        "stale: not a hit"
    );
    assert!(!cache.exists(&key).await.unwrap());
    assert_eq!(cache.ttl(&key).await.unwrap(), None);
    // A fresh reload replaces it.
    db.value.store(5, Ordering::SeqCst);
    assert_eq!(
        with_outcome(item(cache, &db, 1)).await,
        (Ok(5), Outcome::Miss)
    );
    assert_eq!(cache.get::<u64>(&key).await.unwrap(), Some(5));
}

/// How a value is invalidated in [`never_after_an_invalidation`].
#[derive(Clone, Copy, Debug)]
enum Removal {
    Delete,
    Prefix,
    Tag,
    Macro,
    MacroTag,
}

const REMOVALS: [Removal; 5] = [
    Removal::Delete,
    Removal::Prefix,
    Removal::Tag,
    Removal::Macro,
    Removal::MacroTag,
];

async fn remove(removal: Removal, cache: &Cache, id: u64) {
    match removal {
        Removal::Delete => {
            cache.delete(&quick_item_cache_key(&id)).await.unwrap();
        }
        Removal::Prefix => {
            cache
                .invalidate_prefix(QUICK_ITEM_CACHE_PREFIX)
                .await
                .unwrap();
        }
        Removal::Tag => cache
            .invalidate_tag(&format!("fsr-tag:{id}"))
            .await
            .unwrap(),
        Removal::Macro => write_quick_item(cache, id).await,
        Removal::MacroTag => write_quick_item_tag(cache, id).await,
    }
}

async fn build(kind: Kind, namespace: &str, generations: bool) -> Cache {
    let builder = Cache::builder()
        .namespace(namespace)
        .timeout(Duration::from_secs(2))
        .lease_ttl(Duration::from_millis(500));
    let builder = if generations {
        builder.prefix_generations(true)
    } else {
        builder
    };
    on(kind, builder).build().await.unwrap()
}

/// A stale value, then an invalidation, then a failing reload: an error,
/// never the removed value. And the race: the invalidation lands while
/// the failing reload runs (it holds the lease carrying the stale value):
/// still an error.
async fn never_after_an_invalidation(kind: Kind, generations: bool) {
    for removal in REMOVALS {
        let namespace = format!("fs-{kind:?}-{generations}-{removal:?}").to_lowercase();
        let cache = build(kind, &namespace, generations).await;
        let db = Db::new(1);
        assert_eq!(quick_item(&cache, &db, 1).await, Ok(1));
        tokio::time::sleep(Duration::from_millis(400)).await;
        remove(removal, &cache, 1).await;
        db.fail(true);
        assert!(
            quick_item(&cache, &db, 1).await.is_err(),
            "{kind:?} generations={generations} {removal:?}: a removed value was served"
        );

        // The race, on another key.
        let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let racing = Arc::new(Db {
            gate: Some((entered.clone(), release.clone())),
            ..Db::new(1)
        });
        let plain = Db::new(1);
        assert_eq!(quick_item(&cache, &plain, 2).await, Ok(1));
        tokio::time::sleep(Duration::from_millis(400)).await;
        racing.fail(true);
        let reload = {
            let (cache, racing) = (cache.clone(), racing.clone());
            tokio::spawn(async move { quick_item(&cache, &racing, 2).await })
        };
        entered.notified().await;
        remove(removal, &cache, 2).await;
        release.notify_one();
        assert!(
            reload.await.unwrap().is_err(),
            "{kind:?} generations={generations} {removal:?}: a reload racing the invalidation served the removed value"
        );
        plain.fail(true);
        assert!(
            quick_item(&cache, &plain, 2).await.is_err(),
            "{kind:?} generations={generations} {removal:?}: the removed value came back"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_serves_an_invalidated_value_on_memory() {
    never_after_an_invalidation(Kind::Memory, false).await;
    never_after_an_invalidation(Kind::Memory, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_serves_an_invalidated_value_on_redis() {
    never_after_an_invalidation(Kind::Redis, true).await;
    never_after_an_invalidation(Kind::Redis, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_serves_an_invalidated_value_on_a_cluster() {
    never_after_an_invalidation(Kind::Cluster, true).await;
}

/// On a real server: stale after the TTL, answered on failure, throttled,
/// and another instance (sharing the key) answers with it too.
async fn stale_on_failure(kind: Kind, near: bool) {
    let namespace = format!("fs-stale-{kind:?}-{near}").to_lowercase();
    let build = || async {
        let builder = Cache::builder()
            .namespace(&namespace)
            .timeout(Duration::from_secs(2));
        let builder = if near {
            builder.near_cache(100)
        } else {
            builder
        };
        on(kind, builder).build().await.unwrap()
    };
    let (a, b) = (build().await, build().await);
    let db = Db::new(1);
    assert_eq!(quick_item(&a, &db, 1).await, Ok(1));
    assert_eq!(
        with_outcome(quick_item(&b, &db, 1)).await,
        (Ok(1), Outcome::Hit)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    db.fail(true);
    assert_eq!(
        with_outcome(quick_item(&a, &db, 1)).await,
        (Ok(1), Outcome::Stale)
    );
    let reads = db.reads();
    // B finds the throttled stale value: answered without a load.
    assert_eq!(
        with_outcome(quick_item(&b, &db, 1)).await,
        (Ok(1), Outcome::Stale)
    );
    assert_eq!(db.reads(), reads, "throttled across instances");
    // Recovered: the reload after the throttle stores the new value.
    db.fail(false);
    db.value.store(2, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        with_outcome(quick_item(&b, &db, 1)).await,
        (Ok(2), Outcome::Miss)
    );
    assert_eq!(quick_item(&a, &db, 1).await, Ok(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_on_failure_on_redis_and_a_cluster() {
    stale_on_failure(Kind::Redis, false).await;
    stale_on_failure(Kind::Redis, true).await;
    stale_on_failure(Kind::Cluster, false).await;
}

#[tokio::test]
async fn the_cache_wide_fail_safe_applies_to_get_or_set_and_try_get_or_set() {
    let test = TestCache::builder()
        .config({
            let mut config = cache_testkit::test_config();
            config.fail_safe_max_stale = Some(Duration::from_secs(600));
            config
        })
        .build();
    let cache = test.cache();
    let value: Result<u32, String> = cache
        .try_get_or_set("rate:1", Some(Duration::from_secs(10)), || async { Ok(7) })
        .await
        .unwrap();
    assert_eq!(value, Ok(7));
    test.advance(Duration::from_secs(11));
    let value: Result<u32, String> = cache
        .try_get_or_set("rate:1", Some(Duration::from_secs(10)), || async {
            Err("down".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(value, Ok(7), "answered with the stale value");
    assert_eq!(cache.stats().prefixes["rate"].fail_safe_activations, 1);
}
