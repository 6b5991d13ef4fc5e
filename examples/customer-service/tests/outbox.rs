//! The transactional outbox in the service: a write's invalidation is a row
//! in the write's own transaction, removed once delivered; and two
//! instances sharing one database and one Redis, the writer cut off from
//! Redis by a `TcpProxy` (and killed, and restarted), the other instance
//! still serves the new value within the acceptance bound (2 s after the
//! acknowledged write). Real redis-server, PostgreSQL and service processes
//! (cache-testkit).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cache_core::Cache;
use cache_testkit::{Postgres, RedisServer, TcpProxy};
use common::{Service, get, send_json, serve};
use customer_service::{AppState, Db, db};
use serde_json::{Value, json};

/// The longest an acknowledged write may take to reach another instance.
const ACCEPTANCE: Duration = Duration::from_secs(2);

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cs-outbox-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn sqlite_url(&self) -> String {
        format!("sqlite://{}/customers.db?mode=rwc", self.0.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The outbox rows as (namespace, payload JSON).
async fn outbox_rows(db: &Db) -> Vec<(String, Value)> {
    let rows: Vec<(String, String)> = match db {
        Db::Sqlite(pool) => {
            sqlx::query_as("SELECT namespace, payload FROM cache_outbox ORDER BY id")
                .fetch_all(pool)
                .await
                .expect("outbox rows")
        }
        Db::Postgres(pool) => {
            sqlx::query_as("SELECT namespace, payload FROM cache_outbox ORDER BY id")
                .fetch_all(pool)
                .await
                .expect("outbox rows")
        }
    };
    rows.into_iter()
        .map(|(ns, payload)| (ns, serde_json::from_str(&payload).expect("payload JSON")))
        .collect()
}

async fn name_in_db(db: &Db, id: i64) -> String {
    let Db::Sqlite(pool) = db else {
        panic!("SQLite expected")
    };
    sqlx::query_scalar("SELECT name FROM customers WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("customer row")
}

/// Polls `cond` every 20 ms; the time it took, or `None` after `limit`.
async fn within<F, Fut>(limit: Duration, mut cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if cond().await {
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn name_on(addr: SocketAddr, id: i64) -> String {
    let reply = get(addr, &format!("/api/customers/{id}")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["name"].as_str().expect("name").to_owned()
}

async fn rename(addr: SocketAddr, id: i64, name: &str) -> common::Reply {
    send_json(
        addr,
        "PUT",
        &format!("/api/customers/{id}"),
        &json!({ "name": name }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_records_its_invalidation_in_its_transaction_and_delivery_removes_it() {
    let server = RedisServer::start();
    let dir = TempDir::new("tx");
    let cache = Cache::builder()
        .redis_url(server.url())
        .namespace("cs-outbox-tx")
        .timeout(Duration::from_millis(500))
        .build()
        .await
        .expect("cache");
    let database = db::connect(&dir.sqlite_url()).await.expect("database");
    let state = AppState::new(database.clone(), cache.clone());
    // No relay yet: the rows stay where the writes left them.
    let addr = serve(state.clone()).await;

    assert_eq!(name_on(addr, 5).await, name_in_db(&database, 5).await);
    let put = rename(addr, 5, "Outboxed").await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(name_on(addr, 5).await, "Outboxed", "the writer's own path");
    let rows = outbox_rows(&database).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "cs-outbox-tx");
    assert_eq!(
        rows[0].1,
        json!({"keys": ["customer:5", "churn:5"], "prefixes": ["query"]})
    );

    // A create records the list prefix.
    let created = send_json(
        addr,
        "POST",
        "/api/customers",
        &json!({"name": "Nova", "email": "nova@example.com", "segment": "smb"}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let rows = outbox_rows(&database).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1].1, json!({"keys": [], "prefixes": ["query"]}));

    // A write that fails rolls its row back with it: an unknown id (404),
    // an email another customer has (409).
    rename(addr, 999_999, "Nobody").await.assert_error(404);
    let taken = get(addr, "/api/customers/6").await.json()["email"].clone();
    send_json(addr, "PUT", "/api/customers/5", &json!({"email": taken}))
        .await
        .assert_error(409);
    assert_eq!(outbox_rows(&database).await.len(), 2);
    assert_eq!(name_in_db(&database, 5).await, "Outboxed");

    // And a row that cannot be written stops the change: the outbox table
    // is gone, the PUT is a 503 and the name stays.
    let Db::Sqlite(pool) = &database else {
        unreachable!()
    };
    sqlx::query("ALTER TABLE cache_outbox RENAME TO cache_outbox_away")
        .execute(pool)
        .await
        .unwrap();
    rename(addr, 5, "Unrecorded").await.assert_error(503);
    assert_eq!(name_in_db(&database, 5).await, "Outboxed");
    assert_eq!(name_on(addr, 5).await, "Outboxed");
    sqlx::query("ALTER TABLE cache_outbox_away RENAME TO cache_outbox")
        .execute(pool)
        .await
        .unwrap();

    // The relay delivers both rows and removes them.
    let _relay = state
        .spawn_outbox_relay(Duration::from_millis(50))
        .expect("outbox on");
    let took = within(ACCEPTANCE, || async {
        outbox_rows(&database).await.is_empty()
    })
    .await;
    assert!(
        took.is_some(),
        "rows left: {:?}",
        outbox_rows(&database).await
    );
    let stats = get(addr, "/admin/cache/stats").await.json();
    assert_eq!(
        stats["outbox"],
        json!({"enabled": true, "pending": 0}),
        "{stats}"
    );

    // Off: nothing is recorded, and no relay starts.
    let off = AppState::new(database.clone(), cache).with_outbox(false);
    assert!(off.spawn_outbox_relay(Duration::from_millis(50)).is_none());
    let off_addr = serve(off).await;
    assert_eq!(rename(off_addr, 5, "Unlogged").await.status, 200);
    assert_eq!(name_on(off_addr, 5).await, "Unlogged");
    assert!(outbox_rows(&database).await.is_empty());
    let stats = get(off_addr, "/admin/cache/stats").await.json();
    assert_eq!(
        stats["outbox"],
        json!({"enabled": false, "pending": null}),
        "{stats}"
    );
}

/// Two service processes on one database and one Redis, each with a near
/// cache; `a` reaches Redis through `proxy`.
struct Pair {
    a: Service,
    b: Service,
}

fn instance_env<'a>(
    database_url: &'a str,
    redis_url: &'a str,
    outbox: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("DATABASE_URL", database_url),
        ("REDIS_URL", redis_url),
        ("CACHE_NAMESPACE", "cs-pair"),
        ("CACHE_NEAR_CAPACITY", "1000"),
        ("CACHE_OUTBOX", outbox),
        ("CACHE_TIMEOUT_MS", "500"),
    ]
}

async fn start_pair(
    database_url: &str,
    server: &RedisServer,
    proxy: &TcpProxy,
    outbox: &str,
) -> Pair {
    let via_proxy = proxy.url_for(&server.url());
    let direct = server.url();
    // One after the other: the first one creates and seeds the database.
    let a = Service::start(&instance_env(database_url, &via_proxy, outbox)).await;
    let b = Service::start(&instance_env(database_url, &direct, outbox)).await;
    Pair { a, b }
}

async fn wait_healthy(addr: SocketAddr) {
    let ok = within(Duration::from_secs(20), || async {
        get(addr, "/health").await.json()["status"] == "ok"
    })
    .await;
    assert!(ok.is_some(), "{}", get(addr, "/health").await.text());
}

/// The scenario on one database: `a` cut off from Redis writes, `b` must
/// serve the new value within [`ACCEPTANCE`]; then `a` is killed right
/// after a write, restarted while still cut off, and writes again.
async fn writer_cut_off_then_killed_and_restarted(database_url: &str) {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.addr());
    let Pair { a, b } = start_pair(database_url, &server, &proxy, "on").await;
    wait_healthy(a.addr).await;
    wait_healthy(b.addr).await;

    // Both instances hold customer 5 (B in its near cache).
    let before = name_on(a.addr, 5).await;
    assert_eq!(name_on(b.addr, 5).await, before);
    assert_eq!(name_on(b.addr, 5).await, before);

    proxy.cut();
    let put = rename(a.addr, 5, "written-while-cut").await;
    assert_eq!(put.status, 200, "{}", put.text());
    let acked = Instant::now();
    let took = within(ACCEPTANCE, || async {
        name_on(b.addr, 5).await == "written-while-cut"
    })
    .await;
    eprintln!(
        "cut off: B served the new value {:?} after the PUT was acknowledged",
        acked.elapsed()
    );
    assert!(
        took.is_some(),
        "B still serves {:?} {:?} after the PUT through A was acknowledged",
        name_on(b.addr, 5).await,
        acked.elapsed()
    );

    // A is killed right after its next write, still cut off: what it could
    // not deliver is in the database, not in its memory.
    let put = rename(a.addr, 5, "written-then-killed").await;
    assert_eq!(put.status, 200, "{}", put.text());
    let acked = Instant::now();
    drop(a);
    let took = within(ACCEPTANCE, || async {
        name_on(b.addr, 5).await == "written-then-killed"
    })
    .await;
    eprintln!(
        "killed: B served the new value {:?} after the PUT was acknowledged",
        acked.elapsed()
    );
    assert!(
        took.is_some(),
        "B still serves {:?}",
        name_on(b.addr, 5).await
    );

    // Restarted while still cut off, A writes again.
    let a = Service::start(&instance_env(
        database_url,
        &proxy.url_for(&server.url()),
        "on",
    ))
    .await;
    assert_eq!(name_on(b.addr, 5).await, "written-then-killed");
    let put = rename(a.addr, 5, "written-after-restart").await;
    assert_eq!(put.status, 200, "{}", put.text());
    let acked = Instant::now();
    let took = within(ACCEPTANCE, || async {
        name_on(b.addr, 5).await == "written-after-restart"
    })
    .await;
    eprintln!(
        "restarted: B served the new value {:?} after the PUT was acknowledged",
        acked.elapsed()
    );
    assert!(
        took.is_some(),
        "B still serves {:?}",
        name_on(b.addr, 5).await
    );

    // Back in touch: A is healthy again and nothing is left to deliver.
    proxy.restore();
    wait_healthy(a.addr).await;
    let stats_ok = within(ACCEPTANCE, || async {
        get(b.addr, "/admin/cache/stats").await.json()["outbox"]["pending"] == 0
    })
    .await;
    assert!(
        stats_ok.is_some(),
        "{}",
        get(b.addr, "/admin/cache/stats").await.text()
    );
    assert_eq!(name_on(a.addr, 5).await, "written-after-restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_sqlite_file_a_writer_cut_off_from_redis_reaches_the_other() {
    let dir = TempDir::new("pair");
    writer_cut_off_then_killed_and_restarted(&dir.sqlite_url()).await;
    assert!(dir.path().join("customers.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgres_a_writer_cut_off_from_redis_reaches_the_other() {
    let postgres = Postgres::start();
    writer_cut_off_then_killed_and_restarted(&postgres.url()).await;
}

/// What the outbox fixes, measured: without it, the invalidation of a
/// write made while cut off lives in the writer's memory; B serves the old
/// value for as long as the partition lasts, and once the writer is killed
/// before Redis is back, for good (until the entry's TTL, an hour here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_outbox_a_writer_cut_off_and_killed_loses_the_invalidation() {
    let dir = TempDir::new("off");
    let url = dir.sqlite_url();
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.addr());
    let Pair { a, b } = start_pair(&url, &server, &proxy, "off").await;
    wait_healthy(a.addr).await;
    wait_healthy(b.addr).await;
    let before = name_on(a.addr, 5).await;
    assert_eq!(name_on(b.addr, 5).await, before);

    proxy.cut();
    let put = rename(a.addr, 5, "lost-while-cut").await;
    assert_eq!(put.status, 200, "{}", put.text());
    tokio::time::sleep(ACCEPTANCE).await;
    assert_eq!(name_on(b.addr, 5).await, before, "stale for the partition");

    drop(a);
    let a = Service::start(&instance_env(&url, &proxy.url_for(&server.url()), "off")).await;
    proxy.restore();
    wait_healthy(a.addr).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        name_on(b.addr, 5).await,
        before,
        "lost: the restarted writer had nothing to replay"
    );
    assert_eq!(
        name_on(a.addr, 5).await,
        before,
        "A reads Redis' old value too"
    );
}
