//! Loader timeouts. `soft_timeout`: with a stale value at hand, a call
//! waits that long for the load, then answers with the stale value while
//! the load finishes in the background and stores its result under the
//! lease (renewed meanwhile, so a slow load keeps it); an invalidation
//! during that background load still wins. `hard_timeout`: a call never
//! waits longer; it answers with the stale value if there is one, else
//! with `Err(E::from(LoadTimedOut))`. Memory, Redis and a cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Kind, on};
use cache_core::{Cache, LoadTimedOut, Outcome, cached, with_outcome};

#[derive(Debug, PartialEq)]
enum ReadError {
    TimedOut(String),
}

impl From<LoadTimedOut> for ReadError {
    fn from(e: LoadTimedOut) -> Self {
        ReadError::TimedOut(e.key().to_owned())
    }
}

/// A slow "database": each read takes `delay` and counts.
#[derive(Clone)]
struct Slow {
    value: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
    reads: Arc<AtomicUsize>,
}

impl Slow {
    fn new(value: u64) -> Slow {
        Slow {
            value: Arc::new(AtomicU64::new(value)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            reads: Arc::new(AtomicUsize::new(0)),
        }
    }

    async fn read(&self) -> u64 {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        self.value.load(Ordering::SeqCst)
    }

    fn set(&self, value: u64, delay_ms: u64) {
        self.value.store(value, Ordering::SeqCst);
        self.delay_ms.store(delay_ms, Ordering::SeqCst);
    }
}

#[cached(
    prefix = "soft",
    key = "{id}",
    ttl = std::time::Duration::from_millis(1000),
    fail_safe = 3600,
    soft_timeout = std::time::Duration::from_millis(50),
    cache = cache
)]
async fn soft_read(cache: &Cache, db: &Slow, id: u64) -> Result<u64, ReadError> {
    let _ = id;
    Ok(db.read().await)
}

#[cached(
    prefix = "hard",
    key = "{id}",
    ttl = std::time::Duration::from_millis(300),
    fail_safe = 3600,
    hard_timeout = std::time::Duration::from_millis(100),
    cache = cache
)]
async fn hard_read(cache: &Cache, db: &Slow, id: u64) -> Result<u64, ReadError> {
    let _ = id;
    Ok(db.read().await)
}

async fn build(kind: Kind, what: &str) -> Cache {
    let namespace = format!("to-{kind:?}-{what}-{}", std::process::id()).to_lowercase();
    on(kind, Cache::builder())
        .namespace(namespace)
        .timeout(Duration::from_secs(2))
        .lease_ttl(Duration::from_millis(200))
        .build()
        .await
        .unwrap()
}

async fn soft_timeout(kind: Kind) {
    let cache = build(kind, "soft").await;
    let db = Slow::new(1);
    assert_eq!(soft_read(&cache, &db, 1).await, Ok(1));
    tokio::time::sleep(Duration::from_millis(1050)).await;
    // Stale now; the reload takes 600 ms (three lease TTLs).
    db.set(2, 600);
    let started = Instant::now();
    assert_eq!(
        with_outcome(soft_read(&cache, &db, 1)).await,
        (Ok(1), Outcome::Stale),
        "{kind:?}: the stale value at the soft timeout"
    );
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{kind:?}: answered at the soft timeout"
    );
    // The load goes on in the background and stores its value.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(db.reads.load(Ordering::SeqCst), 2, "{kind:?}: one reload");
    assert_eq!(
        with_outcome(soft_read(&cache, &db, 1)).await,
        (Ok(2), Outcome::Hit)
    );
    assert_eq!(cache.stats().prefixes["soft"].soft_timeouts, 1);

    // Without a stale value the soft timeout does not apply: the call waits.
    db.set(3, 200);
    let started = Instant::now();
    assert_eq!(soft_read(&cache, &db, 2).await, Ok(3));
    assert!(started.elapsed() >= Duration::from_millis(200));

    // An invalidation during the background load wins.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    db.set(4, 400);
    assert_eq!(
        with_outcome(soft_read(&cache, &db, 2)).await,
        (Ok(3), Outcome::Stale)
    );
    cache.delete(&soft_read_cache_key(&2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        cache.get::<u64>(&soft_read_cache_key(&2)).await.unwrap(),
        None,
        "{kind:?}: the background load overtaken by the invalidation stored nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_timeout_answers_stale_and_finishes_in_the_background() {
    soft_timeout(Kind::Memory).await;
    soft_timeout(Kind::Redis).await;
    soft_timeout(Kind::Cluster).await;
}

async fn hard_timeout(kind: Kind) {
    let cache = build(kind, "hard").await;
    let db = Slow::new(1);
    // No stale value: the caller gets the error after the hard timeout.
    db.set(1, 500);
    let started = Instant::now();
    assert_eq!(
        hard_read(&cache, &db, 1).await,
        Err(ReadError::TimedOut("hard:1".to_owned())),
        "{kind:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{kind:?}: bounded"
    );
    assert_eq!(
        cache.get::<u64>(&hard_read_cache_key(&1)).await.unwrap(),
        None
    );
    // A fast load is stored; once stale, a slow reload answers stale.
    db.set(1, 0);
    assert_eq!(hard_read(&cache, &db, 1).await, Ok(1));
    tokio::time::sleep(Duration::from_millis(350)).await;
    db.set(2, 500);
    let started = Instant::now();
    assert_eq!(
        with_outcome(hard_read(&cache, &db, 1)).await,
        (Ok(1), Outcome::Stale),
        "{kind:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(400));
    let stats = &cache.stats().prefixes["hard"];
    assert_eq!(
        (stats.hard_timeouts, stats.fail_safe_activations),
        (2, 1),
        "{kind:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_timeout_answers_stale_or_an_error() {
    hard_timeout(Kind::Memory).await;
    hard_timeout(Kind::Redis).await;
    hard_timeout(Kind::Cluster).await;
}

/// Another caller of the same key waits at most its own hard timeout for
/// the load in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_waiting_for_another_load_is_bounded_too() {
    let cache = build(Kind::Redis, "wait").await;
    let other = build(Kind::Redis, "wait").await;
    let db = Slow::new(1);
    db.set(1, 600);
    let leader = {
        let (cache, db) = (cache.clone(), db.clone());
        tokio::spawn(async move { hard_read(&cache, &db, 9).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    let waited = hard_read(&other, &db, 9).await;
    assert!(started.elapsed() < Duration::from_millis(400));
    assert_eq!(waited, Err(ReadError::TimedOut("hard:9".to_owned())));
    assert!(leader.await.unwrap().is_err());
}
