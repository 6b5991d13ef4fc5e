//! Tags (`#[cached(tags = [..])]`, `#[invalidates(tags = [..])]`,
//! `Cache::invalidate_tag`) on memory, a redis-server and a 3-master
//! cluster: a tag invalidation hides every value loaded under the tag and
//! nothing else, from every read API; it is one write of the tag's
//! generation however many values carry the tag (counted in the op log and
//! in the server's command statistics, never timed); on a cluster the
//! generation is a key of its own, on whichever master owns its slot.
//! Another instance's near cache following a tag invalidation is a row of
//! the promise matrix.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{CLUSTER, Kind, on};
use cache_core::{Cache, cached, invalidates};
use cache_testkit::{RedisServer, TestCache};

static NS: AtomicUsize = AtomicUsize::new(0);

fn namespace() -> String {
    format!("tg{}", NS.fetch_add(1, Ordering::Relaxed))
}

async fn cache(kind: Kind, near: bool) -> Cache {
    let b = Cache::builder()
        .namespace(namespace())
        .timeout(Duration::from_secs(2));
    let b = if near { b.near_cache(1_000) } else { b };
    on(kind, b).build().await.unwrap()
}

/// An order, loaded under its customer's tag and its segment's tag. Its
/// value is `id * 1000 +` the number of loads so far, so a reload shows.
#[cached(prefix = "tg_order", key = "{id}", cache = cache,
         tags = ["customer:{customer}", "segment:{segment}"])]
async fn order(cache: &Cache, loads: &AtomicUsize, id: u64, customer: u64, segment: &str) -> u64 {
    id * 1000 + loads.fetch_add(1, Ordering::SeqCst) as u64
}

/// A write to a customer: every value loaded under its tag goes.
#[invalidates(tags = ["customer:{customer}"], cache = cache)]
async fn update_customer(cache: &Cache, customer: u64) {}

/// A write to a segment.
#[invalidates(tags = ["segment:{segment}"], cache = cache)]
async fn update_segment(cache: &Cache, segment: &str) {}

async fn tags_hide_exactly_their_values(kind: Kind) {
    let cache = cache(kind, false).await;
    let loads = AtomicUsize::new(0);
    // Orders 1 and 2 of customer 7, order 3 of customer 8; all "gold".
    let first = [
        order(&cache, &loads, 1, 7, "gold").await,
        order(&cache, &loads, 2, 7, "gold").await,
        order(&cache, &loads, 3, 8, "gold").await,
    ];
    assert_eq!(loads.load(Ordering::SeqCst), 3);
    for (id, customer) in [(1, 7), (2, 7), (3, 8)] {
        let again = order(&cache, &loads, id, customer, "gold").await;
        assert_eq!(
            again,
            first[id as usize - 1],
            "{kind:?}: order {id} is a hit"
        );
    }
    assert_eq!(loads.load(Ordering::SeqCst), 3);

    // One customer's tag: its two orders reload, the other customer's not.
    cache.invalidate_tag("customer:7").await.unwrap();
    assert!(
        !cache.exists(&order_cache_key(&1)).await.unwrap(),
        "{kind:?}"
    );
    assert!(
        !cache.exists(&order_cache_key(&2)).await.unwrap(),
        "{kind:?}"
    );
    assert!(
        cache.exists(&order_cache_key(&3)).await.unwrap(),
        "{kind:?}"
    );
    let reloaded = order(&cache, &loads, 1, 7, "gold").await;
    assert_ne!(reloaded, first[0], "{kind:?}: order 1 reloaded");
    assert_eq!(order(&cache, &loads, 3, 8, "gold").await, first[2]);
    assert_eq!(
        loads.load(Ordering::SeqCst),
        4,
        "{kind:?}: only order 1 reloaded"
    );
    // The reloaded value carries the new generation: a hit again.
    assert_eq!(order(&cache, &loads, 1, 7, "gold").await, reloaded);

    // `#[invalidates(tags = ..)]`: the segment's tag drops all three.
    update_segment(&cache, "gold").await;
    for id in [1, 2, 3] {
        assert!(
            !cache.exists(&order_cache_key(&id)).await.unwrap(),
            "{kind:?}: order {id} after the segment's tag"
        );
    }
    update_customer(&cache, 8).await;
    let before = loads.load(Ordering::SeqCst);
    order(&cache, &loads, 3, 8, "gold").await;
    assert_eq!(loads.load(Ordering::SeqCst), before + 1, "{kind:?}");

    // A tag no value carries: nothing changes, no error.
    cache.invalidate_tag("customer:999").await.unwrap();
    assert!(
        cache.exists(&order_cache_key(&3)).await.unwrap(),
        "{kind:?}"
    );
}

#[tokio::test]
async fn tags_hide_exactly_their_values_on_memory() {
    tags_hide_exactly_their_values(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_hide_exactly_their_values_on_redis() {
    tags_hide_exactly_their_values(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_hide_exactly_their_values_on_a_cluster() {
    tags_hide_exactly_their_values(Kind::Cluster).await;
}

/// After a tag invalidation every read API misses the tagged value (and
/// the loaders run): `get`, `get_many`, `exists`, `ttl`, `get_or_set`, the
/// generated function; with and without a near cache.
async fn every_read_misses_after_a_tag_invalidation(kind: Kind, near: bool) {
    let cache = cache(kind, near).await;
    let loads = AtomicUsize::new(0);
    let stored = order(&cache, &loads, 5, 9, "silver").await;
    let key = order_cache_key(&5);
    assert_eq!(cache.get::<u64>(&key).await.unwrap(), Some(stored));
    assert_eq!(
        cache.get_many::<u64>(&[&key]).await.unwrap(),
        [Some(stored)]
    );
    assert!(cache.exists(&key).await.unwrap());
    assert!(cache.ttl(&key).await.unwrap().is_some());

    cache.invalidate_tag("customer:9").await.unwrap();
    let what = format!("{kind:?}, near {near}");
    assert_eq!(cache.get::<u64>(&key).await.unwrap(), None, "get, {what}");
    assert_eq!(
        cache.get_many::<u64>(&[&key]).await.unwrap(),
        [None],
        "get_many, {what}"
    );
    assert!(!cache.exists(&key).await.unwrap(), "exists, {what}");
    assert_eq!(cache.ttl(&key).await.unwrap(), None, "ttl, {what}");
    let loaded = cache
        .get_or_set(&key, None, || async { 42u64 })
        .await
        .unwrap();
    assert_eq!(loaded, 42, "get_or_set runs its loader, {what}");
    // `get_or_set` stored an untagged value; drop it the tagged way again:
    // the generated function must reload.
    update_segment(&cache, "silver").await;
    cache.delete(&key).await.unwrap();
    let reloaded = order(&cache, &loads, 5, 9, "silver").await;
    assert_ne!(reloaded, stored, "the generated function reloads, {what}");
    cache.invalidate_tag("segment:silver").await.unwrap();
    let again = order(&cache, &loads, 5, 9, "silver").await;
    assert_ne!(again, reloaded, "the generated function reloads, {what}");
    assert_eq!(loads.load(Ordering::SeqCst), 3, "{what}");
}

#[tokio::test]
async fn every_read_misses_after_a_tag_invalidation_on_memory() {
    every_read_misses_after_a_tag_invalidation(Kind::Memory, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_misses_after_a_tag_invalidation_on_redis() {
    every_read_misses_after_a_tag_invalidation(Kind::Redis, false).await;
    every_read_misses_after_a_tag_invalidation(Kind::Redis, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_misses_after_a_tag_invalidation_on_a_cluster() {
    every_read_misses_after_a_tag_invalidation(Kind::Cluster, false).await;
    every_read_misses_after_a_tag_invalidation(Kind::Cluster, true).await;
}

/// `MANY` values under one tag, one value under another, and one value
/// whose tags nothing invalidates.
const MANY: u64 = 300;

async fn load_many(cache: &Cache, loads: &AtomicUsize) {
    for id in 0..MANY {
        order(cache, loads, id, 1, "bulk").await;
    }
    order(cache, loads, MANY, 2, "single").await;
    order(cache, loads, MANY + 1, 3, "other").await;
}

/// On the test kit's backend: invalidating a tag that `MANY` values carry
/// logs exactly what invalidating a tag of one value logs: one write (the
/// tag's generation), no delete.
#[tokio::test]
async fn a_tag_invalidation_is_one_write_in_the_op_log() {
    let test = TestCache::new();
    let loads = AtomicUsize::new(0);
    load_many(test.cache(), &loads).await;

    let before = test.log().len();
    test.cache().invalidate_tag("segment:single").await.unwrap();
    let one: Vec<_> = test.log().split_off(before);
    let before = test.log().len();
    test.cache().invalidate_tag("segment:bulk").await.unwrap();
    let many: Vec<_> = test.log().split_off(before);

    assert_eq!(one.len(), 1, "one value's tag: {one:?}");
    assert_eq!(many.len(), 1, "{MANY} values' tag: one operation, {many:?}");
    assert!(many[0].is_set() && !many[0].is_delete(), "{many:?}");
    assert!(
        many[0].key.contains("%tag:segment:bulk"),
        "the tag's generation is written: {many:?}"
    );
    // Every value is still stored (until its TTL) and none is served.
    assert_eq!(
        test.keys()
            .iter()
            .filter(|k| k.contains("tg_order:"))
            .count(),
        MANY as usize + 2
    );
    for id in [0, MANY / 2, MANY - 1] {
        assert!(!test.cache().exists(&order_cache_key(&id)).await.unwrap());
    }
    assert!(!test.cache().exists(&order_cache_key(&MANY)).await.unwrap());
    assert!(
        test.cache()
            .exists(&order_cache_key(&(MANY + 1)))
            .await
            .unwrap()
    );
}

/// Commands of any kind a server answered so far, but the connection's
/// own upkeep (`ping`, `info`, `client`, `hello`, `select`).
fn commands(server: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.client().get_connection().unwrap())
        .unwrap();
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter(|l| {
            !["ping:", "info:", "client", "hello:", "select:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .filter_map(|l| {
            l.split_once("calls=")?
                .1
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// On a redis-server of its own (so no other test's commands count):
/// invalidating a tag that `MANY` values carry costs the server exactly the
/// commands that invalidating a one-value tag costs, and deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_costs_redis_the_same_for_one_value_or_many() {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .namespace(namespace())
        .timeout(Duration::from_secs(2))
        .redis_url(server.url())
        .build()
        .await
        .unwrap();
    let loads = AtomicUsize::new(0);
    load_many(&cache, &loads).await;
    let size = |s: &RedisServer| -> u64 {
        redis::cmd("DBSIZE")
            .query(&mut s.client().get_connection().unwrap())
            .unwrap()
    };
    let keys_before = size(&server);

    // `commands` itself runs INFO, which is not counted.
    let before = commands(&server);
    cache.invalidate_tag("segment:single").await.unwrap();
    let one = commands(&server) - before;
    let before = commands(&server);
    cache.invalidate_tag("segment:bulk").await.unwrap();
    let many = commands(&server) - before;

    assert!(one >= 1, "the tag's generation is written");
    assert_eq!(
        many, one,
        "{MANY} values' tag costs what one value's tag costs"
    );
    assert_eq!(size(&server), keys_before, "nothing deleted");
    for id in [0, MANY - 1] {
        assert!(!cache.exists(&order_cache_key(&id)).await.unwrap());
    }
    assert!(!cache.exists(&order_cache_key(&MANY)).await.unwrap());
    assert!(cache.exists(&order_cache_key(&(MANY + 1))).await.unwrap());
}

/// On a cluster the tag's generation is a key of its own,
/// `{namespace}:%tag:{tag}` (one slot, one master), while the values it
/// covers are spread over the masters; one write to it hides them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_generation_is_one_key_on_a_cluster() {
    let ns = namespace();
    let b = Cache::builder()
        .namespace(&ns)
        .timeout(Duration::from_secs(2));
    let cache = on(Kind::Cluster, b).build().await.unwrap();
    let loads = AtomicUsize::new(0);
    for id in 0..30 {
        order(&cache, &loads, id, 4, "spread").await;
    }
    let cluster = CLUSTER.get().unwrap();
    let mut conn = cluster.client().get_connection().unwrap();
    let tag_key = format!("{ns}:%tag:customer:4");
    let generation = |conn: &mut redis::cluster::ClusterConnection| -> Option<u64> {
        let raw: Option<String> = redis::cmd("GET").arg(&tag_key).query(conn).unwrap();
        raw.map(|r| r.parse().expect("a generation is a number"))
    };
    let old = generation(&mut conn).expect("the tag's generation is stored");

    // The values live on more than one master.
    let owners: std::collections::HashSet<usize> = (0..30)
        .map(|id| {
            let key = format!("{ns}:{}", order_cache_key(&id));
            cluster
                .nodes()
                .iter()
                .position(|node| {
                    let found: i64 = redis::cmd("EXISTS")
                        .arg(&key)
                        .query(&mut node.client().get_connection().unwrap())
                        .unwrap_or(0);
                    found == 1
                })
                .expect("every value is stored on some master")
        })
        .collect();
    assert!(owners.len() > 1, "30 keys over 3 masters: {owners:?}");

    cache.invalidate_tag("customer:4").await.unwrap();
    let new = generation(&mut conn).expect("still stored");
    assert_ne!(new, old, "one new generation");
    for id in 0..30 {
        assert!(
            !cache.exists(&order_cache_key(&id)).await.unwrap(),
            "order {id}"
        );
    }
    order(&cache, &loads, 0, 4, "spread").await;
    assert_eq!(loads.load(Ordering::SeqCst), 31, "a reload after the tag");
}

/// Holds its load until released, so a tag invalidation can race it.
#[cached(prefix = "tg_slow", key = "{id}", cache = cache, tags = ["customer:{id}"])]
async fn slow_customer(cache: &Cache, steps: &Steps, id: u64) -> u64 {
    let value = steps.db.load(Ordering::SeqCst) as u64; // reads the old value
    steps.entered.notify_one();
    steps.gate.notified().await;
    value
}

/// The database of [`slow_customer`] and the points of its load.
#[derive(Default)]
struct Steps {
    db: AtomicUsize,
    entered: tokio::sync::Notify,
    gate: tokio::sync::Notify,
}

/// A load that read the database before a tag invalidation and stores after
/// it: its value carries the tag's old generation, so no read returns it.
async fn a_load_racing_a_tag_invalidation_stays_invisible(kind: Kind) {
    let cache = cache(kind, false).await;
    let steps = std::sync::Arc::new(Steps::default());
    steps.db.store(1, Ordering::SeqCst);
    let racing = {
        let (cache, steps) = (cache.clone(), steps.clone());
        tokio::spawn(async move { slow_customer(&cache, &steps, 11).await })
    };
    steps.entered.notified().await;
    steps.db.store(2, Ordering::SeqCst);
    cache.invalidate_tag("customer:11").await.unwrap();
    steps.gate.notify_one();
    assert_eq!(
        racing.await.unwrap(),
        1,
        "the racing caller gets its own load"
    );
    let key = slow_customer_cache_key(&11);
    assert_eq!(
        cache.get::<u64>(&key).await.unwrap(),
        None,
        "{kind:?}: the value loaded before the tag invalidation is never served"
    );
    steps.gate.notify_one(); // lets the next load through at once
    assert_eq!(slow_customer(&cache, &steps, 11).await, 2, "{kind:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_racing_a_tag_invalidation_stays_invisible_on_memory() {
    a_load_racing_a_tag_invalidation_stays_invisible(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_racing_a_tag_invalidation_stays_invisible_on_redis() {
    a_load_racing_a_tag_invalidation_stays_invisible(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_racing_a_tag_invalidation_stays_invisible_on_a_cluster() {
    a_load_racing_a_tag_invalidation_stays_invisible(Kind::Cluster).await;
}

/// A tag value holding key syntax is escaped in the template, so
/// `invalidate_tag` takes it escaped (`keys::escape`), and a look-alike tag
/// drops nothing.
#[tokio::test]
async fn a_tag_value_is_escaped_like_a_key() {
    let cache = cache(Kind::Memory, false).await;
    let loads = AtomicUsize::new(0);
    order(&cache, &loads, 21, 5, "a:b*").await;
    order(&cache, &loads, 22, 5, "a").await;
    cache.invalidate_tag("segment:a").await.unwrap();
    assert!(
        cache.exists(&order_cache_key(&21)).await.unwrap(),
        "not a prefix"
    );
    let tag = format!("segment:{}", cache_core::keys::escape("a:b*"));
    cache.invalidate_tag(&tag).await.unwrap();
    assert!(!cache.exists(&order_cache_key(&21)).await.unwrap(), "{tag}");
}

/// With a near cache, a tagged hit is answered from the near level and the
/// tag generations held under tracking: no command reaches Redis, as for
/// an untagged near hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_near_hits_send_nothing_to_redis() {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(server.url())
        .namespace(namespace())
        .timeout(Duration::from_secs(2))
        .near_cache(1_000)
        .build()
        .await
        .unwrap();
    let loads = AtomicUsize::new(0);
    for id in 0..8 {
        order(&cache, &loads, id, id, "eu").await;
    }
    // Twice, so that every value and tag generation is held.
    for id in 0..8 {
        order(&cache, &loads, id, id, "eu").await;
    }
    assert_eq!(loads.load(Ordering::SeqCst), 8);
    let before = commands(&server);
    for _ in 0..20 {
        for id in 0..8 {
            order(&cache, &loads, id, id, "eu").await;
        }
    }
    let sent = commands(&server) - before;
    assert_eq!(loads.load(Ordering::SeqCst), 8);
    // The INFO of `commands` itself is not counted; allow the heartbeat.
    assert!(
        sent <= 2,
        "160 tagged near hits sent {sent} commands to Redis"
    );
}

/// Two instances sharing one namespace, with and without a near cache, on
/// a single server and a cluster: a tag invalidated through one reaches the
/// tag generation the other holds (under tracking, in broadcast mode on a
/// cluster), within the window of prefix generations.
async fn a_tag_invalidation_reaches_another_instance(kind: Kind, near: bool) {
    let ns = namespace();
    let build = |near: bool| {
        let b = Cache::builder()
            .namespace(ns.clone())
            .timeout(Duration::from_secs(2));
        let b = if near { b.near_cache(1_000) } else { b };
        on(kind, b).build()
    };
    let (reader, writer) = (build(near).await.unwrap(), build(false).await.unwrap());
    let loads = AtomicUsize::new(0);
    let first = order(&reader, &loads, 1, 7, "eu").await;
    // Hits until the tag generations are held.
    for _ in 0..3 {
        assert_eq!(order(&reader, &loads, 1, 7, "eu").await, first);
    }
    update_customer(&writer, 7).await;
    let started = std::time::Instant::now();
    loop {
        let now = order(&reader, &loads, 1, 7, "eu").await;
        if now != first {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{kind:?}, near {near}: the other instance still serves the value its tag invalidated"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_reaches_another_instance_on_redis() {
    a_tag_invalidation_reaches_another_instance(Kind::Redis, false).await;
    a_tag_invalidation_reaches_another_instance(Kind::Redis, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_reaches_another_instance_on_a_cluster() {
    a_tag_invalidation_reaches_another_instance(Kind::Cluster, false).await;
    a_tag_invalidation_reaches_another_instance(Kind::Cluster, true).await;
}
