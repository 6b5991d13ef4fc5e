//! The call wrappers and `try_get_or_set`, on memory (the test kit's manual
//! clock) and on a redis-server, two instances on one store:
//! [`with_outcome`] reports what answered (a hit, a miss, another caller's
//! load in this process or another, a stale value, no cache); [`refresh`]
//! runs the body and stores its result whatever is cached, keeps the value
//! when the body fails, and never brings back a value an invalidation
//! removed; [`prime`] stores a given value (also right after an
//! invalidation, and over a load in progress); `try_get_or_set` stores only
//! `Ok`.

use std::time::Duration;

use crate::common::{Kind, on};
use crate::refresh_ahead::{Src, eventually};
use cache_core::{Cache, Outcome, cached, prime, refresh, uncached, with_outcome};
use cache_testkit::TestCache;

#[cached(
    prefix = "wv",
    key = "{id}",
    ttl = std::time::Duration::from_millis(1000),
    fail_safe = 600,
    cache = cache
)]
async fn value(cache: &Cache, src: &Src, id: u64) -> Result<u64, String> {
    let _ = id;
    src.read().await
}

/// Without fail-safe: its values carry no expiry of their own.
#[cached(prefix = "wp", key = "{id}", ttl = 600, cache = cache)]
async fn plain(cache: &Cache, src: &Src, id: u64) -> Result<u64, String> {
    let _ = id;
    src.read().await
}

/// Uses whatever cache is current: none in this test binary.
#[cached(prefix = "wn", key = "{id}")]
async fn nowhere(src: &Src, id: u64) -> Result<u64, String> {
    let _ = id;
    src.read().await
}

/// Two instances on one store, and how to let their TTLs run out.
struct Setup {
    a: Cache,
    b: Cache,
    test: Option<TestCache>,
}

impl Setup {
    async fn new(kind: Kind, name: &str, generations: bool) -> Setup {
        if let Kind::Memory = kind {
            let test = TestCache::new();
            let other = test.another_instance();
            return Setup {
                a: test.cache().clone(),
                b: other.cache().clone(),
                test: Some(test),
            };
        }
        let namespace = format!("wr-{name}-{kind:?}-{generations}").to_lowercase();
        let build = || {
            let builder = Cache::builder()
                .namespace(&namespace)
                .timeout(Duration::from_secs(2))
                .lease_ttl(Duration::from_millis(500))
                .prefix_generations(generations);
            async move { on(kind, builder).build().await.unwrap() }
        };
        Setup {
            a: build().await,
            b: build().await,
            test: None,
        }
    }

    /// Past the 1 s TTL of [`value`], well within its fail-safe.
    async fn past_ttl(&self) {
        match &self.test {
            Some(test) => test.advance(Duration::from_millis(1100)),
            None => tokio::time::sleep(Duration::from_millis(1100)).await,
        }
    }
}

fn stat(cache: &Cache, prefix: &str, pick: fn(&cache_core::PrefixStats) -> u64) -> u64 {
    cache.stats().prefixes.get(prefix).map_or(0, pick)
}

async fn outcomes(kind: Kind) {
    let setup = Setup::new(kind, "outcome", false).await;
    let (a, b) = (setup.a.clone(), setup.b.clone());
    let src = Src::new(1);
    assert_eq!(
        with_outcome(value(&a, &src, 1)).await,
        (Ok(1), Outcome::Miss)
    );
    assert_eq!(
        with_outcome(value(&a, &src, 1)).await,
        (Ok(1), Outcome::Hit)
    );
    assert_eq!(
        with_outcome(value(&b, &src, 1)).await,
        (Ok(1), Outcome::Hit)
    );

    // Concurrent callers in one process share one load.
    let gate = src.hold_next();
    let leader = tokio::spawn({
        let (a, src) = (a.clone(), src.clone());
        async move { with_outcome(value(&a, &src, 2)).await }
    });
    gate.reached().await;
    let follower = tokio::spawn({
        let (a, src) = (a.clone(), src.clone());
        async move { with_outcome(value(&a, &src, 2)).await }
    });
    // And a caller in the other instance waits for the first one's lease.
    let elsewhere = tokio::spawn({
        let (b, src) = (b.clone(), src.clone());
        async move { with_outcome(value(&b, &src, 2)).await }
    });
    eventually("the callers wait for the load", async || {
        stat(&a, "wv", |s| s.coalesced) == 1 && stat(&b, "wv", |s| s.lease_waits) > 0
    })
    .await;
    gate.release.notify_one();
    assert_eq!(leader.await.unwrap(), (Ok(1), Outcome::Miss));
    assert_eq!(follower.await.unwrap(), (Ok(1), Outcome::Coalesced));
    assert_eq!(elsewhere.await.unwrap(), (Ok(1), Outcome::Coalesced));
    assert_eq!(src.reads(), 2, "{kind:?}: one load per key");

    // Past the TTL with the database failing: the stale value (fail-safe).
    setup.past_ttl().await;
    src.fail(true);
    assert_eq!(
        with_outcome(value(&a, &src, 1)).await,
        (Ok(1), Outcome::Stale)
    );
    assert_eq!(
        with_outcome(value(&b, &src, 1)).await,
        (Ok(1), Outcome::Stale),
        "throttled: the other instance answers with it too"
    );
    src.fail(false);

    // No cache: bypassed, disabled, none installed or scoped.
    let reads = src.reads();
    assert_eq!(
        with_outcome(uncached(value(&a, &src, 1))).await,
        (Ok(1), Outcome::Uncached)
    );
    let disabled = Cache::builder().enabled(false).build().await.unwrap();
    assert_eq!(
        with_outcome(value(&disabled, &src, 1)).await,
        (Ok(1), Outcome::Uncached)
    );
    assert_eq!(
        with_outcome(nowhere(&src, 1)).await,
        (Ok(1), Outcome::Uncached)
    );
    assert_eq!(src.reads(), reads + 3);
    // Outside with_outcome a call reports nothing; a wrapped future
    // without a cached call reports Uncached.
    assert_eq!(with_outcome(async { 7 }).await, (7, Outcome::Uncached));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_outcome_on_memory() {
    Box::pin(outcomes(Kind::Memory)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_outcome_on_redis() {
    Box::pin(outcomes(Kind::Redis)).await;
}

/// `refresh` of one of the two functions (with and without fail-safe).
async fn refresh_of(plain_fn: bool, cache: &Cache, src: &Src, id: u64) -> Result<u64, String> {
    match plain_fn {
        true => Box::pin(refresh(plain(cache, src, id))).await,
        false => Box::pin(refresh(value(cache, src, id))).await,
    }
}

fn key_of(plain_fn: bool, id: u64) -> String {
    match plain_fn {
        true => plain_cache_key(&id),
        false => value_cache_key(&id),
    }
}

async fn refreshes(kind: Kind, generations: bool) {
    for plain_fn in [true, false] {
        let name = format!("refresh-{plain_fn}");
        let Setup { a, b, .. } = Setup::new(kind, &name, generations).await;
        let (prefix, key) = (if plain_fn { "wp" } else { "wv" }, key_of(plain_fn, 1));
        let src = Src::new(1);
        // Of a missing key: runs and stores.
        assert_eq!(
            with_outcome(refresh_of(plain_fn, &a, &src, 1)).await,
            (Ok(1), Outcome::Miss)
        );
        assert_eq!(b.get::<u64>(&key).await.unwrap(), Some(1));
        // Of a cached value: runs the body anyway and stores its result.
        src.set(2);
        assert_eq!(refresh_of(plain_fn, &b, &src, 1).await, Ok(2));
        assert_eq!(a.get::<u64>(&key).await.unwrap(), Some(2));
        assert_eq!(src.reads(), 2);
        // A failing body: its error is returned, the value stays.
        src.fail(true);
        let failed = refresh_of(plain_fn, &a, &src, 1).await;
        assert!(
            failed.is_err(),
            "{kind:?} plain={plain_fn}: {failed:?} reads={}",
            src.reads()
        );
        for cache in [&a, &b] {
            assert_eq!(
                cache.get::<u64>(&key).await.unwrap(),
                Some(2),
                "{kind:?} plain={plain_fn}: a failed refresh dropped the value"
            );
        }
        let ttl = a.ttl(&key).await.unwrap().unwrap();
        assert!(ttl > Duration::from_millis(500), "{ttl:?}");
        src.fail(false);

        // An invalidation while the refresh runs wins: the refresh returns
        // what its body read, but stores nothing; nor does a failing one
        // put the old value back.
        for failing in [false, true] {
            for by_prefix in [false, true] {
                src.set(3);
                assert_eq!(refresh_of(plain_fn, &a, &src, 1).await, Ok(3));
                let gate = src.hold_next();
                let running = tokio::spawn({
                    let (b, src) = (b.clone(), src.clone());
                    async move { refresh_of(plain_fn, &b, &src, 1).await }
                });
                gate.reached().await;
                src.set(4);
                src.fail(failing);
                match by_prefix {
                    true => {
                        a.invalidate_prefix(prefix).await.unwrap();
                    }
                    false => {
                        a.delete(&key).await.unwrap();
                    }
                }
                gate.release.notify_one();
                let got = running.await.unwrap();
                assert_eq!(got.is_err(), failing);
                assert_eq!(
                    a.get::<u64>(&key).await.unwrap(),
                    None,
                    "{kind:?} plain={plain_fn} failing={failing} prefix={by_prefix}: \
                     the refresh brought a removed value back"
                );
                // The refreshing instance follows within the tracking window.
                eventually(
                    "the refreshing instance sees the invalidation",
                    async || b.get::<u64>(&key).await.unwrap().is_none(),
                )
                .await;
                src.fail(false);
                src.set(5);
                let call = match plain_fn {
                    true => with_outcome(plain(&a, &src, 1)).await,
                    false => with_outcome(value(&a, &src, 1)).await,
                };
                assert_eq!(call, (Ok(5), Outcome::Miss));
            }
        }
        // After an invalidation a refresh loads and stores as usual.
        a.delete(&key).await.unwrap();
        src.set(6);
        assert_eq!(refresh_of(plain_fn, &b, &src, 1).await, Ok(6));
        assert_eq!(a.get::<u64>(&key).await.unwrap(), Some(6));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_on_memory() {
    Box::pin(refreshes(Kind::Memory, false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_on_redis() {
    Box::pin(refreshes(Kind::Redis, false)).await;
    Box::pin(refreshes(Kind::Redis, true)).await;
}

async fn primes(kind: Kind, generations: bool) {
    let Setup { a, b, .. } = Setup::new(kind, "prime", generations).await;
    let src = Src::new(1);
    let key = value_cache_key(&1);
    // On a missing key: stored, returned, the body never runs.
    assert_eq!(prime(value(&a, &src, 1), 40u64).await, (Ok(40), true));
    assert_eq!(
        with_outcome(value(&b, &src, 1)).await,
        (Ok(40), Outcome::Hit)
    );
    assert_eq!(src.reads(), 0);
    // Over a cached value.
    assert_eq!(prime(value(&b, &src, 1), 41u64).await, (Ok(41), true));
    assert_eq!(
        with_outcome(value(&a, &src, 1)).await,
        (Ok(41), Outcome::Hit)
    );
    // Stored as a loaded value would be: fresh for the TTL.
    let ttl = a.ttl(&key).await.unwrap().unwrap();
    assert!(ttl <= Duration::from_millis(1000), "{ttl:?}");
    // Right after an invalidation (a delete, a prefix invalidation).
    a.delete(&key).await.unwrap();
    assert_eq!(prime(value(&a, &src, 1), 42u64).await, (Ok(42), true));
    assert_eq!(
        with_outcome(value(&b, &src, 1)).await,
        (Ok(42), Outcome::Hit)
    );
    b.invalidate_prefix("wv").await.unwrap();
    assert_eq!(prime(value(&b, &src, 1), 43u64).await, (Ok(43), true));
    assert_eq!(
        with_outcome(value(&a, &src, 1)).await,
        (Ok(43), Outcome::Hit)
    );
    assert_eq!(src.reads(), 0);
    // Over a load in progress: the primed value stays, the load's older
    // value is not stored.
    let gate = src.hold_next();
    let loading = tokio::spawn({
        let (a, src) = (a.clone(), src.clone());
        async move { with_outcome(value(&a, &src, 2)).await }
    });
    gate.reached().await;
    assert_eq!(prime(value(&b, &src, 2), 50u64).await, (Ok(50), true));
    gate.release.notify_one();
    assert_eq!(loading.await.unwrap(), (Ok(1), Outcome::Miss));
    for cache in [&a, &b] {
        assert_eq!(
            cache.get::<u64>(&value_cache_key(&2)).await.unwrap(),
            Some(50),
            "{kind:?}: the load overwrote the primed value"
        );
    }
    // Without a cached call inside, nothing takes the value.
    assert_eq!(prime(async { 1 }, 9u64).await, (1, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prime_on_memory() {
    Box::pin(primes(Kind::Memory, false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prime_on_redis() {
    Box::pin(primes(Kind::Redis, false)).await;
    Box::pin(primes(Kind::Redis, true)).await;
}

async fn try_get_or_sets(kind: Kind) {
    let Setup { a, b, .. } = Setup::new(kind, "try", true).await;
    let ttl = Some(Duration::from_secs(60));
    let failed: Result<u32, String> = a
        .try_get_or_set("tg:1", ttl, || async { Err("down".to_owned()) })
        .await
        .unwrap();
    assert_eq!(failed, Err("down".to_owned()));
    assert!(
        !b.exists("tg:1").await.unwrap(),
        "{kind:?}: an Err was stored"
    );
    let ok: Result<u32, String> = a
        .try_get_or_set("tg:1", ttl, || async { Ok(7) })
        .await
        .unwrap();
    assert_eq!(ok, Ok(7));
    let hit: Result<u32, String> = b
        .try_get_or_set("tg:1", ttl, || async { panic!("a hit runs no loader") })
        .await
        .unwrap();
    assert_eq!(hit, Ok(7));
    // After an invalidation the loader runs again; an Err then stores nothing.
    b.delete("tg:1").await.unwrap();
    let failed: Result<u32, String> = a
        .try_get_or_set("tg:1", ttl, || async { Err("down".to_owned()) })
        .await
        .unwrap();
    assert!(failed.is_err());
    assert_eq!(a.get::<u32>("tg:1").await.unwrap(), None);
    // An invalidation during the load: its Ok is returned, not stored.
    let (entered, release) = (
        std::sync::Arc::new(tokio::sync::Notify::new()),
        std::sync::Arc::new(tokio::sync::Notify::new()),
    );
    let loading = tokio::spawn({
        let (a, entered, release) = (a.clone(), entered.clone(), release.clone());
        async move {
            a.try_get_or_set::<u32, String, _, _>("tg:2", ttl, || async move {
                entered.notify_one();
                release.notified().await;
                Ok(8)
            })
            .await
            .unwrap()
        }
    });
    entered.notified().await;
    b.invalidate_prefix("tg").await.unwrap();
    release.notify_one();
    assert_eq!(loading.await.unwrap(), Ok(8));
    assert_eq!(b.get::<u32>("tg:2").await.unwrap(), None, "{kind:?}");
    // The loading instance follows within the tracking window.
    eventually("the other instance sees the invalidation", async || {
        a.get::<u32>("tg:2").await.unwrap().is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_get_or_set_stores_only_ok_on_memory_and_redis() {
    Box::pin(try_get_or_sets(Kind::Memory)).await;
    Box::pin(try_get_or_sets(Kind::Redis)).await;
}
