//! The hit path's `GET` on a single server: the shared connection at hand
//! and the command, made ready without awaiting anything, so that the
//! store awaits redis-rs' own future with no future of cache-core's in
//! between; anything else (no connection yet, a dropped driver, Sentinel,
//! a cluster) takes [`RedisBackend::get_direct`].

use redis::Cmd;
use redis::aio::MultiplexedConnection;

use super::connection::driver_gone;
use super::{BoxedRead, RedisBackend, Topology, keyed_cmd};
use crate::error::BackendError;

/// The hit path's GET command.
#[inline]
pub(crate) fn get_cmd(key: &str) -> Cmd {
    keyed_cmd("GET", [key])
}

/// Sends `cmd` (a [`get_cmd`]) on `conn`: redis-rs' future, awaited by the
/// caller.
#[inline]
pub(crate) fn send_get<'a>(
    cmd: &'a Cmd,
    conn: &'a mut MultiplexedConnection,
) -> impl std::future::Future<Output = redis::RedisResult<Option<Vec<u8>>>> + Send + 'a {
    cmd.query_async(conn)
}

impl RedisBackend {
    /// The shared connection of a single server, when one is at hand,
    /// for the hit path's GET ([`get_cmd`], [`send_get`],
    /// [`finish_get`](Self::finish_get)), awaited by its caller so that
    /// redis-rs' future is the only one below it.
    #[inline]
    pub(crate) fn hit_connection(&self) -> Option<(MultiplexedConnection, usize)> {
        match &self.topology {
            Topology::Single(node) => node.current(),
            _ => None,
        }
    }

    /// What a hit-path GET's reply means: `None` when the connection's
    /// driver was gone (its runtime ended), so the GET must take the
    /// general way, [`get_direct`](Self::get_direct), which replaces it.
    #[inline]
    pub(crate) fn finish_get(
        &self,
        id: usize,
        sent: redis::RedisResult<Option<Vec<u8>>>,
    ) -> Option<Result<Option<Vec<u8>>, BackendError>> {
        match (sent, &self.topology) {
            (Ok(value), _) => Some(Ok(value)),
            (Err(e), Topology::Single(node)) if !driver_gone(&e) => Some(Err(node.failed(id, e))),
            (Err(e), _) if !driver_gone(&e) => Some(Err(BackendError::from(e))),
            (Err(_), _) => None,
        }
    }

    /// GET, for the hit path (an inherent method: no boxed future).
    pub(crate) async fn get_direct(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        // The hit path: the shared connection at hand, one command, a
        // future of a few hundred bytes (small enough that the box the
        // caller puts it in comes from the allocator's per-thread cache).
        // Anything else (no connection yet, a connection whose driver is
        // gone, a cluster) takes the general path, boxed.
        if let Topology::Single(node) = &self.topology
            && let Some((mut conn, id)) = node.current()
        {
            match keyed_cmd("GET", [key]).query_async(&mut conn).await {
                Ok(value) => return Ok(value),
                Err(e) if !driver_gone(&e) => return Err(node.failed(id, e)),
                Err(_) => {}
            }
        }
        let general: BoxedRead<'_> =
            Box::pin(async move { self.query(key, &keyed_cmd("GET", [key])).await });
        general.await
    }
}
