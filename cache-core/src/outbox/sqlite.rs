//! The outbox on SQLite.

use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::{BATCH, OutboxConnection, OutboxError, SQLITE_SCHEMA, deliver};
use crate::cache::Cache;

fn failed(e: sqlx::Error) -> OutboxError {
    OutboxError::new(e.to_string())
}

#[async_trait::async_trait]
impl OutboxConnection for SqliteConnection {
    async fn record(&mut self, namespace: &str, payload: &str) -> Result<(), OutboxError> {
        sqlx::query("INSERT INTO cache_outbox (namespace, payload) VALUES (?, ?)")
            .bind(namespace)
            .bind(payload)
            .execute(self)
            .await
            .map(|_| ())
            .map_err(failed)
    }
}

#[async_trait::async_trait]
impl OutboxConnection for Transaction<'_, Sqlite> {
    async fn record(&mut self, namespace: &str, payload: &str) -> Result<(), OutboxError> {
        (**self).record(namespace, payload).await
    }
}

pub(super) async fn migrate(pool: &SqlitePool) -> Result<(), OutboxError> {
    sqlx::raw_sql(SQLITE_SCHEMA)
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(failed)
}

pub(super) async fn relay(pool: &SqlitePool, cache: &Cache) -> Result<usize, OutboxError> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, payload FROM cache_outbox WHERE namespace = ? ORDER BY id LIMIT ?",
    )
    .bind(cache.namespace())
    .bind(BATCH)
    .fetch_all(pool)
    .await
    .map_err(failed)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let done = deliver(cache, rows).await;
    for chunk in done.chunks(BATCH as usize) {
        let placeholders = vec!["?"; chunk.len()].join(",");
        let sql = format!("DELETE FROM cache_outbox WHERE id IN ({placeholders})");
        let mut delete = sqlx::query(&sql);
        for id in chunk {
            delete = delete.bind(id);
        }
        delete.execute(pool).await.map_err(failed)?;
    }
    Ok(done.len())
}
