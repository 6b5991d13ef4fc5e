//! Redis Sentinel against real redis-server and redis-sentinel processes
//! (the test kit's `RedisSentinel`: a primary, a replica, three
//! sentinels): the round trip, a forced failover under concurrent calls
//! (no caller errors, the cache follows the new primary within a bound),
//! client tracking and the near cache moving to the new primary, and
//! invalidations that survive a failover with `WAIT`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_core::{Cache, CacheBuilder, CacheConfig, ConfigError, HealthStatus};
use cache_testkit::{RedisSentinel, RedisServer};

/// How long after the sentinels announce a new primary the cache may take
/// to send its calls there.
const FOLLOW_BOUND: Duration = Duration::from_secs(2);

fn on(sentinel: &RedisSentinel, namespace: &str) -> CacheBuilder {
    Cache::builder()
        .redis_sentinel(sentinel.sentinel_urls(), sentinel.master_name())
        .namespace(namespace)
}

fn connection(addr: SocketAddr) -> redis::Connection {
    redis::Client::open(format!("redis://{addr}"))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(1))
        .unwrap()
}

fn exists(addr: SocketAddr, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query(&mut connection(addr))
        .unwrap()
}

async fn eventually(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The primary the cache sends its calls to, as it reports it.
async fn primary_of(cache: &Cache) -> Option<String> {
    cache.backend_info().await.primary
}

/// When a sentinel announced each new primary (`+switch-master`), from a
/// subscription of the test's own.
fn switch_announcements(sentinel: &RedisSentinel) -> Arc<Mutex<Vec<Instant>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let client = redis::Client::open(sentinel.sentinel_urls()[0].as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let record = seen.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut pubsub = conn.as_pubsub();
        pubsub.subscribe("+switch-master").unwrap();
        let _ = ready_tx.send(());
        while let Ok(_message) = pubsub.get_message() {
            record.lock().unwrap().push(Instant::now());
        }
    });
    ready_rx.recv().unwrap();
    seen
}

/// The first `+switch-master` [`switch_announcements`] recorded, waiting
/// for it up to [`FOLLOW_BOUND`]: the test's subscription (to the first
/// sentinel, on a thread of its own) can hear of the failover after the
/// cache followed it, when another sentinel's answer or a busy machine was
/// quicker; following before the announcement is within the bound.
async fn first_announcement(announced: &Mutex<Vec<Instant>>) -> Instant {
    let asked = Instant::now();
    loop {
        if let Some(first) = announced.lock().unwrap().first() {
            return *first;
        }
        assert!(asked.elapsed() < FOLLOW_BOUND, "no +switch-master");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_cache_behind_sentinel_works_like_one_on_a_single_server() {
    let sentinel = RedisSentinel::start();
    let primary = sentinel.primary_addr();
    // From the environment, as a service configures it.
    let urls = sentinel.sentinel_urls().join(",");
    let vars = [
        ("REDIS_SENTINELS", urls.as_str()),
        ("REDIS_SENTINEL_MASTER", sentinel.master_name()),
        ("CACHE_NAMESPACE", "basic"),
    ];
    let config = CacheConfig::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    })
    .unwrap();
    let cache = Cache::builder().config(config).build().await.unwrap();

    cache.set("customer:1", &"Ada", None).await.unwrap();
    assert_eq!(
        cache.get::<String>("customer:1").await.unwrap().as_deref(),
        Some("Ada")
    );
    assert!(exists(primary, "basic:customer:1"));
    let loaded: u64 = cache
        .get_or_set("churn:1", None, || async { 7 })
        .await
        .unwrap();
    assert_eq!(loaded, 7);
    assert!(cache.delete("customer:1").await.unwrap());
    assert!(!exists(primary, "basic:customer:1"));
    cache.invalidate_prefix("churn").await.unwrap();
    assert_eq!(cache.get::<u64>("churn:1").await.unwrap(), None);

    let health = cache.health().await;
    assert_eq!(health.status, HealthStatus::Healthy, "{health:?}");
    assert_eq!(health.backend, "redis-sentinel");
    assert_eq!(health.primary, Some(primary.to_string()));
    assert!(health.missing_permissions.is_empty(), "{health:?}");
    let stats = cache.stats();
    assert_eq!(stats.backend, "redis-sentinel");
    assert!(
        stats
            .target
            .starts_with("mymaster via sentinels redis://127.0.0.1:"),
        "{}",
        stats.target
    );
    // Prefix generations are held under client tracking, as on one server.
    eventually(
        "tracking is established",
        Duration::from_secs(5),
        async || cache.health().await.tracking == Some(true),
    )
    .await;
}

#[tokio::test]
async fn sentinels_down_at_start_mean_degraded_unless_redis_is_required() {
    // Ports nothing listens on.
    let nowhere = ["redis://127.0.0.1:1", "redis://127.0.0.1:2"];
    let started = Instant::now();
    let cache = Cache::builder()
        .redis_sentinel(nowhere, "mymaster")
        .build()
        .await
        .unwrap();
    assert_eq!(cache.health().await.status, HealthStatus::Degraded);
    let value: u64 = cache.get_or_set("k:1", None, || async { 5 }).await.unwrap();
    assert_eq!(value, 5);
    let required = Cache::builder()
        .redis_sentinel(nowhere, "mymaster")
        .require_redis(true)
        .build()
        .await;
    assert!(
        matches!(required, Err(ConfigError::RedisUnavailable { .. })),
        "{required:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_under_load_is_followed_without_caller_errors() {
    let sentinel = Arc::new(RedisSentinel::start());
    let old = sentinel.primary_addr();
    let cache = on(&sentinel, "load")
        .near_cache(1_000)
        .build()
        .await
        .unwrap();
    // Another instance, to change keys the first one holds.
    let other = on(&sentinel, "load").build().await.unwrap();
    cache.set("held:1", &1u64, None).await.unwrap();
    eventually("a near hit", Duration::from_secs(5), async || {
        let before = cache.stats().total.near_hits;
        cache.get::<u64>("held:1").await.unwrap();
        cache.stats().total.near_hits > before
    })
    .await;

    // Callers: each reads its own keys through `get_or_set`, whose loader
    // gives a value derived from the key, and writes and deletes now and then.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for task in 0..8u64 {
        let (cache, stop, calls) = (cache.clone(), stop.clone(), calls.clone());
        callers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = task * 1000 + i % 20;
                let key = format!("item:{id}");
                let value: u64 = cache
                    .get_or_set(&key, None, || async move { id * 3 })
                    .await
                    .expect("a call returned an error");
                assert_eq!(value, id * 3, "{key}");
                if i.is_multiple_of(7) {
                    cache.set(&key, &(id * 3), None).await.unwrap();
                }
                if i.is_multiple_of(11) {
                    cache.delete(&key).await.unwrap();
                }
                calls.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let announced = switch_announcements(&sentinel);
    let flushes_before = cache.stats().near.unwrap().flushes;
    let asked = Instant::now();
    let failover = {
        let sentinel = sentinel.clone();
        tokio::task::spawn_blocking(move || sentinel.failover())
    };
    let new_text = loop {
        // The cache names its primary as soon as it has switched.
        match primary_of(&cache).await {
            Some(now) if now != old.to_string() => break now,
            _ => {}
        }
        assert!(
            asked.elapsed() < Duration::from_secs(25),
            "the cache never followed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let followed = Instant::now();
    let new = failover.await.unwrap();
    assert_eq!(new_text, new.to_string());
    let switch = *announced
        .lock()
        .unwrap()
        .first()
        .expect("no +switch-master seen");
    let after_announcement = followed.saturating_duration_since(switch);
    eprintln!(
        "sentinel failover: asked to followed {:?}, +switch-master to followed {:?}",
        followed - asked,
        after_announcement
    );
    assert!(
        after_announcement < FOLLOW_BOUND,
        "followed {after_announcement:?} after the announcement"
    );

    // Calls reach the new primary: breaker closed, nothing in the fallback.
    eventually(
        "the cache is back on Redis",
        Duration::from_secs(5),
        async || {
            let stats = cache.stats();
            stats.circuit == cache_core::CircuitState::Closed && !stats.fallback_active
        },
    )
    .await;
    cache.set("probe:1", &1u64, None).await.unwrap();
    assert!(exists(new, "load:probe:1"));
    let errors_then: u64 = cache.stats().total.errors.values().sum();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let errors_now: u64 = cache.stats().total.errors.values().sum();
    assert_eq!(errors_now, errors_then, "errors after the cache followed");
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.expect("a caller panicked");
    }
    assert!(calls.load(Ordering::Relaxed) > 100);

    // Tracking moved: the near entry held under the old primary is gone,
    // and the near cache works (and is invalidated) on the new one.
    eventually(
        "tracking on the new primary",
        Duration::from_secs(5),
        async || cache.health().await.tracking == Some(true),
    )
    .await;
    let held_before = cache.stats().total.near_hits;
    other.set("held:1", &2u64, None).await.unwrap();
    assert_eq!(cache.get::<u64>("held:1").await.unwrap(), Some(2));
    eventually(
        "a near hit on the new primary",
        Duration::from_secs(5),
        async || {
            let before = cache.stats().total.near_hits;
            cache.get::<u64>("held:1").await.unwrap();
            cache.stats().total.near_hits > before
        },
    )
    .await;
    assert!(cache.stats().total.near_hits > held_before);
    other.set("held:1", &3u64, None).await.unwrap();
    eventually(
        "another instance's write reaches the near cache",
        Duration::from_secs(2),
        async || cache.get::<u64>("held:1").await.unwrap() == Some(3),
    )
    .await;
    // Prefix generations too: another instance's prefix invalidation.
    cache.set("gen:1", &1u64, None).await.unwrap();
    assert_eq!(cache.get::<u64>("gen:1").await.unwrap(), Some(1));
    other.invalidate_prefix("gen").await.unwrap();
    eventually(
        "another instance's prefix invalidation",
        Duration::from_secs(2),
        async || cache.get::<u64>("gen:1").await.unwrap().is_none(),
    )
    .await;
    assert!(cache.stats().near.unwrap().flushes > flushes_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_primary_is_failed_over_and_followed() {
    let mut sentinel = RedisSentinel::start();
    let old = sentinel.primary_addr();
    let cache = on(&sentinel, "stopped")
        .circuit_breaker(3, Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    cache.set("customer:1", &1u64, None).await.unwrap();
    let announced = switch_announcements(&sentinel);
    let stopped = Instant::now();
    sentinel
        .servers_mut()
        .iter_mut()
        .find(|s| s.addr() == old)
        .unwrap()
        .stop();
    // Meanwhile calls are answered (from the fallback), without errors.
    let mut calls = 0u64;
    let followed = loop {
        let value: u64 = cache
            .get_or_set("customer:2", None, || async { 2 })
            .await
            .unwrap();
        assert_eq!(value, 2);
        calls += 1;
        if let Some(now) = primary_of(&cache).await
            && now != old.to_string()
        {
            break Instant::now();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "never followed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let switch = first_announcement(&announced).await;
    eprintln!(
        "sentinel failover of a stopped primary: stopped to followed {:?}, +switch-master to followed {:?}, {calls} calls meanwhile",
        followed - stopped,
        followed.saturating_duration_since(switch)
    );
    assert!(followed.saturating_duration_since(switch) < FOLLOW_BOUND);
    // The breaker closes and the fallback is dropped once Redis is back.
    eventually(
        "healthy on the new primary",
        Duration::from_secs(5),
        async || {
            cache.health().await.status == HealthStatus::Healthy && !cache.stats().fallback_active
        },
    )
    .await;
    cache.set("customer:3", &3u64, None).await.unwrap();
    assert!(exists(sentinel.primary_addr(), "stopped:customer:3"));
}

#[tokio::test]
async fn an_invalidation_no_replica_acknowledges_is_replayed_once_one_does() {
    // One server without a replica: `WAIT 1` cannot be acknowledged.
    let server = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
    let cache = Cache::builder()
        .redis_url(server.url())
        .namespace("lonely")
        .wait_replicas(1)
        .timeout(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    cache.set("customer:1", &1u64, None).await.unwrap();
    assert_eq!(cache.get::<u64>("customer:1").await.unwrap(), Some(1));
    cache.delete("customer:1").await.unwrap();
    // The primary has the delete, but it counts as not delivered: remembered,
    // and the cache serves from its fallback until a replica has it.
    assert!(!exists(server.addr(), "lonely:customer:1"));
    let stats = cache.stats();
    assert!(stats.fallback_active, "{stats:?}");
    assert!(
        stats.total.errors.get("timeout").copied().unwrap_or(0) >= 1,
        "{stats:?}"
    );
    assert_eq!(cache.get::<u64>("customer:1").await.unwrap(), None);
    let port = server.port().to_string();
    let _replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    eventually(
        "replayed once a replica acknowledges",
        Duration::from_secs(10),
        async || !cache.stats().fallback_active,
    )
    .await;
    cache.set("customer:2", &2u64, None).await.unwrap();
    assert!(exists(server.addr(), "lonely:customer:2"));
}

/// Deletes `keys` one after another through `cache` until `stop`, and
/// returns the ones whose delete returned.
async fn invalidate_until(cache: Cache, keys: Vec<String>, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut done = Vec::new();
    for key in keys {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        cache.delete(&key).await.unwrap();
        done.push(key);
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_no_invalidation_is_lost_to_a_failover() {
    let sentinel = Arc::new(RedisSentinel::start());
    let durable = on(&sentinel, "durable")
        .wait_replicas(1)
        .build()
        .await
        .unwrap();
    let plain = on(&sentinel, "plain").build().await.unwrap();
    const KEYS: usize = 20_000;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("v:{i}")).collect();
    for cache in [&durable, &plain] {
        for chunk in keys.chunks(1000) {
            let entries: Vec<(&str, u64)> = chunk.iter().map(|k| (k.as_str(), 1)).collect();
            cache.set_many(&entries, None).await.unwrap();
        }
    }
    {
        // On the replica before the failover starts.
        let mut conn = connection(sentinel.primary_addr());
        let () = redis::cmd("SET")
            .arg("marker")
            .arg(1)
            .query(&mut conn)
            .unwrap();
        let acked: u32 = redis::cmd("WAIT")
            .arg(1)
            .arg(5000)
            .query(&mut conn)
            .unwrap();
        assert_eq!(acked, 1);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let waited = tokio::spawn(invalidate_until(
        durable.clone(),
        keys.clone(),
        stop.clone(),
    ));
    let unwaited = tokio::spawn(invalidate_until(plain.clone(), keys.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = {
        let sentinel = sentinel.clone();
        tokio::task::spawn_blocking(move || sentinel.failover())
            .await
            .unwrap()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (waited, unwaited) = (waited.await.unwrap(), unwaited.await.unwrap());
    // Replays (with WAIT) land once the old primary replicates the new one.
    eventually(
        "the durable cache replayed",
        Duration::from_secs(10),
        async || {
            let stats = durable.stats();
            !stats.fallback_active && primary_of(&durable).await == Some(new.to_string())
        },
    )
    .await;
    let mut conn = connection(new);
    let mut stale = |namespace: &str, done: &[String]| -> BTreeSet<String> {
        let mut pipe = redis::pipe();
        for key in done {
            pipe.cmd("EXISTS").arg(format!("{namespace}:{key}"));
        }
        let found: Vec<bool> = pipe.query(&mut conn).unwrap();
        done.iter()
            .zip(found)
            .filter(|(_, present)| *present)
            .map(|(key, _)| key.clone())
            .collect()
    };
    let lost_waited = stale("durable", &waited);
    let lost_unwaited = stale("plain", &unwaited);
    eprintln!(
        "sentinel failover: {} of {} invalidations lost with WAIT 1, {} of {} without",
        lost_waited.len(),
        waited.len(),
        lost_unwaited.len(),
        unwaited.len()
    );
    assert!(waited.len() > 100, "{}", waited.len());
    assert!(lost_waited.is_empty(), "lost with WAIT: {lost_waited:?}");
    // And no instance reads them: a fresh cache reads the new primary.
    let reader = on(&sentinel, "durable").build().await.unwrap();
    for key in waited.iter().take(200) {
        assert_eq!(reader.get::<u64>(key).await.unwrap(), None, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_tls_for_the_sentinels_and_the_primary() {
    let sentinel = Arc::new(
        RedisSentinel::builder()
            .password("datapw")
            .sentinel_password("sentpw")
            .tls()
            .start(),
    );
    let secured = |data_url: &str| {
        Cache::builder()
            .redis_sentinel(sentinel.authed_sentinel_urls(), sentinel.master_name())
            .sentinel_data_url(data_url)
            .tls_ca_file(sentinel.tls_ca_file())
            .namespace("secure")
    };
    let cache = secured("rediss://:datapw@primary")
        .near_cache(100)
        .build()
        .await
        .unwrap();
    cache.set("customer:1", &1u64, None).await.unwrap();
    assert_eq!(cache.get::<u64>("customer:1").await.unwrap(), Some(1));
    let health = cache.health().await;
    assert_eq!(health.status, HealthStatus::Healthy, "{health:?}");
    eventually("tracking over TLS", Duration::from_secs(5), async || {
        cache.health().await.tracking == Some(true)
    })
    .await;
    let shown = format!("{cache:?} {:?} {health:?}", cache.stats());
    assert!(
        !shown.contains("datapw") && !shown.contains("sentpw"),
        "{shown}"
    );

    // A failover is followed over TLS, with both passwords.
    let old = sentinel.primary_addr().to_string();
    let new = {
        let sentinel = sentinel.clone();
        tokio::task::spawn_blocking(move || sentinel.failover())
            .await
            .unwrap()
    };
    assert_ne!(new.to_string(), old);
    eventually("the cache follows", Duration::from_secs(5), async || {
        primary_of(&cache).await == Some(new.to_string())
    })
    .await;
    cache.set("customer:2", &2u64, None).await.unwrap();
    assert_eq!(cache.get::<u64>("customer:2").await.unwrap(), Some(2));

    // A wrong password for the primary is a configuration error, redacted.
    let refused = secured("rediss://:wrongpw@primary")
        .require_redis(true)
        .build()
        .await;
    match refused {
        Err(ConfigError::RedisUnavailable {
            kind,
            reason,
            target,
        }) => {
            assert_eq!(kind, cache_core::ErrorKind::Auth, "{reason}");
            assert!(
                !format!("{reason}{target}").contains("wrongpw"),
                "{reason} {target}"
            );
        }
        other => panic!("{other:?}"),
    }
}
