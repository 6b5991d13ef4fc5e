//! Invalidations that wait for replicas: the write and `WAIT` on a
//! connection of their own. `WAIT` counts the writes made on the
//! connection it is sent on, and the server answers nothing else on that
//! connection until it returns: on the shared connection it would hold up
//! every read of the process for as long as replicas take.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::connection::SingleNode;
use super::{RedisBackend, SCAN_BATCH, Topology, px};
use crate::backend::InvalidationWrite;
use crate::error::{BackendError, ErrorKind};

impl RedisBackend {
    /// Makes `write` and waits up to `timeout` for `replicas` replicas to
    /// acknowledge it; returns the keys deleted and the replicas that did.
    pub(crate) async fn write_and_wait(
        &self,
        write: InvalidationWrite<'_>,
        replicas: u32,
        timeout: Duration,
    ) -> Result<(u64, u32), BackendError> {
        match &self.topology {
            Topology::Single(node) => on_waiting(node, write, replicas, timeout).await,
            Topology::Sentinel(sentinel) => {
                let primary = sentinel.primary()?;
                let result = on_waiting(&primary.node, write, replicas, timeout).await;
                if let Err(e) = &result {
                    sentinel.noticed(e);
                }
                result
            }
            Topology::Cluster(_) => Err(BackendError::new(
                ErrorKind::Config,
                "waiting for replicas needs a single Redis server or Sentinel, not a cluster",
            )),
        }
    }

    /// The replicas connected to the primary now (`connected_slaves` of
    /// `INFO replication`), to warn at start-up when fewer than the
    /// invalidations wait for.
    pub(crate) async fn connected_replicas(&self) -> Result<u64, BackendError> {
        let info: String = self
            .query_any(redis::cmd("INFO").arg("replication"))
            .await?;
        Ok(super::info::info_field(&info, "connected_slaves")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }
}

async fn on_waiting(
    node: &SingleNode,
    write: InvalidationWrite<'_>,
    replicas: u32,
    timeout: Duration,
) -> Result<(u64, u32), BackendError> {
    let started = Instant::now();
    if let InvalidationWrite::Delete([]) = write {
        return Ok((0, replicas));
    }
    let (mut conn, id) = node.waiting_connection().await?;
    // What `WAIT` may block for: three quarters of what is left of the
    // call and of the connection's response timeout, so its answer still
    // arrives in time; never 0, which would block for ever.
    let wait_ms = |elapsed: Duration| {
        let left = timeout.saturating_sub(elapsed).min(node.timeout);
        u64::try_from((left * 3 / 4).as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    };
    let work = async {
        match write {
            InvalidationWrite::Delete(keys) => {
                let mut pipe = redis::pipe();
                pipe.cmd("UNLINK").arg(keys);
                pipe.cmd("WAIT")
                    .arg(replicas)
                    .arg(wait_ms(started.elapsed()));
                pipe.query_async::<(u64, u32)>(&mut conn).await
            }
            InvalidationWrite::Write { key, value, ttl } => {
                let mut pipe = redis::pipe();
                pipe.cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(px(ttl))
                    .ignore();
                pipe.cmd("WAIT")
                    .arg(replicas)
                    .arg(wait_ms(started.elapsed()));
                let (acked,): (u32,) = pipe.query_async(&mut conn).await?;
                Ok((0, acked))
            }
            InvalidationWrite::DeletePattern(pattern) => {
                let deleted = scan_unlink(&mut conn, pattern).await?;
                let acked: u32 = redis::cmd("WAIT")
                    .arg(replicas)
                    .arg(wait_ms(started.elapsed()))
                    .query_async(&mut conn)
                    .await?;
                Ok((deleted, acked))
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => Err(node.waiting_failed(id, e)),
        Err(_) => Err(BackendError::new(
            ErrorKind::Timeout,
            format!("invalidation not acknowledged within {timeout:?}"),
        )),
    }
}

/// SCAN and UNLINK in batches on `conn`.
async fn scan_unlink(conn: &mut MultiplexedConnection, pattern: &str) -> redis::RedisResult<u64> {
    let (mut cursor, mut deleted) = (0u64, 0u64);
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_BATCH)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(conn).await?;
            deleted += n;
        }
        cursor = next;
        if cursor == 0 {
            return Ok(deleted);
        }
    }
}
