//! Failure paths against a real redis-server: down at start, killed mid-run,
//! paused (SIGSTOP), restarted, wrong password, out of memory, corrupt and
//! foreign bytes, malformed configuration.

use std::time::{Duration, Instant};

use cache_core::{Cache, CacheConfig, CircuitState, ConfigError, ErrorKind, HealthStatus};
use cache_testkit::RedisServer;
use redis::Commands;

const TIMEOUT: Duration = Duration::from_millis(100);
const COOLDOWN: Duration = Duration::from_millis(300);

async fn cache_for(url: &str) -> Cache {
    Cache::builder()
        .redis_url(url)
        .namespace("f")
        .timeout(TIMEOUT)
        .circuit_breaker(3, COOLDOWN)
        .build()
        .await
        .expect("a reachable or unreachable Redis is not a build error")
}

fn raw_get(server: &RedisServer, key: &str) -> Option<Vec<u8>> {
    server.client().get_connection().unwrap().get(key).unwrap()
}

/// Calls until `cond` holds, bounded.
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn redis_absent_at_start_then_started() {
    let mut server = RedisServer::start();
    server.stop();
    let cache = cache_for(&server.url()).await;
    assert_eq!(cache.health().await.status, HealthStatus::Degraded);
    // Calls work on the fallback meanwhile.
    cache.set("customer:1", &"fallback", None).await.unwrap();
    assert_eq!(
        cache.get::<String>("customer:1").await.unwrap().as_deref(),
        Some("fallback")
    );
    for _ in 0..5 {
        let _ = cache.get::<String>("customer:2").await.unwrap();
    }
    assert_eq!(cache.stats().circuit, CircuitState::Open);

    server.restart();
    eventually("the cache switches to Redis", async || {
        cache.set("customer:3", &"redis", None).await.unwrap();
        raw_get(&server, "f:customer:3").is_some()
    })
    .await;
    assert_eq!(cache.stats().circuit, CircuitState::Closed);
    assert_eq!(
        cache.get::<String>("customer:1").await.unwrap(),
        None,
        "fallback cleared on recovery"
    );
    assert_eq!(cache.health().await.status, HealthStatus::Healthy);
}

#[tokio::test]
async fn killed_mid_run_then_restarted() {
    let mut server = RedisServer::start();
    let cache = cache_for(&server.url()).await;
    cache.set("customer:1", &"v0", None).await.unwrap();
    cache.set("customer:2", &"kept", None).await.unwrap();
    assert!(raw_get(&server, "f:customer:1").is_some());

    server.stop();
    // Calls keep returning; the breaker opens; the fallback serves.
    for i in 0..10 {
        cache.set(&format!("during:{i}"), &i, None).await.unwrap();
        assert_eq!(
            cache.get::<i32>(&format!("during:{i}")).await.unwrap(),
            Some(i)
        );
    }
    let stats = cache.stats();
    assert_eq!(stats.circuit, CircuitState::Open);
    assert!(stats.fallback_active);
    let availability = |kind: &str| stats.total.errors.get(kind).copied().unwrap_or(0);
    assert!(
        availability("connection") + availability("timeout") >= 3,
        "{stats:?}"
    );
    assert!(
        stats.total.errors.get("circuit_open").copied().unwrap_or(0) > 0,
        "{stats:?}"
    );
    // An invalidation during the outage must not be lost.
    cache.delete("customer:1").await.unwrap();

    server.restart(); // no persistence: data is gone, so plant the stale value again
    server
        .client()
        .get_connection()
        .unwrap()
        .set::<_, _, ()>("f:customer:1", raw_value("v0"))
        .unwrap();
    eventually("recovery", async || {
        let _ = cache.get::<String>("probe:1").await;
        cache.stats().circuit == CircuitState::Closed && !cache.stats().fallback_active
    })
    .await;
    assert_eq!(
        raw_get(&server, "f:customer:1"),
        None,
        "the delete missed during the outage was replayed"
    );
    assert_eq!(
        cache.get::<i32>("during:3").await.unwrap(),
        None,
        "fallback cleared"
    );
}

fn raw_value(s: &str) -> Vec<u8> {
    // A value as cache-core writes it (via a throwaway in-memory-free path).
    let mut out = vec![0xC4, 1, 1];
    out.extend(bincode::serde::encode_to_vec(s, bincode::config::standard()).unwrap());
    out
}

#[tokio::test]
async fn paused_calls_are_bounded_by_the_timeout_then_by_the_breaker() {
    let mut server = RedisServer::start();
    let cache = cache_for(&server.url()).await;
    cache.set("k:1", &1u8, None).await.unwrap();
    server.pause();
    let mut slowest_before_open = Duration::ZERO;
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(cache.get::<u8>("k:1").await.unwrap(), None);
        slowest_before_open = slowest_before_open.max(t.elapsed());
    }
    assert!(
        slowest_before_open < TIMEOUT + Duration::from_millis(150),
        "{slowest_before_open:?}"
    );
    assert_eq!(cache.stats().circuit, CircuitState::Open);
    let t = Instant::now();
    for _ in 0..100 {
        let _ = cache.get::<u8>("k:1").await.unwrap();
    }
    let open_cost = t.elapsed() / 100;
    assert!(
        open_cost < Duration::from_millis(5),
        "breaker open: {open_cost:?} per call"
    );
    // The first call times out; the connection it timed out on is dropped
    // (a late reply would block what queues behind it), so the next ones
    // fail connecting to the paused server.
    let errors = cache.stats().total.errors;
    assert!(errors["timeout"] >= 1, "{errors:?}");
    assert!(
        errors["timeout"] + errors.get("connection").copied().unwrap_or(0) >= 3,
        "{errors:?}"
    );
    server.resume();
    eventually("recovery after resume", async || {
        cache.get::<u8>("k:1").await.unwrap() == Some(1)
    })
    .await;
}

#[tokio::test]
async fn wrong_password_degrades_and_counts_auth_errors() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let url = format!("redis://:wrong@127.0.0.1:{}", server.port());
    let cache = cache_for(&url).await;
    assert!(
        !format!("{cache:?}").contains("wrong"),
        "password redacted in Debug"
    );
    assert!(
        !cache.stats().target.contains("wrong"),
        "password redacted in stats"
    );
    cache.set("a:1", &1, None).await.unwrap();
    assert_eq!(
        cache.get::<i32>("a:1").await.unwrap(),
        Some(1),
        "fallback serves"
    );
    let health = cache.health().await;
    assert_eq!(health.status, HealthStatus::Degraded);
    let errors = cache.stats().total.errors;
    assert!(
        errors.contains_key("auth") && !errors.contains_key("connection"),
        "a refused password is an auth error: {errors:?}"
    );

    let good = cache_for(&format!("redis://:s3cret@127.0.0.1:{}", server.port())).await;
    good.set("a:1", &2, None).await.unwrap();
    assert_eq!(good.get::<i32>("a:1").await.unwrap(), Some(2));
    assert_eq!(good.health().await.status, HealthStatus::Healthy);
}

#[tokio::test]
async fn out_of_memory_is_counted_and_the_value_still_returned() {
    let server =
        RedisServer::start_with(&["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]);
    let cache = cache_for(&server.url()).await;
    let big = vec![1u8; 200_000];
    for i in 0..20 {
        cache.set(&format!("blob:{i}"), &big, None).await.unwrap();
    }
    let v: Vec<u8> = cache
        .get_or_set("blob:new", None, || async { vec![9u8; 200_000] })
        .await
        .unwrap();
    assert_eq!(v.len(), 200_000);
    let errors = cache.stats().total.errors;
    assert!(
        errors.get("out_of_memory").copied().unwrap_or(0) > 0,
        "{errors:?}"
    );
    assert_eq!(
        cache.stats().circuit,
        CircuitState::Closed,
        "OOM proves Redis is up: breaker stays closed"
    );
    let health = cache.health().await;
    assert_eq!(
        health.status,
        HealthStatus::Degraded,
        "every write fails: not healthy ({health:?})"
    );
    assert!(
        health.error.as_deref().unwrap_or("").contains("OOM"),
        "the reason is Redis' own: {health:?}"
    );
    // Memory limit lifted: the next write succeeds and health recovers.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut server.client().get_connection().unwrap())
        .unwrap();
    cache.set("blob:small", &1u8, None).await.unwrap();
    assert_eq!(cache.health().await.status, HealthStatus::Healthy);
}

#[tokio::test]
async fn corrupt_and_foreign_bytes_are_misses_and_get_overwritten() {
    let server = RedisServer::start();
    let cache = cache_for(&server.url()).await;
    let mut conn = server.client().get_connection().unwrap();
    let _: () = conn
        .set("f:customer:1", "{\"id\": 1, \"written_by\": \"python\"}")
        .unwrap();
    let _: () = conn
        .set("f:customer:2", vec![0xC4u8, 1, 1, 0xFF, 0xFF])
        .unwrap();
    let _: () = conn.set("f:customer:3", vec![0xC4u8, 9, 1, 0]).unwrap();
    let _: () = conn.sadd("f:customer:4", "a set, not a string").unwrap();
    for id in 1..=3 {
        assert_eq!(
            cache
                .get::<String>(&format!("customer:{id}"))
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(cache.stats().total.decode_failures, 3);
    // WRONGTYPE: still just a miss for the caller.
    assert_eq!(cache.get::<String>("customer:4").await.unwrap(), None);
    let fresh: String = cache
        .get_or_set("customer:1", None, || async { "fresh".to_owned() })
        .await
        .unwrap();
    assert_eq!(fresh, "fresh");
    assert_eq!(
        cache.get::<String>("customer:1").await.unwrap().as_deref(),
        Some("fresh"),
        "overwritten"
    );
}

#[tokio::test]
async fn malformed_configuration_is_a_typed_error_naming_the_variable() {
    let lookup = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    let err =
        CacheConfig::from_lookup(lookup(&[("REDIS_URL", "http://localhost:6379")])).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::InvalidUrl {
                variable: "REDIS_URL",
                ..
            }
        ),
        "{err}"
    );
    let err = CacheConfig::from_lookup(lookup(&[("REDIS_URL", "redis://:pw@[::1")])).unwrap_err();
    assert!(!err.to_string().contains("pw@"), "password redacted: {err}");
    for (var, value) in [
        ("CACHE_TIMEOUT_MS", "fast"),
        ("CACHE_ENABLED", "maybe"),
        ("CACHE_DEFAULT_TTL", "-5"),
        ("REDIS_POOL_SIZE", "0"),
        ("CACHE_CB_FAILURES", "x"),
        ("CACHE_CB_COOLDOWN_S", "1e3"),
        ("CACHE_NAMESPACE", "a*b"),
        ("CACHE_NEAR_CAPACITY", "0"),
        ("CACHE_NEAR_MAX_BYTES", "12"),
        ("CACHE_NEAR_MAX_BYTES", "64MiB"),
    ] {
        let pairs: &'static [(&'static str, &'static str)] = Box::leak(Box::new([(var, value)]));
        let err = CacheConfig::from_lookup(lookup(pairs)).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { variable, .. } if *variable == var),
            "{err}"
        );
        assert!(err.to_string().contains(var), "{err}");
    }
    let err = Cache::builder()
        .redis_url("not a url")
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("redis_url"), "{err}");
    let near = CacheConfig::from_lookup(lookup(&[("CACHE_NEAR_MAX_BYTES", "1048576")])).unwrap();
    assert_eq!(near.near_max_bytes, 1_048_576);
    let disabled = CacheConfig::from_lookup(lookup(&[("CACHE_ENABLED", "false")])).unwrap();
    let cache = Cache::builder().config(disabled).build().await.unwrap();
    cache.set("x:1", &1, None).await.unwrap();
    assert_eq!(cache.get::<i32>("x:1").await.unwrap(), None);
    assert_eq!(cache.health().await.status, HealthStatus::Disabled);
    let _ = ErrorKind::ALL;
}

/// `ACL SETUSER user rules...` on `server`.
fn acl_setuser(server: &RedisServer, user: &str, rules: &[&str]) {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(user)
        .arg(rules)
        .query(&mut server.client().get_connection().unwrap())
        .unwrap();
}

/// A lease marker as another process would have left it (envelope header,
/// codec id 0, an 8-byte token).
fn foreign_lease_marker() -> Vec<u8> {
    let mut marker = vec![0xC4, 1, 0];
    marker.extend_from_slice(&42u64.to_be_bytes());
    marker
}

#[tokio::test]
async fn orphaned_lease_markers_and_other_types_do_not_stall_loads() {
    let server = RedisServer::start();
    let cache = cache_for(&server.url()).await;
    let mut conn = server.client().get_connection().unwrap();
    // A marker whose TTL is gone, and values of other types, with and
    // without a TTL.
    let _: () = conn.set("f:customer:1", foreign_lease_marker()).unwrap();
    let _: () = conn.sadd("f:customer:2", "a set").unwrap();
    let _: () = conn.rpush("f:customer:3", "a list").unwrap();
    let _: () = conn.expire("f:customer:3", 600).unwrap();
    for id in 1..=3u64 {
        let started = Instant::now();
        let v: u64 = cache
            .get_or_set(&format!("customer:{id}"), None, || async move { id * 10 })
            .await
            .unwrap();
        assert_eq!(v, id * 10);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "customer:{id} waited {:?} (the lease TTL is 3 s)",
            started.elapsed()
        );
        assert_eq!(
            cache.get::<u64>(&format!("customer:{id}")).await.unwrap(),
            Some(id * 10),
            "repaired and stored"
        );
    }
    assert_eq!(cache.stats().circuit, CircuitState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_value_too_large_to_read_does_not_open_the_breaker() {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(server.url())
        .namespace("f")
        .timeout(Duration::from_millis(50))
        .circuit_breaker(5, Duration::from_secs(30))
        .max_value_bytes(1 << 20)
        .build()
        .await
        .unwrap();
    // 64 MiB written by someone else at one of our keys: no read of it
    // finishes within the timeout.
    let mut conn = server.client().get_connection().unwrap();
    let _: () = conn.set("f:blob:big", vec![7u8; 64 << 20]).unwrap();
    cache.set("customer:1", &1u64, None).await.unwrap();

    // Read it again and again (with no success in between to reset the
    // breaker's count of consecutive failures).
    for _ in 0..5 {
        assert_eq!(cache.get::<Vec<u8>>("blob:big").await.unwrap(), None);
    }
    let stats = cache.stats();
    assert_eq!(stats.circuit, CircuitState::Closed, "{stats:?}");
    // (Retried: on a loaded machine one read of it may time out too.)
    let mut other = None;
    for _ in 0..3 {
        other = cache.get::<u64>("customer:1").await.unwrap();
        if other.is_some() {
            break;
        }
    }
    assert_eq!(other, Some(1), "other keys are still read from Redis");
    let stats = cache.stats();
    assert_eq!(stats.circuit, CircuitState::Closed, "{stats:?}");
    assert!(
        !conn.exists::<_, bool>("f:blob:big").unwrap(),
        "the value nobody can read was deleted"
    );
    assert!(stats.total.oversized >= 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_a_caller_after_an_invalidation_gets_no_older_load() {
    // Redis at maxmemory refuses the lease and the store, but reads and
    // deletes work: loads run without a lease, so only the single-flight
    // table stands between a caller and a load older than an invalidation.
    let server =
        RedisServer::start_with(&["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]);
    let cache = cache_for(&server.url()).await;
    let big = vec![1u8; 200_000];
    for i in 0..20 {
        cache.set(&format!("blob:{i}"), &big, None).await.unwrap();
    }
    let db = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    let loaded = std::sync::Arc::new(tokio::sync::Notify::new());
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let leader = {
        let (cache, db, loaded, release) =
            (cache.clone(), db.clone(), loaded.clone(), release.clone());
        tokio::spawn(async move {
            cache
                .get_or_set("customer:1", None, || async move {
                    let v = db.load(std::sync::atomic::Ordering::SeqCst);
                    loaded.notify_one();
                    release.notified().await;
                    v
                })
                .await
                .unwrap()
        })
    };
    loaded.notified().await;
    // The write: the database changes, then the cache entry is invalidated.
    db.store(2, std::sync::atomic::Ordering::SeqCst);
    cache.delete("customer:1").await.unwrap();
    // A caller that starts after the invalidation returned.
    let follower = {
        let (cache, db) = (cache.clone(), db.clone());
        tokio::spawn(async move {
            cache
                .get_or_set("customer:1", None, || async move {
                    db.load(std::sync::atomic::Ordering::SeqCst)
                })
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    release.notify_one();
    assert_eq!(leader.await.unwrap(), 1, "the leader gets what it loaded");
    assert_eq!(
        follower.await.unwrap(),
        2,
        "a caller that started after the invalidation must not get the older load"
    );
}

#[tokio::test]
async fn a_user_without_scripting_stores_nothing_never_stalls_and_recovers() {
    let server = RedisServer::start();
    let acl = |rules: &[&str]| acl_setuser(&server, "app", rules);
    acl(&["on", ">app-secret", "~*", "+@all", "-@scripting"]);
    let url = server
        .url()
        .replacen("redis://", "redis://app:app-secret@", 1);
    let cache = cache_for(&url).await;
    for id in 1..=3u64 {
        let started = Instant::now();
        let v: u64 = cache
            .get_or_set(&format!("customer:{id}"), None, || async move { id })
            .await
            .unwrap();
        assert_eq!(v, id);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "customer:{id} took {:?}",
            started.elapsed()
        );
    }
    // Without a lease a store could land after an invalidation that raced
    // the load: nothing is stored, and nothing is left waiting on a lease.
    let started = Instant::now();
    let again: u64 = cache
        .get_or_set("customer:1", None, || async { 10 })
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(again, 10, "loaded again: nothing was stored");
    assert_eq!(cache.get::<u64>("customer:2").await.unwrap(), None);
    assert_eq!(cache.stats().circuit, CircuitState::Closed);

    // The permission comes back (an ACL change undone): so do leases and
    // stores, without a restart.
    acl(&["+@scripting"]);
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let _: u64 = cache
        .get_or_set("customer:4", None, || async { 4 })
        .await
        .unwrap();
    assert_eq!(cache.get::<u64>("customer:4").await.unwrap(), Some(4));
}

#[tokio::test]
async fn health_recovers_once_an_acl_change_is_undone() {
    let server = RedisServer::start();
    let acl = |rules: &[&str]| acl_setuser(&server, "default", rules);
    let cache = cache_for(&server.url()).await;
    cache.set("customer:1", &1u64, None).await.unwrap();
    acl(&["-@write"]);
    for i in 0..20u64 {
        let _ = cache
            .get_or_set(&format!("customer:{i}"), None, || async move { i })
            .await
            .unwrap();
        cache.delete(&format!("customer:{i}")).await.unwrap();
        cache.invalidate_prefix("query").await.unwrap();
    }
    acl(&["+@all"]);
    let started = Instant::now();
    loop {
        let _ = cache
            .get_or_set("customer:1", None, || async { 1u64 })
            .await
            .unwrap();
        let health = cache.health().await;
        if health.status == HealthStatus::Healthy {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still {health:?} / {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn health_recovers_after_a_store_refused_mid_load() {
    let server = RedisServer::start();
    let acl = |rules: &[&str]| acl_setuser(&server, "default", rules);
    let cache = cache_for(&server.url()).await;
    // The lease is taken, then writes are forbidden while the body runs:
    // the store (a script writing the key) is refused.
    let v: u64 = cache
        .get_or_set("customer:1", None, || async {
            acl(&["-@write"]);
            1
        })
        .await
        .unwrap();
    assert_eq!(v, 1);
    acl(&["+@all"]);
    let started = Instant::now();
    let mut i = 10u64;
    loop {
        i += 1;
        let _ = cache
            .get_or_set(&format!("customer:{i}"), None, || async move { i })
            .await
            .unwrap();
        let health = cache.health().await;
        if health.status == HealthStatus::Healthy {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still {health:?} / {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stopped Redis (SIGSTOP: connections stay open, nothing answers) under
/// concurrent calls of every kind: no call waits much past its timeout,
/// whatever lock, reconnection, lease or recovery it meets, before the
/// breaker opens, while it is open, and as Redis comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_never_holds_a_call_much_past_its_timeout() {
    stopped_redis_under_load(5).await;
}

/// The same with a breaker that never opens: every call meets the stopped
/// Redis (and the reconnections that follow a timeout), and still none
/// waits much past its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_with_the_breaker_kept_closed_never_holds_a_call() {
    stopped_redis_under_load(1_000_000).await;
}

async fn stopped_redis_under_load(breaker_failures: u32) {
    const CALL_TIMEOUT: Duration = Duration::from_millis(250);
    let mut server = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(server.url())
        .namespace("stopped")
        .timeout(CALL_TIMEOUT)
        .circuit_breaker(breaker_failures, Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    for i in 0..8u32 {
        cache.set(&format!("k:{i}"), &i, None).await.unwrap();
    }
    let slowest = std::sync::Arc::new(std::sync::Mutex::new((Duration::ZERO, String::new())));
    let run = |until: Instant| {
        let mut tasks = Vec::new();
        for task in 0..16u32 {
            let (cache, slowest) = (cache.clone(), slowest.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u32;
                while Instant::now() < until {
                    n += 1;
                    let key = format!("k:{}", (task + n) % 8);
                    let started = Instant::now();
                    let what = match n % 5 {
                        0 => {
                            let _ = cache.get::<u32>(&key).await.unwrap();
                            "get"
                        }
                        1 => {
                            let _ = cache
                                .get_or_set(&key, None, || async { 1u32 })
                                .await
                                .unwrap();
                            "get_or_set"
                        }
                        2 => {
                            cache.set(&key, &n, None).await.unwrap();
                            "set"
                        }
                        3 => {
                            cache.delete(&key).await.unwrap();
                            "delete"
                        }
                        _ => {
                            let _ = cache.invalidate_prefix("k").await.unwrap();
                            "invalidate_prefix"
                        }
                    };
                    let took = started.elapsed();
                    {
                        let mut worst = slowest.lock().unwrap();
                        if took > worst.0 {
                            *worst = (took, what.to_owned());
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        tasks
    };
    let tasks = run(Instant::now() + Duration::from_secs(4));
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.pause();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.resume();
    for task in tasks {
        task.await.unwrap();
    }
    let (took, what) = slowest.lock().unwrap().clone();
    eprintln!("breaker threshold {breaker_failures}: the slowest call ({what}) took {took:?}");
    // The timeout, and a tenth of a second to tell a slow key from a slow
    // Redis, and scheduling on a shared machine.
    assert!(
        took < CALL_TIMEOUT + Duration::from_millis(300),
        "the slowest call ({what}) took {took:?}"
    );
    eventually("back on Redis", async || {
        cache.set("k:0", &5u32, None).await.unwrap();
        cache.stats().circuit == CircuitState::Closed && !cache.stats().fallback_active
    })
    .await;
}

/// Redis restarted from a snapshot taken before an invalidation brings the
/// invalidated value back into Redis; neither the cache that saw the
/// restart nor one started after it serves it (the namespace is cleared
/// before Redis is trusted again), unless persistence is declared trusted.
#[tokio::test]
async fn redis_restored_from_an_older_snapshot_does_not_bring_invalidated_values_back() {
    let mut server = RedisServer::start();
    let cache = cache_for(&server.url()).await;
    cache.set("customer:1", &"before", None).await.unwrap();
    let mut admin = server.client().get_connection().unwrap();
    let _: () = redis::cmd("SAVE").query(&mut admin).unwrap();
    cache.delete("customer:1").await.unwrap();
    assert_eq!(cache.get::<String>("customer:1").await.unwrap(), None);

    // kill and restart from the snapshot: the deleted value is back in Redis.
    server.stop();
    server.restart();
    assert!(raw_get(&server, "f:customer:1").is_some(), "restored");

    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            cache.get::<String>("customer:1").await.unwrap(),
            None,
            "an invalidated value came back after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("back on Redis, the restored value gone", async || {
        let stats = cache.stats();
        stats.circuit == CircuitState::Closed
            && !stats.fallback_active
            && raw_get(&server, "f:customer:1").is_none()
    })
    .await;

    // Once more, with a cache started after the restart.
    cache.set("customer:2", &"before", None).await.unwrap();
    let mut admin = server.client().get_connection().unwrap();
    let _: () = redis::cmd("SAVE").query(&mut admin).unwrap();
    cache.delete("customer:2").await.unwrap();
    drop(cache);
    server.stop();
    server.restart();
    let fresh = cache_for(&server.url()).await;
    for _ in 0..20 {
        assert_eq!(fresh.get::<String>("customer:2").await.unwrap(), None);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Declared trusted: what Redis kept is served.
    let trusting = Cache::builder()
        .redis_url(server.url())
        .namespace("trusted")
        .trust_persistence(true)
        .build()
        .await
        .unwrap();
    trusting.set("customer:3", &"kept", None).await.unwrap();
    let mut admin = server.client().get_connection().unwrap();
    let _: () = redis::cmd("SAVE").query(&mut admin).unwrap();
    server.stop();
    server.restart();
    eventually("the kept value is served", async || {
        trusting
            .get::<String>("customer:3")
            .await
            .unwrap()
            .as_deref()
            == Some("kept")
    })
    .await;
}

#[derive(Debug, PartialEq)]
enum SaveError {
    Refused,
}

impl From<cache_core::WriteRefused> for SaveError {
    fn from(_: cache_core::WriteRefused) -> Self {
        SaveError::Refused
    }
}

#[cache_core::invalidates("customer:{id}", cache = cache, fail_closed)]
async fn save_fail_closed(
    cache: &Cache,
    writes: &std::sync::atomic::AtomicU32,
    id: u64,
) -> Result<(), SaveError> {
    let _ = id;
    writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

/// `fail_closed`: while Redis is away a write is refused before its body
/// runs (the caller can answer 503) instead of being acknowledged with an
/// invalidation other instances would not see; once Redis is back, writes
/// go through again.
#[tokio::test]
async fn fail_closed_refuses_writes_while_invalidations_cannot_be_delivered() {
    let mut server = RedisServer::start();
    let cache = cache_for(&server.url()).await;
    let writes = std::sync::atomic::AtomicU32::new(0);
    assert_eq!(save_fail_closed(&cache, &writes, 1).await, Ok(()));
    server.stop();
    // The first write after the outage began is accepted (nothing known
    // yet) and its invalidation remembered; from then on writes are refused.
    let _ = save_fail_closed(&cache, &writes, 1).await;
    let before = writes.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        save_fail_closed(&cache, &writes, 1).await,
        Err(SaveError::Refused)
    );
    assert_eq!(
        writes.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "the body did not run"
    );
    assert!(cache.check_deliverable().is_err());
    server.restart();
    eventually("writes accepted again", async || {
        save_fail_closed(&cache, &writes, 1).await.is_ok()
    })
    .await;
}
