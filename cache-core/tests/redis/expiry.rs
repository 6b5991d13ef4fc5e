//! How long values live. TTL jitter: entries written together get TTLs
//! spread within ±the fraction (per function or cache-wide), and without
//! jitter exactly the TTL; extreme TTLs never panic. On memory (the test
//! kit's manual clock: TTLs read back exactly) and on a redis-server.

use std::time::Duration;

use crate::common::{Kind, on};
use cache_core::{Cache, cached};
use cache_testkit::TestCache;

#[cached(prefix = "jit", key = "{id}", ttl = 1000, jitter = 0.1, cache = cache)]
async fn jittered(cache: &Cache, id: u64) -> u64 {
    id
}

#[cached(prefix = "flat", key = "{id}", ttl = 1000, cache = cache)]
async fn flat(cache: &Cache, id: u64) -> u64 {
    id
}

/// With fail-safe the key lives `fail_safe` longer; the jitter spreads the
/// TTL, which is what `ttl` reports.
#[cached(prefix = "jfs", key = "{id}", ttl = 1000, jitter = 0.2, fail_safe = 600, cache = cache)]
async fn jittered_fail_safe(cache: &Cache, id: u64) -> Result<u64, String> {
    Ok(id)
}

/// A TTL as long as a `Duration` goes, with every option that computes
/// with it.
#[cached(
    prefix = "huge",
    key = "{id}",
    ttl = std::time::Duration::MAX,
    jitter = 0.4,
    fail_safe = std::time::Duration::MAX,
    refresh_ahead = 0.9,
    cache = cache
)]
async fn huge(cache: &Cache, id: u64) -> Result<u64, String> {
    Ok(id)
}

const KEYS: u64 = 40;

/// The TTLs `cache` reports for `keys`, in whole milliseconds.
async fn ttls(cache: &Cache, keys: impl Iterator<Item = String>) -> Vec<u64> {
    let mut out = Vec::new();
    for key in keys {
        let ttl = cache.ttl(&key).await.unwrap().expect("stored with a TTL");
        out.push(ttl.as_millis() as u64);
    }
    out
}

/// Every TTL within `[low, high]` ms, and spread over at least `spread` ms.
fn assert_spread(what: &str, ttls: &[u64], (low, high): (u64, u64), spread: u64) {
    let (min, max) = (ttls.iter().min().unwrap(), ttls.iter().max().unwrap());
    assert!(
        *min >= low && *max <= high,
        "{what}: TTLs outside [{low}, {high}] ms: {ttls:?}"
    );
    assert!(
        max - min >= spread,
        "{what}: TTLs not spread ({min}..{max} ms): {ttls:?}"
    );
}

async fn spreads(kind: Kind, cache: &Cache) {
    // Written together, expiring apart (40 draws from ±10% of 1000 s: the
    // chance that all land within 50 s of each other is below 1e-20).
    for id in 0..KEYS {
        jittered(cache, id).await;
        flat(cache, id).await;
        jittered_fail_safe(cache, id).await.unwrap();
    }
    // A real server's clock moves while the TTLs are read.
    let slack = match kind {
        Kind::Memory => 0,
        _ => 5_000,
    };
    let spread = ttls(cache, (0..KEYS).map(|id| jittered_cache_key(&id))).await;
    assert_spread(
        "jitter = 0.1",
        &spread,
        (900_000 - slack, 1_100_000),
        50_000,
    );
    let spread = ttls(cache, (0..KEYS).map(|id| jittered_fail_safe_cache_key(&id))).await;
    assert_spread(
        "jitter = 0.2 with fail-safe",
        &spread,
        (800_000 - slack, 1_200_000),
        100_000,
    );
    // Without jitter: exactly the TTL.
    let exact = ttls(cache, (0..KEYS).map(|id| flat_cache_key(&id))).await;
    assert!(
        exact
            .iter()
            .all(|t| *t <= 1_000_000 && *t >= 1_000_000 - slack),
        "{kind:?}: no jitter, yet {exact:?}"
    );
    if let Kind::Memory = kind {
        assert!(exact.iter().all(|t| *t == 1_000_000), "{exact:?}");
    }
    // Extreme TTLs: stored (or not), never a panic.
    assert_eq!(huge(cache, 1).await, Ok(1));
    assert_eq!(huge(cache, 1).await, Ok(1));
}

#[tokio::test]
async fn jitter_spreads_ttls_on_memory() {
    let test = TestCache::new();
    spreads(Kind::Memory, test.cache()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_spreads_ttls_on_redis() {
    let builder = Cache::builder()
        .namespace("expiry-jitter")
        .timeout(Duration::from_secs(2));
    let cache = on(Kind::Redis, builder).build().await.unwrap();
    spreads(Kind::Redis, &cache).await;
}

/// The cache-wide jitter applies to functions that set none, and to
/// `get_or_set`; a function's own `jitter` wins.
async fn cache_wide(kind: Kind, cache: &Cache) {
    for id in 0..KEYS {
        flat(cache, id).await;
        let key = format!("gos:{id}");
        cache
            .get_or_set(&key, Some(Duration::from_secs(1000)), || async { id })
            .await
            .unwrap();
    }
    let slack = match kind {
        Kind::Memory => 0,
        _ => 5_000,
    };
    let spread = ttls(cache, (0..KEYS).map(|id| flat_cache_key(&id))).await;
    assert_spread(
        "cache-wide 0.3",
        &spread,
        (700_000 - slack, 1_300_000),
        150_000,
    );
    let spread = ttls(cache, (0..KEYS).map(|id| format!("gos:{id}"))).await;
    assert_spread(
        "cache-wide 0.3, get_or_set",
        &spread,
        (700_000 - slack, 1_300_000),
        150_000,
    );
    for id in 0..KEYS {
        jittered(cache, id).await;
    }
    let own = ttls(cache, (0..KEYS).map(|id| jittered_cache_key(&id))).await;
    assert_spread("own 0.1 wins", &own, (900_000 - slack, 1_100_000), 50_000);
}

#[tokio::test]
async fn the_cache_wide_jitter_on_memory() {
    let mut config = cache_testkit::test_config();
    config.ttl_jitter = 0.3;
    let test = TestCache::with_config(config);
    cache_wide(Kind::Memory, test.cache()).await;
    // Out of range from the builder: clamped, never a panic.
    for fraction in [f64::NAN, -1.0, 7.0, f64::INFINITY] {
        let cache = Cache::builder().ttl_jitter(fraction).build().await.unwrap();
        cache.scope(flat(&cache, 1)).await;
        let ttl = cache.ttl(&flat_cache_key(&1)).await.unwrap().unwrap();
        assert!(ttl <= Duration::from_secs(1500), "{fraction}: {ttl:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_wide_jitter_on_redis() {
    let builder = Cache::builder()
        .namespace("expiry-jitter-wide")
        .timeout(Duration::from_secs(2))
        .ttl_jitter(0.3);
    let cache = on(Kind::Redis, builder).build().await.unwrap();
    cache_wide(Kind::Redis, &cache).await;
}
