//! The database fails (the service's fault switch, as `scripts/chaos.sh
//! db-down` flips it): reads past their TTL are served from the values
//! fail-safe kept, over HTTP, and a value a write or an admin invalidation
//! removed is never served (a `503` instead); `/health` says the database
//! is unavailable, and `/metrics` shows the fail-safe series. The router
//! runs on a real port over the test kit's cache (a manual clock, to go
//! past the TTLs) and over a redis-server.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use cache_core::Cache;
use cache_testkit::{RedisServer, TestCache};
use common::{get, request, send_json, serve};
use customer_service::{AppState, DbOutage, db};
use serde_json::{Value, json};

async fn customer(addr: SocketAddr, id: i64) -> (u16, Value) {
    let reply = get(addr, &format!("/api/customers/{id}")).await;
    let body = match reply.status {
        200 => reply.json(),
        _ => Value::Null,
    };
    (reply.status, body)
}

async fn name(addr: SocketAddr, id: i64) -> String {
    let (status, body) = customer(addr, id).await;
    assert_eq!(status, 200, "GET customer {id}: {body}");
    body["name"].as_str().expect("a name").to_owned()
}

async fn churn(addr: SocketAddr, id: i64) -> (u16, Value) {
    let reply = get(addr, &format!("/api/customers/{id}/churn-risk")).await;
    let body = match reply.status {
        200 => reply.json(),
        _ => Value::Null,
    };
    (reply.status, body)
}

async fn rename(addr: SocketAddr, id: i64, to: &str) -> u16 {
    send_json(
        addr,
        "PUT",
        &format!("/api/customers/{id}"),
        &json!({ "name": to }),
    )
    .await
    .status
}

/// One value of a Prometheus exposition: `name{prefix="p"} value`.
fn metric(text: &str, name: &str, prefix: &str) -> Option<f64> {
    let head = format!("{name}{{prefix=\"{prefix}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(head.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// The drill: values cached, a write, time past the TTLs, the database
/// down; then what every read gets. `past_ttl` moves past the customer TTL
/// (1 h) and the churn TTL (30 min) while staying within fail-safe.
async fn drill(addr: SocketAddr, outage: &DbOutage, past_ttl: impl AsyncFn()) {
    let seeded: Vec<String> = {
        let mut out = Vec::new();
        for id in 1..=4 {
            out.push(name(addr, id).await);
        }
        out
    };
    let (status, risk) = churn(addr, 1).await;
    assert_eq!(status, 200);
    // A write while the database is up: the next read loads it.
    assert_eq!(rename(addr, 2, "renamed-before-outage").await, 200);
    assert_eq!(name(addr, 2).await, "renamed-before-outage");

    past_ttl().await;
    outage.set(true);
    let health = get(addr, "/health").await.json();
    assert_eq!(health["database"], "unavailable", "{health}");

    // Past the TTL with the database down: the kept values answer.
    assert_eq!(name(addr, 1).await, seeded[0]);
    assert_eq!(name(addr, 3).await, seeded[2]);
    assert_eq!(
        name(addr, 2).await,
        "renamed-before-outage",
        "never the old name"
    );
    // The score is recomputed from the kept profile (the slow part needs
    // no database), or answered from its own kept value.
    assert_eq!(churn(addr, 1).await, (200, risk.clone()));
    // Repeated reads within the throttle: still answered, no new failure.
    for _ in 0..3 {
        assert_eq!(name(addr, 1).await, seeded[0]);
    }

    // A write during the outage fails, and still invalidates: the kept
    // value of that customer is gone, so its reads fail rather than serve
    // what the write may have changed.
    assert_eq!(rename(addr, 3, "lost-write").await, 503);
    let (status, body) = customer(addr, 3).await;
    assert_eq!(status, 503, "customer 3 after its invalidation: {body}");
    // Its churn score was invalidated with it.
    assert_eq!(churn(addr, 3).await.0, 503);
    // An admin invalidation during the outage: the same.
    let reply = request(
        addr,
        "POST",
        "/admin/cache/invalidate",
        &[
            ("authorization", "Bearer drill"),
            ("content-type", "application/json"),
        ],
        json!({ "pattern": "customer:4" }).to_string().as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (status, body) = customer(addr, 4).await;
    assert_eq!(
        status, 503,
        "customer 4 after the admin invalidation: {body}"
    );
    // Others are still served from what fail-safe kept.
    assert_eq!(name(addr, 1).await, seeded[0]);

    // The database is back: fresh reads; the failed write never landed.
    outage.set(false);
    assert_eq!(name(addr, 3).await, seeded[2]);
    assert_eq!(name(addr, 4).await, seeded[3]);
    let health = get(addr, "/health").await.json();
    assert_eq!(health["database"], "ok", "{health}");

    // The fail-safe series are on /metrics.
    let text = get(addr, "/metrics").await.text();
    for (name, prefix) in [
        ("cache_fail_safe_activations_total", "customer"),
        ("cache_stale_hits_total", "customer"),
    ] {
        assert!(
            metric(&text, name, prefix).is_some_and(|v| v >= 1.0),
            "{name}{{prefix=\"{prefix}\"}} did not move:\n{text}"
        );
    }
    for name in [
        "cache_soft_timeouts_total",
        "cache_hard_timeouts_total",
        "cache_refreshes_total",
        "cache_refresh_failures_total",
    ] {
        assert!(
            metric(&text, name, "churn").is_some(),
            "{name}{{prefix=\"churn\"}} is not exported:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_values_answer_while_the_database_fails_never_invalidated_ones() {
    let test = TestCache::new();
    let pool = db::connect("sqlite::memory:").await.expect("database");
    let outage = DbOutage::new();
    let state = AppState::new(pool, test.cache().clone())
        .with_admin_token(Some("drill".into()))
        .with_db_outage(outage.clone());
    let addr = serve(state).await;
    let past_ttl = async || test.advance(Duration::from_secs(3601));
    drill(addr, &outage, past_ttl).await;
}

/// On Redis the TTLs (1 h) can't be waited for: the values are fresh, and
/// the drill shows the other half, the invalidations, across two service
/// instances on one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_an_invalidated_value_is_never_served_while_the_database_fails() {
    let server = RedisServer::start();
    let pool = db::connect("sqlite::memory:").await.expect("database");
    let outage = DbOutage::new();
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let cache = Cache::builder()
            .redis_url(server.url())
            .namespace("cs-outage")
            .timeout(Duration::from_millis(500))
            .build()
            .await
            .expect("cache");
        let state = AppState::new(pool.clone(), cache)
            .with_admin_token(Some("drill".into()))
            .with_db_outage(outage.clone());
        addrs.push(serve(state).await);
    }
    let (a, b) = (addrs[0], addrs[1]);
    let seeded = name(a, 5).await;
    assert_eq!(name(b, 5).await, seeded);
    name(a, 6).await;
    outage.set(true);
    // Cached values answer in both instances.
    assert_eq!(name(b, 5).await, seeded);
    // A failed write in one instance invalidates in both.
    assert_eq!(rename(a, 6, "lost-write").await, 503);
    for addr in [a, b] {
        let mut status = 0;
        for _ in 0..100 {
            status = customer(addr, 6).await.0;
            if status == 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(status, 503, "customer 6 served after its invalidation");
    }
    outage.set(false);
    assert_ne!(name(b, 6).await, "lost-write");
}

/// A churn score read in the last 20% of its TTL answers at once and is
/// recomputed in the background: the refresh shows on `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_churn_score_near_its_ttl_is_refreshed_ahead() {
    let test = TestCache::new();
    let pool = db::connect("sqlite::memory:").await.expect("database");
    let addr = serve(AppState::new(pool, test.cache().clone())).await;
    let (status, risk) = churn(addr, 7).await;
    assert_eq!(status, 200);
    test.advance(Duration::from_secs(1441));
    assert_eq!(churn(addr, 7).await, (200, risk));
    let mut refreshed = false;
    for _ in 0..200 {
        let stats = test.cache().stats();
        if stats.prefixes["churn"].refreshes == 1 && stats.prefixes["churn"].loads == 2 {
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refreshed, "{:?}", test.cache().stats().prefixes["churn"]);
    let ttl = test
        .cache()
        .ttl("churn:7")
        .await
        .unwrap()
        .expect("still cached");
    assert!(ttl > Duration::from_secs(1790), "a new TTL: {ttl:?}");
}

/// The binary's switch for the chaos suite: the database fails while the
/// file `CHAOS_DB_DOWN_FILE` names exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_fails_its_database_while_the_drill_file_exists() {
    let dir = std::env::temp_dir().join(format!("cs-db-down-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("db-down");
    let _ = std::fs::remove_file(&file);
    let service = common::Service::start(&[("CHAOS_DB_DOWN_FILE", file.to_str().unwrap())]).await;
    assert_eq!(customer(service.addr, 11).await.0, 200);
    std::fs::write(&file, b"").unwrap();
    assert_eq!(customer(service.addr, 11).await.0, 200, "cached");
    assert_eq!(
        customer(service.addr, 12).await.0,
        503,
        "not cached: the database fails"
    );
    let health = get(service.addr, "/health").await.json();
    assert_eq!(health["database"], "unavailable", "{health}");
    std::fs::remove_file(&file).unwrap();
    assert_eq!(customer(service.addr, 12).await.0, 200);
    let _ = std::fs::remove_dir_all(&dir);
}
