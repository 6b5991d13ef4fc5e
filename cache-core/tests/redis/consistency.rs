//! Consistency under concurrency: the stale-set race, cross-process stampede
//! protection, and randomized interleavings of reads, writes and
//! invalidations. Each runs on memory, a real redis-server and a real cluster,
//! and the race tests also run with leases switched off to show they detect
//! the failure the mechanism prevents.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{Kind, load_racing_invalidation, on};
use cache_core::Cache;

static NS: AtomicUsize = AtomicUsize::new(0);

/// `n` independent caches (own connections, own single-flight) over one store.
async fn caches(kind: Kind, n: usize, leases: bool) -> Vec<Cache> {
    caches_with(kind, n, leases, None).await
}

/// `generations`: prefix generations on or off, or `None` for the default.
async fn caches_with(kind: Kind, n: usize, leases: bool, generations: Option<bool>) -> Vec<Cache> {
    let ns = format!("c{}", NS.fetch_add(1, Ordering::Relaxed));
    let mut out = Vec::new();
    match kind {
        Kind::Memory => {
            // One memory store can only be shared by sharing the handle.
            let mut b = Cache::builder().leases(leases);
            if let Some(on) = generations {
                b = b.prefix_generations(on);
            }
            let cache = b.build().await.unwrap();
            out.resize(n, cache);
        }
        Kind::Redis | Kind::Cluster => {
            for _ in 0..n {
                let mut b = Cache::builder()
                    .namespace(&ns)
                    .leases(leases)
                    .timeout(Duration::from_secs(2));
                if let Some(on) = generations {
                    b = b.prefix_generations(on);
                }
                out.push(on(kind, b).build().await.unwrap());
            }
        }
    }
    out
}

/// A loader reads the database, stalls; a writer updates and invalidates;
/// the loader finishes. Returns what the cache serves afterwards.
async fn stale_set_race(kind: Kind, leases: bool) -> Option<u64> {
    stale_set_race_with(kind, leases, false, None).await
}

async fn stale_set_race_with(
    kind: Kind,
    leases: bool,
    by_prefix: bool,
    generations: Option<bool>,
) -> Option<u64> {
    let cache = caches_with(kind, 1, leases, generations).await.remove(0);
    let (raced, served) = load_racing_invalidation(&cache, "customer:1", |cache| async move {
        if by_prefix {
            cache.invalidate_prefix("customer").await.unwrap();
        } else {
            cache.delete("customer:1").await.unwrap();
        }
    })
    .await;
    assert_eq!(raced, 1, "the racing reader itself saw the old value");
    served
}

/// `processes` independent caches × `callers` concurrent callers on one cold key.
async fn stampede(kind: Kind, leases: bool, processes: usize, callers: usize) -> usize {
    let caches = caches(kind, processes, leases).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for cache in caches {
        for _ in 0..callers {
            let (cache, runs) = (cache.clone(), runs.clone());
            tasks.spawn(async move {
                cache
                    .get_or_set("report:cold", None, || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        7u64
                    })
                    .await
                    .unwrap()
            });
        }
    }
    while let Some(v) = tasks.join_next().await {
        assert_eq!(v.unwrap(), 7);
    }
    runs.load(Ordering::SeqCst)
}

/// Readers, writers and invalidations interleaved at random; after a write's
/// invalidation returns, no read may return an older version.
async fn interleavings(kind: Kind, rounds: usize) {
    run_interleavings(caches(kind, 2, true).await, rounds, false).await;
}

/// 8 workers over `caches` interleave reads, writes (the database version
/// goes up, then the key is invalidated) and loads that stall at random.
/// A read must see every version invalidated before it started: through any
/// instance, or, with `per_instance`, through its own (what a near cache
/// guarantees; other instances see it once Redis' message arrives). Returns
/// the database's last version.
async fn run_interleavings(caches: Vec<Cache>, rounds: usize, per_instance: bool) -> u64 {
    let db = Arc::new(AtomicU64::new(0));
    // The version guaranteed visible: raised after each invalidation returns
    // (one floor for all instances, or one per instance).
    let floors: Arc<Vec<AtomicU64>> =
        Arc::new((0..caches.len()).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8usize {
        let index = worker % caches.len();
        let floor = if per_instance { index } else { 0 };
        let cache = caches[index].clone();
        let (db, floors) = (db.clone(), floors.clone());
        tasks.spawn(async move {
            let mut seed = worker as u64 * 7919 + 1;
            for _ in 0..rounds {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if (seed >> 33).is_multiple_of(4) {
                    let written = db.fetch_add(1, Ordering::SeqCst) + 1;
                    cache.delete("item:1").await.unwrap();
                    floors[floor].fetch_max(written, Ordering::SeqCst);
                } else {
                    let must_see = floors[floor].load(Ordering::SeqCst);
                    let delay = (seed >> 40) % 3;
                    let db = db.clone();
                    let seen: u64 = cache
                        .get_or_set("item:1", None, || async move {
                            let v = db.load(Ordering::SeqCst);
                            if delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            v
                        })
                        .await
                        .unwrap();
                    assert!(
                        seen >= must_see,
                        "read version {seen} after version {must_see} was invalidated"
                    );
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    db.load(Ordering::SeqCst)
}

macro_rules! on_every_backend {
    ($($kind:ident => $module:ident),*) => {$(
        mod $module {
            use super::*;

            #[tokio::test]
            async fn stale_set_race_leaves_no_stale_value() {
                assert_eq!(stale_set_race(Kind::$kind, true).await, None);
            }

            #[tokio::test]
            async fn stale_set_race_through_a_prefix_invalidation() {
                assert_eq!(stale_set_race_with(Kind::$kind, true, true, None).await, None);
                // Without leases or generations the test detects the race...
                assert_eq!(stale_set_race_with(Kind::$kind, false, true, Some(false)).await, Some(1));
                // ...which generations alone close for prefix invalidations.
                assert_eq!(stale_set_race_with(Kind::$kind, false, true, Some(true)).await, None);
            }

            #[tokio::test]
            async fn without_leases_the_race_stores_the_stale_value() {
                assert_eq!(stale_set_race(Kind::$kind, false).await, Some(1), "the test detects the race");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn four_processes_times_250_callers_run_the_body_once() {
                assert_eq!(stampede(Kind::$kind, true, 4, 250).await, 1);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn randomized_interleavings_never_go_back_in_time() {
                interleavings(Kind::$kind, 300).await;
            }
        }
    )*};
}

on_every_backend!(Memory => memory, Redis => redis, Cluster => cluster);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_leases_each_process_loads() {
    let runs = stampede(Kind::Redis, false, 4, 250).await;
    assert!(
        runs >= 4,
        "without leases every process loads at least once: {runs}"
    );
}

// ----- with near caches -------------------------------------------------------

/// `n` caches with near caches over the test Redis (own namespace).
async fn near_caches(n: usize) -> Vec<Cache> {
    let ns = format!("cn{}", NS.fetch_add(1, Ordering::Relaxed));
    let mut out = Vec::new();
    for _ in 0..n {
        let b = Cache::builder()
            .namespace(&ns)
            .near_cache(1_000)
            .timeout(Duration::from_secs(2));
        out.push(on(Kind::Redis, b).build().await.unwrap());
    }
    out
}

/// [`run_interleavings`] on instances with near caches, then every instance
/// converges on the database's last version within 1 s.
async fn interleavings_with_near_caches(rounds: usize) {
    let caches = near_caches(2).await;
    let last = run_interleavings(caches.clone(), rounds, true).await;
    for cache in &caches {
        cache.delete("item:1").await.unwrap();
    }
    for cache in &caches {
        let started = std::time::Instant::now();
        loop {
            let seen: u64 = cache
                .get_or_set("item:1", None, || async move { last })
                .await
                .unwrap();
            if seen == last {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "an instance still reads {seen}, the database holds {last}"
            );
            tokio::task::yield_now().await;
        }
    }
}

mod near {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn randomized_interleavings_never_go_back_in_time_on_the_invalidating_instance() {
        interleavings_with_near_caches(300).await;
    }

    #[tokio::test]
    async fn stale_set_race_leaves_no_stale_value_with_a_near_cache() {
        let cache = near_caches(1).await.remove(0);
        // Tracking is established in the background: wait for a near hit.
        cache.set("warm:1", &1u64, None).await.unwrap();
        let started = std::time::Instant::now();
        while cache.stats().total.near_hits == 0 {
            cache.get::<u64>("warm:1").await.unwrap();
            assert!(started.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (raced, served) = load_racing_invalidation(&cache, "customer:1", |cache| async move {
            cache.delete("customer:1").await.unwrap();
        })
        .await;
        assert_eq!(raced, 1, "the racing reader itself saw the old value");
        assert_eq!(served, None);
    }
}
