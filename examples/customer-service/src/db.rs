//! The database: SQLite (the default) or PostgreSQL, its schema (with the
//! cache's outbox table), deterministic demo data, and the write
//! transaction that records invalidations in the outbox.

use std::str::FromStr;
use std::time::Duration;

use cache_core::Cache;
use cache_core::outbox::{self, Outbox, OutboxConnection, OutboxError};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

use crate::repo::Segment;

/// The database used when `DATABASE_URL` is unset: a file in the working
/// directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://customer-service.db?mode=rwc";

/// How many demo customers an empty database receives.
pub const SEED_CUSTOMERS: usize = 1000;

/// Runs `$body` with `$pool` bound to the pool of either database (the
/// body is compiled once per database, so the same SQL text, with `$1`
/// placeholders, serves both).
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` with `$conn` bound to the connection of an open [`Tx`]
/// (`&mut SqliteConnection` or `&mut PgConnection`); a finished one is a
/// `sqlx::Error`, returned with `?`.
macro_rules! with_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx.open()? {
            $crate::db::TxInner::Sqlite(tx) => {
                let $conn = &mut **tx;
                $body
            }
            $crate::db::TxInner::Postgres(tx) => {
                let $conn = &mut **tx;
                $body
            }
        }
    };
}

pub(crate) use {with_pool, with_tx};

/// The service's database: a SQLite file (or in-memory database) or a
/// PostgreSQL server, chosen by the scheme of `DATABASE_URL`.
#[derive(Debug, Clone)]
pub enum Db {
    /// `sqlite:` URLs.
    Sqlite(SqlitePool),
    /// `postgres:` and `postgresql:` URLs.
    Postgres(PgPool),
}

impl From<SqlitePool> for Db {
    fn from(pool: SqlitePool) -> Self {
        Db::Sqlite(pool)
    }
}

impl From<PgPool> for Db {
    fn from(pool: PgPool) -> Self {
        Db::Postgres(pool)
    }
}

impl Db {
    /// `"sqlite"` or `"postgres"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Answers `SELECT 1`.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        with_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
    }

    /// Begins a write transaction. With `outbox`, `#[invalidates(outbox =
    /// tx)]` records its invalidation in the transaction; without, it
    /// records nothing (the invalidation then lives in the writer's memory
    /// only, as without an outbox).
    ///
    /// On SQLite the transaction takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so two processes writing one file wait for
    /// each other (`busy_timeout`) instead of failing when a read
    /// snapshot turns out stale.
    pub async fn begin(&self, outbox: bool) -> Result<Tx, sqlx::Error> {
        let inner = match self {
            Db::Sqlite(pool) => TxInner::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(pool) => TxInner::Postgres(pool.begin().await?),
        };
        Ok(Tx {
            inner: Some(inner),
            outbox,
        })
    }

    /// The cache's outbox on this database, delivering through `cache`.
    pub fn outbox(&self, cache: Cache) -> Outbox {
        match self {
            Db::Sqlite(pool) => Outbox::sqlite(pool.clone(), cache),
            Db::Postgres(pool) => Outbox::postgres(pool.clone(), cache),
        }
    }

    /// Outbox rows not yet delivered, for every namespace.
    pub async fn outbox_pending(&self) -> Result<i64, sqlx::Error> {
        with_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM cache_outbox")
                .fetch_one(pool)
                .await
        })
    }
}

/// A write transaction on either database. `#[invalidates(..., outbox =
/// tx)]` records the invalidation through it before the body runs, so the
/// invalidation commits or rolls back with the data; a body that calls
/// [`Tx::commit`] itself makes the writer's own (immediate) invalidation
/// run after the commit, so no reader can reload the old row between the
/// two. Dropped without a commit, it rolls back.
pub struct Tx {
    inner: Option<TxInner>,
    outbox: bool,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("open", &self.inner.is_some())
            .field("outbox", &self.outbox)
            .finish()
    }
}

/// The transaction of one database.
pub(crate) enum TxInner {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

impl Tx {
    /// The open transaction; an error once committed or rolled back.
    pub(crate) fn open(&mut self) -> Result<&mut TxInner, sqlx::Error> {
        self.inner
            .as_mut()
            .ok_or_else(|| sqlx::Error::Protocol("the transaction is already finished".into()))
    }

    /// Commits. Later statements through this `Tx` are errors.
    pub async fn commit(&mut self) -> Result<(), sqlx::Error> {
        match self.inner.take() {
            Some(TxInner::Sqlite(tx)) => tx.commit().await,
            Some(TxInner::Postgres(tx)) => tx.commit().await,
            None => Err(sqlx::Error::Protocol(
                "the transaction is already finished".into(),
            )),
        }
    }

    /// Rolls back (a no-op once finished).
    pub async fn rollback(&mut self) -> Result<(), sqlx::Error> {
        match self.inner.take() {
            Some(TxInner::Sqlite(tx)) => tx.rollback().await,
            Some(TxInner::Postgres(tx)) => tx.rollback().await,
            None => Ok(()),
        }
    }

    /// Whether invalidations are recorded in the outbox.
    pub fn records_outbox(&self) -> bool {
        self.outbox
    }
}

#[async_trait::async_trait]
impl OutboxConnection for Tx {
    async fn record(&mut self, namespace: &str, payload: &str) -> Result<(), OutboxError> {
        if !self.outbox {
            return Ok(());
        }
        match self.inner.as_mut() {
            Some(TxInner::Sqlite(tx)) => tx.record(namespace, payload).await,
            Some(TxInner::Postgres(tx)) => tx.record(namespace, payload).await,
            // `#[invalidates]` records before the body runs, while the
            // transaction is open: reaching this is a bug in the repository.
            None => Err(OutboxError::new(
                "an invalidation was recorded through a finished transaction",
            )),
        }
    }
}

/// Whether `url` names an in-memory SQLite database.
fn is_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// `url` with its password (if any) replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..scheme_end + 3],
        &userinfo[..colon],
        &rest[at..]
    )
}

/// Connects to `url` (`sqlite:...`, `postgres://...` or `postgresql://...`),
/// creates the schema (the service's table and the cache's outbox) if
/// needed and seeds [`SEED_CUSTOMERS`] demo customers into an empty table.
///
/// An in-memory SQLite database lives in one connection, so its pool has
/// exactly one connection that is never closed. A SQLite file is opened
/// in WAL mode, so several service instances can share it.
pub async fn connect(url: &str) -> anyhow::Result<Db> {
    let shown = redact_url(url);
    let db = if url.starts_with("sqlite:") {
        Db::Sqlite(connect_sqlite(url, &shown).await?)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let options = PgConnectOptions::from_str(url).map_err(|e| {
            anyhow::anyhow!("DATABASE_URL `{shown}` is not a valid PostgreSQL URL: {e}")
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open database `{shown}`: {e}"))?;
        Db::Postgres(pool)
    } else {
        anyhow::bail!(
            "DATABASE_URL `{shown}` is neither SQLite nor PostgreSQL: expected `sqlite://path/to/file.db?mode=rwc`, `sqlite::memory:` or `postgres://user:password@host:5432/database`"
        );
    };
    migrate_and_seed(&db)
        .await
        .map_err(|e| anyhow::anyhow!("cannot prepare database `{shown}`: {e}"))?;
    Ok(db)
}

async fn connect_sqlite(url: &str, shown: &str) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| anyhow::anyhow!("DATABASE_URL `{shown}` is not a valid SQLite URL: {e}"))?
        .busy_timeout(Duration::from_secs(5));
    if is_memory(url) {
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
    } else {
        SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.journal_mode(SqliteJournalMode::Wal))
            .await
    }
    .map_err(|e| anyhow::anyhow!("cannot open database `{shown}`: {e}"))
}

const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS customers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE,
    segment TEXT NOT NULL,
    monthly_spend_cents INTEGER NOT NULL DEFAULT 0,
    tenure_months INTEGER NOT NULL DEFAULT 0,
    support_tickets INTEGER NOT NULL DEFAULT 0,
    days_since_login INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS customers_segment ON customers (segment, id);";

const POSTGRES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS customers (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE,
    segment TEXT NOT NULL,
    monthly_spend_cents BIGINT NOT NULL DEFAULT 0,
    tenure_months BIGINT NOT NULL DEFAULT 0,
    support_tickets BIGINT NOT NULL DEFAULT 0,
    days_since_login BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS customers_segment ON customers (segment, id);";

/// Creates the tables (the customers and the cache's outbox) if they don't
/// exist and seeds an empty database, in one transaction that instances
/// starting at once take in turn (`BEGIN IMMEDIATE` on SQLite, an advisory
/// lock on PostgreSQL). Returns how many customers were inserted.
pub async fn migrate_and_seed(db: &Db) -> Result<usize, sqlx::Error> {
    let mut tx = db.begin(false).await?;
    with_tx!(tx, conn => {
        match db {
            Db::Sqlite(_) => {
                sqlx::raw_sql(SQLITE_SCHEMA).execute(&mut *conn).await?;
            }
            Db::Postgres(_) => {
                // Serializes concurrent first starts (CREATE TABLE IF NOT
                // EXISTS is not safe against itself on PostgreSQL).
                sqlx::query("SELECT pg_advisory_xact_lock(7302115)")
                    .execute(&mut *conn)
                    .await?;
                sqlx::raw_sql(POSTGRES_SCHEMA).execute(&mut *conn).await?;
            }
        }
    });
    let outbox_schema = match db {
        Db::Sqlite(_) => outbox::SQLITE_SCHEMA,
        Db::Postgres(_) => outbox::POSTGRES_SCHEMA,
    };
    with_tx!(tx, conn => {
        sqlx::raw_sql(outbox_schema).execute(&mut *conn).await?;
    });
    let seeded = seed(&mut tx, db).await?;
    tx.commit().await?;
    if seeded > 0 {
        tracing::info!(
            customers = seeded,
            "seeded an empty database with demo customers"
        );
    }
    Ok(seeded)
}

/// SplitMix64: a tiny deterministic generator, so every fresh database holds
/// the same demo customers.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const FIRST: [&str; 16] = [
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Barbara",
    "Edsger",
    "Margaret",
    "Dennis",
    "Frances",
    "Ken",
    "Radia",
    "Donald",
    "Hedy",
    "Tim",
    "Katherine",
    "John",
];
const LAST: [&str; 16] = [
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Liskov",
    "Dijkstra",
    "Hamilton",
    "Ritchie",
    "Allen",
    "Thompson",
    "Perlman",
    "Knuth",
    "Lamarr",
    "Berners-Lee",
    "Johnson",
    "McCarthy",
];

/// Inserts [`SEED_CUSTOMERS`] deterministic customers through `tx` when the
/// table is empty. Returns how many were inserted.
async fn seed(tx: &mut Tx, db: &Db) -> Result<usize, sqlx::Error> {
    let count: i64 = with_tx!(tx, conn => {
        sqlx::query_scalar("SELECT COUNT(*) FROM customers")
            .fetch_one(&mut *conn)
            .await?
    });
    if count > 0 {
        return Ok(0);
    }
    let mut rng = SplitMix(0x00C0_FFEE);
    for i in 1..=SEED_CUSTOMERS {
        let first = FIRST[rng.below(16) as usize];
        let last = LAST[rng.below(16) as usize];
        let segment = Segment::ALL[rng.below(4) as usize];
        let spend = match segment {
            Segment::Enterprise => 500_000 + rng.below(5_000_000),
            Segment::MidMarket => 50_000 + rng.below(500_000),
            Segment::Smb => 5_000 + rng.below(50_000),
            Segment::Consumer => 500 + rng.below(5_000),
        };
        let name = format!("{first} {last}");
        let email = format!(
            "{}.{}.{i}@example.com",
            first.to_lowercase(),
            last.to_lowercase()
        );
        let (tenure, tickets, idle) = (rng.below(120), rng.below(12), rng.below(180));
        with_tx!(tx, conn => {
            sqlx::query(
                "INSERT INTO customers (id, name, email, segment, monthly_spend_cents, tenure_months, support_tickets, days_since_login) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(i as i64)
            .bind(&name)
            .bind(&email)
            .bind(segment.as_str())
            .bind(spend as i64)
            .bind(tenure as i64)
            .bind(tickets as i64)
            .bind(idle as i64)
            .execute(&mut *conn)
            .await?;
        });
    }
    if let Db::Postgres(_) = db {
        // Explicit ids do not move the sequence: start it after them.
        with_tx!(tx, conn => {
            sqlx::query("SELECT setval(pg_get_serial_sequence('customers', 'id'), (SELECT MAX(id) FROM customers))")
                .execute(&mut *conn)
                .await?;
        });
    }
    Ok(SEED_CUSTOMERS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    async fn all_rows(db: &Db) -> Vec<(i64, String, String, String)> {
        let Db::Sqlite(pool) = db else {
            panic!("SQLite expected")
        };
        sqlx::query("SELECT id, name, email, segment FROM customers ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    #[tokio::test]
    async fn seed_is_deterministic_and_runs_once() {
        let a = connect("sqlite::memory:").await.unwrap();
        let b = connect("sqlite::memory:").await.unwrap();
        let rows = all_rows(&a).await;
        assert_eq!(rows.len(), SEED_CUSTOMERS);
        assert_eq!(rows, all_rows(&b).await);
        assert!(
            rows.iter()
                .all(|(_, _, _, seg)| seg.parse::<Segment>().is_ok())
        );
        assert_eq!(migrate_and_seed(&a).await.unwrap(), 0, "seeded twice");
        assert_eq!(all_rows(&a).await.len(), SEED_CUSTOMERS);
        assert_eq!(a.outbox_pending().await.unwrap(), 0, "the outbox exists");
    }

    #[tokio::test]
    async fn bad_url_is_an_error_not_a_panic() {
        let err = connect("mysql://nope").await.unwrap_err().to_string();
        assert!(err.contains("mysql://nope"), "{err}");
        // A malformed PostgreSQL URL: an error naming it, with its password
        // hidden. (One that nothing answers fails the same way, after the
        // pool's 10 s acquire timeout.)
        let err = connect("postgres://app:s3cret@127.0.0.1:notaport/app")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("postgres://app:***@127.0.0.1:notaport/app"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:p@h:5432/d?x=1"),
            "postgres://u:***@h:5432/d?x=1"
        );
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(
            redact_url("sqlite://a.db?mode=rwc"),
            "sqlite://a.db?mode=rwc"
        );
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(redact_url("postgres://u:p%40x@h/d"), "postgres://u:***@h/d");
    }
}
