//! The near cache against a real redis-server: hits without a round trip,
//! this instance's changes visible at once, other instances' changes once
//! Redis' message arrives, reads racing invalidations, lost tracking.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{calls, cluster_calls, kill_tracking_clients, until_reads};
use cache_core::{Cache, cached};
use cache_testkit::{RedisCluster, RedisServer};

async fn near_cache(server: &RedisServer) -> Cache {
    Cache::builder()
        .redis_url(server.url())
        .namespace("app")
        .near_cache(10_000)
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap()
}

async fn plain_cache(server: &RedisServer) -> Cache {
    Cache::builder()
        .redis_url(server.url())
        .namespace("app")
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap()
}

/// Reads until the near level answers `key` (tracking is established in
/// the background).
async fn until_near_hit(cache: &Cache, key: &str) {
    let started = Instant::now();
    loop {
        let before = cache.stats().total.near_hits;
        cache.get::<u64>(key).await.unwrap();
        if cache.stats().total.near_hits > before {
            return;
        }
        // Generous: tracking is (re-)established in the background, on
        // every master of a cluster, on cores other tests share.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no near hit for {key} within 10 s: {:?}",
            cache.health().await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn near_hits_cost_no_round_trip() {
    let server = RedisServer::start();
    let cache = near_cache(&server).await;
    cache.set("customer:1", &1u64, None).await.unwrap();
    until_near_hit(&cache, "customer:1").await;
    let gets = calls(&server, "get") + calls(&server, "mget");
    for _ in 0..100 {
        assert_eq!(cache.get::<u64>("customer:1").await.unwrap(), Some(1));
    }
    assert_eq!(calls(&server, "get") + calls(&server, "mget"), gets);
    let stats = cache.stats();
    assert!(stats.total.near_hits >= 100, "{stats:?}");
    assert!(stats.near.unwrap().entries >= 1);
}

#[tokio::test]
async fn near_misses_read_redis_in_one_command() {
    // A read the near level cannot answer reads the value and its TTL;
    // only a key whose last read timed out has its size checked first.
    let server = RedisServer::start();
    let cache = near_cache(&server).await;
    let writer = plain_cache(&server).await;
    cache.set("customer:0", &0u64, None).await.unwrap();
    until_near_hit(&cache, "customer:0").await;
    for id in 1..=20u64 {
        writer
            .set(&format!("customer:{id}"), &id, None)
            .await
            .unwrap();
    }
    let strlen = calls(&server, "strlen");
    let near_hits = cache.stats().total.near_hits;
    for id in 1..=20u64 {
        let key = format!("customer:{id}");
        assert_eq!(cache.get::<u64>(&key).await.unwrap(), Some(id));
    }
    let stats = cache.stats();
    assert_eq!(stats.total.near_hits, near_hits, "{stats:?}");
    assert_eq!(
        calls(&server, "strlen"),
        strlen,
        "size checks of keys nobody suspects"
    );
}

#[tokio::test]
async fn this_instances_changes_are_visible_at_once() {
    let server = RedisServer::start();
    let cache = near_cache(&server).await;
    cache.set("customer:1", &1u64, None).await.unwrap();
    until_near_hit(&cache, "customer:1").await;
    cache.set("customer:1", &2u64, None).await.unwrap();
    assert_eq!(cache.get::<u64>("customer:1").await.unwrap(), Some(2));
    until_near_hit(&cache, "customer:1").await;
    cache.delete("customer:1").await.unwrap();
    assert_eq!(cache.get::<u64>("customer:1").await.unwrap(), None);
    cache.set("customer:1", &3u64, None).await.unwrap();
    until_near_hit(&cache, "customer:1").await;
    cache.invalidate_prefix("customer").await.unwrap();
    assert_eq!(cache.get::<u64>("customer:1").await.unwrap(), None);
    cache.set("customer:1", &4u64, None).await.unwrap();
    until_near_hit(&cache, "customer:1").await;
    cache.delete_pattern("customer:*").await.unwrap();
    assert_eq!(cache.get::<u64>("customer:1").await.unwrap(), None);
}

#[tokio::test]
async fn another_instances_changes_arrive_through_tracking() {
    let server = RedisServer::start();
    let writer = plain_cache(&server).await;
    let reader = near_cache(&server).await;
    writer.set("customer:1", &1u64, None).await.unwrap();
    until_near_hit(&reader, "customer:1").await;

    writer.set("customer:1", &2u64, None).await.unwrap();
    let window = until_reads(&reader, "customer:1", Some(2), Duration::from_secs(1)).await;
    eprintln!("update seen after {window:?}");
    until_near_hit(&reader, "customer:1").await;
    writer.delete("customer:1").await.unwrap();
    until_reads(&reader, "customer:1", None, Duration::from_secs(1)).await;

    // A write by a client that is not a cache at all.
    writer.set("customer:1", &5u64, None).await.unwrap();
    until_near_hit(&reader, "customer:1").await;
    let _: () = redis::cmd("DEL")
        .arg("app:customer:1")
        .query(&mut server.client().get_connection().unwrap())
        .unwrap();
    until_reads(&reader, "customer:1", None, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_racing_invalidations_never_leave_a_stale_entry() {
    let server = RedisServer::start();
    let writer = plain_cache(&server).await;
    let reader = near_cache(&server).await;
    writer.set("customer:1", &0u64, None).await.unwrap();
    until_near_hit(&reader, "customer:1").await;
    race_reads_against_writes(&writer, &reader, 3000).await;
}

/// `trials` writes of `customer:1` by `writer` while a task keeps reading it
/// on `reader`; after each, `reader` must converge to the new value (an
/// entry installed after its invalidation was processed would be served
/// forever).
async fn race_reads_against_writes(writer: &Cache, reader: &Cache, trials: u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let (reader, stop) = (reader.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = reader.get::<u64>("customer:1").await;
                // A near hit never waits: yield as a request handler would.
                tokio::task::yield_now().await;
            }
        })
    };
    for i in 1..=trials {
        writer.set("customer:1", &i, None).await.unwrap();
        until_reads(reader, "customer:1", Some(i), Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    hammer.await.unwrap();
}

#[tokio::test]
async fn a_lost_tracking_connection_drops_the_near_level() {
    let server = RedisServer::start();
    let writer = plain_cache(&server).await;
    let reader = near_cache(&server).await;
    writer.set("customer:1", &1u64, None).await.unwrap();
    until_near_hit(&reader, "customer:1").await;
    kill_tracking_clients(&server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Redis can no longer tell the reader: it must not serve what it held.
    writer.set("customer:1", &2u64, None).await.unwrap();
    assert_eq!(reader.get::<u64>("customer:1").await.unwrap(), Some(2));
    assert!(reader.stats().near.unwrap().flushes >= 1);
    // Tracking comes back, and so do near hits.
    until_near_hit(&reader, "customer:1").await;
    writer.set("customer:1", &3u64, None).await.unwrap();
    until_reads(&reader, "customer:1", Some(3), Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_tracking_connection_that_stops_answering_drops_the_near_level() {
    let mut server = RedisServer::start();
    let writer = plain_cache(&server).await;
    let reader = Cache::builder()
        .redis_url(server.url())
        .namespace("app")
        .near_cache(10_000)
        .timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    writer.set("customer:1", &1u64, None).await.unwrap();
    until_near_hit(&reader, "customer:1").await;
    let flushes = reader.stats().near.unwrap().flushes;
    // No disconnection, no failed call: the server just stops answering, as
    // behind a half-open connection. Nothing tells the reader but its own
    // heartbeat.
    server.pause();
    // The heartbeat pings every second and waits up to a second.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let near = reader.stats().near.unwrap();
    server.resume();
    assert!(near.flushes > flushes, "{near:?}");
    assert_eq!(near.entries, 0, "{near:?}");
    // Tracking comes back once the server answers, and so do near hits.
    until_near_hit(&reader, "customer:1").await;
    writer.set("customer:1", &2u64, None).await.unwrap();
    until_reads(&reader, "customer:1", Some(2), Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_restarted_redis_leaves_nothing_stale() {
    let mut server = RedisServer::start();
    let writer = plain_cache(&server).await;
    let reader = near_cache(&server).await;
    writer.set("customer:1", &1u64, None).await.unwrap();
    until_near_hit(&reader, "customer:1").await;
    server.restart();
    let started = Instant::now();
    loop {
        writer.set("customer:1", &7u64, None).await.unwrap();
        if reader.get::<u64>("customer:1").await.unwrap() == Some(7) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never converged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

static LOADS: AtomicU64 = AtomicU64::new(0);

#[cached(prefix = "profile", key = "{id}")]
async fn profile(id: u64) -> Result<String, String> {
    LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(format!("profile {id} v{}", LOADS.load(Ordering::SeqCst)))
}

#[tokio::test]
async fn cached_functions_are_served_by_the_near_level() {
    let server = RedisServer::start();
    let cache = near_cache(&server).await;
    let other = plain_cache(&server).await;
    cache
        .scope(async {
            let first = profile(1).await.unwrap();
            let started = Instant::now();
            while cache
                .stats()
                .prefixes
                .get("profile")
                .map_or(0, |p| p.near_hits)
                == 0
            {
                assert_eq!(profile(1).await.unwrap(), first);
                assert!(started.elapsed() < Duration::from_secs(5));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(LOADS.load(Ordering::SeqCst), 1, "one load, then hits");
            // Another instance invalidates: the near level lets go.
            other.delete(&profile_cache_key(&1)).await.unwrap();
            let started = Instant::now();
            while profile(1).await.unwrap() == first {
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "still the old value"
                );
                tokio::task::yield_now().await;
            }
            assert_eq!(LOADS.load(Ordering::SeqCst), 2);
        })
        .await;
}

static BALANCE_LOADS: AtomicU64 = AtomicU64::new(0);

#[cached(prefix = "balance", key = "{id}", near = false)]
async fn balance(id: u64) -> Result<u64, String> {
    BALANCE_LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(id * 10)
}

#[tokio::test]
async fn near_false_keeps_a_function_out_of_the_near_level() {
    let server = RedisServer::start();
    let cache = near_cache(&server).await;
    cache
        .scope(async {
            // Tracking up (another key gets near hits), then many hits.
            cache.set("other:1", &1u64, None).await.unwrap();
            until_near_hit(&cache, "other:1").await;
            for _ in 0..50 {
                assert_eq!(balance(3).await.unwrap(), 30);
            }
            assert_eq!(BALANCE_LOADS.load(Ordering::SeqCst), 1, "hits, from Redis");
            let stats = cache.stats();
            assert_eq!(stats.prefixes["balance"].near_hits, 0, "{stats:?}");
            assert!(stats.prefixes["balance"].hits >= 49, "{stats:?}");
        })
        .await;
}

// ----- Redis Cluster: tracking on every master ----------------------------------

async fn cluster_cache(cluster: &RedisCluster, near: bool) -> Cache {
    let builder = Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace("app")
        .timeout(Duration::from_secs(2));
    let builder = if near {
        builder.near_cache(10_000)
    } else {
        builder
    };
    builder.build().await.unwrap()
}

/// Keys spread over every master of a 3-master cluster.
fn spread_keys() -> Vec<String> {
    (1..=12).map(|i| format!("customer:{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_changes_reach_the_near_level_of_another_instance() {
    let cluster = RedisCluster::start(3);
    let writer = cluster_cache(&cluster, false).await;
    let reader = cluster_cache(&cluster, true).await;
    for (i, key) in spread_keys().iter().enumerate() {
        writer.set(key, &(i as u64), None).await.unwrap();
        until_near_hit(&reader, key).await;
    }
    let gets = cluster_calls(&cluster, "get") + cluster_calls(&cluster, "mget");
    for key in spread_keys() {
        reader.get::<u64>(&key).await.unwrap();
    }
    assert_eq!(
        cluster_calls(&cluster, "get") + cluster_calls(&cluster, "mget"),
        gets,
        "near hits on every master's keys cost no round trip"
    );
    // Every master reports changes of its keys: by a cache, and by a
    // client that is not one.
    for (i, key) in spread_keys().iter().enumerate() {
        writer.set(key, &(100 + i as u64), None).await.unwrap();
        until_reads(&reader, key, Some(100 + i as u64), Duration::from_secs(1)).await;
    }
    let mut raw = cluster.client().get_connection().unwrap();
    for key in spread_keys() {
        until_near_hit(&reader, &key).await;
        let _: () = redis::cmd("DEL")
            .arg(format!("app:{key}"))
            .query(&mut raw)
            .unwrap();
        until_reads(&reader, &key, None, Duration::from_secs(1)).await;
    }
    // Reads racing invalidations leave nothing stale on a cluster either.
    race_reads_against_writes(&writer, &reader, 1000).await;
}

#[tokio::test]
async fn on_a_cluster_losing_one_masters_tracking_drops_the_near_level() {
    let cluster = RedisCluster::start(3);
    let writer = cluster_cache(&cluster, false).await;
    let reader = cluster_cache(&cluster, true).await;
    for key in spread_keys() {
        writer.set(&key, &1u64, None).await.unwrap();
        until_near_hit(&reader, &key).await;
    }
    let flushes = reader.stats().near.unwrap().flushes;
    // The writer tracks generation keys, the reader the whole namespace.
    assert_eq!(kill_tracking_clients(&cluster.nodes()[1]), 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(reader.stats().near.unwrap().flushes > flushes);
    // That master can no longer tell the reader: nothing is served stale.
    for key in spread_keys() {
        writer.set(&key, &2u64, None).await.unwrap();
        assert_eq!(reader.get::<u64>(&key).await.unwrap(), Some(2), "{key}");
    }
    // Tracking comes back on every master, and so do near hits.
    for key in spread_keys() {
        until_near_hit(&reader, &key).await;
        writer.set(&key, &3u64, None).await.unwrap();
        until_reads(&reader, &key, Some(3), Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_stopped_master_drops_the_near_level_until_it_is_back() {
    let mut cluster = RedisCluster::start(3);
    let writer = cluster_cache(&cluster, false).await;
    let reader = cluster_cache(&cluster, true).await;
    for key in spread_keys() {
        writer.set(&key, &1u64, None).await.unwrap();
        until_near_hit(&reader, &key).await;
    }
    cluster.stop_node(0);
    let started = Instant::now();
    while reader.stats().near.unwrap().entries > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the near level outlived the node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reader.stats().near.unwrap().flushes >= 1);
    cluster.restart_node(0);
    // The restarted master lost its data; the others did not. Whatever the
    // reader serves converges to what the writer wrote after the restart,
    // and near hits come back once every master tracks again.
    let started = Instant::now();
    for key in spread_keys() {
        loop {
            let wrote = writer.set(&key, &7u64, None).await.is_ok();
            if wrote && reader.get::<u64>(&key).await.unwrap() == Some(7) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{key} never converged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for key in spread_keys() {
        until_near_hit(&reader, &key).await;
        writer.set(&key, &8u64, None).await.unwrap();
        until_reads(&reader, &key, Some(8), Duration::from_secs(1)).await;
    }
}

/// Sends `args` to one node (not through the cluster client).
fn on_node<T: redis::FromRedisValue>(node: &RedisServer, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut node.client().get_connection().unwrap())
        .unwrap()
}

/// Assigns `slots` to the node `owner` on every node of `cluster`.
fn assign_slots(cluster: &RedisCluster, slots: &[u16], owner: &str) {
    for node in cluster.nodes() {
        let mut conn = node.client().get_connection().unwrap();
        let mut pipe = redis::pipe();
        for slot in slots {
            pipe.cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(*slot)
                .arg("NODE")
                .arg(owner)
                .ignore();
        }
        let () = pipe.query(&mut conn).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_master_that_takes_over_slots_is_tracked() {
    let cluster = RedisCluster::start(4);
    let ids: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|node| on_node(node, &["CLUSTER", "MYID"]))
        .collect();
    // Node 3 starts with no slots: it is not a master anyone tracks (and it
    // stays a master without them).
    for node in cluster.nodes() {
        let _: () = on_node(
            node,
            &["CONFIG", "SET", "cluster-allow-replica-migration", "no"],
        );
    }
    let shards: String = on_node(&cluster.nodes()[0], &["CLUSTER", "NODES"]);
    let mut node3_slots = Vec::new();
    for line in shards.lines().filter(|l| l.starts_with(&ids[3])) {
        for range in line.split_whitespace().skip(8) {
            let (from, to) = range.split_once('-').unwrap_or((range, range));
            node3_slots.extend(from.parse::<u16>().unwrap()..=to.parse::<u16>().unwrap());
        }
    }
    assert!(!node3_slots.is_empty());
    assign_slots(&cluster, &node3_slots, &ids[0]);
    assert!(cluster.wait_until_ok(Duration::from_secs(15)));

    let writer = cluster_cache(&cluster, false).await;
    let reader = cluster_cache(&cluster, true).await;
    let key = "customer:1";
    writer.set(key, &1u64, None).await.unwrap();
    until_near_hit(&reader, key).await;

    // The key's slot moves to node 3, key included.
    let slot: i64 = on_node(
        &cluster.nodes()[0],
        &["CLUSTER", "KEYSLOT", "app:customer:1"],
    );
    let slot = slot.to_string();
    let source = cluster
        .nodes()
        .iter()
        .position(|node| {
            let keys: i64 = on_node(node, &["CLUSTER", "COUNTKEYSINSLOT", &slot]);
            keys > 0
        })
        .expect("the key is somewhere");
    let (from, to) = (&cluster.nodes()[source], &cluster.nodes()[3]);
    let _: () = on_node(
        to,
        &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &ids[source]],
    );
    let _: () = on_node(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &ids[3]]);
    let _: () = on_node(
        from,
        &[
            "MIGRATE",
            "127.0.0.1",
            &to.port().to_string(),
            "",
            "0",
            "5000",
            "KEYS",
            "app:customer:1",
        ],
    );
    assign_slots(&cluster, &[slot.parse().unwrap()], &ids[3]);
    assert!(cluster.wait_until_ok(Duration::from_secs(15)));

    // The reader may hold the key again, read from node 3; node 3 reports
    // its changes once the reader notices the new master.
    until_reads(&reader, key, Some(1), Duration::from_secs(5)).await;
    for _ in 0..50 {
        let _ = reader.get::<u64>(key).await;
    }
    writer.set(key, &2u64, None).await.unwrap();
    let window = until_reads(&reader, key, Some(2), Duration::from_secs(5)).await;
    eprintln!("a change on the new master reached the near level after {window:?}");
    // And from then on, every change does at once.
    until_near_hit(&reader, key).await;
    writer.set(key, &3u64, None).await.unwrap();
    until_reads(&reader, key, Some(3), Duration::from_secs(1)).await;
}
