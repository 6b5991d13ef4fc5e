//! Connections of the Redis backend: the bb8 manager and the shared
//! multiplexed connection of one server (replaced when it breaks or its
//! runtime is gone): a single server's, the Sentinel primary's, or each
//! cluster master's; and how a node another node names is addressed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, ConnectionInfo};

use super::tls::client_with_tls;
use crate::config::TlsMaterial;
use crate::error::{BackendError, ErrorKind};

/// A pooled connection that remembers whether it failed, so bb8 discards it.
#[derive(Clone)]
pub(crate) struct TrackedConnection {
    pub(crate) conn: MultiplexedConnection,
    pub(crate) broken: Arc<AtomicBool>,
}

/// bb8 manager: bb8-redis's manager plus a "broken" flag (bb8-redis cannot
/// tell a dead multiplexed connection from a live one without a PING).
pub(crate) struct Manager {
    pub(crate) inner: bb8_redis::RedisConnectionManager,
    pub(crate) client: redis::Client,
    pub(crate) config: redis::AsyncConnectionConfig,
}

impl bb8::ManageConnection for Manager {
    type Connection = TrackedConnection;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        // Connect with our timeouts (bb8-redis's `connect` uses redis-rs's
        // defaults of 1 s / 500 ms); its `is_valid` is used as is.
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(TrackedConnection {
            conn,
            broken: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        self.inner.is_valid(&mut conn.conn).await
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        conn.broken.load(Ordering::Relaxed)
    }
}

/// Runs `$body` (a future using `$conn`, a `&mut MultiplexedConnection`)
/// on a single node's shared connection; if that connection turns out to be
/// dropped (its driver task is gone, for instance with the tokio runtime
/// that spawned it), replaces it and runs `$body` once more.
macro_rules! on_single {
    ($node:expr, |$conn:ident| $body:expr) => {{
        let node: &SingleNode = $node;
        // The shared connection is at hand on every call but the first after
        // a failure: that one (boxed, so its state stays out of the hit
        // path's future) waits for a fresh connection, bounded by the call
        // timeout, and the command gets what is left of it.
        let (mut held, id, left) = match node.current() {
            Some((conn, id)) => (conn, id, None),
            None => {
                let started = std::time::Instant::now();
                let (conn, id) = Box::pin(node.connection()).await?;
                (conn, id, Some(node.timeout.saturating_sub(started.elapsed())))
            }
        };
        let first = {
            let $conn = &mut held;
            match left {
                None => $body.await,
                Some(left) => Box::pin(bounded(left, $body)).await,
            }
        };
        match first {
            Ok(value) => Ok(value),
            Err(e) if driver_gone(&e) => {
                tracing::debug!(error = %e, "Redis connection dropped; retrying on a fresh one");
                let started = std::time::Instant::now();
                let (mut held, id) = Box::pin(node.replace(id)).await?;
                let $conn = &mut held;
                Box::pin(bounded(node.timeout.saturating_sub(started.elapsed()), $body))
                    .await
                    .map_err(|e| node.failed(id, e))
            }
            Err(e) => Err(node.failed(id, e)),
        }
    }};
}

pub(crate) struct SingleNode {
    pub(crate) pool: bb8::Pool<Manager>,
    /// A connection of its own for invalidations followed by `WAIT`
    /// ([`waiting_connection`](Self::waiting_connection)), made on first use.
    pub(crate) waiting: ArcSwapOption<TrackedConnection>,
    /// The response timeout of its connections, and the cache's call
    /// timeout: no call waits longer, the wait for a fresh connection
    /// included.
    pub(crate) timeout: Duration,
    /// The one shared connection every command runs on. One: a multiplexed
    /// connection pipelines any number of in-flight commands, and on the
    /// benchmark machine a second one cost 0.4–1.0 µs of client CPU per call
    /// (fewer commands per write) for no throughput gain (docs/BENCHMARKS.md).
    /// `ArcSwap`: a read on the hit path writes no line other threads share
    /// (an `RwLock` read is an atomic read-modify-write on one, contended by
    /// every core).
    pub(crate) shared: ArcSwapOption<TrackedConnection>,
    /// Held while a fresh connection replaces a missing or broken one.
    pub(crate) refresh: tokio::sync::Mutex<()>,
    /// The key holding the `run_id` of the server that last used this
    /// namespace (`None`: restarts are not checked; persistence trusted).
    pub(crate) restart_marker: Option<String>,
    /// Set when a new connection found the server restarted with old data.
    pub(crate) restarted: AtomicBool,
}

impl SingleNode {
    /// A node reached through `client` (whose connection info is `info`):
    /// nothing connects yet.
    pub(crate) fn new(
        info: ConnectionInfo,
        client: redis::Client,
        pool_size: u32,
        timeout: Duration,
    ) -> Result<SingleNode, BackendError> {
        let bounded = timeout.max(Duration::from_millis(10));
        let manager = Manager {
            inner: bb8_redis::RedisConnectionManager::new(info)?,
            client,
            config: redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(bounded))
                .set_response_timeout(Some(bounded)),
        };
        let pool = bb8::Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(timeout.max(Duration::from_millis(50)))
            .retry_connection(false)
            .idle_timeout(Some(Duration::from_secs(600)))
            .build_unchecked(manager);
        Ok(SingleNode {
            pool,
            waiting: ArcSwapOption::empty(),
            timeout: bounded,
            shared: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(()),
            restart_marker: None,
            restarted: AtomicBool::new(false),
        })
    }

    /// A node reached through `info` (nothing is dialed yet): a pool of at
    /// most `pool_size` connections behind the shared one, every connection
    /// and reply bounded by `timeout`; TLS with `tls`'s certificates.
    pub(crate) fn open(
        info: ConnectionInfo,
        tls: Option<&TlsMaterial>,
        pool_size: u32,
        timeout: Duration,
    ) -> Result<SingleNode, BackendError> {
        let client = client_with_tls(info.clone(), tls)?;
        Self::new(info, client, pool_size, timeout)
    }

    /// Checks every new connection for a restart with old data (see
    /// [`check_run`](Self::check_run)), with `marker` as the key.
    pub(crate) fn with_restart_marker(mut self, marker: Option<String>) -> Self {
        self.restart_marker = marker;
        self
    }

    /// The connection invalidations followed by `WAIT` are made on: one of
    /// their own, never in the pool (a checkout could hand out the shared
    /// connection, which `WAIT` would block). A broken one is replaced.
    pub(crate) async fn waiting_connection(
        &self,
    ) -> Result<(MultiplexedConnection, usize), BackendError> {
        let current = self.waiting.load_full();
        if let Some(conn) = current.as_deref()
            && !conn.broken.load(Ordering::Relaxed)
        {
            return Ok((conn.conn.clone(), identity(conn)));
        }
        let fresh = self
            .pool
            .dedicated_connection()
            .await
            .map_err(BackendError::from)
            .inspect_err(log_operator_error)?;
        let found = (fresh.conn.clone(), identity(&fresh));
        self.waiting.store(Some(Arc::new(fresh)));
        Ok(found)
    }

    /// Classifies a failure on the waiting connection; a connection failure
    /// or timeout gives it up.
    pub(crate) fn waiting_failed(&self, id: usize, error: redis::RedisError) -> BackendError {
        let error = BackendError::from(error);
        if matches!(error.kind, ErrorKind::Connection | ErrorKind::Timeout) {
            let current = self.waiting.load_full();
            if let Some(conn) = &current
                && identity(conn) == id
            {
                conn.broken.store(true, Ordering::Relaxed);
                let _ = self.waiting.compare_and_swap(&current, None);
            }
        }
        log_operator_error(&error);
        error
    }

    /// The shared connection, made anew if it is missing or broken (calls
    /// queue here while one of them reconnects, and a Redis that accepts
    /// connections without answering makes each reconnection last the whole
    /// timeout: the wait is bounded by it).
    pub(crate) async fn connection(&self) -> Result<(MultiplexedConnection, usize), BackendError> {
        let refreshed = tokio::time::timeout(self.timeout, async {
            let _guard = self.refresh.lock().await;
            if let Some(found) = self.current() {
                return Ok(found);
            }
            let tracked = self
                .fresh_connection()
                .await
                .inspect_err(log_operator_error)?;
            self.check_run(&tracked).await?;
            let found = (tracked.conn.clone(), identity(&tracked));
            self.shared.store(Some(Arc::new(tracked)));
            Ok(found)
        })
        .await;
        refreshed.unwrap_or_else(|_| {
            Err(BackendError::new(
                ErrorKind::Timeout,
                format!("no Redis connection within {:?}", self.timeout),
            ))
        })
    }

    pub(crate) async fn fresh_connection(&self) -> Result<TrackedConnection, BackendError> {
        // No idle connection in the pool: connect directly (a refused
        // connection fails at once instead of waiting out bb8's connection
        // timeout) and hand the new connection to bb8 to manage.
        if self.pool.state().idle_connections == 0 {
            let conn = self.pool.dedicated_connection().await?;
            let _ = self.pool.add(conn.clone());
            return Ok(conn);
        }
        // Take a healthy connection from the pool; discard broken ones.
        for _ in 0..=self.pool.state().connections + 1 {
            let pooled = self.pool.get().await.map_err(|e| match e {
                bb8::RunError::User(e) => BackendError::from(e),
                bb8::RunError::TimedOut => {
                    BackendError::new(ErrorKind::Connection, "timed out connecting to Redis")
                }
            })?;
            if pooled.broken.load(Ordering::Relaxed) {
                continue;
            }
            return Ok(pooled.clone());
        }
        Err(BackendError::new(
            ErrorKind::Connection,
            "no healthy Redis connection",
        ))
    }

    /// A clone of the shared connection and an identity for
    /// [`mark_broken`](Self::mark_broken). Only the connection itself is
    /// cloned per call: every extra shared refcount bumped here is a
    /// contended write on the hit path.
    #[inline]
    pub(crate) fn current(&self) -> Option<(MultiplexedConnection, usize)> {
        let guard = self.shared.load();
        guard
            .as_deref()
            .filter(|c| !c.broken.load(Ordering::Relaxed))
            .map(|c| (c.conn.clone(), identity(c)))
    }

    /// Classifies a command failure; a connection failure flags the
    /// connection broken so the next call takes a fresh one.
    pub(crate) fn failed(&self, id: usize, error: redis::RedisError) -> BackendError {
        let error = BackendError::from(error);
        // A timed-out reply may still be on its way (a huge value): every
        // command queued behind it on this connection would wait for it.
        if matches!(error.kind, ErrorKind::Connection | ErrorKind::Timeout) {
            self.mark_broken(id);
        }
        log_operator_error(&error);
        error
    }

    /// Replaces the connection `id`, whose driver is gone (its task ended,
    /// for instance with the tokio runtime that spawned it), with a freshly
    /// dialed one, so a command can be retried at once. bb8's idle
    /// connections are skipped: they may have been made on the same runtime.
    pub(crate) async fn replace(
        &self,
        id: usize,
    ) -> Result<(MultiplexedConnection, usize), BackendError> {
        self.mark_broken(id);
        let replaced = tokio::time::timeout(self.timeout, async {
            let _guard = self.refresh.lock().await;
            if let Some(found) = self.current() {
                return Ok(found);
            }
            let tracked = self
                .pool
                .dedicated_connection()
                .await
                .map_err(BackendError::from)
                .inspect_err(log_operator_error)?;
            let _ = self.pool.add(tracked.clone());
            self.check_run(&tracked).await?;
            let found = (tracked.conn.clone(), identity(&tracked));
            self.shared.store(Some(Arc::new(tracked)));
            Ok(found)
        })
        .await;
        replaced.unwrap_or_else(|_| {
            Err(BackendError::new(
                ErrorKind::Timeout,
                format!("no Redis connection within {:?}", self.timeout),
            ))
        })
    }

    /// Flags the connection `id` broken (so bb8 discards its copy) and
    /// empties the shared slot if it still holds it.
    pub(crate) fn mark_broken(&self, id: usize) {
        let current = self.shared.load_full();
        if let Some(conn) = &current
            && identity(conn) == id
        {
            conn.broken.store(true, Ordering::Relaxed);
            // Only if it still holds that connection (a fresh one may be in).
            let _ = self.shared.compare_and_swap(&current, None);
        }
    }
}

/// Runs a command within `left` (what waiting for a connection left of the
/// call timeout).
pub(crate) async fn bounded<T>(
    left: Duration,
    command: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(left, command).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer from Redis within the call timeout",
        ))),
    }
}

pub(crate) fn identity(conn: &TrackedConnection) -> usize {
    Arc::as_ptr(&conn.broken) as usize
}

/// Whether a command failed because its connection is gone (the connection
/// task ended, or the socket broke), so the same command can run on a fresh
/// connection. A refused, timed out or rejected command is not.
pub(crate) fn driver_gone(error: &redis::RedisError) -> bool {
    error.is_connection_dropped() && !error.is_connection_refusal()
}

/// Failures someone has to fix (credentials, permissions, database index)
/// are logged at ERROR with what to change; others are counted by the cache.
pub(crate) fn log_operator_error(error: &BackendError) {
    if error.kind.needs_operator() {
        tracing::error!(kind = %error.kind, error = %error.message, "Redis refused the cache's configuration");
    }
}

/// `template`'s kind of address (TLS or not, with its settings) at
/// `host:port`: how a node another node names (a cluster master, the
/// primary a sentinel names) is reached.
pub(crate) fn at(template: &ConnectionAddr, host: &str, port: u16) -> ConnectionAddr {
    match template {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    }
}

/// The host and port of a TCP address (`None` for a Unix socket).
pub(crate) fn host_port(addr: &ConnectionAddr) -> Option<(String, u16)> {
    match addr {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            Some((host.clone(), *port))
        }
        _ => None,
    }
}
