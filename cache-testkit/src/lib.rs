//! Test kit for `cache-core`.
//!
//! - [`TestCache`]: a real `cache_core::Cache` over an in-process backend
//!   with a manual clock (advance it to expire TTLs instantly), an operation
//!   log to assert on (hits, misses, sets, deletes per key and per prefix)
//!   and fault injection (fail, delay or drop the next calls, go down and
//!   come back, plant garbage bytes). No Redis needed.
//! - [`RedisServer`]: an ephemeral, real `redis-server` on a free loopback
//!   port (no persistence, killed on drop) with `stop`/`restart`/`pause`/
//!   `resume` for fault tests.
//! - [`RedisCluster`]: a local Redis Cluster of `n` real masters, with
//!   replicas on request ([`RedisCluster::start_with_replicas`]): kill a
//!   master and wait for its replica's promotion.
//! - [`RedisSentinel`]: a primary, its replica and three real
//!   `redis-sentinel`s watching it; force a failover, or stop the primary.
//! - [`Postgres`]: a throwaway PostgreSQL cluster on a free loopback port.
//! - [`TcpProxy`]: a loopback TCP proxy in front of any of them that can
//!   cut its clients off (reset and refuse, or a silent blackhole) and
//!   restore them, while the server carries on.
//!
//! The Redis fixtures need `redis-server` and `redis-cli` on `PATH`
//! (`apt-get install -y redis-server`), [`RedisSentinel`] also
//! `redis-sentinel` (`apt-get install -y redis-sentinel`), [`Postgres`] the
//! `postgresql` package; `TestCache` and [`TcpProxy`] need nothing. Every
//! fixture listens on `127.0.0.1` only, is synchronous (usable from plain
//! `#[test]`s and `#[tokio::test]`s) and kills its processes on drop; see
//! [Fixtures for integration tests](#fixtures-for-integration-tests).
//!
//! # Testing your cached code
//!
//! The crates are not published: depend on a checkout of this repository
//! by path (here next to your service, in `../cache-rs`), with the kit as a
//! dev-dependency next to `tokio` (with the `macros` and `rt` features):
//!
//! ```toml
//! [dependencies]
//! cache-core = { path = "../cache-rs/cache-core" }
//!
//! [dev-dependencies]
//! cache-testkit = { path = "../cache-rs/cache-testkit" }
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! ```
//!
//! The examples below use this repository code. In your own tests each
//! `async fn` is a `#[tokio::test]`; here a hidden `main` runs them.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use cache_core::{cached, invalidates};
//!
//! #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! pub struct Customer { pub id: u64, pub name: String }
//!
//! /// Stands in for the database; counts how often it is really asked.
//! #[derive(Default)]
//! pub struct Db { pub loads: AtomicUsize }
//!
//! impl Db {
//!     #[cached(prefix = "customer", ttl = 3600, key = "{id}")]
//!     pub async fn customer(&self, id: u64) -> Result<Customer, String> {
//!         self.loads.fetch_add(1, Ordering::SeqCst);
//!         Ok(Customer { id, name: "Ada".into() })
//!     }
//!
//!     #[invalidates("customer:{customer.id}")]
//!     pub async fn save(&self, customer: &Customer) -> Result<(), String> {
//!         let _ = customer; // write to the database here
//!         Ok(())
//!     }
//! }
//! # fn main() {}
//! ```
//!
//! ## Swap in the test backend, assert hits and misses
//!
//! [`TestCache::scope`] makes the test cache the current cache of the test's
//! task, for `#[cached]` and `#[invalidates]`, without touching the
//! process-wide one ([`Cache::install`](cache_core::Cache::install)). Every
//! test builds its own `TestCache`, so tests run in parallel and their counts
//! never mix.
//!
//! ```
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! # use cache_core::cached;
//! # #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! # pub struct Customer { pub id: u64, pub name: String }
//! # #[derive(Default)] pub struct Db { pub loads: AtomicUsize }
//! # impl Db {
//! #     #[cached(prefix = "customer", ttl = 3600, key = "{id}")]
//! #     pub async fn customer(&self, id: u64) -> Result<Customer, String> {
//! #         self.loads.fetch_add(1, Ordering::SeqCst);
//! #         Ok(Customer { id, name: "Ada".into() })
//! #     }
//! # }
//! use cache_testkit::TestCache;
//!
//! // #[tokio::test]
//! async fn second_read_comes_from_the_cache() {
//!     let test = TestCache::new();
//!     let db = Db::default();
//!     test.scope(async {
//!         let first = db.customer(42).await.unwrap();
//!         let second = db.customer(42).await.unwrap();
//!         assert_eq!(first, second);
//!     })
//!     .await;
//!     assert_eq!(db.loads.load(Ordering::SeqCst), 1);
//!     test.key("customer:42")
//!         .assert_misses(1) // first call: read, miss, load, store
//!         .assert_sets(1)
//!         .assert_hits(1); // second call
//!     test.prefix("customer").assert_hits(1);
//!     // The cache's own figures agree.
//!     assert_eq!(test.stats().prefixes["customer"].hits, 1);
//! }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() { second_read_comes_from_the_cache().await }
//! ```
//!
//! [`TestCache::key`] and [`TestCache::prefix`] give a [`LogView`]: the same
//! counts (`test.prefix("customer").misses()`) and chainable assertions
//! (`test.key("customer:42").assert_hits(1)`) for every kind of event: hits,
//! misses, sets, deletes, invalidations, pattern deletes
//! (`test.key("search:*").assert_pattern_deletes(1)`) and injected failures.
//!
//! A failed assertion prints what the backend saw for that key:
//!
//! ```text
//! TestCache: expected 2 hit(s) for key "customer:42", found 1
//! backend operations on key "customer:42":
//!   #1 get customer:42 -> miss
//!   #2 try_lease customer:42 -> lease acquired
//!   #3 set_if_lease customer:42 -> stored under lease, ttl 3600s
//!   #4 get customer:42 -> hit (bytes found)
//! ```
//!
//! ## Advance time to expire entries
//!
//! The backend's clock only moves when the test says so: no sleeping, no
//! flakiness. [`TestCache::remaining_ttl`] shows the TTL your code chose.
//!
//! ```
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! # use cache_core::cached;
//! # #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! # pub struct Customer { pub id: u64, pub name: String }
//! # #[derive(Default)] pub struct Db { pub loads: AtomicUsize }
//! # impl Db {
//! #     #[cached(prefix = "customer", ttl = 3600, key = "{id}")]
//! #     pub async fn customer(&self, id: u64) -> Result<Customer, String> {
//! #         self.loads.fetch_add(1, Ordering::SeqCst);
//! #         Ok(Customer { id, name: "Ada".into() })
//! #     }
//! # }
//! use std::time::Duration;
//! use cache_testkit::TestCache;
//!
//! // #[tokio::test]
//! async fn entries_expire_after_an_hour() {
//!     let test = TestCache::new();
//!     let db = Db::default();
//!     test.scope(async {
//!         db.customer(42).await.unwrap();
//!         assert_eq!(test.remaining_ttl("customer:42"), Some(Duration::from_secs(3600)));
//!
//!         test.advance(Duration::from_secs(3599));
//!         db.customer(42).await.unwrap(); // still cached
//!         assert_eq!(db.loads.load(Ordering::SeqCst), 1);
//!
//!         test.advance(Duration::from_secs(1)); // the hour is over
//!         db.customer(42).await.unwrap(); // loaded again
//!         assert_eq!(db.loads.load(Ordering::SeqCst), 2);
//!     })
//!     .await;
//!     test.key("customer:42").assert_misses(2).assert_hits(1);
//! }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() { entries_expire_after_an_hour().await }
//! ```
//!
//! ## Check invalidation
//!
//! ```
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! # use cache_core::{cached, invalidates};
//! # #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! # pub struct Customer { pub id: u64, pub name: String }
//! # #[derive(Default)] pub struct Db { pub loads: AtomicUsize }
//! # impl Db {
//! #     #[cached(prefix = "customer", ttl = 3600, key = "{id}")]
//! #     pub async fn customer(&self, id: u64) -> Result<Customer, String> {
//! #         self.loads.fetch_add(1, Ordering::SeqCst);
//! #         Ok(Customer { id, name: "Ada".into() })
//! #     }
//! #     #[invalidates("customer:{customer.id}")]
//! #     pub async fn save(&self, customer: &Customer) -> Result<(), String> { let _ = customer; Ok(()) }
//! # }
//! use cache_testkit::TestCache;
//!
//! // #[tokio::test]
//! async fn saving_drops_the_cached_customer() {
//!     let test = TestCache::new();
//!     let db = Db::default();
//!     test.scope(async {
//!         let customer = db.customer(42).await.unwrap();
//!         db.save(&customer).await.unwrap();
//!         assert!(!test.contains("customer:42"));
//!         db.customer(42).await.unwrap(); // reloaded
//!     })
//!     .await;
//!     test.key("customer:42").assert_deletes(1).assert_misses(2);
//!     assert_eq!(db.loads.load(Ordering::SeqCst), 2);
//! }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() { saving_drops_the_cached_customer().await }
//! ```
//!
//! ## Inject failures: your function still answers
//!
//! The test backend sits behind the cache's real resilience layer (timeout,
//! circuit breaker, in-memory fallback), so an injected fault takes the same
//! path as a Redis outage. The cache never turns a backend failure into an
//! error of your function: it loads from the source and counts the failure
//! in [`Cache::stats`](cache_core::Cache::stats).
//!
//! ```
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! # use cache_core::cached;
//! # #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! # pub struct Customer { pub id: u64, pub name: String }
//! # #[derive(Default)] pub struct Db { pub loads: AtomicUsize }
//! # impl Db {
//! #     #[cached(prefix = "customer", ttl = 3600, key = "{id}")]
//! #     pub async fn customer(&self, id: u64) -> Result<Customer, String> {
//! #         self.loads.fetch_add(1, Ordering::SeqCst);
//! #         Ok(Customer { id, name: "Ada".into() })
//! #     }
//! # }
//! use std::time::Duration;
//! use cache_testkit::TestCache;
//!
//! // #[tokio::test]
//! async fn a_broken_cache_does_not_break_the_service() {
//!     let test = TestCache::new();
//!     let db = Db::default();
//!     test.scope(async {
//!         // The cache's read fails: the function loads and answers anyway.
//!         test.fail_next(1);
//!         assert_eq!(db.customer(1).await.unwrap().id, 1);
//!
//!         // Redis hangs: each call is cut off by the timeout (50 ms here).
//!         test.drop_next(1);
//!         assert_eq!(db.customer(2).await.unwrap().id, 2);
//!
//!         // Another program wrote bytes we can't decode: a miss, overwritten.
//!         test.put_raw("customer:3", b"{\"legacy\":true}".to_vec());
//!         assert_eq!(db.customer(3).await.unwrap().id, 3);
//!
//!         // Redis is gone altogether: read, lease and store fail (3 errors,
//!         // which opens the circuit breaker); the value is kept in the
//!         // in-memory fallback meanwhile.
//!         test.go_down();
//!         assert_eq!(db.customer(4).await.unwrap().id, 4);
//!         assert_eq!(db.customer(4).await.unwrap().id, 4); // from the fallback
//!         test.come_back();
//!     })
//!     .await;
//!     assert_eq!(db.loads.load(Ordering::SeqCst), 4);
//!     let stats = test.stats();
//!     assert_eq!(stats.total.errors["timeout"], 1);
//!     assert_eq!(stats.total.errors["connection"], 1 + 3);
//!     assert_eq!(stats.total.errors["circuit_open"], 1);
//!     assert_eq!(stats.total.decode_failures, 1);
//!     assert_eq!(stats.total.fallback_hits, 1);
//!     test.key("customer:1").assert_failures(1);
//!     test.key("customer:4").assert_failures(3);
//! }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() { a_broken_cache_does_not_break_the_service().await }
//! ```
//!
//! Faults count **backend calls**, not calls of your function: a `#[cached]`
//! miss makes three (read, `try_lease`, `set_if_lease`; plus
//! `release_lease` when nothing gets stored, e.g. an `Err` result), a hit
//! one. Three consecutive failures (the default of
//! [`TestCache::builder`]'s `circuit_breaker`) open the breaker; while it is
//! open calls skip the backend (counted as `circuit_open` errors, not
//! logged) and the fallback answers; it probes again after its cooldown,
//! which is **real** time (1 s by default; set a short one for recovery
//! tests).
//!
//! ## Running tests in parallel
//!
//! - One `TestCache` per test, used through [`TestCache::scope`] (or passed
//!   as `#[cached(cache = ...)]`); never `install()` it.
//! - The scope belongs to the task: wrap spawned tasks in
//!   `test.scope(...)` too.
//! - A [`TestCache::another_instance`] shares the store, clock and log but
//!   has its own `Cache`: two service instances on one Redis.
//!
//! # Fixtures for integration tests
//!
//! Each fixture starts real processes on free loopback ports (below the
//! kernel's ephemeral range) in a temporary directory of its own, and
//! removes both on drop. They start in well under three seconds.
//!
//! A Redis server, and a proxy that partitions one client from it:
//!
//! ```no_run
//! use std::time::Duration;
//! use cache_testkit::{RedisServer, TcpProxy};
//!
//! let redis = RedisServer::start();
//! let proxy = TcpProxy::start(redis.addr());
//! let client = redis::Client::open(proxy.url_for(&redis.url())).unwrap();
//! let mut conn = client.get_connection().unwrap();
//! let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut conn).unwrap();
//!
//! proxy.blackhole(); // a silent partition: requests time out
//! conn.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
//! assert!(redis::cmd("GET").arg("k").query::<String>(&mut conn).is_err());
//!
//! proxy.cut(); // connections reset, new ones refused
//! proxy.restore(); // reachable again
//! let mut conn = client.get_connection().unwrap();
//! let v: String = redis::cmd("GET").arg("k").query(&mut conn).unwrap();
//! assert_eq!(v, "v");
//! ```
//!
//! Redis Sentinel, with a forced failover:
//!
//! ```no_run
//! let sentinel = cache_testkit::RedisSentinel::start(); // monitors "mymaster"
//! let urls = sentinel.sentinel_urls(); // redis://127.0.0.1:<port> x 3
//! let old = sentinel.primary_addr();
//! let new = sentinel.failover(); // returns once the old primary replicates the new one
//! assert_ne!(old, new);
//! # drop(urls);
//! ```
//!
//! PostgreSQL (`initdb` runs as an unprivileged user when the tests run as
//! root):
//!
//! ```no_run
//! let pg = cache_testkit::Postgres::start();
//! let url = pg.url(); // postgres://postgres@127.0.0.1:<port>/postgres
//! let out = std::process::Command::new("psql")
//!     .args([url.as_str(), "-Atc", "select 1"])
//!     .output()
//!     .unwrap();
//! assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
//! ```

mod cluster;
mod ports;
mod postgres;
mod process;
mod redis_server;
mod sentinel;
mod tcp_proxy;
mod test_cache;
mod view;

pub use cluster::RedisCluster;
pub use postgres::Postgres;
pub use redis_server::RedisServer;
pub use sentinel::{RedisSentinel, SentinelBuilder};
pub use tcp_proxy::TcpProxy;
pub use test_cache::{
    BACKEND_NAME, Fault, LogEntry, Method, Op, TestCache, TestCacheBuilder, test_config,
};
pub use view::LogView;
