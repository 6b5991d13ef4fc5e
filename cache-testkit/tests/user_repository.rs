//! A repository with `#[cached]` / `#[invalidates]` functions, tested the way
//! a user of the framework would test it: with a `TestCache` in scope, the
//! clock advanced instead of sleeping, hits and misses asserted, failures
//! injected.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_core::{cached, invalidates};
use cache_testkit::TestCache;
use serde::{Deserialize, Serialize};

// ----- the code under test ---------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Customer {
    id: u64,
    name: String,
    email: String,
}

#[derive(Debug, PartialEq)]
enum DbError {
    NotFound(u64),
    Unavailable,
}

/// A fake database that counts how often each query really runs.
#[derive(Default)]
struct Db {
    rows: std::sync::Mutex<HashMap<u64, Customer>>,
    customer_loads: AtomicUsize,
    email_loads: AtomicUsize,
    search_loads: AtomicUsize,
    fail: std::sync::atomic::AtomicBool,
}

impl Db {
    fn with_customers(ids: &[u64]) -> Self {
        let db = Db::default();
        for &id in ids {
            db.rows.lock().unwrap().insert(
                id,
                Customer {
                    id,
                    name: format!("customer {id}"),
                    email: format!("c{id}@example.com"),
                },
            );
        }
        db
    }
}

struct CustomerRepository {
    db: Db,
}

impl CustomerRepository {
    #[cached(prefix = "customer", ttl = 3600, key = "{id}")]
    async fn get_customer(&self, id: u64) -> Result<Customer, DbError> {
        self.db.customer_loads.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        if self.db.fail.load(Ordering::SeqCst) {
            return Err(DbError::Unavailable);
        }
        self.db
            .rows
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .ok_or(DbError::NotFound(id))
    }

    #[cached(
        prefix = "email",
        ttl = 600,
        key = "{email}",
        cache_none,
        none_ttl = 60
    )]
    async fn find_by_email(&self, email: &str) -> Option<Customer> {
        self.db.email_loads.fetch_add(1, Ordering::SeqCst);
        self.db
            .rows
            .lock()
            .unwrap()
            .values()
            .find(|c| c.email == email)
            .cloned()
    }

    #[cached(prefix = "search", ttl = 300)]
    async fn search(&self, query: &str, page: u32) -> Vec<u64> {
        self.db.search_loads.fetch_add(1, Ordering::SeqCst);
        let mut ids: Vec<u64> = self
            .db
            .rows
            .lock()
            .unwrap()
            .values()
            .filter(|c| c.name.contains(query))
            .map(|c| c.id)
            .collect();
        ids.sort();
        ids.into_iter().skip(page as usize * 10).take(10).collect()
    }

    #[invalidates("customer:{customer.id}")]
    async fn update_customer(&self, customer: &Customer) -> Result<(), DbError> {
        if self.db.fail.load(Ordering::SeqCst) {
            return Err(DbError::Unavailable);
        }
        self.db
            .rows
            .lock()
            .unwrap()
            .insert(customer.id, customer.clone());
        Ok(())
    }

    #[invalidates(Self::search(..))]
    async fn reindex(&self) {}
}

fn repo() -> CustomerRepository {
    CustomerRepository {
        db: Db::with_customers(&[1, 2, 3, 42]),
    }
}

fn loads(counter: &AtomicUsize) -> usize {
    counter.load(Ordering::SeqCst)
}

// ----- the tests -------------------------------------------------------------

#[tokio::test]
async fn second_call_is_a_hit_and_skips_the_database() {
    let test = TestCache::new();
    let repo = repo();
    test.scope(async {
        let first = repo.get_customer(42).await.unwrap();
        let second = repo.get_customer(42).await.unwrap();
        assert_eq!(first, second);
    })
    .await;
    assert_eq!(loads(&repo.db.customer_loads), 1);
    test.key("customer:42").assert_misses(1);
    test.key("customer:42").assert_sets(1);
    test.key("customer:42").assert_hits(1);
    assert_eq!(
        CustomerRepository::get_customer_cache_key(&42),
        "customer:42"
    );
    let stats = test.stats();
    assert_eq!(stats.prefixes["customer"].hits, 1);
    assert_eq!(stats.prefixes["customer"].misses, 1);
    assert_eq!(stats.prefixes["customer"].loads, 1);
}

#[tokio::test]
async fn entries_expire_after_their_ttl_when_the_clock_advances() {
    let test = TestCache::new();
    let repo = repo();
    test.scope(async {
        repo.get_customer(1).await.unwrap();
        assert_eq!(
            test.remaining_ttl("customer:1"),
            Some(Duration::from_secs(3600))
        );
        test.advance(Duration::from_secs(3599));
        repo.get_customer(1).await.unwrap();
        assert_eq!(loads(&repo.db.customer_loads), 1, "still cached");
        test.advance(Duration::from_secs(1));
        repo.get_customer(1).await.unwrap();
        assert_eq!(loads(&repo.db.customer_loads), 2, "expired, reloaded");
    })
    .await;
    test.key("customer:1").assert_misses(2);
    test.key("customer:1").assert_hits(1);
    test.key("customer:1").assert_sets(2);
}

#[tokio::test]
async fn errors_are_returned_and_never_cached() {
    let test = TestCache::new();
    let repo = repo();
    test.scope(async {
        assert_eq!(repo.get_customer(999).await, Err(DbError::NotFound(999)));
        assert_eq!(repo.get_customer(999).await, Err(DbError::NotFound(999)));
    })
    .await;
    assert_eq!(loads(&repo.db.customer_loads), 2);
    test.key("customer:999").assert_sets(0);
    test.key("customer:999").assert_misses(2);
    assert!(!test.contains("customer:999"), "no lease left behind");
}

#[tokio::test]
async fn none_is_cached_with_its_own_ttl() {
    let test = TestCache::new();
    let repo = repo();
    test.scope(async {
        assert_eq!(repo.find_by_email("nobody@example.com").await, None);
        assert_eq!(repo.find_by_email("nobody@example.com").await, None);
        assert_eq!(
            repo.find_by_email("c2@example.com").await.map(|c| c.id),
            Some(2)
        );
    })
    .await;
    assert_eq!(loads(&repo.db.email_loads), 2);
    let nobody = CustomerRepository::find_by_email_cache_key("nobody@example.com");
    let two = CustomerRepository::find_by_email_cache_key("c2@example.com");
    test.key(&nobody).assert_hits(1);
    assert_eq!(test.remaining_ttl(&nobody), Some(Duration::from_secs(60)));
    assert_eq!(test.remaining_ttl(&two), Some(Duration::from_secs(600)));

    // The negative entry goes away after its minute.
    test.advance(Duration::from_secs(60));
    assert!(!test.contains(&nobody));
    assert!(test.contains(&two));
}

#[tokio::test]
async fn update_invalidates_the_customer_key() {
    let test = TestCache::new();
    let repo = repo();
    test.scope(async {
        let mut customer = repo.get_customer(3).await.unwrap();
        customer.name = "renamed".into();
        repo.update_customer(&customer).await.unwrap();
        assert_eq!(repo.get_customer(3).await.unwrap().name, "renamed");
    })
    .await;
    assert_eq!(loads(&repo.db.customer_loads), 2);
    test.key("customer:3").assert_deletes(1);
    test.key("customer:3").assert_misses(2);
    test.key("customer:3").assert_hits(0);
    assert_eq!(test.stats().prefixes["customer"].invalidations, 1);
}

#[tokio::test]
async fn a_failed_update_still_invalidates() {
    let test = TestCache::new();
    let repo = repo();
    test.scope(async {
        let customer = repo.get_customer(3).await.unwrap();
        repo.db.fail.store(true, Ordering::SeqCst);
        assert_eq!(
            repo.update_customer(&customer).await,
            Err(DbError::Unavailable)
        );
    })
    .await;
    test.key("customer:3").assert_deletes(1);
    assert!(!test.contains("customer:3"));
}

#[tokio::test]
async fn reindex_drops_every_search_key() {
    let test = TestCache::new();
    let repo = repo();
    test.scope(async {
        assert_eq!(repo.search("customer", 0).await, vec![1, 2, 3, 42]);
        assert_eq!(repo.search("4", 0).await, vec![42]);
        repo.search("customer", 0).await;
        repo.get_customer(1).await.unwrap();
        repo.reindex().await;
        repo.search("customer", 0).await;
    })
    .await;
    assert_eq!(loads(&repo.db.search_loads), 3);
    test.prefix("search").assert_hits(1);
    test.prefix("search").assert_misses(3);
    assert_eq!(test.key("search:*").pattern_deletes(), 1);
    // The hashed keys are stable: 32 hex digits after the prefix.
    let key = CustomerRepository::search_cache_key("customer", &0);
    assert!(
        key.starts_with("search:") && key.len() == "search:".len() + 32,
        "{key}"
    );
    test.key(&key).assert_invalidations(1);
    test.key(&key).assert_hits(1);
    assert!(test.contains("customer:1"), "other prefixes untouched");
}

#[tokio::test]
async fn an_injected_failure_does_not_reach_the_caller() {
    let test = TestCache::new();
    let repo = repo();
    test.scope(async {
        // The read of a cached value fails: the lease attempt finds the key
        // present, so the cache re-reads it instead of reloading.
        repo.get_customer(1).await.unwrap();
        test.fail_next(1);
        assert_eq!(repo.get_customer(1).await.unwrap().id, 1);
        assert_eq!(loads(&repo.db.customer_loads), 1);

        // The read and the lease of a miss fail: the value still comes back.
        // The lease was taken in the in-memory fallback, so the store, which
        // reaches the backend again, finds no lease there and is skipped:
        // one more miss later, never a value an invalidation missed.
        test.fail_next(2);
        assert_eq!(repo.get_customer(2).await.unwrap().id, 2);

        // A hanging cache costs one timeout per backend call, then answers.
        test.drop_next(1);
        assert_eq!(repo.get_customer(3).await.unwrap().id, 3);
    })
    .await;
    assert_eq!(loads(&repo.db.customer_loads), 3);
    test.key("customer:1").assert_failures(1);
    test.key("customer:1").assert_hits(1);
    test.key("customer:2").assert_failures(2);
    test.key("customer:2").assert_sets(0);
    test.key("customer:3").assert_failures(1);
    let stats = test.stats();
    assert_eq!(stats.total.errors["timeout"], 1);
    assert_eq!(stats.total.errors["connection"], 3);
    assert_eq!(stats.circuit, cache_core::CircuitState::Closed);
}

#[tokio::test]
async fn while_the_cache_is_down_the_service_keeps_answering() {
    let test = TestCache::builder()
        .circuit_breaker(3, Duration::from_millis(60))
        .build();
    let repo = repo();
    test.scope(async {
        repo.get_customer(42).await.unwrap(); // cached before the outage
        test.go_down();
        for _ in 0..5 {
            assert_eq!(repo.get_customer(42).await.unwrap().id, 42);
            assert_eq!(repo.get_customer(1).await.unwrap().id, 1);
        }
        // An update during the outage must not leave stale data behind.
        let mut renamed = repo.get_customer(42).await.unwrap();
        renamed.name = "renamed during the outage".into();
        repo.update_customer(&renamed).await.unwrap();

        test.come_back();
        tokio::time::sleep(Duration::from_millis(90)).await;
        assert_eq!(
            repo.get_customer(42).await.unwrap().name,
            "renamed during the outage"
        );
    })
    .await;
    let stats = test.stats();
    assert!(stats.total.errors["circuit_open"] > 0);
    assert_eq!(stats.circuit, cache_core::CircuitState::Closed);
    // After recovery the value is cached again.
    test.clear_log();
    test.scope(repo.get_customer(42)).await.unwrap();
    test.key("customer:42").assert_hits(1);
}

#[tokio::test]
async fn garbage_in_the_cache_is_reloaded_and_overwritten() {
    let test = TestCache::new();
    let repo = repo();
    test.put_raw("customer:2", b"{\"id\":2,\"legacy\":true}".to_vec());
    let customer = test.scope(repo.get_customer(2)).await.unwrap();
    assert_eq!(customer.id, 2);
    assert_eq!(test.stats().total.decode_failures, 1);
    assert_eq!(loads(&repo.db.customer_loads), 1);
    // Now it is a proper cached value.
    test.clear_log();
    test.scope(repo.get_customer(2)).await.unwrap();
    assert_eq!(loads(&repo.db.customer_loads), 1);
    test.key("customer:2").assert_hits(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_load_once() {
    let test = TestCache::new();
    let repo = Arc::new(repo());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (test, repo) = (test.clone(), repo.clone());
        // A scope belongs to its task: each spawned task is scoped.
        tasks.spawn(async move { test.scope(repo.get_customer(42)).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap().id, 42);
    }
    assert_eq!(loads(&repo.db.customer_loads), 1);
    test.key("customer:42").assert_sets(1);
    let stats = test.stats();
    assert_eq!(stats.prefixes["customer"].loads, 1);
    assert_eq!(
        stats.prefixes["customer"].hits + stats.prefixes["customer"].misses,
        16
    );
}

#[tokio::test]
async fn outside_a_scope_nothing_is_cached_here() {
    // No scope and nothing installed in this test binary: the body just runs.
    let test = TestCache::new();
    let repo = repo();
    repo.get_customer(1).await.unwrap();
    repo.get_customer(1).await.unwrap();
    assert_eq!(loads(&repo.db.customer_loads), 2);
    assert!(test.log().is_empty());
}
