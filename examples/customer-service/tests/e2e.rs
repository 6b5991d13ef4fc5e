//! End-to-end: the service's router on a real port, over HTTP/1.1, against
//! an in-memory SQLite database and a real redis-server (cache-testkit).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cache_core::Cache;
use cache_testkit::RedisServer;
use common::{get, request, send_json, serve};
use customer_service::{AppState, db};
use serde_json::{Value, json};

fn prefix_stat(stats: &Value, prefix: &str, field: &str) -> u64 {
    stats["prefixes"][prefix][field].as_u64().unwrap_or(0)
}

async fn redis_keys(server: &RedisServer, pattern: &str) -> Vec<String> {
    let mut conn = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    keys.sort();
    keys
}

/// Polls `/health` until the cache status is `want` (or panics after `limit`).
async fn wait_for_cache(addr: SocketAddr, want: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let health = get(addr, "/health").await;
        assert_eq!(health.status, 200, "{}", health.text());
        let body = health.json();
        if body["cache"]["status"] == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "cache never became {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_end_to_end_with_outage() {
    let mut server = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(server.url())
        .namespace("cs-e2e")
        .circuit_breaker(2, Duration::from_millis(300))
        // Generous: a busy 2-core machine must not turn hits into timeouts.
        .timeout(Duration::from_millis(500))
        .build()
        .await
        .expect("cache");
    let pool = db::connect("sqlite::memory:").await.expect("database");
    let state = AppState::new(pool, cache).with_admin_token(Some("t0ken".into()));
    let addr = serve(state).await;

    // Second GET is a hit.
    let first = get(addr, "/api/customers/7").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let second = get(addr, "/api/customers/7").await;
    assert_eq!(second.status, 200);
    assert_eq!(first.json(), second.json());
    assert_eq!(first.json()["id"], 7);
    let stats = get(addr, "/admin/cache/stats").await.json();
    assert_eq!(prefix_stat(&stats, "customer", "misses"), 1, "{stats}");
    assert_eq!(prefix_stat(&stats, "customer", "hits"), 1, "{stats}");
    assert_eq!(stats["backend"], "redis");
    assert_eq!(stats["enabled"], true);
    assert_eq!(stats["hit_rate"], 0.5);
    for field in ["hits", "misses", "total_keys", "memory_used_mb"] {
        assert!(stats[field].is_number(), "{field} missing: {stats}");
    }

    // Churn risk: slow once, then cached.
    let started = Instant::now();
    let risk = get(addr, "/api/customers/7/churn-risk").await;
    assert_eq!(risk.status, 200, "{}", risk.text());
    assert!(started.elapsed() >= Duration::from_millis(50));
    let again = get(addr, "/api/customers/7/churn-risk").await;
    assert_eq!(risk.json(), again.json());

    // List query, twice.
    let list = get(addr, "/api/customers?segment=smb&limit=5").await;
    assert_eq!(list.status, 200, "{}", list.text());
    let customers = list.json();
    assert_eq!(customers.as_array().map(Vec::len), Some(5));
    assert!(
        customers
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["segment"] == "smb")
    );
    get(addr, "/api/customers?segment=smb&limit=5").await;
    let stats = get(addr, "/admin/cache/stats").await.json();
    assert_eq!(prefix_stat(&stats, "churn", "hits"), 1, "{stats}");
    assert_eq!(prefix_stat(&stats, "query", "hits"), 1, "{stats}");

    // The keys are in Redis, under the namespace.
    let keys = redis_keys(&server, "cs-e2e:*").await;
    assert!(keys.contains(&"cs-e2e:customer:7".to_owned()), "{keys:?}");
    assert!(keys.contains(&"cs-e2e:churn:7".to_owned()), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.starts_with("cs-e2e:query:")),
        "{keys:?}"
    );

    // PUT, then GET returns the new value; the profile, churn and list keys are gone.
    let put = send_json(
        addr,
        "PUT",
        "/api/customers/7",
        &json!({"name": "Grace Updated"}),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text());
    let keys = redis_keys(&server, "cs-e2e:*").await;
    assert!(
        !keys
            .iter()
            .any(|k| k == "cs-e2e:customer:7" || k == "cs-e2e:churn:7"),
        "invalidated keys still there: {keys:?}"
    );
    // The lists were invalidated by replacing the prefix's generation: still
    // stored until their TTL, no longer served.
    let misses = prefix_stat(
        &get(addr, "/admin/cache/stats").await.json(),
        "query",
        "misses",
    );
    get(addr, "/api/customers?segment=smb&limit=5").await;
    let stats = get(addr, "/admin/cache/stats").await.json();
    assert_eq!(
        prefix_stat(&stats, "query", "misses"),
        misses + 1,
        "{stats}"
    );
    let updated = get(addr, "/api/customers/7").await.json();
    assert_eq!(updated["name"], "Grace Updated");
    assert_eq!(
        get(addr, "/api/customers/7").await.json()["name"],
        "Grace Updated"
    );

    // POST creates and drops the cached lists.
    get(addr, "/api/customers?segment=consumer").await;
    let hits = prefix_stat(
        &get(addr, "/admin/cache/stats").await.json(),
        "query",
        "hits",
    );
    get(addr, "/api/customers?segment=consumer").await;
    assert_eq!(
        prefix_stat(
            &get(addr, "/admin/cache/stats").await.json(),
            "query",
            "hits"
        ),
        hits + 1,
        "list cached"
    );
    let created = send_json(
        addr,
        "POST",
        "/api/customers",
        &json!({"name": "New Customer", "email": "new@example.com", "segment": "consumer"}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let new_id = created.json()["id"].as_i64().expect("id");
    assert!(new_id > 1000);
    let misses = prefix_stat(
        &get(addr, "/admin/cache/stats").await.json(),
        "query",
        "misses",
    );
    get(addr, "/api/customers?segment=consumer").await;
    assert_eq!(
        prefix_stat(
            &get(addr, "/admin/cache/stats").await.json(),
            "query",
            "misses"
        ),
        misses + 1,
        "the cached list was dropped"
    );
    assert_eq!(
        get(addr, &format!("/api/customers/{new_id}")).await.json()["email"],
        "new@example.com"
    );

    // Bad input: JSON errors, never a 500.
    get(addr, "/api/customers/abc").await.assert_error(400);
    get(addr, "/api/customers/-3").await.assert_error(400);
    get(addr, "/api/customers/abc/churn-risk")
        .await
        .assert_error(400);
    get(addr, "/api/customers/987654").await.assert_error(404);
    get(addr, "/api/customers/987654/churn-risk")
        .await
        .assert_error(404);
    get(addr, "/api/customers?segment=nope")
        .await
        .assert_error(400);
    get(addr, "/api/customers?limit=0").await.assert_error(400);
    let json_headers = [("content-type", "application/json")];
    request(
        addr,
        "POST",
        "/api/customers",
        &json_headers,
        b"{\"name\": ",
    )
    .await
    .assert_error(400);
    send_json(addr, "POST", "/api/customers", &json!({"name": "No Email"}))
        .await
        .assert_error(422);
    send_json(
        addr,
        "POST",
        "/api/customers",
        &json!({"name": "", "email": "x@y", "segment": "smb"}),
    )
    .await
    .assert_error(422);
    send_json(addr, "PUT", "/api/customers/7", &json!({}))
        .await
        .assert_error(422);
    send_json(
        addr,
        "PUT",
        "/api/customers/987654",
        &json!({"name": "Nobody"}),
    )
    .await
    .assert_error(404);
    let huge = format!("{{\"name\": \"{}\"}}", "a".repeat(100 * 1024));
    request(
        addr,
        "POST",
        "/api/customers",
        &json_headers,
        huge.as_bytes(),
    )
    .await
    .assert_error(413);

    // Admin invalidation needs the token.
    let pattern = json!({"pattern": "customer:*"}).to_string();
    let no_auth = request(
        addr,
        "POST",
        "/admin/cache/invalidate",
        &json_headers,
        pattern.as_bytes(),
    )
    .await;
    no_auth.assert_error(401);
    request(
        addr,
        "POST",
        "/admin/cache/invalidate",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer wrong"),
        ],
        pattern.as_bytes(),
    )
    .await
    .assert_error(401);
    assert!(!redis_keys(&server, "cs-e2e:customer:*").await.is_empty());
    let ok = request(
        addr,
        "POST",
        "/admin/cache/invalidate",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer t0ken"),
        ],
        pattern.as_bytes(),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.json()["deleted"].as_u64().unwrap() >= 2, "{}", ok.text());
    assert!(redis_keys(&server, "cs-e2e:customer:*").await.is_empty());

    let health = wait_for_cache(addr, "healthy", Duration::from_secs(2)).await;
    assert_eq!(health["status"], "ok");

    // Redis goes away: every request still answers, health says degraded.
    server.stop();
    for id in 20..26 {
        for path in [
            format!("/api/customers/{id}"),
            format!("/api/customers/{id}"),
            format!("/api/customers/{id}/churn-risk"),
            "/api/customers?segment=enterprise&limit=3".to_owned(),
        ] {
            let reply = get(addr, &path).await;
            assert_eq!(reply.status, 200, "{path} during outage: {}", reply.text());
        }
    }
    let put = send_json(
        addr,
        "PUT",
        "/api/customers/20",
        &json!({"name": "Changed During Outage"}),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(
        get(addr, "/api/customers/20").await.json()["name"],
        "Changed During Outage"
    );
    let health = wait_for_cache(addr, "degraded", Duration::from_secs(2)).await;
    assert_eq!(health["status"], "degraded");
    let stats = get(addr, "/admin/cache/stats").await;
    assert_eq!(stats.status, 200);
    assert_ne!(stats.json()["circuit"], "closed", "{}", stats.text());
    assert_eq!(get(addr, "/metrics").await.status, 200);

    // Redis is back: the cache recovers and hits resume, in Redis.
    server.restart();
    wait_for_cache(addr, "healthy", Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let before = get(addr, "/admin/cache/stats").await.json();
        let a = get(addr, "/api/customers/30").await;
        let b = get(addr, "/api/customers/30").await;
        assert_eq!((a.status, b.status), (200, 200));
        let after = get(addr, "/admin/cache/stats").await.json();
        let in_redis = redis_keys(&server, "cs-e2e:customer:30").await.len() == 1;
        if in_redis
            && after["circuit"] == "closed"
            && prefix_stat(&after, "customer", "hits") > prefix_stat(&before, "customer", "hits")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hits did not resume in Redis: {after}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The write made during the outage is what Redis serves now.
    assert_eq!(
        get(addr, "/api/customers/20").await.json()["name"],
        "Changed During Outage"
    );
    assert_eq!(
        get(addr, "/api/customers/20").await.json()["name"],
        "Changed During Outage"
    );
    assert!(
        redis_keys(&server, "cs-e2e:customer:20").await.len() == 1,
        "not re-cached in Redis"
    );

    let metrics = get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    assert!(
        text.contains("cache_hits_total{prefix=\"customer\"}"),
        "{text}"
    );
    assert!(
        text.contains("cache_misses_total{prefix=\"customer\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn memory_cache_admin_disabled_and_json_errors() {
    let pool = db::connect("sqlite::memory:").await.expect("database");
    let state = AppState::new(pool, Cache::memory());
    let addr = serve(state).await;

    let count = get(addr, "/api/customers?limit=1000").await;
    assert_eq!(count.status, 200);
    assert_eq!(
        count.json().as_array().map(Vec::len),
        Some(db::SEED_CUSTOMERS)
    );

    get(addr, "/api/customers/1").await;
    get(addr, "/api/customers/1").await;
    let stats = get(addr, "/admin/cache/stats").await.json();
    assert_eq!(stats["backend"], "memory");
    assert_eq!(prefix_stat(&stats, "customer", "hits"), 1, "{stats}");

    // ADMIN_TOKEN unset: refused even with a header.
    request(
        addr,
        "POST",
        "/admin/cache/invalidate",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer anything"),
        ],
        br#"{"pattern": "customer:*"}"#,
    )
    .await
    .assert_error(403);

    // Errors from the router itself are JSON too.
    request(addr, "DELETE", "/api/customers/1", &[], b"")
        .await
        .assert_error(405);
    get(addr, "/no/such/path").await.assert_error(404);
    request(addr, "POST", "/api/customers", &[], b"{}")
        .await
        .assert_error(415);

    let health = get(addr, "/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["cache"]["status"], "healthy");
}
