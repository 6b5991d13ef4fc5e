//! Every form of `#[invalidates]`.
use cache_core::{Cache, invalidates};

pub struct Customer {
    pub id: u64,
    pub tags: (String, u8),
}

#[invalidates("customer:{customer.id}", "churn:{customer.id}")]
async fn update(customer: &Customer) -> Result<(), String> {
    let _ = customer;
    Ok(())
}

#[invalidates(prefix = "search")]
async fn reindex() {}

#[invalidates("tag:{customer.tags.0}:{customer.tags.1}", prefix = "search", prefix = "query", cache = cache)]
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
            with_mut(&mut Vec::new(), 1).await;
        })
        .await;
    let c = retag(&cache, Customer { id: 2, tags: ("a".into(), 1) }).await;
    assert_eq!(c.id, 2);
}
