//! A prefix may be written as a string, as the quick start shows; the path
//! form (`SEARCH_CACHE_PREFIX`) and `search(..)` are checked by the compiler.
use cache_core::{Cache, cached, invalidates};

#[cached(prefix = "search", ttl = 600)]
async fn search(q: &str) -> Vec<String> {
    vec![q.to_owned()]
}

#[invalidates(prefix = "search")]
async fn reindex() {}

#[invalidates(prefix = SEARCH_CACHE_PREFIX, "customer:{id}")]
async fn reindex_checked(id: u64) {
    let _ = id;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cache = Cache::memory();
    cache
        .scope(async {
            let key = search_cache_key("a");
            search("a").await;
            assert!(cache.exists(&key).await.unwrap());
            reindex().await;
            assert!(!cache.exists(&key).await.unwrap());
            search("a").await;
            reindex_checked(1).await;
            assert!(!cache.exists(&key).await.unwrap());
        })
        .await;
}
