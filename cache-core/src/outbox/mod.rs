//! A transactional outbox for invalidations: the invalidation is written
//! into the database transaction that changes the data, so it commits or
//! rolls back with it, and any instance delivers it.
//!
//! Without an outbox an invalidation lives in the writer's memory until it
//! reaches Redis: a writer cut off from Redis acknowledges writes whose
//! invalidation other instances never see (they serve the old value until
//! its TTL), and a writer restarted before it reconnects loses it for good.
//! With one:
//!
//! 1. `#[invalidates(..., outbox = tx)]` inserts one row into `cache_outbox`
//!    through `tx` (the transaction or connection the body writes through)
//!    before the body runs: one extra statement in the transaction.
//! 2. After the body the writer invalidates at once, as without an outbox
//!    (the fast path, same latency).
//! 3. A relay in every instance (`Outbox::spawn_relay`, every 200 ms by
//!    default) delivers the committed rows of its namespace through the
//!    cache's one invalidation operation and removes each row once Redis
//!    confirmed it; a row Redis did not confirm stays and is delivered by
//!    the next pass, by whichever instance reaches Redis. Delivery is
//!    idempotent (key deletes, generation changes), so a row delivered
//!    twice costs nothing but a miss. Because the relay only sees committed
//!    rows, its delivery also comes after the commit, closing the window in
//!    which a reader could reload the old data between the writer's
//!    invalidation and its commit.
//!
//! Redis stays the cache: the database is only the durable queue.
//!
//! # Schema
//! [`SQLITE_SCHEMA`] and [`POSTGRES_SCHEMA`] create the table and its index
//! (`IF NOT EXISTS`); `Outbox::migrate` runs the one for its database, or
//! copy it into your migrations.
//!
//! # Example (SQLite)
//! ```no_run
//! # #[cfg(feature = "outbox-sqlite")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cache_core::{cached, invalidates, Cache, outbox::{Outbox, OutboxError}};
//! use sqlx::{Sqlite, SqlitePool, Transaction};
//!
//! #[derive(Debug)]
//! enum DbError { Sql(sqlx::Error), Outbox(OutboxError) }
//! impl From<OutboxError> for DbError { fn from(e: OutboxError) -> Self { DbError::Outbox(e) } }
//!
//! #[invalidates("customer:{id}", outbox = tx)]
//! async fn rename(tx: &mut Transaction<'_, Sqlite>, id: i64, name: &str) -> Result<(), DbError> {
//!     sqlx::query("UPDATE customers SET name = ? WHERE id = ?")
//!         .bind(name).bind(id).execute(&mut **tx).await.map_err(DbError::Sql)?;
//!     Ok(())
//! }
//!
//! let pool = SqlitePool::connect("sqlite://app.db").await?;
//! let cache = Cache::from_env().await?;
//! cache.install();
//! let outbox = Outbox::sqlite(pool.clone(), cache.clone());
//! outbox.migrate().await?;
//! let _relay = outbox.spawn_relay(std::time::Duration::from_millis(200));
//!
//! let mut tx = pool.begin().await?;
//! rename(&mut tx, 42, "Ada").await.expect("renamed");
//! tx.commit().await?; // the invalidation commits with the data
//! # Ok(()) }
//! ```

#[cfg(any(feature = "outbox-sqlite", feature = "outbox-postgres"))]
use std::time::Duration;

#[cfg(any(feature = "outbox-sqlite", feature = "outbox-postgres"))]
use crate::cache::Cache;

#[cfg(feature = "outbox-postgres")]
mod postgres;
#[cfg(feature = "outbox-sqlite")]
mod sqlite;

/// The outbox table on SQLite.
pub const SQLITE_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS cache_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS cache_outbox_namespace ON cache_outbox (namespace, id);";

/// The outbox table on PostgreSQL.
pub const POSTGRES_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS cache_outbox (
    id BIGSERIAL PRIMARY KEY,
    namespace TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cache_outbox_namespace ON cache_outbox (namespace, id);";

#[cfg(any(feature = "outbox-sqlite", feature = "outbox-postgres"))]
/// Rows one relay pass delivers at most.
const BATCH: i64 = 100;

/// A failure of the outbox's database.
#[derive(Debug, thiserror::Error)]
#[error("cache outbox: {message}")]
pub struct OutboxError {
    message: String,
}

impl OutboxError {
    /// An outbox error with `message` (for an [`OutboxConnection`] of your
    /// own to report its database's failure).
    pub fn new(message: impl Into<String>) -> Self {
        OutboxError {
            message: message.into(),
        }
    }
}

/// What one row records: logical keys (`"customer:42"`) and prefixes.
#[derive(serde::Serialize, serde::Deserialize, Debug, Default, PartialEq)]
pub(crate) struct Record {
    #[serde(default)]
    pub(crate) keys: Vec<String>,
    #[serde(default)]
    pub(crate) prefixes: Vec<String>,
}

/// A database connection (or transaction) an invalidation can be recorded
/// through, in the same transaction as the data it invalidates.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot record an invalidation in the outbox",
    note = "`outbox = ...` names the sqlx transaction or connection the body writes through (`sqlx::Transaction`, `SqliteConnection`, `PgConnection`); enable cache-core's `outbox-sqlite` or `outbox-postgres` feature"
)]
#[async_trait::async_trait]
pub trait OutboxConnection: Send {
    /// Inserts one outbox row.
    async fn record(&mut self, namespace: &str, payload: &str) -> Result<(), OutboxError>;
}

#[cfg(any(feature = "outbox-sqlite", feature = "outbox-postgres"))]
/// The database an [`Outbox`] relays from.
#[derive(Clone)]
enum Database {
    #[cfg(feature = "outbox-sqlite")]
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "outbox-postgres")]
    Postgres(sqlx::PgPool),
}

#[cfg(any(feature = "outbox-sqlite", feature = "outbox-postgres"))]
/// The outbox of one cache on one database: its schema, and its relay.
#[derive(Clone)]
pub struct Outbox {
    database: Database,
    cache: Cache,
}

#[cfg(any(feature = "outbox-sqlite", feature = "outbox-postgres"))]
impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("namespace", &self.cache.namespace())
            .finish_non_exhaustive()
    }
}

#[cfg(any(feature = "outbox-sqlite", feature = "outbox-postgres"))]
/// The relay task; it stops when this is dropped.
#[derive(Debug)]
pub struct RelayHandle(tokio::task::AbortHandle);

#[cfg(any(feature = "outbox-sqlite", feature = "outbox-postgres"))]
impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(any(feature = "outbox-sqlite", feature = "outbox-postgres"))]
impl Outbox {
    /// The outbox on a SQLite pool, delivering through `cache`.
    #[cfg(feature = "outbox-sqlite")]
    pub fn sqlite(pool: sqlx::SqlitePool, cache: Cache) -> Self {
        Outbox {
            database: Database::Sqlite(pool),
            cache,
        }
    }

    /// The outbox on a PostgreSQL pool, delivering through `cache`.
    #[cfg(feature = "outbox-postgres")]
    pub fn postgres(pool: sqlx::PgPool, cache: Cache) -> Self {
        Outbox {
            database: Database::Postgres(pool),
            cache,
        }
    }

    /// Creates the outbox table and its index if they do not exist.
    pub async fn migrate(&self) -> Result<(), OutboxError> {
        match &self.database {
            #[cfg(feature = "outbox-sqlite")]
            Database::Sqlite(pool) => sqlite::migrate(pool).await,
            #[cfg(feature = "outbox-postgres")]
            Database::Postgres(pool) => postgres::migrate(pool).await,
        }
    }

    /// One relay pass: delivers up to 100 committed rows of this cache's
    /// namespace, oldest first, and removes those Redis confirmed. Returns
    /// how many were delivered and removed.
    pub async fn deliver_pending(&self) -> Result<usize, OutboxError> {
        let delivered = match &self.database {
            #[cfg(feature = "outbox-sqlite")]
            Database::Sqlite(pool) => sqlite::relay(pool, &self.cache).await?,
            #[cfg(feature = "outbox-postgres")]
            Database::Postgres(pool) => postgres::relay(pool, &self.cache).await?,
        };
        if delivered > 0 {
            metrics::counter!("cache_outbox_delivered_total").increment(delivered as u64);
        }
        Ok(delivered)
    }

    /// Runs [`deliver_pending`](Self::deliver_pending) every `every` on the
    /// current tokio runtime until the handle is dropped (a full batch is
    /// followed by the next one at once). Run one in every instance: a
    /// healthy instance delivers what one cut off from Redis recorded.
    pub fn spawn_relay(&self, every: Duration) -> RelayHandle {
        let outbox = self.clone();
        let task = tokio::spawn(async move {
            let mut last_error: Option<std::time::Instant> = None;
            loop {
                match outbox.deliver_pending().await {
                    Ok(n) if n as i64 >= BATCH => continue,
                    Ok(_) => {}
                    Err(e) => {
                        // Once a minute at most: a database outage is logged
                        // by the service's own queries too.
                        if last_error.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                            tracing::warn!(error = %e, "cache outbox relay: the database did not answer");
                            last_error = Some(std::time::Instant::now());
                        }
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
        RelayHandle(task.abort_handle())
    }
}

#[cfg(any(feature = "outbox-sqlite", feature = "outbox-postgres"))]
/// Delivers the rows `rows` (id, payload) through `cache`; returns the ids
/// Redis confirmed (a malformed payload is dropped with an error log: it
/// can never be delivered).
pub(crate) async fn deliver(cache: &Cache, rows: Vec<(i64, String)>) -> Vec<i64> {
    let mut done = Vec::with_capacity(rows.len());
    for (id, payload) in rows {
        let record: Record = match serde_json::from_str(&payload) {
            Ok(record) => record,
            Err(e) => {
                tracing::error!(id, error = %e, "cache outbox: dropping a row that is not an invalidation");
                done.push(id);
                continue;
            }
        };
        let prefixes: Vec<&str> = record.prefixes.iter().map(String::as_str).collect();
        if cache.invalidate_all(&record.keys, &prefixes, &[]).await {
            done.push(id);
        }
    }
    done
}

/// Records the invalidation of `keys` (logical keys) and `prefixes` for
/// `namespace` through `connection`.
pub(crate) async fn record<C: OutboxConnection + ?Sized>(
    connection: &mut C,
    namespace: &str,
    keys: &[String],
    prefixes: &[&str],
) -> Result<(), OutboxError> {
    let record = Record {
        keys: keys.to_vec(),
        prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
    };
    let payload = serde_json::to_string(&record).map_err(|e| OutboxError::new(e.to_string()))?;
    connection.record(namespace, &payload).await
}
