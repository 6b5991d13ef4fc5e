//! How long values live. TTL jitter: entries written together get TTLs
//! spread within ±the fraction (per function or cache-wide), and without
//! jitter exactly the TTL; extreme TTLs never panic. `ttl_from`: each value
//! lives as long as it says. `sliding` (opt-in): a hit restarts the TTL the
//! value was stored with. On memory (the test kit's manual clock: TTLs read
//! back exactly) and on a redis-server with real TTLs.

use std::time::Duration;

use crate::common::{Kind, on};
use crate::refresh_ahead::{Src, eventually};
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

// ----- per-value TTL (`ttl_from`) ------------------------------------------

/// A credential that says how long it is good for.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Token {
    value: u64,
    good_for_ms: u64,
}

fn good_for(token: &Token) -> Duration {
    Duration::from_millis(token.good_for_ms)
}

#[cached(prefix = "tok", key = "{user}", ttl = 3600, ttl_from = good_for, cache = cache)]
async fn token(cache: &Cache, src: &Src, user: u64) -> Result<Token, String> {
    let value = src.read().await?;
    Ok(Token {
        value,
        good_for_ms: user,
    })
}

/// `ttl_from` applies to values; a cached `None` keeps `none_ttl`.
#[cached(
    prefix = "maybe",
    key = "{ms}",
    ttl_from = |v: &Option<u64>| std::time::Duration::from_millis(v.unwrap_or(0)),
    cache_none,
    none_ttl = 5,
    cache = cache
)]
async fn maybe(cache: &Cache, src: &Src, ms: u64) -> Option<u64> {
    src.read().await.ok().filter(|_| ms > 0).map(|_| ms)
}

/// Each value lives as long as it says (the user id is its lifetime in ms
/// here), a zero lifetime is not stored, errors never are, and a cached
/// `None` keeps `none_ttl`. `wait(ms)` lets that much time pass.
async fn per_value(kind: Kind, cache: &Cache, wait: impl AsyncFn(u64)) {
    let src = Src::new(1);
    let (short, long) = (1500, 600_000);
    token(cache, &src, short).await.unwrap();
    token(cache, &src, long).await.unwrap();
    let slack = match kind {
        Kind::Memory => 0,
        _ => 200,
    };
    let ttl = |user: u64| async move {
        let ttl = cache.ttl(&token_cache_key(&user)).await.unwrap();
        ttl.map(|t| t.as_millis() as u64)
    };
    let got = ttl(short).await.unwrap();
    assert!(got <= short && got + slack >= short, "{kind:?}: {got}");
    let got = ttl(long).await.unwrap();
    assert!(got <= long && got + slack >= long, "{kind:?}: {got}");
    // Zero: not stored, the body runs each time.
    let reads = src.reads();
    token(cache, &src, 0).await.unwrap();
    token(cache, &src, 0).await.unwrap();
    assert_eq!(src.reads(), reads + 2);
    assert_eq!(ttl(0).await, None);
    // An error is never stored, whatever ttl_from would say.
    src.fail(true);
    assert!(token(cache, &src, 7_000).await.is_err());
    assert_eq!(ttl(7_000).await, None);
    src.fail(false);
    // The short one expires on its own time, the long one stays.
    wait(short + 100).await;
    assert_eq!(ttl(short).await, None);
    let reads = src.reads();
    assert_eq!(token(cache, &src, long).await.unwrap().value, 1);
    assert_eq!(
        src.reads(),
        reads,
        "{kind:?}: the long-lived value is a hit"
    );
    // A None keeps none_ttl (5 s); values their own.
    assert_eq!(maybe(cache, &src, 0).await, None);
    let got = cache.ttl(&maybe_cache_key(&0)).await.unwrap().unwrap();
    assert!(got <= Duration::from_secs(5) && got > Duration::from_secs(4));
    assert_eq!(maybe(cache, &src, 60_000).await, Some(60_000));
    let got = cache.ttl(&maybe_cache_key(&60_000)).await.unwrap().unwrap();
    assert!(got <= Duration::from_secs(60) && got > Duration::from_secs(59));
}

#[tokio::test]
async fn ttl_from_sets_each_value_s_ttl_on_memory() {
    let test = TestCache::new();
    let wait = async |ms| test.advance(Duration::from_millis(ms));
    per_value(Kind::Memory, test.cache(), wait).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_from_sets_each_value_s_ttl_on_redis() {
    let builder = Cache::builder()
        .namespace("expiry-ttl-from")
        .timeout(Duration::from_secs(2));
    let cache = on(Kind::Redis, builder).build().await.unwrap();
    let wait = async |ms| tokio::time::sleep(Duration::from_millis(ms)).await;
    per_value(Kind::Redis, &cache, wait).await;
}

// ----- sliding expiry ------------------------------------------------------

#[cached(prefix = "slide", key = "{id}", ttl = std::time::Duration::from_millis(1000), sliding, cache = cache)]
async fn session(cache: &Cache, src: &Src, id: u64) -> Result<u64, String> {
    let _ = id;
    src.read().await
}

#[cached(prefix = "fixed", key = "{id}", ttl = std::time::Duration::from_millis(1000), cache = cache)]
async fn fixed(cache: &Cache, src: &Src, id: u64) -> Result<u64, String> {
    let _ = id;
    src.read().await
}

/// Sliding with a per-value TTL: a hit restarts the value's own TTL.
#[cached(prefix = "slidetok", key = "{user}", ttl = 3600, ttl_from = good_for, sliding, cache = cache)]
async fn sliding_token(cache: &Cache, src: &Src, user: u64) -> Result<Token, String> {
    let value = src.read().await?;
    Ok(Token {
        value,
        good_for_ms: user,
    })
}

/// Sliding `None`s keep `none_ttl`.
#[cached(
    prefix = "slidenone",
    key = "{id}",
    ttl = 3600,
    cache_none,
    none_ttl = 2,
    sliding,
    cache = cache
)]
async fn sliding_none(cache: &Cache, src: &Src, id: u64) -> Option<u64> {
    src.read().await.ok().filter(|_| id > 0)
}

/// The TTL `key` has left, once a hit's restart (in the background) landed:
/// waits until it is above `above` ms.
async fn restarted(cache: &Cache, key: &str, above: u64) {
    eventually("the hit restarted the TTL", async || {
        cache
            .ttl(key)
            .await
            .unwrap()
            .is_some_and(|t| t.as_millis() as u64 > above)
    })
    .await;
}

/// A hit restarts a sliding value's TTL, so a value read more often than
/// its TTL lives on; unread, it expires; without `sliding` (opt-in) reads
/// don't extend anything. Sliding restarts the TTL the value was stored
/// with: its own (`ttl_from`), `none_ttl` for a `None`.
async fn slides(kind: Kind, cache: &Cache, wait: impl AsyncFn(u64)) {
    let src = Src::new(1);
    session(cache, &src, 1).await.unwrap();
    fixed(cache, &src, 1).await.unwrap();
    let reads = src.reads();
    for _ in 0..4 {
        wait(600).await;
        session(cache, &src, 1).await.unwrap();
        restarted(cache, &session_cache_key(&1), 800).await;
    }
    // 2.4 s after it was stored, 1 s TTL: alive, never reloaded.
    assert_eq!(src.reads(), reads, "{kind:?}: every read was a hit");
    assert!(
        fixed(cache, &src, 1).await.is_ok() && src.reads() == reads + 1,
        "{kind:?}: without sliding the value expired"
    );
    // Unread for longer than its TTL: gone.
    wait(1100).await;
    assert_eq!(cache.ttl(&session_cache_key(&1)).await.unwrap(), None);
    session(cache, &src, 1).await.unwrap();
    assert_eq!(src.reads(), reads + 2, "{kind:?}: reloaded after expiry");

    // Its own TTL: 1.5 s, restarted to 1.5 s (not to `ttl`, 3600 s).
    sliding_token(cache, &src, 1500).await.unwrap();
    wait(500).await;
    sliding_token(cache, &src, 1500).await.unwrap();
    let key = sliding_token_cache_key(&1500);
    restarted(cache, &key, 1200).await;
    let left = cache.ttl(&key).await.unwrap().unwrap();
    assert!(left <= Duration::from_millis(1500), "{kind:?}: {left:?}");
    // A None: restarted to none_ttl (2 s).
    assert_eq!(sliding_none(cache, &src, 0).await, None);
    wait(500).await;
    assert_eq!(sliding_none(cache, &src, 0).await, None);
    let key = sliding_none_cache_key(&0);
    restarted(cache, &key, 1700).await;
    let left = cache.ttl(&key).await.unwrap().unwrap();
    assert!(left <= Duration::from_secs(2), "{kind:?}: {left:?}");
}

#[tokio::test]
async fn sliding_restarts_the_ttl_on_memory() {
    let test = TestCache::new();
    let wait = async |ms| test.advance(Duration::from_millis(ms));
    slides(Kind::Memory, test.cache(), wait).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_restarts_the_ttl_on_redis() {
    for near in [false, true] {
        let builder = Cache::builder()
            .namespace(format!("expiry-sliding-{near}"))
            .timeout(Duration::from_secs(2));
        let builder = if near {
            builder.near_cache(100)
        } else {
            builder
        };
        let cache = on(Kind::Redis, builder).build().await.unwrap();
        let wait = async |ms| tokio::time::sleep(Duration::from_millis(ms)).await;
        slides(Kind::Redis, &cache, wait).await;
    }
}
