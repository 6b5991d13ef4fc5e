//! Every `#[cached]` argument together.
use std::time::Duration;

use cache_core::{Cache, cached};

fn until_midnight() -> Duration {
    Duration::from_secs(3600)
}

#[cached(
    prefix = "customer",
    ttl = until_midnight(),
    key = "{id}:{region}",
    cache_none,
    none_ttl = 30,
    unless = result.is_some_and(|v| v == 0),
    cache = cache,
    version = 2,
    near = false,
    crate = ::cache_core,
)]
async fn get_customer(cache: &Cache, id: u64, region: &str) -> Option<u64> {
    (!region.is_empty()).then_some(id)
}

#[cached(prefix = "search", ttl = 600, skip(cache), no_companions)]
async fn search(cache: Cache, q: &str, page: u32) -> Vec<String> {
    let _ = cache;
    vec![format!("{q}#{page}")]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cache = Cache::memory();
    assert_eq!(get_customer(&cache, 1, "eu").await, Some(1));
    assert_eq!(get_customer(&cache, 1, "eu").await, Some(1));
    assert_eq!(get_customer_cache_key(&1, "eu"), "customer:v2:1:eu");
    assert_eq!(search(cache.clone(), "q", 1).await, ["q#1"]);
    assert_eq!(cache.stats().prefixes["customer"].hits, 1);
}
