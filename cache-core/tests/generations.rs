//! O(1) prefix invalidation with prefix generations (`prefix_generations`):
//! one round trip whatever the number of keys, no SCAN, and no stale value
//! from a load that raced the invalidation. On memory, a redis-server and a
//! 3-master cluster.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_core::{Cache, cached};
use cache_testkit::RedisServer;
use common::{CLUSTER, Kind, SERVER, load_racing_invalidation, on};

static NS: AtomicUsize = AtomicUsize::new(0);

async fn cache(kind: Kind, generations: bool) -> Cache {
    let ns = format!("g{}", NS.fetch_add(1, Ordering::Relaxed));
    let b = Cache::builder()
        .namespace(&ns)
        .prefix_generations(generations)
        .timeout(Duration::from_secs(2));
    on(kind, b).build().await.unwrap()
}

/// SCAN calls the server(s) have answered so far.
fn scans(kind: Kind) -> u64 {
    let read = |server: &RedisServer| -> u64 {
        let info: String = ::redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut server.client().get_connection().unwrap())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_scan:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    match kind {
        Kind::Memory => 0,
        Kind::Redis => read(SERVER.get().unwrap()),
        Kind::Cluster => CLUSTER.get().unwrap().nodes().iter().map(read).sum(),
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
