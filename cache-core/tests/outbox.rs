//! The transactional outbox on real SQLite and PostgreSQL databases and a
//! real redis-server: the invalidation commits or rolls back with the
//! data; a healthy instance delivers what a writer cut off from Redis (or
//! gone) recorded; rows are removed once Redis confirmed them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_core::outbox::{Outbox, OutboxError};
use cache_core::{Cache, invalidates};
use cache_testkit::{Postgres, RedisServer, TcpProxy};
use sqlx::{PgPool, Sqlite, SqlitePool, Transaction};

#[derive(Debug)]
enum DbError {
    Sql(#[allow(dead_code)] sqlx::Error),
    Outbox(#[allow(dead_code)] OutboxError),
}

impl From<OutboxError> for DbError {
    fn from(e: OutboxError) -> Self {
        DbError::Outbox(e)
    }
}

#[invalidates("customer:{id}", outbox = tx, cache = cache)]
async fn rename(
    cache: &Cache,
    tx: &mut Transaction<'_, Sqlite>,
    id: i64,
    name: &str,
) -> Result<(), DbError> {
    sqlx::query("UPDATE customers SET name = ? WHERE id = ?")
        .bind(name)
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(DbError::Sql)?;
    Ok(())
}

#[invalidates("customer:{id}", prefix = "query", outbox = tx, cache = cache)]
async fn rename_pg(
    cache: &Cache,
    tx: &mut Transaction<'_, sqlx::Postgres>,
    id: i64,
    name: &str,
) -> Result<(), DbError> {
    sqlx::query("UPDATE customers SET name = $1 WHERE id = $2")
        .bind(name)
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(DbError::Sql)?;
    Ok(())
}

async fn sqlite() -> (SqlitePool, tempdir::TempDir) {
    let dir = tempdir::TempDir::new();
    let url = format!("sqlite://{}/app.db?mode=rwc", dir.path().display());
    let pool = SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
         INSERT INTO customers VALUES (1, 'Ada');",
    )
    .execute(&pool)
    .await
    .unwrap();
    (pool, dir)
}

/// A scratch directory removed on drop (no extra dependency for it).
mod tempdir {
    pub(crate) struct TempDir(std::path::PathBuf);
    impl TempDir {
        pub(crate) fn new() -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("cache-outbox-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        pub(crate) fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn cache_on(url: &str, namespace: &str) -> Cache {
    Cache::builder()
        .redis_url(url)
        .namespace(namespace)
        .timeout(Duration::from_millis(250))
        .build()
        .await
        .unwrap()
}

async fn rows(pool: &SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM cache_outbox")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Polls until `cond` holds; panics after `within`.
async fn within(within: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        if cond().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within {within:?}: {what}");
}

#[tokio::test]
async fn the_invalidation_commits_or_rolls_back_with_the_data() {
    let server = RedisServer::start();
    let (pool, _dir) = sqlite().await;
    let cache = cache_on(&server.url(), "ob-commit").await;
    let outbox = Outbox::sqlite(pool.clone(), cache.clone());
    outbox.migrate().await.unwrap();
    outbox.migrate().await.unwrap(); // idempotent

    // Rolled back: no row.
    let mut tx = pool.begin().await.unwrap();
    rename(&cache, &mut tx, 1, "Bob").await.unwrap();
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cache_outbox")
            .fetch_one(&mut *tx)
            .await
            .unwrap(),
        1,
        "one extra row in the transaction"
    );
    tx.rollback().await.unwrap();
    assert_eq!(rows(&pool).await, 0, "rolled back with the data");

    // Committed: one row, delivered and removed by a relay pass.
    cache.set("customer:1", &"Ada", None).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    rename(&cache, &mut tx, 1, "Bob").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(rows(&pool).await, 1);
    cache
        .set("customer:1", &"Ada (reloaded before the commit)", None)
        .await
        .unwrap();
    assert_eq!(outbox.deliver_pending().await.unwrap(), 1);
    assert_eq!(rows(&pool).await, 0, "removed once Redis confirmed it");
    assert_eq!(
        cache.get::<String>("customer:1").await.unwrap(),
        None,
        "delivered after the commit: a value loaded between the writer's own invalidation and its commit is gone"
    );
}

#[tokio::test]
async fn a_healthy_instance_delivers_what_a_writer_cut_off_from_redis_recorded() {
    let server = RedisServer::start();
    let (pool, _dir) = sqlite().await;
    let proxy = TcpProxy::start(server.addr());
    let writer = cache_on(&proxy.url_for(&server.url()), "ob-cut").await;
    let reader = cache_on(&server.url(), "ob-cut").await;
    let outbox = Outbox::sqlite(pool.clone(), reader.clone());
    outbox.migrate().await.unwrap();

    reader.set("customer:1", &"Ada", None).await.unwrap();
    assert_eq!(
        writer.get::<String>("customer:1").await.unwrap().as_deref(),
        Some("Ada")
    );
    proxy.cut();
    let mut tx = pool.begin().await.unwrap();
    rename(&writer, &mut tx, 1, "Bob").await.unwrap();
    tx.commit().await.unwrap();
    // The writer could not reach Redis: the old value is still there.
    assert_eq!(
        reader.get::<String>("customer:1").await.unwrap().as_deref(),
        Some("Ada")
    );
    let relay = outbox.spawn_relay(Duration::from_millis(100));
    let took = within(
        Duration::from_secs(2),
        "the reader's relay delivers",
        async || reader.get::<String>("customer:1").await.unwrap().is_none(),
    )
    .await;
    eprintln!("delivered by the other instance {took:?} after the commit");
    within(Duration::from_secs(2), "the row is removed", async || {
        rows(&pool).await == 0
    })
    .await;
    drop(relay);

    // The writer restarts while still cut off: what it recorded is in the
    // database, not in its memory.
    drop(writer);
    let writer = cache_on(&proxy.url_for(&server.url()), "ob-cut").await;
    reader.set("customer:1", &"Bob", None).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    rename(&writer, &mut tx, 1, "Cy").await.unwrap();
    tx.commit().await.unwrap();
    drop(writer);
    let _relay = outbox.spawn_relay(Duration::from_millis(100));
    within(
        Duration::from_secs(2),
        "delivered after the writer is gone",
        async || reader.get::<String>("customer:1").await.unwrap().is_none(),
    )
    .await;
}

#[tokio::test]
async fn rows_of_another_namespace_are_left_to_their_service() {
    let server = RedisServer::start();
    let (pool, _dir) = sqlite().await;
    let ours = cache_on(&server.url(), "ob-ours").await;
    let theirs = cache_on(&server.url(), "ob-theirs").await;
    let outbox = Outbox::sqlite(pool.clone(), ours.clone());
    outbox.migrate().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    rename(&theirs, &mut tx, 1, "Bob").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(outbox.deliver_pending().await.unwrap(), 0);
    assert_eq!(rows(&pool).await, 1);
    let their_outbox = Outbox::sqlite(pool.clone(), theirs);
    assert_eq!(their_outbox.deliver_pending().await.unwrap(), 1);
    assert_eq!(rows(&pool).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_relays_share_the_rows_and_deliver_each_once() {
    let server = RedisServer::start();
    let postgres = Arc::new(Postgres::start());
    let pool = PgPool::connect(&postgres.url()).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE customers (id BIGINT PRIMARY KEY, name TEXT NOT NULL);
         INSERT INTO customers VALUES (1, 'Ada');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let cache = cache_on(&server.url(), "ob-pg").await;
    let outbox = Outbox::postgres(pool.clone(), cache.clone());
    outbox.migrate().await.unwrap();

    cache.set("customer:1", &"Ada", None).await.unwrap();
    cache.set("query:all", &vec!["Ada"], None).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    rename_pg(&cache, &mut tx, 1, "Bob").await.unwrap();
    tx.rollback().await.unwrap();
    let count = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cache_outbox")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(count(pool.clone()).await, 0, "rolled back with the data");

    for i in 0..250i64 {
        let mut tx = pool.begin().await.unwrap();
        rename_pg(&cache, &mut tx, 1, &format!("n{i}"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(count(pool.clone()).await, 250);
    // Three relays at once: SKIP LOCKED hands each row to one of them.
    let relays: Vec<_> = (0..3)
        .map(|_| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut delivered = 0;
                loop {
                    let n = outbox.deliver_pending().await.unwrap();
                    if n == 0 {
                        return delivered;
                    }
                    delivered += n;
                }
            })
        })
        .collect();
    let mut total = 0;
    for relay in relays {
        total += relay.await.unwrap();
    }
    assert_eq!(total, 250, "every row delivered once");
    assert_eq!(count(pool.clone()).await, 0);
    assert_eq!(cache.get::<String>("customer:1").await.unwrap(), None);
    assert_eq!(cache.get::<Vec<String>>("query:all").await.unwrap(), None);
}
