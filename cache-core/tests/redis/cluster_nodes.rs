//! One dead master of a Redis Cluster with replicas: the fault stays with
//! the slots it served. Keys on the other masters keep their latency and
//! stay on Redis, and an invalidation that the dead master missed is
//! delivered to the replica that takes its slots over; meanwhile
//! `fail_closed` refuses only writes whose keys' slots await it.

use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use cache_core::{Cache, CircuitState, WriteRefused};
use cache_testkit::RedisCluster;

#[derive(Debug, PartialEq)]
enum SaveError {
    Refused,
}

impl From<WriteRefused> for SaveError {
    fn from(_: WriteRefused) -> Self {
        SaveError::Refused
    }
}

#[cache_core::invalidates("customer:{id}", cache = cache, fail_closed)]
async fn save_fail_closed(cache: &Cache, writes: &AtomicU32, id: u64) -> Result<(), SaveError> {
    let _ = id;
    writes.fetch_add(1, SeqCst);
    Ok(())
}

async fn cache_on(cluster: &RedisCluster, namespace: &str) -> Cache {
    Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace(namespace)
        .build()
        .await
        .unwrap()
}

/// A prefix whose generation key lives on a master other than `victim`,
/// and `n` of its keys whose values do too.
fn keys_off(
    cluster: &RedisCluster,
    namespace: &str,
    victim: usize,
    n: usize,
) -> (String, Vec<String>) {
    let prefix = (0..)
        .map(|i| format!("hot{i}"))
        .find(|p| cluster.master_of(&format!("{namespace}:%gen:{p}")) != victim)
        .unwrap();
    let keys = (0..)
        .map(|i| format!("{prefix}:{i}"))
        .filter(|k| cluster.master_of(&format!("{namespace}:{k}")) != victim)
        .take(n)
        .collect();
    (prefix, keys)
}

/// `n` keys of prefix `cold` whose values live on `victim`.
fn keys_on(cluster: &RedisCluster, namespace: &str, victim: usize, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("cold:{i}"))
        .filter(|k| cluster.master_of(&format!("{namespace}:{k}")) == victim)
        .take(n)
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_on_healthy_masters_keep_their_latency_while_a_master_is_down() {
    const NS: &str = "nodes-latency";
    let mut cluster = RedisCluster::start_with_replicas(3, 1);
    let cache = cache_on(&cluster, NS).await;
    let victim = cluster.master_of(&format!("{NS}:cold:0"));
    let (hot, hot_keys) = keys_off(&cluster, NS, victim, 40);
    let cold_keys = keys_on(&cluster, NS, victim, 10);
    for (i, key) in hot_keys.iter().chain(&cold_keys).enumerate() {
        cache.set(key, &(i as u64), None).await.unwrap();
    }
    for (i, key) in hot_keys.iter().enumerate() {
        assert_eq!(cache.get::<u64>(key).await.unwrap(), Some(i as u64));
    }

    cluster.stop_node(victim);
    let killed = Instant::now();
    // The dead master's keys are read and written until their failures
    // open a breaker, as a service's traffic would.
    while cache.stats().circuit == CircuitState::Closed && killed.elapsed() < Duration::from_secs(2)
    {
        for (i, key) in cold_keys.iter().enumerate() {
            let _ = cache.get::<u64>(key).await;
            let same = (hot_keys.len() + i) as u64;
            cache.set(key, &same, None).await.unwrap();
        }
    }
    // Reads of the dead master's keys go on meanwhile.
    let cold_reader = {
        let (cache, keys) = (cache.clone(), cold_keys.clone());
        tokio::spawn(async move {
            while killed.elapsed() < Duration::from_secs(5) {
                for key in &keys {
                    let _ = cache.get::<u64>(key).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut latencies = Vec::new();
    let mut wrong = Vec::new();
    while killed.elapsed() < Duration::from_secs(5) {
        for (i, key) in hot_keys.iter().enumerate() {
            let started = Instant::now();
            let read = cache.get::<u64>(key).await.unwrap();
            latencies.push(started.elapsed());
            if read != Some(i as u64) {
                wrong.push((key.clone(), read));
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    cold_reader.await.unwrap();
    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        *latencies.last().unwrap(),
    );
    eprintln!(
        "healthy-master reads with one master killed: n={} p50={p50:?} p99={p99:?} max={max:?}",
        latencies.len()
    );
    let stats = cache.stats();
    assert!(
        wrong.is_empty(),
        "{} of {} reads of keys on healthy masters did not return their value (first: {:?}); {:?}",
        wrong.len(),
        latencies.len(),
        wrong.first(),
        stats.prefixes[&hot]
    );
    assert_eq!(
        stats.prefixes[&hot].fallback_hits, 0,
        "keys on healthy masters were served by the fallback"
    );
    assert_eq!(stats.prefixes[&hot].total_errors(), 0, "{stats:?}");
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");
    assert!(max < Duration::from_millis(250), "max {max:?}");

    // Once the replica is promoted, the dead master's keys are served
    // from Redis again (the replica has them).
    let promoted = tokio::task::spawn_blocking(move || {
        let promoted = cluster.wait_for_failover(victim, Duration::from_secs(20));
        (cluster, promoted)
    });
    let (_cluster, promoted) = promoted.await.unwrap();
    assert!(promoted.is_some(), "no replica took over");
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = hot_keys.len() as u64;
    loop {
        let mut all = true;
        for (i, key) in cold_keys.iter().enumerate() {
            all &= cache.get::<u64>(key).await.unwrap() == Some(first + i as u64);
        }
        if all && cache.stats().circuit == CircuitState::Closed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the promoted replica's keys are not served 5 s after the promotion: {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_a_dead_master_missed_reaches_its_promoted_replica() {
    const NS: &str = "nodes-promise";
    let mut cluster = RedisCluster::start_with_replicas(3, 1);
    let (a, b) = (cache_on(&cluster, NS).await, cache_on(&cluster, NS).await);
    a.set("customer:1", &1u64, None).await.unwrap();
    a.set("churn:1", &10u64, None).await.unwrap();
    assert_eq!(b.get::<u64>("customer:1").await.unwrap(), Some(1));
    assert_eq!(b.get::<u64>("churn:1").await.unwrap(), Some(10));
    let victim = cluster.master_of(&format!("{NS}:customer:1"));
    // The replica has the old value (what a promotion would serve).
    let replica = cluster.replicas_of(victim)[0];
    let mut on_replica = cluster.nodes()[replica].client().get_connection().unwrap();
    let _: () = redis::cmd("READONLY").query(&mut on_replica).unwrap();
    let started = Instant::now();
    while redis::cmd("EXISTS")
        .arg(format!("{NS}:customer:1"))
        .query::<u64>(&mut on_replica)
        .unwrap()
        == 0
    {
        assert!(started.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }

    cluster.stop_node(victim);
    // The write: its invalidation cannot reach the dead master.
    let started = Instant::now();
    a.delete_many(&["customer:1", "churn:1"]).await.unwrap();
    eprintln!(
        "invalidation with the master dead took {:?}",
        started.elapsed()
    );
    assert!(
        a.stats().fallback_active,
        "the missed part of the invalidation is kept for replay"
    );
    // `fail_closed`: a write whose key's slot awaits that replay is
    // refused before its body runs; one whose key lives on a live master
    // goes ahead. The whole cluster is not deliverable.
    let writes = AtomicU32::new(0);
    assert_eq!(
        save_fail_closed(&a, &writes, 1).await,
        Err(SaveError::Refused)
    );
    assert_eq!(writes.load(SeqCst), 0, "the refused write's body ran");
    let elsewhere = (2..)
        .find(|id| cluster.master_of(&format!("{NS}:customer:{id}")) != victim)
        .unwrap();
    assert_eq!(save_fail_closed(&a, &writes, elsewhere).await, Ok(()));
    assert_eq!(writes.load(SeqCst), 1);
    assert!(a.check_deliverable().is_err());
    assert_ne!(a.get::<u64>("customer:1").await.unwrap(), Some(1));
    assert_ne!(a.get::<u64>("churn:1").await.unwrap(), Some(10));

    let promoted = tokio::task::spawn_blocking(move || {
        let promoted = cluster.wait_for_failover(victim, Duration::from_secs(20));
        (cluster, promoted)
    });
    let (cluster, promoted) = promoted.await.unwrap();
    let promoted_at = Instant::now();
    assert!(promoted.is_some(), "no replica took over");
    // From 2 s after the promotion on, neither instance serves the old
    // value (before, the other instance may read the promoted replica's
    // copy until the replay reaches it).
    let mut last_stale = None;
    while promoted_at.elapsed() < Duration::from_secs(4) {
        let stale = a.get::<u64>("customer:1").await.unwrap() == Some(1)
            || b.get::<u64>("customer:1").await.unwrap() == Some(1)
            || a.get::<u64>("churn:1").await.unwrap() == Some(10)
            || b.get::<u64>("churn:1").await.unwrap() == Some(10);
        if stale {
            last_stale = Some(promoted_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("last old value read {last_stale:?} after the promotion");
    if let Some(at) = last_stale {
        assert!(
            at < Duration::from_secs(2),
            "an old value was read {at:?} after the promotion"
        );
    }
    // And the delete reached the promoted master itself (and `churn:1`'s
    // master): no invalidated key is left on Redis.
    let promoted = promoted.unwrap();
    assert_eq!(cluster.master_of(&format!("{NS}:customer:1")), promoted);
    let mut dropped = Vec::new();
    for key in ["customer:1", "churn:1"] {
        let storage = format!("{NS}:{key}");
        let mut on_master = cluster.nodes()[cluster.master_of(&storage)]
            .client()
            .get_connection()
            .unwrap();
        let left: u64 = redis::cmd("EXISTS")
            .arg(&storage)
            .query(&mut on_master)
            .unwrap();
        if left != 0 {
            dropped.push(key);
        }
    }
    eprintln!("invalidations dropped: {} of 2 keys", dropped.len());
    assert!(
        dropped.is_empty(),
        "the old values are still on their masters: {dropped:?}"
    );
}
