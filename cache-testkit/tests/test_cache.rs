//! TestCache's own behaviour: clock, store semantics, the log, and each kind
//! of fault going through the cache's real resilience layer.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use cache_core::{CircuitState, ErrorKind, HealthStatus};
use cache_testkit::{Fault, LogEntry, Method, Op, TestCache};

const MIN: Duration = Duration::from_secs(60);

fn ops(entries: &[LogEntry]) -> Vec<(Method, Op)> {
    entries.iter().map(|e| (e.method, e.op.clone())).collect()
}

/// A test cache whose breaker recovers quickly (real-time cooldown).
fn quick_breaker() -> TestCache {
    TestCache::builder()
        .circuit_breaker(3, Duration::from_millis(60))
        .build()
}

/// Waits out [`quick_breaker`]'s cooldown.
async fn cooldown() {
    tokio::time::sleep(Duration::from_millis(90)).await;
}

// ----- clock and store ------------------------------------------------------

#[tokio::test]
async fn ttl_expires_when_the_clock_advances_and_not_before() {
    let test = TestCache::new();
    let cache = test.cache();
    cache
        .set("session:a", &"alice", Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(
        test.remaining_ttl("session:a"),
        Some(Duration::from_secs(10))
    );

    test.advance(Duration::from_secs(9));
    assert_eq!(
        cache.ttl("session:a").await.unwrap(),
        Some(Duration::from_secs(1))
    );
    assert_eq!(
        cache.get::<String>("session:a").await.unwrap().as_deref(),
        Some("alice")
    );

    test.advance(Duration::from_secs(1));
    assert_eq!(cache.get::<String>("session:a").await.unwrap(), None);
    assert!(!test.contains("session:a"));
    assert_eq!(cache.ttl("session:a").await.unwrap(), None);
    assert_eq!(test.now(), Duration::from_secs(10));

    // `ttl` reads the key first (the read every read API makes), so the
    // backend saw two reads that found it and two that did not.
    test.key("session:a")
        .assert_sets(1)
        .assert_hits(2)
        .assert_misses(2);
    assert_eq!(test.stats().total.hits, 1);
    assert_eq!(test.stats().total.misses, 1);
}

#[tokio::test]
async fn expire_and_default_ttl_use_the_manual_clock() {
    let test = TestCache::builder()
        .default_ttl(Duration::from_secs(30))
        .build();
    let cache = test.cache();
    cache.set("k:1", &1u32, None).await.unwrap();
    assert_eq!(test.remaining_ttl("k:1"), Some(Duration::from_secs(30)));

    assert!(cache.expire("k:1", Duration::from_secs(5)).await.unwrap());
    assert!(!cache.expire("k:missing", MIN).await.unwrap());
    test.advance(Duration::from_secs(4));
    assert!(cache.exists("k:1").await.unwrap());
    test.advance(Duration::from_secs(1));
    assert!(!cache.exists("k:1").await.unwrap());

    let k1: Vec<Op> = test.log_for("k:1").into_iter().map(|e| e.op).collect();
    assert_eq!(
        k1,
        vec![
            Op::Set {
                ttl: Duration::from_secs(30)
            },
            // `expire` and `exists` read the key (the read every read API
            // makes: a load's lease marker is not a value).
            Op::Get { found: true },
            Op::Expire {
                found: true,
                ttl: Duration::from_secs(5)
            },
            Op::Get { found: true },
            Op::Get { found: false },
        ]
    );
}

#[tokio::test]
async fn counters_keep_their_ttl_and_reject_non_integers() {
    let test = TestCache::new();
    let cache = test.cache();
    assert_eq!(cache.incr("hits:page", 5).await.unwrap(), 5);
    assert_eq!(cache.decr("hits:page", 2).await.unwrap(), 3);
    assert_eq!(test.raw("hits:page").as_deref(), Some(&b"3"[..]));
    assert!(cache.expire("hits:page", MIN).await.unwrap());
    assert_eq!(cache.incr("hits:page", 1).await.unwrap(), 4);
    assert_eq!(test.remaining_ttl("hits:page"), Some(MIN));

    test.put_raw("hits:bad", b"not a number".to_vec());
    let err = cache.incr("hits:bad", 1).await.unwrap_err();
    assert!(err.to_string().contains("wrong_type"), "{err}");
    assert_eq!(
        test.log_for("hits:bad")[0].op,
        Op::Incr {
            delta: 1,
            value: None
        }
    );
}

#[tokio::test]
async fn multi_key_calls_log_one_entry_per_key_under_one_call_number() {
    let test = TestCache::new();
    let cache = test.cache();
    cache
        .set_many(&[("item:1", 1u8), ("item:2", 2u8)], Some(MIN))
        .await
        .unwrap();
    let got = cache
        .get_many::<u8>(&["item:1", "item:2", "item:3"])
        .await
        .unwrap();
    assert_eq!(got, vec![Some(1), Some(2), None]);
    assert_eq!(cache.delete_many(&["item:1", "item:3"]).await.unwrap(), 1);

    // `get_many` reads each key with the read `get` makes, all at once.
    let log = test.log();
    assert_eq!(log.len(), 2 + 3 + 2);
    assert_eq!(test.calls(), 1 + 3 + 1);
    assert!(
        log[..2]
            .iter()
            .all(|e| e.call == 1 && e.method == Method::SetMany)
    );
    assert!(log[2..5].iter().all(|e| e.method == Method::Get));
    assert!(
        log[5..]
            .iter()
            .all(|e| e.call == 5 && e.method == Method::Delete)
    );
    assert_eq!(log[2].storage_key, "test:item:1");
    assert_eq!(log[2].key, "item:1");

    assert_eq!(test.prefix("item").sets(), 2);
    assert_eq!(test.prefix("item").hits(), 2);
    assert_eq!(test.prefix("item").misses(), 1);
    assert_eq!(test.prefix("item").deletes(), 2);
    assert_eq!(log[5].op, Op::Delete { existed: true });
    assert_eq!(log[6].op, Op::Delete { existed: false });
}

#[tokio::test]
async fn pattern_deletes_follow_redis_globs_within_the_namespace() {
    let test = TestCache::new();
    let cache = test.cache();
    for key in ["customer:1", "customer:2", "customers:1", "order:1"] {
        cache.set(key, &0u8, Some(MIN)).await.unwrap();
    }
    test.put_raw("customer:9", b"x".to_vec());
    // Another namespace on the same store: never touched by this one.
    let mut config = cache_testkit::test_config();
    config.namespace = "other".to_owned();
    let other = test.another_instance_with(config);
    other
        .cache()
        .set("customer:1", &0u8, Some(MIN))
        .await
        .unwrap();

    assert_eq!(cache.delete_pattern("customer:[12]").await.unwrap(), 2);
    assert_eq!(test.key("customer:[12]").pattern_deletes(), 1);
    test.key("customer:1")
        .assert_invalidations(1)
        .assert_deletes(0);
    assert_eq!(
        test.keys(),
        vec!["customer:9", "customers:1", "order:1", "other:customer:1"]
    );

    assert_eq!(cache.invalidate_prefix("customer").await.unwrap(), 1);
    assert_eq!(test.key("customer:*").pattern_deletes(), 1);
    test.prefix("customer").assert_invalidations(2);
    assert!(test.contains("customers:1"));

    assert_eq!(cache.clear().await.unwrap(), 2);
    assert_eq!(test.key("*").pattern_deletes(), 1);
    assert_eq!(test.keys(), vec!["other:customer:1"]);
    assert_eq!(
        other.cache().get::<u8>("customer:1").await.unwrap(),
        Some(0)
    );
}

#[tokio::test]
async fn a_read_through_miss_is_read_lease_store_release() {
    let test = TestCache::new();
    let cache = test.cache();
    let v: u32 = cache
        .get_or_set("answer:1", Some(MIN), || async { 42 })
        .await
        .unwrap();
    let again: u32 = cache
        .get_or_set("answer:1", Some(MIN), || async { 0 })
        .await
        .unwrap();
    assert_eq!((v, again), (42, 42));
    assert_eq!(
        ops(&test.log()),
        vec![
            (Method::Get, Op::Get { found: false }),
            (Method::TryLease, Op::TryLease { acquired: true }),
            (
                Method::SetIfLease,
                Op::SetIfLease {
                    stored: true,
                    ttl: MIN
                }
            ),
            (Method::Get, Op::Get { found: true }),
        ]
    );
    test.key("answer:1")
        .assert_sets(1)
        .assert_hits(1)
        .assert_misses(1);
    assert_eq!(test.remaining_ttl("answer:1"), Some(MIN));
}

#[tokio::test]
async fn an_invalidation_during_a_load_wins_over_the_late_store() {
    // Two instances on one store: B deletes while A is loading.
    let a = TestCache::new();
    let b = a.another_instance();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let loader = {
        let cache = a.cache().clone();
        tokio::spawn(async move {
            cache
                .get_or_set("price:7", Some(MIN), || async move {
                    started_tx.send(()).unwrap();
                    go_rx.await.unwrap();
                    100u32 // stale by the time it is stored
                })
                .await
                .unwrap()
        })
    };
    started_rx.await.unwrap();
    assert!(
        b.cache().delete("price:7").await.unwrap(),
        "the lease marker is there"
    );
    go_tx.send(()).unwrap();
    assert_eq!(loader.await.unwrap(), 100);

    assert!(!a.contains("price:7"), "the stale value was not stored");
    assert_eq!(a.stats().total.stale_sets_prevented, 1);
    let tail: Vec<Op> = a.log_for("price:7").into_iter().map(|e| e.op).collect();
    assert_eq!(
        tail,
        [
            Op::Get { found: false },
            Op::TryLease { acquired: true },
            Op::Delete { existed: true },
            Op::SetIfLease {
                stored: false,
                ttl: MIN
            },
        ]
    );
}

#[tokio::test]
async fn instances_share_the_store_but_not_their_stats() {
    let a = TestCache::new();
    let b = a.another_instance();
    a.cache().set("user:1", &"u", Some(MIN)).await.unwrap();
    assert_eq!(
        b.cache().get::<String>("user:1").await.unwrap().as_deref(),
        Some("u")
    );
    assert_eq!(a.stats().total.hits, 0);
    assert_eq!(b.stats().total.hits, 1);
    a.key("user:1").assert_hits(1); // one log for both
    b.advance(MIN);
    assert!(!a.contains("user:1"), "one clock for both");
}

// ----- garbage --------------------------------------------------------------

#[tokio::test]
async fn planted_garbage_is_a_decode_failure_then_overwritten() {
    let test = TestCache::new();
    let cache = test.cache();
    test.put_raw("profile:1", b"\x00\xffnot an envelope".to_vec());
    assert_eq!(cache.get::<String>("profile:1").await.unwrap(), None);
    assert_eq!(test.stats().total.decode_failures, 1);
    // The backend did return bytes: the log calls that a hit (documented).
    test.key("profile:1").assert_hits(1);

    let v: String = cache
        .get_or_set("profile:1", Some(MIN), || async { "fresh".to_owned() })
        .await
        .unwrap();
    assert_eq!(v, "fresh");
    assert_ne!(test.raw("profile:1").unwrap(), b"\x00\xffnot an envelope");
    assert_eq!(
        cache.get::<String>("profile:1").await.unwrap().as_deref(),
        Some("fresh")
    );
    // get_or_set deleted the garbage before leasing the key.
    test.key("profile:1").assert_deletes(1).assert_sets(1);
}

// ----- faults ---------------------------------------------------------------

#[tokio::test]
async fn fail_next_fails_exactly_n_calls_and_the_cache_still_answers() {
    let test = TestCache::new();
    let cache = test.cache();
    cache.set("cfg:a", &7u8, Some(MIN)).await.unwrap();

    test.fail_next(2);
    assert_eq!(cache.get::<u8>("cfg:a").await.unwrap(), None);
    assert!(!cache.exists("cfg:a").await.unwrap());
    assert_eq!(cache.get::<u8>("cfg:a").await.unwrap(), Some(7));

    let stats = test.stats();
    assert_eq!(stats.total.errors["connection"], 2);
    assert_eq!(stats.total.total_errors(), 2);
    assert_eq!(stats.circuit, CircuitState::Closed);
    test.key("cfg:a").assert_failures(2);
    assert_eq!(
        test.log_for("cfg:a")[1].op,
        Op::Fault(Fault::Failed(ErrorKind::Connection))
    );
    test.key("cfg:a").assert_hits(1);
}

#[tokio::test]
async fn non_availability_errors_do_not_open_the_breaker() {
    let test = TestCache::new();
    test.fail_next_with(5, ErrorKind::WrongType);
    for _ in 0..5 {
        assert_eq!(test.cache().get::<u8>("x:1").await.unwrap(), None);
    }
    let stats = test.stats();
    assert_eq!(stats.total.errors["wrong_type"], 5);
    assert_eq!(stats.circuit, CircuitState::Closed);
}

#[tokio::test]
async fn a_dropped_call_is_cut_off_by_the_timeout() {
    let test = TestCache::new(); // 50 ms timeout
    let cache = test.cache();
    cache.set("slow:1", &1u8, Some(MIN)).await.unwrap();
    test.drop_next(1);
    let started = Instant::now();
    assert_eq!(cache.get::<u8>("slow:1").await.unwrap(), None);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(45), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(test.stats().total.errors["timeout"], 1);
    assert_eq!(test.log_for("slow:1")[1].op, Op::Fault(Fault::Dropped));
    assert_eq!(cache.get::<u8>("slow:1").await.unwrap(), Some(1));
}

#[tokio::test]
async fn a_delay_past_the_timeout_cancels_the_call_a_short_one_does_not() {
    let test = TestCache::new();
    let cache = test.cache();
    cache.set("d:1", &1u8, Some(MIN)).await.unwrap();

    test.delay_next(1, Duration::from_millis(300));
    assert_eq!(cache.get::<u8>("d:1").await.unwrap(), None);
    assert_eq!(test.stats().total.errors["timeout"], 1);
    assert_eq!(test.log_for("d:1")[1].op, Op::Fault(Fault::Cancelled));

    test.delay_next(1, Duration::from_millis(5));
    let started = Instant::now();
    assert_eq!(cache.get::<u8>("d:1").await.unwrap(), Some(1));
    assert!(started.elapsed() >= Duration::from_millis(5));
    assert_eq!(test.stats().total.total_errors(), 1);
    test.key("d:1").assert_hits(1);
}

#[tokio::test]
async fn the_breaker_opens_after_three_failures_and_calls_stop_reaching_the_backend() {
    // 3 failures; a long cooldown so that the breaker stays open for the test.
    let test = TestCache::builder()
        .circuit_breaker(3, Duration::from_secs(60))
        .build();
    let cache = test.cache();
    test.go_down();
    for _ in 0..3 {
        assert_eq!(cache.get::<u8>("b:1").await.unwrap(), None);
    }
    assert_eq!(test.stats().circuit, CircuitState::Open);
    assert_eq!(test.calls(), 3);
    test.key("b:1").assert_failures(3);
    assert_eq!(test.log_for("b:1")[0].op, Op::Fault(Fault::Down));

    test.come_back();
    for _ in 0..10 {
        assert_eq!(cache.get::<u8>("b:1").await.unwrap(), None);
    }
    assert_eq!(test.calls(), 3, "an open breaker skips the backend");
    let stats = test.stats();
    assert_eq!(stats.total.errors["connection"], 3);
    assert_eq!(stats.total.errors["circuit_open"], 10);
    assert_eq!(test.cache().health().await.status, HealthStatus::Degraded);
}

#[tokio::test]
async fn an_outage_is_served_by_the_fallback_and_recovery_replays_invalidations() {
    let test = quick_breaker();
    let cache = test.cache();
    cache.set("acct:1", &"old", Some(MIN)).await.unwrap();
    cache.set("acct:2", &"two", Some(MIN)).await.unwrap();

    test.go_down();
    // Writes during the outage land in the fallback and are read back from it.
    cache.set("acct:3", &"new", Some(MIN)).await.unwrap();
    assert_eq!(
        cache.get::<String>("acct:3").await.unwrap().as_deref(),
        Some("new")
    );
    // A delete the backend never received.
    cache.delete("acct:1").await.unwrap();
    // Open (or already half-open, if this machine stalled past the 60 ms cooldown).
    assert_ne!(test.stats().circuit, CircuitState::Closed);
    assert!(test.stats().total.fallback_hits >= 1);
    assert!(
        test.contains("acct:1"),
        "the backend still has the old value"
    );

    test.come_back();
    cooldown().await;
    // First call after the cooldown: the replay deletes acct:1, then reads.
    assert_eq!(cache.get::<String>("acct:1").await.unwrap(), None);
    assert!(!test.contains("acct:1"));
    assert_eq!(test.stats().circuit, CircuitState::Closed);
    assert!(!test.stats().fallback_active);
    let replayed: Vec<Op> = test
        .log_for("acct:1")
        .into_iter()
        .filter(|e| !e.is_fault())
        .map(|e| e.op)
        .collect();
    assert_eq!(
        replayed,
        vec![
            Op::Set { ttl: MIN },
            Op::Delete { existed: true },
            Op::Get { found: false },
        ]
    );
    // Untouched data survived; the fallback-only write is gone with the fallback.
    assert_eq!(
        cache.get::<String>("acct:2").await.unwrap().as_deref(),
        Some("two")
    );
    assert_eq!(cache.get::<String>("acct:3").await.unwrap(), None);
}

#[tokio::test]
async fn health_and_info_go_through_the_backend() {
    let test = TestCache::new();
    let cache = test.cache();
    cache.set("h:1", &1u8, Some(MIN)).await.unwrap();
    let health = cache.health().await;
    assert_eq!(health.status, HealthStatus::Healthy);
    assert_eq!(health.total_keys, Some(1));
    assert_eq!(cache.backend_info().await.total_keys, Some(1));
    assert_eq!(test.stats().backend, "test");
    let methods: Vec<Method> = test.log().iter().map(|e| e.method).collect();
    assert_eq!(
        methods,
        vec![Method::Set, Method::Ping, Method::Info, Method::Info]
    );

    test.go_down();
    assert_eq!(cache.health().await.status, HealthStatus::Degraded);
    test.clear_faults();
    assert_eq!(cache.health().await.status, HealthStatus::Healthy);
}

// ----- log helpers ----------------------------------------------------------

#[tokio::test]
async fn clear_log_resets_counts_but_not_the_store() {
    let test = TestCache::new();
    test.cache().set("c:1", &1u8, Some(MIN)).await.unwrap();
    test.clear_log();
    assert!(test.log().is_empty());
    test.key("c:1").assert_sets(0);
    assert_eq!(test.cache().get::<u8>("c:1").await.unwrap(), Some(1));
    test.key("c:1").assert_hits(1);
    assert_eq!(test.calls(), 2);
}

#[tokio::test]
async fn a_failed_assertion_prints_the_keys_log() {
    let test = TestCache::new();
    test.cache()
        .set("customer:42", &"Ada", Some(MIN))
        .await
        .unwrap();
    let _ = test.cache().get::<String>("customer:42").await.unwrap();
    let _ = test.cache().get::<String>("customer:7").await.unwrap();

    let err = catch_unwind(AssertUnwindSafe(|| {
        test.key("customer:42").assert_hits(2);
    }))
    .unwrap_err();
    let message = err.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("expected 2 hit(s) for key \"customer:42\", found 1"),
        "{message}"
    );
    assert!(
        message.contains("#1 set customer:42 -> stored, ttl 60s"),
        "{message}"
    );
    assert!(message.contains("#2 get customer:42 -> hit"), "{message}");
    assert!(!message.contains("customer:7"), "{message}");

    let err = catch_unwind(AssertUnwindSafe(|| {
        test.prefix("order").assert_misses(1);
    }))
    .unwrap_err();
    let message = err.downcast_ref::<String>().unwrap();
    assert!(message.contains("(no backend operations)"), "{message}");
    assert_eq!(test.log_text().lines().count(), 3);
}

#[tokio::test]
async fn key_and_prefix_views_count_every_kind_of_event() {
    let test = TestCache::new();
    let cache = test.cache().clone();
    cache.set("customer:42", &"Ada", Some(MIN)).await.unwrap();
    let _ = cache.get::<String>("customer:42").await.unwrap();
    let _ = cache.get::<String>("customer:7").await.unwrap();
    cache.delete("customer:42").await.unwrap();
    test.fail_next(1);
    let _ = cache.get::<String>("customer:9").await.unwrap();
    cache.invalidate_prefix("customer").await.unwrap();

    let key = test.key("customer:42");
    key.assert_sets(1)
        .assert_hits(1)
        .assert_misses(0)
        .assert_deletes(1)
        .assert_failures(0);
    assert_eq!(key.entries().len(), 3, "set, get, delete");
    // The delete; the pattern delete came after it and found nothing.
    key.assert_invalidations(1);
    test.key("customer:9").assert_failures(1);

    let prefix = test.prefix("customer");
    prefix
        .assert_hits(1)
        .assert_misses(1)
        .assert_sets(1)
        .assert_deletes(1)
        .assert_failures(1);
    // The key delete and the prefix's pattern delete.
    prefix.assert_invalidations(2);
    assert!(prefix.entries().iter().all(|e| e.prefix() == "customer"));

    // A failed assertion prints the scope's log.
    let err = catch_unwind(AssertUnwindSafe(|| {
        test.key("customer:42").assert_hits(2);
    }))
    .unwrap_err();
    let message = err.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("expected 2 hit(s) for key \"customer:42\", found 1"),
        "{message}"
    );
    assert!(message.contains("get customer:42 -> hit"), "{message}");
}
