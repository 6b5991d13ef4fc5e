//! Shared by the integration tests that run one body on every backend: one
//! redis-server and one 3-master cluster per test binary, started on first
//! use, and the stale-set race.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use cache_core::{Cache, CacheBuilder};
use cache_testkit::{RedisCluster, RedisServer};
use tokio::sync::Notify;

pub(crate) static SERVER: OnceLock<RedisServer> = OnceLock::new();
pub(crate) static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();

#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Memory,
    Redis,
    Cluster,
}

/// `builder` pointed at this binary's redis-server or cluster (memory: as is).
pub(crate) fn on(kind: Kind, builder: CacheBuilder) -> CacheBuilder {
    match kind {
        Kind::Memory => builder,
        Kind::Redis => builder.redis_url(SERVER.get_or_init(RedisServer::start).url()),
        Kind::Cluster => {
            builder.redis_cluster(CLUSTER.get_or_init(|| RedisCluster::start(3)).urls())
        }
    }
}

/// A redis-server and a cluster only the generations tests use: they count
/// the commands a server answered, which the other modules' tests (sharing
/// [`SERVER`] and [`CLUSTER`] in this binary) would change under them.
pub(crate) static COUNTED_SERVER: OnceLock<RedisServer> = OnceLock::new();
pub(crate) static COUNTED_CLUSTER: OnceLock<RedisCluster> = OnceLock::new();

/// [`on`], with [`COUNTED_SERVER`] and [`COUNTED_CLUSTER`].
pub(crate) fn on_counted(kind: Kind, builder: CacheBuilder) -> CacheBuilder {
    match kind {
        Kind::Memory => builder,
        Kind::Redis => builder.redis_url(COUNTED_SERVER.get_or_init(RedisServer::start).url()),
        Kind::Cluster => builder.redis_cluster(
            COUNTED_CLUSTER
                .get_or_init(|| RedisCluster::start(3))
                .urls(),
        ),
    }
}

/// A load of `key` reads the database (1) and stalls; meanwhile the database
/// becomes 2 and `invalidate` runs; then the load finishes. Returns what the
/// racing load itself returned and what the cache serves afterwards.
pub(crate) async fn load_racing_invalidation<Fut>(
    cache: &Cache,
    key: &'static str,
    invalidate: impl FnOnce(Cache) -> Fut,
) -> (u64, Option<u64>)
where
    Fut: Future<Output = ()>,
{
    let db = Arc::new(AtomicU64::new(1));
    let (loaded, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let reader = {
        let (cache, db, loaded, release) =
            (cache.clone(), db.clone(), loaded.clone(), release.clone());
        tokio::spawn(async move {
            cache
                .get_or_set(key, None, || async move {
                    let v = db.load(Ordering::SeqCst); // reads the old value
                    loaded.notify_one();
                    release.notified().await;
                    v
                })
                .await
                .unwrap()
        })
    };
    loaded.notified().await;
    db.store(2, Ordering::SeqCst);
    invalidate(cache.clone()).await; // the invalidation returns here
    release.notify_one();
    let raced = reader.await.unwrap();
    (raced, cache.get::<u64>(key).await.unwrap())
}

/// Calls of `command` the server has answered so far (`INFO commandstats`).
pub(crate) fn calls(server: &RedisServer, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.client().get_connection().unwrap())
        .unwrap();
    let head = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(head.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Calls of `command` every node of `cluster` has answered so far.
pub(crate) fn cluster_calls(cluster: &RedisCluster, command: &str) -> u64 {
    cluster
        .nodes()
        .iter()
        .map(|node| calls(node, command))
        .sum()
}

/// Reads `key` until it returns `want`, bounded; returns how long it took.
pub(crate) async fn until_reads(
    cache: &Cache,
    key: &str,
    want: Option<u64>,
    within: std::time::Duration,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    loop {
        if cache.get::<u64>(key).await.unwrap() == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{key} still not {want:?} after {within:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// Kills every client connection with tracking on (`flags` holds `t`);
/// returns how many there were.
pub(crate) fn kill_tracking_clients(server: &RedisServer) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut server.client().get_connection().unwrap())
        .unwrap();
    let ids: Vec<&str> = list
        .lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.strip_prefix("flags=").is_some_and(|v| v.contains('t')))
        })
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    for id in &ids {
        let _: () = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(*id)
            .query(&mut server.client().get_connection().unwrap())
            .unwrap();
    }
    ids.len()
}
