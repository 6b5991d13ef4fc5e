//! The SQLite database: connection, schema, and deterministic demo data.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

use crate::repo::Segment;

/// The database used when `DATABASE_URL` is unset: a file in the working
/// directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://customer-service.db?mode=rwc";

/// How many demo customers an empty database receives.
pub const SEED_CUSTOMERS: usize = 1000;

/// Whether `url` names an in-memory SQLite database.
fn is_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Connects to `url`, creates the schema if needed and seeds
/// [`SEED_CUSTOMERS`] demo customers into an empty table.
///
/// An in-memory database lives in one connection, so its pool has exactly
/// one connection that is never closed.
pub async fn connect(url: &str) -> anyhow::Result<SqlitePool> {
    if !url.starts_with("sqlite:") {
        anyhow::bail!(
            "DATABASE_URL `{url}` is not a SQLite URL: expected `sqlite://path/to/file.db?mode=rwc` or `sqlite::memory:`"
        );
    }
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| anyhow::anyhow!("DATABASE_URL `{url}` is not a valid SQLite URL: {e}"))?
        .busy_timeout(Duration::from_secs(5));
    let pool = if is_memory(url) {
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
    .map_err(|e| anyhow::anyhow!("cannot open database `{url}`: {e}"))?;
    migrate(&pool).await?;
    seed(&pool).await?;
    Ok(pool)
}

/// Creates the `customers` table if it doesn't exist.
pub async fn migrate(pool: &SqlitePool) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS customers (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            email TEXT NOT NULL UNIQUE,
            segment TEXT NOT NULL,
            monthly_spend_cents INTEGER NOT NULL DEFAULT 0,
            tenure_months INTEGER NOT NULL DEFAULT 0,
            support_tickets INTEGER NOT NULL DEFAULT 0,
            days_since_login INTEGER NOT NULL DEFAULT 0
        )",
    )
    .execute(pool)
    .await?;
    sqlx::query("CREATE INDEX IF NOT EXISTS customers_segment ON customers (segment, id)")
        .execute(pool)
        .await?;
    Ok(())
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

/// Inserts [`SEED_CUSTOMERS`] deterministic customers, in one transaction,
/// when the table is empty. Returns how many were inserted.
pub async fn seed(pool: &SqlitePool) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM customers")
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
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
        sqlx::query(
            "INSERT INTO customers (id, name, email, segment, monthly_spend_cents, tenure_months, support_tickets, days_since_login) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(i as i64)
        .bind(format!("{first} {last}"))
        .bind(format!("{}.{}.{i}@example.com", first.to_lowercase(), last.to_lowercase()))
        .bind(segment.as_str())
        .bind(spend as i64)
        .bind(rng.below(120) as i64)
        .bind(rng.below(12) as i64)
        .bind(rng.below(180) as i64)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    tracing::info!(
        customers = SEED_CUSTOMERS,
        "seeded an empty database with demo customers"
    );
    Ok(SEED_CUSTOMERS)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all_rows(pool: &SqlitePool) -> Vec<(i64, String, String, String)> {
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
        assert_eq!(seed(&a).await.unwrap(), 0, "seeded twice");
        assert_eq!(all_rows(&a).await.len(), SEED_CUSTOMERS);
    }

    #[tokio::test]
    async fn bad_url_is_an_error_not_a_panic() {
        let err = connect("postgres://nope").await.unwrap_err().to_string();
        assert!(err.contains("postgres://nope"), "{err}");
    }
}
