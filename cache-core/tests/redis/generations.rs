//! O(1) prefix invalidation with prefix generations (`prefix_generations`):
//! one round trip whatever the number of keys, no SCAN, and no stale value
//! from a load that raced the invalidation. On memory, a redis-server and a
//! 3-master cluster.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{
    COUNTED_CLUSTER, COUNTED_SERVER, Kind, calls, cluster_calls, kill_tracking_clients,
    load_racing_invalidation, on_counted, until_reads,
};
use cache_core::{Cache, cached};
use cache_testkit::{RedisCluster, RedisServer};

static NS: AtomicUsize = AtomicUsize::new(0);

async fn cache(kind: Kind, generations: bool) -> Cache {
    let ns = format!("g{}", NS.fetch_add(1, Ordering::Relaxed));
    let b = Cache::builder()
        .namespace(&ns)
        .prefix_generations(generations)
        .timeout(Duration::from_secs(2));
    on_counted(kind, b).build().await.unwrap()
}

/// SCAN calls the server(s) have answered so far.
fn scans(kind: Kind) -> u64 {
    match kind {
        Kind::Memory => 0,
        Kind::Redis => calls(COUNTED_SERVER.get().unwrap(), "scan"),
        Kind::Cluster => cluster_calls(COUNTED_CLUSTER.get().unwrap(), "scan"),
    }
}

async fn prefix_invalidation_is_one_round_trip(kind: Kind) {
    let cache = cache(kind, true).await;
    let entries: Vec<(String, u64)> = (0..5000).map(|i| (format!("search:{i}"), i)).collect();
    let refs: Vec<(&str, u64)> = entries.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    cache.set_many(&refs, None).await.unwrap();
    cache.set("other:1", &1u64, None).await.unwrap();
    assert_eq!(cache.get::<u64>("search:4999").await.unwrap(), Some(4999));

    let scans_before = scans(kind);
    cache.invalidate_prefix("search").await.unwrap();
    assert_eq!(
        scans(kind),
        scans_before,
        "no SCAN: the generation was replaced"
    );
    for key in ["search:0", "search:2500", "search:4999"] {
        assert_eq!(
            cache.get::<u64>(key).await.unwrap(),
            None,
            "{key} invisible after the invalidation"
        );
    }
    assert_eq!(
        cache.get::<u64>("other:1").await.unwrap(),
        Some(1),
        "other prefixes untouched"
    );
    // New values under the new generation are visible.
    cache.set("search:7", &70u64, None).await.unwrap();
    assert_eq!(cache.get::<u64>("search:7").await.unwrap(), Some(70));
    // Exact deletes still work.
    assert!(cache.delete("search:7").await.unwrap());
    assert_eq!(cache.get::<u64>("search:7").await.unwrap(), None);
}

async fn load_racing_a_prefix_invalidation_is_not_served(
    kind: Kind,
    generations: bool,
) -> Option<u64> {
    let cache = cache(kind, generations).await;
    let (raced, served) = load_racing_invalidation(&cache, "search:q", |cache| async move {
        cache.invalidate_prefix("search").await.unwrap();
    })
    .await;
    assert_eq!(raced, 1);
    served
}

#[cached(prefix = "report", key = "{id}")]
async fn report(id: u64, loads: &AtomicUsize) -> u64 {
    loads.fetch_add(1, Ordering::SeqCst);
    id
}

async fn macros_honour_generations(kind: Kind) {
    let cache = cache(kind, true).await;
    let loads = AtomicUsize::new(0);
    cache
        .scope(async {
            assert_eq!(report(1, &loads).await, 1);
            assert_eq!(report(1, &loads).await, 1);
            assert_eq!(loads.load(Ordering::SeqCst), 1);
            cache.invalidate_prefix("report").await.unwrap();
            assert_eq!(report(1, &loads).await, 1);
            assert_eq!(report(1, &loads).await, 1);
            assert_eq!(
                loads.load(Ordering::SeqCst),
                2,
                "one reload after the invalidation, then hits"
            );
        })
        .await;
}

/// `exists`, `ttl` and `expire` agree with `get` after a prefix
/// invalidation: the old values are still stored (they expire by TTL) but
/// must not be reported.
async fn direct_api_sees_through_old_generations(kind: Kind) {
    let cache = cache(kind, true).await;
    cache.set("search:1", &1u64, None).await.unwrap();
    cache.incr("search:hits", 1).await.unwrap();
    assert!(cache.exists("search:1").await.unwrap());
    assert!(cache.ttl("search:1").await.unwrap().is_some());

    cache.invalidate_prefix("search").await.unwrap();
    assert_eq!(cache.get::<u64>("search:1").await.unwrap(), None);
    assert!(!cache.exists("search:1").await.unwrap());
    assert_eq!(cache.ttl("search:1").await.unwrap(), None);
    assert!(
        !cache
            .expire("search:1", Duration::from_secs(60))
            .await
            .unwrap()
    );
    // Counters are plain integers, not labeled values: still reported.
    assert!(cache.exists("search:hits").await.unwrap());

    cache.set("search:1", &2u64, None).await.unwrap();
    assert!(cache.exists("search:1").await.unwrap());
}

macro_rules! on_every_backend {
    ($($kind:ident => $module:ident),*) => {$(
        mod $module {
            use super::*;

            #[tokio::test]
            async fn prefix_invalidation_takes_one_round_trip() {
                prefix_invalidation_is_one_round_trip(Kind::$kind).await;
            }

            #[tokio::test]
            async fn a_load_racing_the_prefix_invalidation_is_not_served() {
                assert_eq!(load_racing_a_prefix_invalidation_is_not_served(Kind::$kind, true).await, None);
            }

            #[tokio::test]
            async fn exists_ttl_and_expire_see_through_old_generations() {
                direct_api_sees_through_old_generations(Kind::$kind).await;
            }

            #[tokio::test]
            async fn cached_functions_reload_after_a_generation_change() {
                macros_honour_generations(Kind::$kind).await;
            }
        }
    )*};
}

on_every_backend!(Memory => memory, Redis => redis, Cluster => cluster);

#[tokio::test]
async fn without_generations_prefix_invalidation_scans() {
    let cache = cache(Kind::Redis, false).await;
    cache.set("search:1", &1u64, None).await.unwrap();
    let before = scans(Kind::Redis);
    cache.invalidate_prefix("search").await.unwrap();
    assert!(scans(Kind::Redis) > before, "the SCAN + UNLINK baseline");
}

// ----- generations on by default, held under Redis client tracking ---------

/// A cache with default settings on `server`.
async fn default_cache(server: &RedisServer, namespace: &str) -> Cache {
    Cache::builder()
        .redis_url(server.url())
        .namespace(namespace)
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap()
}

/// Reads until a hit is one GET (tracking is established in the background).
async fn until_hits_are_one_get(server: &RedisServer, cache: &Cache, key: &str) {
    until_no_mget(|| calls(server, "mget"), cache, key).await;
}

/// Reads `key` until a read sends no `MGET` (`mgets` counts them).
async fn until_no_mget(mgets: impl Fn() -> u64, cache: &Cache, key: &str) {
    let started = std::time::Instant::now();
    loop {
        let before = mgets();
        cache.get::<u64>(key).await.unwrap();
        if mgets() == before {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "tracking never established"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn by_default_prefix_invalidation_on_redis_does_not_scan_the_database() {
    let server = RedisServer::start();
    // A shared database: 50,000 keys of other applications.
    let mut raw = server.client().get_connection().unwrap();
    for chunk in 0..50 {
        let mut pipe = ::redis::pipe();
        for i in 0..1000 {
            pipe.set(format!("other-app:{chunk}:{i}"), i).ignore();
        }
        let () = pipe.query(&mut raw).unwrap();
    }
    let cache = default_cache(&server, "app").await;
    cache.set("search:1", &1u64, None).await.unwrap();
    let scans = calls(&server, "scan");
    cache.invalidate_prefix("search").await.unwrap();
    assert_eq!(calls(&server, "scan"), scans, "no SCAN over the database");
    assert_eq!(cache.get::<u64>("search:1").await.unwrap(), None);
}

#[tokio::test]
async fn a_hit_with_generations_held_under_tracking_is_one_get() {
    let server = RedisServer::start();
    let cache = default_cache(&server, "app").await;
    cache.set("search:1", &1u64, None).await.unwrap();
    until_hits_are_one_get(&server, &cache, "search:1").await;
    let (gets, mgets) = (calls(&server, "get"), calls(&server, "mget"));
    for _ in 0..100 {
        assert_eq!(cache.get::<u64>("search:1").await.unwrap(), Some(1));
    }
    assert_eq!(calls(&server, "mget"), mgets);
    assert_eq!(calls(&server, "get"), gets + 100, "one GET per hit");
}

#[tokio::test]
async fn a_prefix_invalidation_reaches_another_instance_through_tracking() {
    let server = RedisServer::start();
    let writer = default_cache(&server, "app").await;
    let reader = default_cache(&server, "app").await;
    writer.set("search:1", &1u64, None).await.unwrap();
    until_hits_are_one_get(&server, &reader, "search:1").await;
    until_hits_are_one_get(&server, &writer, "search:1").await;

    writer.invalidate_prefix("search").await.unwrap();
    assert_eq!(
        writer.get::<u64>("search:1").await.unwrap(),
        None,
        "the invalidating instance sees it at once"
    );
    let window = until_reads(&reader, "search:1", None, Duration::from_secs(1)).await;
    eprintln!("the other instance saw the invalidation after {window:?}");

    writer.set("search:1", &2u64, None).await.unwrap();
    until_reads(&reader, "search:1", Some(2), Duration::from_secs(1)).await;
}

#[tokio::test]
async fn losing_the_tracking_connection_drops_held_generations() {
    let server = RedisServer::start();
    let writer = default_cache(&server, "app").await;
    let reader = default_cache(&server, "app").await;
    writer.set("search:1", &1u64, None).await.unwrap();
    until_hits_are_one_get(&server, &reader, "search:1").await;

    assert_eq!(
        kill_tracking_clients(&server),
        2,
        "one tracking connection per instance"
    );
    // Redis no longer tells the reader about changes: it must not keep
    // trusting the generation it holds.
    tokio::time::sleep(Duration::from_millis(100)).await;
    writer.invalidate_prefix("search").await.unwrap();
    assert_eq!(reader.get::<u64>("search:1").await.unwrap(), None);
    // Tracking comes back and hits are one GET again.
    writer.set("search:1", &3u64, None).await.unwrap();
    until_reads(&reader, "search:1", Some(3), Duration::from_secs(1)).await;
    until_hits_are_one_get(&server, &reader, "search:1").await;
}

#[tokio::test]
async fn a_flush_drops_held_generations() {
    let server = RedisServer::start();
    let writer = default_cache(&server, "app").await;
    let reader = default_cache(&server, "app").await;
    writer.set("search:1", &1u64, None).await.unwrap();
    until_hits_are_one_get(&server, &reader, "search:1").await;
    let _: () = ::redis::cmd("FLUSHALL")
        .query(&mut server.client().get_connection().unwrap())
        .unwrap();
    // A new generation is created with the next value; the reader must read
    // it, not keep the one the flush removed.
    writer.set("search:1", &5u64, None).await.unwrap();
    until_reads(&reader, "search:1", Some(5), Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_restarted_redis_does_not_leave_generations_held() {
    let mut server = RedisServer::start();
    let writer = default_cache(&server, "app").await;
    let reader = default_cache(&server, "app").await;
    writer.set("search:1", &1u64, None).await.unwrap();
    until_hits_are_one_get(&server, &reader, "search:1").await;
    server.restart();
    let started = std::time::Instant::now();
    loop {
        writer.set("search:1", &7u64, None).await.unwrap();
        if reader.get::<u64>("search:1").await.unwrap() == Some(7) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never converged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_reads_racing_invalidations_never_leave_a_stale_one_held() {
    let server = RedisServer::start();
    let writer = default_cache(&server, "app").await;
    let reader = default_cache(&server, "app").await;
    writer.set("search:0", &0u64, None).await.unwrap();
    until_hits_are_one_get(&server, &reader, "search:0").await;
    // The reader reads the generation again and again, so that its reads
    // race the invalidations' pushes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let (reader, stop) = (reader.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = reader.get::<u64>("search:0").await;
            }
        })
    };
    let trials = 2000;
    for i in 1..=trials {
        writer.invalidate_prefix("search").await.unwrap();
        writer.set("search:0", &i, None).await.unwrap();
        // Converges: a generation held after the invalidation's push was
        // processed would hide the new value forever.
        until_reads(&reader, "search:0", Some(i), Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    hammer.await.unwrap();
}

// ----- Redis Cluster: tracking on every master ----------------------------------

async fn cluster_cache(cluster: &RedisCluster, namespace: &str) -> Cache {
    Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace(namespace)
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap()
}

/// Reads until a hit is one GET on the cluster.
async fn until_cluster_hits_are_one_get(cluster: &RedisCluster, cache: &Cache, key: &str) {
    until_no_mget(|| cluster_calls(cluster, "mget"), cache, key).await;
}

#[tokio::test]
async fn on_a_cluster_a_hit_is_one_get_and_invalidations_reach_other_instances() {
    let cluster = RedisCluster::start(3);
    let writer = cluster_cache(&cluster, "cg").await;
    let reader = cluster_cache(&cluster, "cg").await;
    writer.set("search:1", &1u64, None).await.unwrap();
    until_cluster_hits_are_one_get(&cluster, &reader, "search:1").await;
    let (gets, mgets) = (
        cluster_calls(&cluster, "get"),
        cluster_calls(&cluster, "mget"),
    );
    for _ in 0..50 {
        assert_eq!(reader.get::<u64>("search:1").await.unwrap(), Some(1));
    }
    assert_eq!(cluster_calls(&cluster, "mget"), mgets);
    assert_eq!(cluster_calls(&cluster, "get"), gets + 50, "one GET per hit");

    writer.invalidate_prefix("search").await.unwrap();
    assert_eq!(writer.get::<u64>("search:1").await.unwrap(), None);
    let window = until_reads(&reader, "search:1", None, Duration::from_secs(1)).await;
    eprintln!("the other instance saw the invalidation after {window:?}");
    writer.set("search:1", &2u64, None).await.unwrap();
    until_reads(&reader, "search:1", Some(2), Duration::from_secs(1)).await;

    // Tracking lost on one master (the one holding the generation key or
    // not): the reader holds nothing it is no longer told about.
    for node in cluster.nodes() {
        kill_tracking_clients(node);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    writer.invalidate_prefix("search").await.unwrap();
    assert_eq!(reader.get::<u64>("search:1").await.unwrap(), None);
    writer.set("search:1", &3u64, None).await.unwrap();
    until_reads(&reader, "search:1", Some(3), Duration::from_secs(1)).await;
    until_cluster_hits_are_one_get(&cluster, &reader, "search:1").await;
}
