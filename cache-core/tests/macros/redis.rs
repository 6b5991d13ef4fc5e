//! The macros against a real `redis-server`: stored key format, escaping
//! under Redis' own glob matching, prefix invalidation, single-flight with
//! leases, cancellation, negative caching TTLs.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cache_core::{Cache, cached, invalidates};
use cache_testkit::RedisServer;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

static SERVER: OnceLock<RedisServer> = OnceLock::new();
static NAMESPACE: AtomicUsize = AtomicUsize::new(0);

fn server() -> &'static RedisServer {
    SERVER.get_or_init(RedisServer::start)
}

/// A Redis-backed cache in a namespace of its own.
async fn redis_cache() -> Cache {
    let ns = format!("mr{}", NAMESPACE.fetch_add(1, SeqCst));
    Cache::builder()
        .redis_url(server().url())
        .namespace(ns)
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap()
}

/// The value keys in Redis matching `pattern`, sorted (the cache's own keys,
/// `{namespace}:%gen:{prefix}` and the run marker `{namespace}:%run`, left
/// out).
async fn redis_keys(pattern: &str) -> Vec<String> {
    let mut conn = server()
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.retain(|k| !k.contains(":%gen:") && !k.ends_with(":%run"));
    keys.sort();
    keys
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Customer {
    id: u64,
    name: String,
}

static CUSTOMER_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(prefix = "customer", ttl = 3600, key = "{id}")]
async fn get_customer(id: u64) -> Result<Customer, String> {
    CUSTOMER_LOADS.fetch_add(1, SeqCst);
    if id == 0 {
        return Err("no customer 0".to_owned());
    }
    Ok(Customer {
        id,
        name: format!("c{id}"),
    })
}

#[invalidates("customer:{customer.id}")]
async fn update_customer(customer: &Customer, fail: bool) -> Result<(), String> {
    if fail {
        Err("write failed".to_owned())
    } else {
        Ok(())
    }
}

#[tokio::test]
async fn results_are_stored_under_namespace_prefix_key_and_errors_never() {
    let cache = redis_cache().await;
    let ns = cache.namespace().to_owned();
    cache
        .scope(async {
            let c = get_customer(42).await.unwrap();
            assert_eq!(get_customer(42).await.unwrap(), c);
            assert!(get_customer(0).await.is_err());
            assert!(get_customer(0).await.is_err());
            assert_eq!(CUSTOMER_LOADS.load(SeqCst), 3);
            assert_eq!(
                redis_keys(&format!("{ns}:*")).await,
                [format!("{ns}:customer:42")]
            );

            update_customer(&c, true).await.unwrap_err();
            assert!(redis_keys(&format!("{ns}:*")).await.is_empty(), "after Err");
            get_customer(42).await.unwrap();
            update_customer(&c, false).await.unwrap();
            assert!(redis_keys(&format!("{ns}:*")).await.is_empty(), "after Ok");
        })
        .await;
    let stats = &cache.stats().prefixes["customer"];
    assert_eq!(stats.hits, 1, "{stats:?}");
}

#[cached(prefix = "name", key = "{name}")]
async fn by_name(name: &str) -> Option<String> {
    Some(name.to_uppercase())
}

#[invalidates("name:{name}")]
async fn rename(name: &str) {
    let _ = name;
}

#[tokio::test]
async fn glob_characters_in_values_name_exactly_one_key_on_redis() {
    let cache = redis_cache().await;
    let ns = cache.namespace().to_owned();
    let names = ["*", "a", "ab", "a*", "[ab]", "?", "a:b", "100%"];
    cache
        .scope(async {
            for name in names {
                by_name(name).await;
            }
            assert_eq!(redis_keys(&format!("{ns}:name:*")).await.len(), names.len());
            rename("*").await;
            rename("[ab]").await;
            rename("?").await;
            rename("a:b").await;
        })
        .await;
    let left: Vec<String> = redis_keys(&format!("{ns}:name:*")).await;
    let expected: Vec<String> = {
        let mut v: Vec<String> = ["a", "ab", "a*", "100%"]
            .iter()
            .map(|n| cache.storage_key(&by_name_cache_key(n)))
            .collect();
        v.sort();
        v
    };
    assert_eq!(left, expected);
    assert!(left.contains(&format!("{ns}:name:a%2A")), "{left:?}");
}

#[cached(prefix = "search", skip(_db))]
async fn search(_db: &(), q: &str, page: u32) -> Vec<String> {
    vec![format!("{q}{page}")]
}

#[invalidates(prefix = "search")]
async fn reindex() {}

#[tokio::test]
async fn prefix_invalidation_drops_every_key_of_the_prefix() {
    let cache = redis_cache().await;
    cache
        .scope(async {
            for page in 0..20 {
                search(&(), "q", page).await;
            }
            by_name("keep").await;
            reindex().await;
            for page in 0..20 {
                assert!(!cache.exists(&search_cache_key("q", &page)).await.unwrap());
            }
            assert!(
                cache.exists("name:keep").await.unwrap(),
                "other prefixes stay"
            );
        })
        .await;
}

static FLIGHT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(prefix = "flight", key = "{id}", cache = cache)]
async fn flight(cache: Cache, id: u64) -> u64 {
    FLIGHT_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_callers_on_redis_run_the_body_once() {
    let cache = redis_cache().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let cache = cache.clone();
        tasks.spawn(flight(cache, 5));
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap(), 5);
    }
    assert_eq!(FLIGHT_RUNS.load(SeqCst), 1);
}

#[invalidates("slow:{id}", cache = cache)]
async fn slow_write(cache: &Cache, id: u64, started: Arc<Notify>) {
    started.notify_one();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let _ = id;
}

#[tokio::test]
async fn cancelled_write_still_invalidates_on_redis() {
    let cache = redis_cache().await;
    cache.set("slow:1", &1u8, None).await.unwrap();
    let started = Arc::new(Notify::new());
    tokio::select! {
        () = slow_write(&cache, 1, started.clone()) => unreachable!(),
        () = started.notified() => {}
    }
    for _ in 0..200 {
        if !cache.exists("slow:1").await.unwrap() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("slow:1 was not invalidated after the write was cancelled");
}

#[cached(
    prefix = "user",
    ttl = 3600,
    key = "{id}",
    cache_none,
    none_ttl = 20,
    version = 2
)]
async fn find_user(id: u64) -> Option<u64> {
    (id != 0).then_some(id)
}

#[tokio::test]
async fn negative_entries_get_none_ttl_on_redis() {
    let cache = redis_cache().await;
    cache
        .scope(async {
            assert_eq!(find_user(0).await, None);
            assert_eq!(find_user(0).await, None);
            assert_eq!(find_user(3).await, Some(3));
        })
        .await;
    assert_eq!(cache.stats().prefixes["user"].hits, 1);
    let none_ttl = cache.ttl("user:v2:0").await.unwrap().unwrap();
    let some_ttl = cache.ttl("user:v2:3").await.unwrap().unwrap();
    assert!(none_ttl <= Duration::from_secs(20), "{none_ttl:?}");
    assert!(some_ttl > Duration::from_secs(3500), "{some_ttl:?}");
}
