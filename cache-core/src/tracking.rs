//! Redis server-assisted client tracking: the connections on which Redis
//! tells this process that a key changed, and the generations held under it.
//!
//! - A single server: one RESP3 connection with `CLIENT TRACKING ON`.
//!   Generation keys are read on it, so Redis tracks exactly the keys this
//!   process holds; with a near cache it subscribes in broadcast mode to
//!   every key of the namespace instead.
//! - A cluster: one such connection to every master that serves slots, each
//!   in broadcast mode (`{namespace}:%gen:` for generations only, the whole
//!   namespace with a near cache), since a key's changes are reported by the
//!   node that holds it. Tracking counts as established only while every one
//!   of them is.
//!
//! Whatever is held (generations, near entries) is dropped whenever tracking
//! is lost: a disconnection, a failed heartbeat (a `PING` on every tracking
//! connection each [`HEARTBEAT`]), a changed set of cluster masters, a
//! `FLUSHALL`. Nothing is held again until tracking is re-established.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{
    ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};

use crate::cache::Inner;
use crate::clock;
use crate::config::TlsMaterial;
use crate::stats::CircuitState;

/// Least time between two attempts to establish tracking.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);

/// How often every tracking connection is pinged (and, on a cluster, the
/// set of masters compared): a connection that silently stopped delivering
/// invalidations is given up within about this long.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// Shortest wait for a heartbeat `PING`: a Redis that is only slow for a
/// moment (a long command of another client) should not cost every
/// instance its near level, which would send all reads to it at once.
const HEARTBEAT_TIMEOUT_FLOOR: Duration = Duration::from_secs(1);

pub(crate) fn parse_generation(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// A prefix's generation as this process holds it.
///
/// Invariant: `value` is non-zero only while Redis tracks it for this
/// process. Installing a generation read from Redis is refused if an
/// invalidation of it (or a loss of tracking) was processed after the read
/// began: the read takes a ticket (`changes`, and the tracker's epoch) before
/// it is sent, and the install compares the ticket under `lock`, which the
/// invalidation also takes. Without the ticket, a reply installed after the
/// invalidation that overtook it would be held forever (Redis reports a
/// tracked key's change once).
#[derive(Default)]
pub(crate) struct HeldGeneration {
    /// The generation, or 0 when none is held.
    value: AtomicU64,
    /// Bumped by every invalidation of this prefix's generation.
    changes: AtomicU64,
    lock: Mutex<()>,
}

impl HeldGeneration {
    pub(crate) fn held(&self) -> Option<u64> {
        match self.value.load(Ordering::Acquire) {
            0 => None,
            g => Some(g),
        }
    }

    pub(crate) fn ticket(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Installs `generation` if nothing changed since `ticket` was taken.
    pub(crate) fn install(&self, ticket: u64, generation: u64, tracker: &Tracker, epoch: u64) {
        let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.changes.load(Ordering::Acquire) == ticket && tracker.is_current(epoch) {
            self.value.store(generation, Ordering::Release);
        }
    }

    /// Drops the held generation (Redis says it changed, or tracking is lost).
    pub(crate) fn invalidate(&self) {
        let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.value.store(0, Ordering::Release);
    }
}

/// Where the tracking connections go.
enum Target {
    /// One server; generation keys are read on the tracking connection.
    Single(redis::Client),
    /// Every master of a cluster, reached like the first configured node
    /// (credentials, TLS) at the address the cluster gives.
    Cluster {
        template: ConnectionInfo,
        tls: Option<TlsMaterial>,
    },
}

/// One set of established tracking connections.
struct Links {
    connections: Vec<MultiplexedConnection>,
    /// The cluster masters they go to (sorted; empty for a single server).
    masters: Vec<(String, u16)>,
    /// Set by the push handler when any of them disconnects.
    lost: Arc<AtomicBool>,
}

/// The tracking connections of one cache, and the epoch that tells held
/// state from before a loss of tracking from state after it.
pub(crate) struct Tracker {
    target: Target,
    timeout: Duration,
    /// The connections, while tracking is established on all of them.
    links: ArcSwapOption<Links>,
    /// Bumped whenever tracking is lost: installs begun before are refused.
    epoch: AtomicU64,
    /// A connection attempt is running.
    connecting: AtomicBool,
    /// When the last connection attempt started ([`clock::now_ms`]): one
    /// attempt per [`RECONNECT_INTERVAL`] while Redis is away.
    last_attempt_ms: AtomicU64,
    /// `{namespace}:%gen:`, to map a key Redis names back to its prefix.
    key_head: String,
    /// The broadcast prefix, if tracking is in broadcast mode.
    broadcast: Option<String>,
}

impl Tracker {
    /// A tracker for the single server at `url` (nothing connects yet);
    /// `near`: subscribe to every key of the namespace, for a near cache.
    pub(crate) fn single(
        url: &str,
        namespace: &str,
        timeout: Duration,
        near: bool,
        tls: Option<&TlsMaterial>,
    ) -> Option<Tracker> {
        let info = resp3(url.into_connection_info().ok()?);
        let client = crate::backend::connection::client_with_tls(info, tls).ok()?;
        Some(Tracker::new(
            Target::Single(client),
            namespace,
            timeout,
            near.then(|| format!("{namespace}:")),
        ))
    }

    /// A tracker for the cluster reached through `first_url` (nothing
    /// connects yet). Always in broadcast mode: the generation keys with no
    /// near cache, every key of the namespace with one.
    pub(crate) fn cluster(
        first_url: &str,
        namespace: &str,
        timeout: Duration,
        near: bool,
        tls: Option<&TlsMaterial>,
    ) -> Option<Tracker> {
        let template = resp3(first_url.into_connection_info().ok()?);
        let prefix = if near {
            format!("{namespace}:")
        } else {
            format!("{namespace}:%gen:")
        };
        Some(Tracker::new(
            Target::Cluster {
                template,
                tls: tls.cloned(),
            },
            namespace,
            timeout,
            Some(prefix),
        ))
    }

    fn new(target: Target, namespace: &str, timeout: Duration, broadcast: Option<String>) -> Self {
        Tracker {
            target,
            timeout: timeout.max(Duration::from_millis(10)),
            links: ArcSwapOption::empty(),
            epoch: AtomicU64::new(0),
            connecting: AtomicBool::new(false),
            last_attempt_ms: AtomicU64::new(0),
            key_head: format!("{namespace}:%gen:"),
            broadcast,
        }
    }

    /// The current epoch: taken with a ticket before a read.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn is_current(&self, epoch: u64) -> bool {
        self.epoch.load(Ordering::Acquire) == epoch && self.live()
    }

    /// Whether tracking is established.
    pub(crate) fn live(&self) -> bool {
        self.links.load().is_some()
    }

    /// Whether generation keys must be read on the tracking connection
    /// (default mode) rather than anywhere (broadcast mode).
    pub(crate) fn reads_on_tracking_connection(&self) -> bool {
        self.broadcast.is_none()
    }

    /// Tracking is lost: nothing held can be trusted any more.
    fn lose(&self, inner: &Inner) {
        self.links.store(None);
        self.drop_everything(inner);
    }

    /// Nothing held can be trusted: generations and the near level.
    fn drop_everything(&self, inner: &Inner) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for entry in inner.stats.entries() {
            entry.generation.invalidate();
        }
        if let Some(near) = &inner.near {
            near.flush();
        }
    }

    /// Loses tracking if the set `lost` belongs to is the one in use (a
    /// replaced set's trouble changes nothing); returns whether it was.
    fn lose_if_current(&self, inner: &Inner, lost: &Arc<AtomicBool>) -> bool {
        let current = self.links.load();
        let in_use = current
            .as_ref()
            .is_some_and(|links| Arc::ptr_eq(&links.lost, lost));
        if in_use {
            self.lose(inner);
        }
        in_use
    }

    /// Handles one push message from a tracking connection (runs inside the
    /// connection's driver, in the order its node sent them).
    fn on_push(&self, inner: &Inner, lost: &Arc<AtomicBool>, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        let name: &[u8] = match key {
                            Value::BulkString(bytes) => bytes,
                            Value::SimpleString(s) => s.as_bytes(),
                            _ => continue,
                        };
                        match std::str::from_utf8(name)
                            .ok()
                            .and_then(|k| k.strip_prefix(&self.key_head))
                        {
                            Some(prefix) => inner.stats.prefix(prefix).generation.invalidate(),
                            None => {
                                if let Some(near) = &inner.near {
                                    near.invalidate(name);
                                }
                            }
                        }
                    }
                }
                // FLUSHDB / FLUSHALL: everything changed.
                _ => self.drop_everything(inner),
            },
            PushKind::Disconnection => {
                lost.store(true, Ordering::Release);
                self.lose_if_current(inner, lost);
            }
            _ => {}
        }
    }

    /// Starts connecting in the background unless tracking is established
    /// or an attempt is running.
    pub(crate) fn ensure_connecting(&self, inner: &Arc<Inner>) {
        if self.live() {
            return;
        }
        // Not while the breaker keeps calls away from Redis, and not more
        // often than every RECONNECT_INTERVAL.
        if inner
            .resilience
            .as_ref()
            .is_some_and(|res| res.breaker.state() != CircuitState::Closed)
        {
            return;
        }
        if clock::within(
            self.last_attempt_ms.load(Ordering::Acquire),
            RECONNECT_INTERVAL,
        ) {
            return;
        }
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_attempt_ms
            .store(clock::now_ms(), Ordering::Release);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.connecting.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(inner);
        runtime.spawn(async move {
            let Some(inner) = weak.upgrade() else { return };
            let Some(tracker) = &inner.tracker else {
                return;
            };
            let result = tracker.connect(&inner).await;
            tracker.connecting.store(false, Ordering::Release);
            match result {
                Ok(lost) => {
                    drop(inner);
                    heartbeat(weak, lost).await;
                }
                Err(e) => tracing::debug!(
                    error = %e,
                    "client tracking not established; reading generations with each value"
                ),
            }
        });
    }

    /// Establishes tracking on every connection the target needs; returns
    /// the set's loss flag.
    async fn connect(&self, inner: &Arc<Inner>) -> redis::RedisResult<Arc<AtomicBool>> {
        let lost = Arc::new(AtomicBool::new(false));
        let (clients, masters) = match &self.target {
            Target::Single(client) => (vec![client.clone()], Vec::new()),
            Target::Cluster { template, tls } => {
                let Some(redis) = inner.primary.redis() else {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "no cluster connection",
                    )));
                };
                let masters = redis.slot_masters().await.map_err(|e| {
                    redis::RedisError::from((redis::ErrorKind::Client, "cluster nodes", e.message))
                })?;
                let mut clients = Vec::with_capacity(masters.len());
                for (host, port) in &masters {
                    let info = template.clone().set_addr(at(template.addr(), host, *port));
                    clients.push(crate::backend::connection::client_with_tls(
                        info,
                        tls.as_ref(),
                    )?);
                }
                (clients, masters)
            }
        };
        let mut connections = Vec::with_capacity(clients.len());
        for client in &clients {
            connections.push(self.track_on(client, inner, &lost).await?);
        }
        // Whatever was held before these connections is not tracked by them.
        self.lose(inner);
        self.links.store(Some(Arc::new(Links {
            connections,
            masters,
            lost: lost.clone(),
        })));
        // A disconnection between subscribing and storing found no links to
        // drop: drop them now.
        if lost.load(Ordering::Acquire) {
            self.lose(inner);
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "a tracking connection dropped while connecting",
            )));
        }
        tracing::debug!("client tracking established");
        Ok(lost)
    }

    /// One RESP3 connection to `client` with tracking on.
    async fn track_on(
        &self,
        client: &redis::Client,
        inner: &Arc<Inner>,
        lost: &Arc<AtomicBool>,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let (for_pushes, flag) = (Arc::downgrade(inner), lost.clone());
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(move |push: PushInfo| {
                if let Some(inner) = for_pushes.upgrade()
                    && let Some(tracker) = &inner.tracker
                {
                    tracker.on_push(&inner, &flag, push);
                }
                Ok::<(), std::convert::Infallible>(())
            });
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut tracking = redis::cmd("CLIENT");
        tracking.arg("TRACKING").arg("ON");
        if let Some(prefix) = &self.broadcast {
            tracking.arg("BCAST").arg("PREFIX").arg(prefix);
        }
        let () = tracking.query_async(&mut connection).await?;
        Ok(connection)
    }

    /// Reads `gkey` on the (single server's) tracking connection, so Redis
    /// tracks it for us. `None` when tracking is not established or the read
    /// failed; a failed read gives tracking up (held generations with it),
    /// so that the next calls go straight to the breaker-guarded path.
    pub(crate) async fn read(&self, inner: &Inner, gkey: &str) -> Option<Option<u64>> {
        let links = self.links.load_full()?;
        let mut connection = links.connections.first()?.clone();
        let reply: Option<Vec<u8>> = match tokio::time::timeout(
            self.timeout,
            redis::cmd("GET").arg(gkey).query_async(&mut connection),
        )
        .await
        {
            Ok(Ok(reply)) => reply,
            _ => {
                self.lose(inner);
                return None;
            }
        };
        Some(reply.as_deref().and_then(parse_generation))
    }

    /// Whether every tracking connection of `links` answers, and (on a
    /// cluster) the masters are still the ones tracked.
    async fn still_sound(&self, inner: &Inner, links: &Links) -> bool {
        for connection in &links.connections {
            let mut connection = connection.clone();
            let ping = redis::cmd("PING");
            let answer = tokio::time::timeout(
                (self.timeout * 4).max(HEARTBEAT_TIMEOUT_FLOOR),
                ping.query_async::<String>(&mut connection),
            );
            if !matches!(answer.await, Ok(Ok(_))) {
                return false;
            }
        }
        if let (Target::Cluster { .. }, Some(redis)) = (&self.target, inner.primary.redis()) {
            // A failed query is the data path's business, not tracking's.
            if let Ok(masters) = redis.slot_masters().await {
                return masters == links.masters;
            }
        }
        true
    }
}

/// Pings the tracking connections of the set `lost` belongs to every
/// [`HEARTBEAT`] while they are the ones in use; gives tracking up when one
/// does not answer or the cluster's masters changed.
async fn heartbeat(weak: Weak<Inner>, lost: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let Some(inner) = weak.upgrade() else { return };
        let Some(tracker) = &inner.tracker else {
            return;
        };
        let Some(links) = tracker.links.load_full() else {
            return;
        };
        if !Arc::ptr_eq(&links.lost, &lost) {
            return;
        }
        if !tracker.still_sound(&inner, &links).await {
            // Only if the set was not replaced while we asked.
            if tracker.lose_if_current(&inner, &lost) {
                tracing::debug!(
                    "client tracking lost: a tracking connection stopped answering or the cluster changed"
                );
                tracker.ensure_connecting(&inner);
            }
            return;
        }
    }
}

fn resp3(info: ConnectionInfo) -> ConnectionInfo {
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    info.set_redis_settings(settings)
}

/// `template`'s kind of address (TLS or not, with its settings) at
/// `host:port`.
fn at(template: &ConnectionAddr, host: &str, port: u16) -> ConnectionAddr {
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
