//! `invalidate_prefix` over many keys, by SCAN + UNLINK and with prefix
//! generations.

use std::time::{Duration, Instant};

use cache_core::Cache;
use redis::aio::MultiplexedConnection;

use crate::measure::Rounds;
use crate::payload::{BASE_ID, Customer, customer};

/// Keys filled for the prefix-invalidation case.
pub(crate) const INVALIDATE_KEYS: usize = 100_000;

/// Stores [`INVALIDATE_KEYS`] values under the prefix `inv` (`set_many`
/// batches); returns how long that took, in milliseconds.
pub(crate) async fn fill_invalidate_keys(cache: &Cache) -> f64 {
    let value = customer(BASE_ID);
    let fill_start = Instant::now();
    let keys: Vec<String> = (0..INVALIDATE_KEYS).map(|k| format!("inv:{k}")).collect();
    for chunk in keys.chunks(2000) {
        let entries: Vec<(&str, &Customer)> = chunk.iter().map(|k| (k.as_str(), &value)).collect();
        cache
            .set_many(&entries, Some(Duration::from_secs(600)))
            .await
            .expect("set_many");
    }
    fill_start.elapsed().as_secs_f64() * 1000.0
}

/// Fills 100k keys under one prefix (set_many batches), then times
/// `invalidate_prefix` (SCAN + UNLINK).
pub(crate) async fn invalidate_prefix(
    rounds: &mut Rounds,
    cache: &Cache,
    raw: &mut MultiplexedConnection,
) {
    let fill_ms = fill_invalidate_keys(cache).await;
    let start = Instant::now();
    let deleted = cache
        .invalidate_prefix("inv")
        .await
        .expect("invalidate_prefix");
    let elapsed = start.elapsed();
    // Every key of the prefix must be gone (counted with a SCAN of our own).
    let pattern = format!("{}:inv:*", cache.namespace());
    let mut cursor = 0u64;
    let mut left = 0usize;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(raw)
            .await
            .expect("SCAN");
        left += keys.len();
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    if deleted != INVALIDATE_KEYS as u64 || left != 0 {
        eprintln!(
            "invalidate_prefix: reported {deleted} deleted (expected {INVALIDATE_KEYS}), {left} keys left"
        );
        rounds.errors += 1;
    }
    record_invalidation(rounds, deleted as f64, elapsed, fill_ms);
}

/// One round of an invalidation case: keys per second, and the times.
pub(crate) fn record_invalidation(rounds: &mut Rounds, keys: f64, elapsed: Duration, fill_ms: f64) {
    let secs = elapsed.as_secs_f64();
    rounds.ops_per_s.push(keys / secs);
    rounds.push_extra("invalidate_ms", secs * 1000.0);
    rounds.push_extra("fill_ms", fill_ms);
    rounds.push_extra("keys", keys);
}

/// `invalidate_prefix` with prefix generations on: one write replaces the
/// prefix's generation; the 100k values stay until their TTL but are no
/// longer visible (checked on a sample).
pub(crate) async fn invalidate_prefix_generations(rounds: &mut Rounds, cache: &Cache) {
    let fill_ms = fill_invalidate_keys(cache).await;
    let visible_before = cache.get::<Customer>("inv:0").await.expect("get").is_some();
    let start = Instant::now();
    cache
        .invalidate_prefix("inv")
        .await
        .expect("invalidate_prefix");
    let elapsed = start.elapsed();
    let mut still_visible = 0;
    for k in (0..INVALIDATE_KEYS).step_by(997) {
        if cache
            .get::<Customer>(&format!("inv:{k}"))
            .await
            .expect("get")
            .is_some()
        {
            still_visible += 1;
        }
    }
    if !visible_before || still_visible != 0 {
        eprintln!(
            "invalidate_prefix (generations): visible before {visible_before}, {still_visible} sampled keys still visible"
        );
        rounds.errors += 1;
    }
    record_invalidation(rounds, INVALIDATE_KEYS as f64, elapsed, fill_ms);
}
