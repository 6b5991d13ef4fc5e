//! Losing a master of a real Redis Cluster: calls keep returning (the
//! fallback answers for keys whose slots are gone), and the cache recovers
//! when the node comes back.

use std::time::{Duration, Instant};

use cache_core::{Cache, HealthStatus};
use cache_testkit::RedisCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_master_does_not_stop_the_cache() {
    let mut cluster = RedisCluster::start(3);
    let cache = Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace("nodeloss")
        .timeout(Duration::from_millis(300))
        .circuit_breaker(3, Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    for i in 0..50u32 {
        cache.set(&format!("customer:{i}"), &i, None).await.unwrap();
    }
    assert_eq!(cache.get::<u32>("customer:7").await.unwrap(), Some(7));

    cluster.stop_node(0);
    let started = Instant::now();
    let mut served = 0;
    for i in 0..50u32 {
        let key = format!("customer:{i}");
        // Every call returns (a value, or a miss answered by the fallback).
        if cache.get::<u32>(&key).await.unwrap().is_some() {
            served += 1;
        }
        let loaded: u32 = cache
            .get_or_set(&format!("fresh:{i}"), None, || async move { i * 2 })
            .await
            .unwrap();
        assert_eq!(loaded, i * 2);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(20),
        "100 calls took {elapsed:?}"
    );
    assert!(
        served > 0,
        "keys on the surviving masters, or the fallback, still answer"
    );
    assert!(cache.stats().total.total_errors() > 0);
    assert!(matches!(
        cache.health().await.status,
        HealthStatus::Degraded | HealthStatus::Healthy
    ));

    cluster.restart_node(0);
    assert!(cluster.wait_until_ok(Duration::from_secs(15)));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        cache.set("after:1", &1u32, None).await.unwrap();
        if cache.get::<u32>("after:1").await.unwrap() == Some(1)
            && cache.stats().circuit == cache_core::CircuitState::Closed
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cache did not recover: {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
