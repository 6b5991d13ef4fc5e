//! Every form of `#[invalidates]`.
use cache_core::{Cache, cached, invalidates};

pub struct Customer {
    pub id: u64,
    pub tags: (String, u8),
}

#[invalidates("customer:{customer.id}", "churn:{customer.id}")]
async fn update(customer: &Customer) -> Result<(), String> {
    let _ = customer;
    Ok(())
}

#[cached(prefix = "search")]
async fn search(q: &str) -> Vec<String> {
    vec![q.to_owned()]
}

/// A prefix no `#[cached]` function here declares.
const QUERY: &str = "query";

#[invalidates(prefix = SEARCH_CACHE_PREFIX)]
async fn reindex() {}

#[invalidates(search(..))]
async fn reindex_by_function() {}

#[invalidates("tag:{customer.tags.0}:{customer.tags.1}", prefix = SEARCH_CACHE_PREFIX, prefix = QUERY, cache = cache)]
async fn retag(cache: &Cache, customer: Customer) -> Customer {
    customer
}

#[invalidates("buf:{{raw}}:{n}")]
async fn with_mut(buf: &mut Vec<u8>, n: usize) -> usize {
    buf.push(1);
    n
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cache = Cache::memory();
    cache
        .scope(async {
            update(&Customer { id: 1, tags: (String::new(), 0) }).await.unwrap();
            reindex().await;
            reindex_by_function().await;
            assert_eq!(search("a").await, vec!["a".to_owned()]);
            with_mut(&mut Vec::new(), 1).await;
        })
        .await;
    let c = retag(&cache, Customer { id: 2, tags: ("a".into(), 1) }).await;
    assert_eq!(c.id, 2);
}
