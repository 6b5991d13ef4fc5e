//! The outbox on PostgreSQL: the relay claims rows with
//! `FOR UPDATE SKIP LOCKED`, so instances relaying at once share the work
//! instead of delivering the same rows.

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::{BATCH, OutboxConnection, OutboxError, POSTGRES_SCHEMA, deliver};
use crate::cache::Cache;

fn failed(e: sqlx::Error) -> OutboxError {
    OutboxError::new(e.to_string())
}

#[async_trait::async_trait]
impl OutboxConnection for PgConnection {
    async fn record(&mut self, namespace: &str, payload: &str) -> Result<(), OutboxError> {
        sqlx::query("INSERT INTO cache_outbox (namespace, payload) VALUES ($1, $2)")
            .bind(namespace)
            .bind(payload)
            .execute(self)
            .await
            .map(|_| ())
            .map_err(failed)
    }
}

#[async_trait::async_trait]
impl OutboxConnection for Transaction<'_, Postgres> {
    async fn record(&mut self, namespace: &str, payload: &str) -> Result<(), OutboxError> {
        (**self).record(namespace, payload).await
    }
}

pub(super) async fn migrate(pool: &PgPool) -> Result<(), OutboxError> {
    sqlx::raw_sql(POSTGRES_SCHEMA)
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(failed)
}

pub(super) async fn relay(pool: &PgPool, cache: &Cache) -> Result<usize, OutboxError> {
    let mut tx = pool.begin().await.map_err(failed)?;
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, payload FROM cache_outbox WHERE namespace = $1 ORDER BY id LIMIT $2 \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(cache.namespace())
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await
    .map_err(failed)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let done = deliver(cache, rows).await;
    sqlx::query("DELETE FROM cache_outbox WHERE id = ANY($1)")
        .bind(&done)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    Ok(done.len())
}
