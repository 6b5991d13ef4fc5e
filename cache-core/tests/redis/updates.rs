//! `#[updates(f(args))]` (write-through) on memory, a redis-server and a
//! 3-master cluster: the `Ok` value an update returns replaces the entry
//! of the `#[cached]` function (the next call is a hit on it, no load); an
//! `Err` drops the entry; a load of the key that started before the update
//! (and read the old row) cannot store its older value afterwards; another
//! instance's near cache drops its copy and reads the new value; without a
//! cache the update runs and nothing else does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Kind, on};
use cache_core::{Cache, Outcome, cached, updates, with_outcome};
use tokio::sync::Notify;

static NS: AtomicUsize = AtomicUsize::new(0);

async fn cache_named(kind: Kind, ns: &str, near: bool) -> Cache {
    let b = Cache::builder()
        .namespace(ns)
        .timeout(Duration::from_secs(2));
    let b = if near { b.near_cache(1_000) } else { b };
    on(kind, b).build().await.unwrap()
}

async fn cache(kind: Kind) -> Cache {
    let ns = format!("up{}", NS.fetch_add(1, Ordering::Relaxed));
    cache_named(kind, &ns, false).await
}

/// A row of the "database", with a way to hold one load halfway.
#[derive(Default)]
struct Db {
    value: AtomicU64,
    loads: AtomicUsize,
    /// The next load stops after reading, until `gate` is notified.
    hold: AtomicBool,
    entered: Notify,
    gate: Notify,
}

impl Db {
    fn new(value: u64) -> Arc<Db> {
        let db = Db::default();
        db.value.store(value, Ordering::SeqCst);
        Arc::new(db)
    }
}

#[cached(prefix = "up_item", key = "{id}", cache = cache, ttl = 600)]
async fn get_item(cache: &Cache, db: &Db, id: u64) -> Result<u64, String> {
    let _ = id;
    db.loads.fetch_add(1, Ordering::SeqCst);
    let value = db.value.load(Ordering::SeqCst);
    if db.hold.swap(false, Ordering::SeqCst) {
        db.entered.notify_one();
        db.gate.notified().await;
    }
    Ok(value)
}

/// Writes `value` (or fails, for `u64::MAX`, after writing nothing) and
/// returns what is now stored.
#[updates(get_item(cache, db, id))]
async fn set_item(cache: &Cache, db: &Db, id: u64, value: u64) -> Result<u64, String> {
    let _ = id;
    if value == u64::MAX {
        return Err("refused".to_owned());
    }
    db.value.store(value, Ordering::SeqCst);
    Ok(value)
}

async fn an_update_replaces_the_entry(kind: Kind) {
    let cache = cache(kind).await;
    let db = Db::new(1);
    assert_eq!(get_item(&cache, &db, 7).await, Ok(1));
    assert_eq!(set_item(&cache, &db, 7, 2).await, Ok(2));
    let (read, outcome) = with_outcome(get_item(&cache, &db, 7)).await;
    assert_eq!(read, Ok(2), "{kind:?}: the updated value");
    assert!(
        matches!(outcome, Outcome::Hit),
        "{kind:?}: a hit: {outcome:?}"
    );
    assert_eq!(db.loads.load(Ordering::SeqCst), 1, "{kind:?}: no reload");
    // The stored entry is the function's: its key and TTL.
    let ttl = cache.ttl(&get_item_cache_key(&7)).await.unwrap().unwrap();
    assert!(
        ttl > Duration::from_secs(500),
        "{kind:?}: the function's TTL, {ttl:?}"
    );

    // An `Err` drops the entry: the next call loads.
    assert_eq!(
        set_item(&cache, &db, 7, u64::MAX).await,
        Err("refused".to_owned())
    );
    assert!(
        !cache.exists(&get_item_cache_key(&7)).await.unwrap(),
        "{kind:?}"
    );
    assert_eq!(get_item(&cache, &db, 7).await, Ok(2));
    assert_eq!(
        db.loads.load(Ordering::SeqCst),
        2,
        "{kind:?}: loaded after the Err"
    );

    // An update of an entry nobody read yet stores it.
    assert_eq!(set_item(&cache, &db, 8, 5).await, Ok(5));
    assert_eq!(get_item(&cache, &db, 8).await, Ok(5));
    assert_eq!(
        db.loads.load(Ordering::SeqCst),
        2,
        "{kind:?}: stored by the update"
    );
}

#[tokio::test]
async fn an_update_replaces_the_entry_on_memory() {
    an_update_replaces_the_entry(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_replaces_the_entry_on_redis() {
    an_update_replaces_the_entry(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_replaces_the_entry_on_a_cluster() {
    an_update_replaces_the_entry(Kind::Cluster).await;
}

/// A load reads the old row and stalls; the update writes the row and
/// stores the new value; then the load finishes. Its caller gets what it
/// read, but the entry keeps the update's value.
async fn a_slower_load_cannot_overwrite_an_update(kind: Kind) {
    let cache = cache(kind).await;
    let db = Db::new(1);
    db.hold.store(true, Ordering::SeqCst);
    let slow = {
        let (cache, db) = (cache.clone(), db.clone());
        tokio::spawn(async move { get_item(&cache, &db, 9).await })
    };
    db.entered.notified().await; // it read 1 and holds the key's lease
    assert_eq!(set_item(&cache, &db, 9, 2).await, Ok(2));
    db.gate.notify_one();
    assert_eq!(
        slow.await.unwrap(),
        Ok(1),
        "the slow caller gets its own read"
    );
    assert_eq!(
        cache.get::<u64>(&get_item_cache_key(&9)).await.unwrap(),
        Some(2),
        "{kind:?}: the older load did not overwrite the update"
    );
    assert_eq!(get_item(&cache, &db, 9).await, Ok(2), "{kind:?}");
    assert_eq!(
        db.loads.load(Ordering::SeqCst),
        1,
        "{kind:?}: no load after the update"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slower_load_cannot_overwrite_an_update_on_memory() {
    a_slower_load_cannot_overwrite_an_update(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slower_load_cannot_overwrite_an_update_on_redis() {
    a_slower_load_cannot_overwrite_an_update(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slower_load_cannot_overwrite_an_update_on_a_cluster() {
    a_slower_load_cannot_overwrite_an_update(Kind::Cluster).await;
}

/// Instance B holds the value in its near cache; A updates it. B drops its
/// copy (Redis' tracking message) and reads the new value from Redis,
/// without a load.
async fn another_instance_reads_the_updated_value(kind: Kind) {
    let ns = format!("up{}", NS.fetch_add(1, Ordering::Relaxed));
    let a = cache_named(kind, &ns, true).await;
    let b = cache_named(kind, &ns, true).await;
    for cache in [&a, &b] {
        let started = Instant::now();
        while cache.health().await.tracking != Some(true) {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "tracking not live"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let db = Db::new(1);
    assert_eq!(get_item(&a, &db, 3).await, Ok(1));
    // B reads until its near level answers.
    let started = Instant::now();
    loop {
        let before = b.stats().total.near_hits;
        assert_eq!(get_item(&b, &db, 3).await, Ok(1));
        if b.stats().total.near_hits > before {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "B's near level never answered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    assert_eq!(set_item(&a, &db, 3, 2).await, Ok(2));
    assert_eq!(get_item(&a, &db, 3).await, Ok(2), "{kind:?}: A at once");
    let returned = Instant::now();
    loop {
        let seen = get_item(&b, &db, 3).await;
        if seen == Ok(2) {
            break;
        }
        assert!(
            returned.elapsed() < Duration::from_millis(200),
            "{kind:?}: B still read {seen:?} 200 ms after the update"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        db.loads.load(Ordering::SeqCst),
        1,
        "{kind:?}: B read the stored value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_reads_the_updated_value_on_redis() {
    another_instance_reads_the_updated_value(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_reads_the_updated_value_on_a_cluster() {
    another_instance_reads_the_updated_value(Kind::Cluster).await;
}

#[cached(prefix = "up_plain", key = "{id}")]
async fn plain_item(db: &Db, id: u64) -> Result<u64, String> {
    let _ = id;
    db.loads.fetch_add(1, Ordering::SeqCst);
    Ok(db.value.load(Ordering::SeqCst))
}

#[updates(plain_item(db, id))]
async fn set_plain(db: &Db, id: u64, value: u64) -> Result<u64, String> {
    let _ = id;
    db.value.store(value, Ordering::SeqCst);
    Ok(value)
}

/// Without any cache the update runs, and the named function's body does
/// not (it would be a read for nothing).
#[tokio::test]
async fn without_a_cache_only_the_update_runs() {
    let db = Db::new(1);
    assert_eq!(set_plain(&db, 1, 4).await, Ok(4));
    assert_eq!(db.value.load(Ordering::SeqCst), 4);
    assert_eq!(db.loads.load(Ordering::SeqCst), 0);
    // With the installed-for-a-scope cache: stored.
    let cache = Cache::memory();
    cache
        .scope(async {
            assert_eq!(set_plain(&db, 1, 5).await, Ok(5));
            assert_eq!(plain_item(&db, 1).await, Ok(5));
        })
        .await;
    assert_eq!(db.loads.load(Ordering::SeqCst), 0);
}

struct Repo {
    cache: Cache,
    db: Arc<Db>,
}

impl Repo {
    #[cached(prefix = "up_repo", key = "{id}", cache = self.cache)]
    async fn item(&self, id: u64) -> Result<u64, String> {
        let _ = id;
        self.db.loads.fetch_add(1, Ordering::SeqCst);
        Ok(self.db.value.load(Ordering::SeqCst))
    }

    #[updates(Self::item(self, id))]
    async fn set(&self, id: u64, value: u64) -> Result<u64, String> {
        let _ = id;
        self.db.value.store(value, Ordering::SeqCst);
        Ok(value)
    }
}

/// A method names another method through `Self::`.
#[tokio::test]
async fn a_method_updates_a_cached_method() {
    let repo = Repo {
        cache: Cache::memory(),
        db: Db::new(1),
    };
    assert_eq!(repo.item(2).await, Ok(1));
    assert_eq!(repo.set(2, 3).await, Ok(3));
    assert_eq!(repo.item(2).await, Ok(3));
    assert_eq!(repo.db.loads.load(Ordering::SeqCst), 1);
}
