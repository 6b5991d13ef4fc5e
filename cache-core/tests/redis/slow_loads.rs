//! Loads slower than the lease TTL: the lease is renewed while the body
//! runs, so the body runs once for every caller waiting on it (in this
//! process and in another), its value is stored, and only an invalidation
//! made during the load keeps it from being stored. A load whose future is
//! dropped stops renewing and gives its lease back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Kind, on};
use cache_core::Cache;

/// The lease TTL of these tests; bodies take three times as long.
const LEASE: Duration = Duration::from_millis(200);
const BODY: Duration = Duration::from_millis(600);

async fn cache(kind: Kind, namespace: &str) -> Cache {
    on(kind, Cache::builder())
        .namespace(namespace)
        .lease_ttl(LEASE)
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap()
}

fn namespace(kind: Kind, what: &str) -> String {
    format!("slow-{kind:?}-{what}-{}", std::process::id()).to_lowercase()
}

/// A body that counts its runs and takes [`BODY`].
async fn slow_body(runs: &AtomicUsize, value: u32) -> u32 {
    runs.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(BODY).await;
    value
}

async fn three_callers_share_one_slow_load(kind: Kind) {
    let cache = cache(kind, &namespace(kind, "share")).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..3 {
        let (cache, runs) = (cache.clone(), runs.clone());
        callers.push(tokio::spawn(async move {
            cache
                .get_or_set("report:1", None, || slow_body(&runs, 7))
                .await
                .unwrap()
        }));
    }
    for caller in callers {
        assert_eq!(caller.await.unwrap(), 7);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran once");
    assert_eq!(
        cache.get::<u32>("report:1").await.unwrap(),
        Some(7),
        "stored"
    );
    let stats = cache.stats().total;
    assert_eq!(stats.stale_sets_prevented, 0, "{stats:?}");
    assert_eq!(stats.loads, 1, "{stats:?}");
}

async fn another_instance_waits_for_the_slow_load(kind: Kind) {
    let ns = namespace(kind, "across");
    let (a, b) = (cache(kind, &ns).await, cache(kind, &ns).await);
    let runs = Arc::new(AtomicUsize::new(0));
    let leader = {
        let runs = runs.clone();
        tokio::spawn(async move {
            a.get_or_set("report:2", None, || slow_body(&runs, 8))
                .await
                .unwrap()
        })
    };
    // B asks once A's lease is taken, and keeps waiting past the lease TTL.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let got = b
        .get_or_set("report:2", None, || slow_body(&runs, 9))
        .await
        .unwrap();
    assert_eq!(got, 8, "B got A's value");
    assert!(started.elapsed() >= LEASE, "B waited past one lease TTL");
    assert_eq!(leader.await.unwrap(), 8);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the body ran once across instances"
    );
}

async fn an_invalidation_during_a_slow_load_keeps_it_from_being_stored(kind: Kind) {
    let cache = cache(kind, &namespace(kind, "invalidated")).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let load = {
        let (cache, runs) = (cache.clone(), runs.clone());
        tokio::spawn(async move {
            cache
                .get_or_set("report:3", None, || slow_body(&runs, 1))
                .await
                .unwrap()
        })
    };
    // Past one lease TTL (the lease was renewed), the data changes.
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    cache.delete("report:3").await.unwrap();
    assert_eq!(load.await.unwrap(), 1, "the caller still gets its load");
    assert_eq!(
        cache.get::<u32>("report:3").await.unwrap(),
        None,
        "a load older than the invalidation is not stored"
    );
    assert_eq!(cache.stats().total.stale_sets_prevented, 1);
}

async fn a_dropped_slow_load_gives_its_lease_back(kind: Kind) {
    let cache = cache(kind, &namespace(kind, "dropped")).await;
    let runs = Arc::new(AtomicUsize::new(0));
    {
        let runs = runs.clone();
        let abandoned = cache.get_or_set("report:4", None, || slow_body(&runs, 1));
        // Dropped after the body started, past one lease TTL.
        let _ = tokio::time::timeout(LEASE + Duration::from_millis(100), abandoned).await;
    }
    // The renewal stopped and the lease was released: a new load starts at
    // once instead of waiting out a lease nobody holds.
    let started = Instant::now();
    let got = cache
        .get_or_set("report:4", None, || async { 2u32 })
        .await
        .unwrap();
    assert_eq!(got, 2);
    assert!(
        started.elapsed() < LEASE,
        "waited {:?} for a dropped load's lease",
        started.elapsed()
    );
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod memory { $( #[tokio::test(flavor = "multi_thread")] async fn $name() { super::$name(super::Kind::Memory).await } )* }
        mod redis { $( #[tokio::test(flavor = "multi_thread")] async fn $name() { super::$name(super::Kind::Redis).await } )* }
        mod cluster { $( #[tokio::test(flavor = "multi_thread")] async fn $name() { super::$name(super::Kind::Cluster).await } )* }
    };
}

on_every_backend!(
    three_callers_share_one_slow_load,
    an_invalidation_during_a_slow_load_keeps_it_from_being_stored,
    a_dropped_slow_load_gives_its_lease_back,
);

mod across_instances {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn on_redis() {
        another_instance_waits_for_the_slow_load(Kind::Redis).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn on_a_cluster() {
        another_instance_waits_for_the_slow_load(Kind::Cluster).await;
    }
}
