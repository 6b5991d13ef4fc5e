//! The resilience layer, driven through `TestCache` faults: invalidations
//! missed during an outage (also those made while they are being replayed),
//! loads that race an invalidation while the breaker is open, repeated
//! invalidations, recovery time, and writes the backend refuses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::{CircuitState, ErrorKind, HealthStatus};
use cache_testkit::TestCache;
use tokio::sync::Notify;

/// Waits until `cond` holds, bounded.
async fn eventually(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within {within:?}: {what}");
}

/// A test cache whose breaker opens on the first failure and, left alone,
/// would stay open for 30 s: anything faster is the background probe.
fn outage_cache(timeout: Duration) -> TestCache {
    TestCache::builder()
        .timeout(timeout)
        .circuit_breaker(1, Duration::from_secs(30))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_made_while_earlier_ones_are_replayed_is_not_lost() {
    let test = outage_cache(Duration::from_secs(2));
    let cache = test.cache().clone();
    cache.set("customer:1", &"old", None).await.unwrap();
    cache.set("customer:2", &"old", None).await.unwrap();

    test.go_down();
    cache.delete("customer:2").await.unwrap();
    assert_eq!(cache.stats().circuit, CircuitState::Open);
    let opened = Instant::now();
    // Back, but slow: the probe's PING, the recovery's PING and the replayed
    // DEL each take 500 ms. The probe starts 250 ms after the breaker
    // opened, so the replay runs from about 1.25 s to 1.75 s.
    test.come_back();
    test.delay_next(3, Duration::from_millis(500));
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(opened.elapsed())).await;
    // The breaker still turns calls away: this delete is remembered while
    // the earlier one is being replayed.
    cache.delete("customer:1").await.unwrap();

    eventually("the breaker closes", Duration::from_secs(5), async || {
        cache.stats().circuit == CircuitState::Closed && !cache.stats().fallback_active
    })
    .await;
    assert!(
        !test.contains("customer:1"),
        "the delete made during the replay reached the backend:\n{}",
        test.log_text()
    );
    assert_eq!(cache.get::<String>("customer:1").await.unwrap(), None);
    assert_eq!(cache.get::<String>("customer:2").await.unwrap(), None);
}

#[tokio::test]
async fn during_an_outage_a_load_older_than_an_invalidation_is_not_stored() {
    let test = outage_cache(Duration::from_millis(50));
    let cache = test.cache().clone();
    test.go_down();
    let _ = cache.get::<u64>("warmup:1").await.unwrap();
    assert_eq!(cache.stats().circuit, CircuitState::Open);

    // The loader reads the database (v1), then stalls; meanwhile the writer
    // updates the database and invalidates; then the loader returns v1.
    let loaded = Arc::new(Notify::new());
    let invalidated = Arc::new(Notify::new());
    let loader = {
        let cache = cache.clone();
        let (loaded, invalidated) = (loaded.clone(), invalidated.clone());
        tokio::spawn(async move {
            cache
                .get_or_set("customer:1", None, || async move {
                    loaded.notify_one();
                    invalidated.notified().await;
                    1u64
                })
                .await
                .unwrap()
        })
    };
    loaded.notified().await;
    cache.delete("customer:1").await.unwrap();
    invalidated.notify_one();
    assert_eq!(loader.await.unwrap(), 1, "the caller gets what it loaded");

    assert_eq!(
        cache.get::<u64>("customer:1").await.unwrap(),
        None,
        "the fallback must not serve a value loaded before the invalidation"
    );
    // A load after the invalidation is stored (in the fallback) and served.
    let fresh = cache
        .get_or_set("customer:1", None, || async { 2u64 })
        .await
        .unwrap();
    assert_eq!(fresh, 2);
    assert_eq!(cache.get::<u64>("customer:1").await.unwrap(), Some(2));
}

#[tokio::test]
async fn repeated_invalidations_during_an_outage_are_replayed_once() {
    let test = outage_cache(Duration::from_millis(50));
    let cache = test.cache().clone();
    cache.set("customer:1", &1u64, None).await.unwrap();
    test.go_down();
    for _ in 0..200 {
        cache.invalidate_prefix("query").await.unwrap();
        cache.delete("customer:1").await.unwrap();
        cache.delete_pattern("search:*").await.unwrap();
    }
    test.clear_log();
    test.come_back();
    eventually("the breaker closes", Duration::from_secs(5), async || {
        cache.stats().circuit == CircuitState::Closed && !cache.stats().fallback_active
    })
    .await;
    assert_eq!(
        test.key("query:*").pattern_deletes(),
        1,
        "{}",
        test.log_text()
    );
    assert_eq!(
        test.key("search:*").pattern_deletes(),
        1,
        "{}",
        test.log_text()
    );
    assert_eq!(test.key("customer:1").deletes(), 1, "{}", test.log_text());
    assert!(!test.contains("customer:1"));
}

#[tokio::test]
async fn many_distinct_invalidations_fold_into_their_prefix() {
    let test = outage_cache(Duration::from_millis(50));
    let cache = test.cache().clone();
    cache.set("order:1", &1u64, None).await.unwrap();
    test.go_down();
    // More distinct keys than the pending set holds.
    for i in 0..10_050 {
        cache.delete(&format!("order:{i}")).await.unwrap();
    }
    test.clear_log();
    test.come_back();
    eventually("the breaker closes", Duration::from_secs(5), async || {
        cache.stats().circuit == CircuitState::Closed && !cache.stats().fallback_active
    })
    .await;
    assert_eq!(
        test.key("order:*").pattern_deletes(),
        1,
        "{}",
        test.log_text()
    );
    assert!(!test.contains("order:1"));
}

#[tokio::test]
async fn the_breaker_closes_within_two_seconds_of_the_backend_answering() {
    // Cooldown 30 s: without a background probe the cache would stay on the
    // fallback for 30 s after the backend came back.
    let test = outage_cache(Duration::from_millis(50));
    let cache = test.cache().clone();
    test.go_down();
    for i in 0..5 {
        let _ = cache.get::<u64>(&format!("customer:{i}")).await.unwrap();
    }
    assert_eq!(cache.stats().circuit, CircuitState::Open);
    assert_eq!(cache.health().await.status, HealthStatus::Degraded);
    // Down for a while: the probe backs off meanwhile.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    test.come_back();
    let back = Instant::now();
    // No calls are made: the cache finds out by itself.
    eventually("recovery", Duration::from_secs(2), async || {
        cache.stats().circuit == CircuitState::Closed
    })
    .await;
    assert_eq!(cache.health().await.status, HealthStatus::Healthy);
    eprintln!("recovered {:?} after the backend came back", back.elapsed());
}

#[tokio::test]
async fn health_checks_a_refused_write_with_a_write_of_its_own() {
    let test = TestCache::new();
    let cache = test.cache().clone();
    assert_eq!(cache.health().await.status, HealthStatus::Healthy);
    test.fail_next_with(1, ErrorKind::OutOfMemory);
    cache.set("customer:1", &1u64, None).await.unwrap();
    assert_eq!(
        cache.stats().circuit,
        CircuitState::Closed,
        "a refused write proves the backend is up"
    );
    // The refusal was one-off: health writes a probe key, which the
    // backend accepts, so it reports the backend as it is now. (Redis
    // refusing every write keeps it degraded: faults.rs, out of memory.)
    test.clear_log();
    assert_eq!(cache.health().await.status, HealthStatus::Healthy);
    assert!(
        test.log().iter().any(|e| e.is_set()),
        "health wrote its probe:\n{}",
        test.log_text()
    );
    assert_eq!(cache.health().await.status, HealthStatus::Healthy);
}
