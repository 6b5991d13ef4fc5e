//! Behaviour of `#[invalidates]`: after Ok, after Err, after cancellation,
//! escaped template values, prefixes, methods and `#[async_trait]` impls.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_core::{Cache, cached, invalidates};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

static LOADS: AtomicUsize = AtomicUsize::new(0);

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Customer {
    id: u64,
    name: String,
}

#[cached(prefix = "customer", key = "{id}")]
async fn get_customer(id: u64) -> Result<Customer, String> {
    LOADS.fetch_add(1, SeqCst);
    Ok(Customer {
        id,
        name: format!("customer {id}"),
    })
}

#[invalidates("customer:{customer.id}")]
async fn update_customer(customer: &Customer, fail: bool) -> Result<(), String> {
    if fail {
        Err(format!("could not save {}", customer.id))
    } else {
        Ok(())
    }
}

async fn is_cached(cache: &Cache, key: &str) -> bool {
    cache.exists(key).await.unwrap()
}

#[tokio::test]
async fn invalidates_after_ok_and_after_err() {
    let cache = Cache::memory();
    cache
        .scope(async {
            let c = get_customer(1).await.unwrap();
            assert!(is_cached(&cache, "customer:1").await);
            assert_eq!(update_customer(&c, false).await, Ok(()));
            assert!(
                !is_cached(&cache, "customer:1").await,
                "invalidated after Ok"
            );

            get_customer(1).await.unwrap();
            assert!(is_cached(&cache, "customer:1").await);
            assert_eq!(
                update_customer(&c, true).await,
                Err("could not save 1".to_owned()),
                "the result passes through"
            );
            assert!(
                !is_cached(&cache, "customer:1").await,
                "invalidated after Err"
            );
            let loads = LOADS.load(SeqCst);
            get_customer(1).await.unwrap();
            assert_eq!(LOADS.load(SeqCst), loads + 1, "the next read misses");
        })
        .await;
}

// ---------------------------------------------------------------- cancellation

#[invalidates("slow:{id}", cache = cache)]
async fn slow_write(cache: &Cache, id: u64, started: Arc<Notify>) -> u64 {
    started.notify_one();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    id
}

#[tokio::test]
async fn invalidates_when_dropped_after_the_body_started() {
    let cache = Cache::memory();
    cache.set("slow:5", &1u32, None).await.unwrap();
    cache.set("slow:6", &1u32, None).await.unwrap();
    let started = Arc::new(Notify::new());

    let write = slow_write(&cache, 5, started.clone());
    tokio::select! {
        _ = write => unreachable!("the write never finishes"),
        () = started.notified() => {}
    }
    // `write` is dropped here, mid-body: the guard spawns the invalidation.
    let mut gone = false;
    for _ in 0..100 {
        if !is_cached(&cache, "slow:5").await {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "the key is invalidated after cancellation");

    // Dropped before it was ever polled: the body never started, nothing to do.
    drop(slow_write(&cache, 6, started.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(is_cached(&cache, "slow:6").await);
}

// ---------------------------------------------------------------- escaping

static SEARCH_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(prefix = "name", key = "{name}")]
async fn by_name(name: &str) -> Option<String> {
    SEARCH_LOADS.fetch_add(1, SeqCst);
    Some(name.to_uppercase())
}

#[invalidates("name:{name}")]
async fn rename(name: &str) {
    let _ = name;
}

#[tokio::test]
async fn an_argument_holding_a_star_invalidates_only_its_own_key() {
    let cache = Cache::memory();
    cache
        .scope(async {
            for name in ["*", "a", "b", "a*", "[ab]", "?"] {
                by_name(name).await;
            }
            rename("*").await;
            assert!(!is_cached(&cache, &by_name_cache_key("*")).await);
            for name in ["a", "b", "a*", "[ab]", "?"] {
                assert!(
                    is_cached(&cache, &by_name_cache_key(name)).await,
                    "{name} kept"
                );
            }
            rename("[ab]").await;
            rename("?").await;
            assert!(is_cached(&cache, &by_name_cache_key("a")).await);
            assert!(is_cached(&cache, &by_name_cache_key("b")).await);
            assert!(!is_cached(&cache, &by_name_cache_key("[ab]")).await);
            assert!(!is_cached(&cache, &by_name_cache_key("?")).await);
        })
        .await;
}

// ---------------------------------------------------------------- prefixes, several at once

#[cached(prefix = "search", skip(_db))]
async fn search(_db: &(), q: &str) -> Vec<String> {
    vec![q.to_owned()]
}

#[cached(prefix = "query", key = "{segment}")]
async fn query(segment: &str) -> Vec<String> {
    vec![segment.to_owned()]
}

#[invalidates("customer:{id}", "churn:{id}", prefix = SEARCH_CACHE_PREFIX, prefix = QUERY_CACHE_PREFIX)]
async fn save(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[tokio::test]
async fn several_keys_and_prefixes_at_once() {
    let cache = Cache::memory();
    cache
        .scope(async {
            get_customer(9).await.unwrap();
            get_customer(10).await.unwrap();
            cache.set("churn:9", &0.5f64, None).await.unwrap();
            search(&(), "a").await;
            search(&(), "b").await;
            query("vip").await;
            assert_eq!(save(9).await, Ok(9));
        })
        .await;
    assert!(!is_cached(&cache, "customer:9").await);
    assert!(!is_cached(&cache, "churn:9").await);
    assert!(is_cached(&cache, "customer:10").await, "other keys stay");
    assert!(!is_cached(&cache, &search_cache_key("a")).await);
    assert!(!is_cached(&cache, &search_cache_key("b")).await);
    assert!(!is_cached(&cache, "query:vip").await);
}

// ---------------------------------------------------------------- methods, async_trait

struct Repo {
    cache: Cache,
    id: u64,
}

impl Repo {
    #[cached(prefix = "repo", key = "{id}", cache = self.cache)]
    async fn load(&self, id: u64) -> Option<u64> {
        Some(id + self.id)
    }

    #[invalidates("repo:{self.id}", "repo:{other}", cache = self.cache)]
    async fn touch(&self, other: u64) -> Result<(), String> {
        Err(format!("{other}"))
    }
}

#[async_trait::async_trait]
trait Writer {
    async fn write(&self, id: u64) -> Result<(), String>;
}

#[async_trait::async_trait]
impl Writer for Repo {
    #[invalidates("repo:{id}", cache = self.cache)]
    async fn write(&self, id: u64) -> Result<(), String> {
        if id == 0 {
            return Err("zero".to_owned());
        }
        Ok(())
    }
}

#[tokio::test]
async fn methods_and_async_trait_impls_invalidate() {
    let cache = Cache::memory();
    let repo = Repo {
        cache: cache.clone(),
        id: 1,
    };
    for id in 1..=4 {
        repo.load(id).await;
    }
    assert!(repo.touch(3).await.is_err());
    assert!(!is_cached(&cache, "repo:1").await, "{{self.id}}");
    assert!(!is_cached(&cache, "repo:3").await);
    assert!(is_cached(&cache, "repo:2").await);

    let writer: &dyn Writer = &repo;
    writer.write(2).await.unwrap();
    assert!(!is_cached(&cache, "repo:2").await);
    repo.load(2).await;
    writer.write(0).await.unwrap_err();
    assert!(is_cached(&cache, "repo:2").await);
    assert!(is_cached(&cache, "repo:4").await);
}

#[cached(prefix = "vers", key = "{id}", version = 2)]
async fn versioned(id: u64) -> u64 {
    id
}

#[invalidates("vers:v2:{id}")]
async fn bump(id: u64) {
    let _ = id;
}

#[tokio::test]
async fn versioned_keys_are_invalidated_with_their_version() {
    let cache = Cache::memory();
    cache
        .scope(async {
            versioned(1).await;
            assert!(is_cached(&cache, &versioned_cache_key(&1)).await);
            bump(1).await;
            assert!(!is_cached(&cache, &versioned_cache_key(&1)).await);
        })
        .await;
}

#[tokio::test]
async fn invalidation_records_stats() {
    let cache = Cache::memory();
    cache
        .scope(async {
            get_customer(77).await.unwrap();
            update_customer(
                &Customer {
                    id: 77,
                    name: String::new(),
                },
                false,
            )
            .await
            .unwrap();
        })
        .await;
    assert!(cache.stats().prefixes["customer"].invalidations >= 1);
}

// ---------------------------------------------------------------- by function

#[cached(prefix = "by_fn_order", key = "{tenant}:{id}")]
async fn by_fn_order(tenant: &str, id: u64) -> Option<u64> {
    Some(id + tenant.len() as u64)
}

#[cached(prefix = "by_fn_list")]
async fn by_fn_list(tenant: String, page: u32) -> Vec<u32> {
    let _ = tenant;
    vec![page]
}

/// One entry of `by_fn_order` (its companion computes the key) and every
/// entry of `by_fn_list` (its prefix).
#[invalidates(by_fn_order(tenant, order_id), by_fn_list(..))]
async fn by_fn_write(tenant: &str, order_id: u64) {}

struct Views;

impl Views {
    #[cached(prefix = "by_fn_view", key = "{id}")]
    async fn view<T: Default + Serialize + serde::de::DeserializeOwned>(&self, id: u64) -> T {
        let _ = id;
        T::default()
    }

    #[invalidates(Self::view(..))]
    async fn drop_all_views(&self) {}
}

#[tokio::test]
async fn invalidation_by_function_reference() {
    let cache = Cache::memory();
    cache
        .scope(async {
            by_fn_order("acme", 1).await;
            by_fn_order("acme", 2).await;
            by_fn_list("acme".to_owned(), 1).await;
            by_fn_list("other".to_owned(), 2).await;
            by_fn_write("acme", 1).await;
        })
        .await;
    assert!(!is_cached(&cache, &by_fn_order_cache_key("acme", &1)).await);
    assert!(is_cached(&cache, &by_fn_order_cache_key("acme", &2)).await);
    assert!(!is_cached(&cache, &by_fn_list_cache_key(&"acme".to_owned(), &1)).await);
    assert!(!is_cached(&cache, &by_fn_list_cache_key(&"other".to_owned(), &2)).await);
    assert_eq!(BY_FN_LIST_CACHE_PREFIX, "by_fn_list");

    // `..` on a generic method: every instantiation (one prefix).
    let views = Views;
    cache
        .scope(async {
            let _: u8 = views.view(1).await;
            let _: String = views.view(1).await;
            views.drop_all_views().await;
        })
        .await;
    assert!(!is_cached(&cache, &Views::view_cache_key::<u8>(&1)).await);
    assert!(!is_cached(&cache, &Views::view_cache_key::<String>(&1)).await);
    assert_eq!(Views::VIEW_CACHE_PREFIX, "by_fn_view");
}
