//! Redis server-assisted client tracking: the connections on which Redis
//! tells this process that a key changed. What is held under tracking
//! (generations, near entries) belongs to the consistency layer, which
//! hears about changes and losses through [`Listener`].
//!
//! - A single server: one RESP3 connection with `CLIENT TRACKING ON`.
//!   Generation keys are read on it, so Redis tracks exactly the keys this
//!   process holds; with a near cache it subscribes in broadcast mode to
//!   every key of the namespace instead.
//! - A primary found through Redis Sentinel: as a single server, on
//!   whichever server the sentinels name. A failover loses tracking
//!   before calls reach the new primary, and it is established again on
//!   the new one.
//! - A cluster: one such connection to every master that serves slots, each
//!   in broadcast mode (`{namespace}:%gen:` and `{namespace}:%tag:` for
//!   prefix and tag generations only, the whole namespace with a near
//!   cache), since a key's changes are reported by the
//!   node that holds it. Tracking counts as established only while every one
//!   of them is.
//!
//! Whatever is held (generations, near entries) is dropped whenever tracking
//! is lost: a disconnection, a failed heartbeat (a `PING` on every tracking
//! connection each [`HEARTBEAT`]), a changed set of cluster masters, a
//! failover to another primary, a `FLUSHALL`. Nothing is held again until tracking is re-established.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{ConnectionInfo, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};

use super::connection::at;
use super::sentinel::{SentinelNode, SwitchListener};
use super::tls::client_with_tls;
use super::{RedisBackend, Topology};
use crate::clock;
use crate::config::TlsMaterial;

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

/// Who is told what Redis reports: the consistency layer, which holds
/// generations and near entries under tracking.
pub(crate) trait Listener: Send + Sync + 'static {
    /// `key` (a full storage key) changed.
    fn changed(&self, key: &[u8]);
    /// Anything held may be stale: Redis flushed, or tracking was lost.
    fn everything_changed(&self);
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
        /// Asked for the masters that serve slots.
        backend: Arc<RedisBackend>,
    },
    /// The primary the sentinels name, reached like the data connections.
    Sentinel(Arc<SentinelNode>),
}

/// One set of established tracking connections.
struct Links {
    connections: Vec<MultiplexedConnection>,
    /// The cluster masters they go to (sorted; empty for a single server).
    masters: Vec<(String, u16)>,
    /// Set by the push handler when any of them disconnects.
    lost: Arc<AtomicBool>,
}

/// The tracking connections of one cache, and the epoch that tells state
/// held before a loss of tracking from state held after it.
pub(crate) struct Tracker {
    state: Arc<State>,
}

struct State {
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
    /// The broadcast prefixes, if tracking is in broadcast mode.
    broadcast: Option<Vec<String>>,
    /// Told about every change and loss.
    listener: OnceLock<Arc<dyn Listener>>,
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
        let client = client_with_tls(info, tls).ok()?;
        Some(Tracker::new(
            Target::Single(client),
            timeout,
            near.then(|| vec![format!("{namespace}:")]),
        ))
    }

    /// A tracker for the cluster `backend` talks to, reached like
    /// `first_url` (nothing connects yet). Always in broadcast mode: the
    /// prefix and tag generation keys with no near cache, every key of the
    /// namespace with one.
    pub(crate) fn cluster(
        first_url: &str,
        backend: Arc<RedisBackend>,
        namespace: &str,
        timeout: Duration,
        near: bool,
        tls: Option<&TlsMaterial>,
    ) -> Option<Tracker> {
        let template = resp3(first_url.into_connection_info().ok()?);
        let prefixes = if near {
            vec![format!("{namespace}:")]
        } else {
            vec![format!("{namespace}:%gen:"), format!("{namespace}:%tag:")]
        };
        Some(Tracker::new(
            Target::Cluster {
                template,
                tls: tls.cloned(),
                backend,
            },
            timeout,
            Some(prefixes),
        ))
    }

    /// A tracker for the primary `backend` follows through Redis Sentinel
    /// (nothing connects yet; `None` for another topology). A failover
    /// loses tracking before calls reach the new primary.
    pub(crate) fn sentinel(
        backend: &RedisBackend,
        namespace: &str,
        timeout: Duration,
        near: bool,
    ) -> Option<Tracker> {
        let Topology::Sentinel(node) = &backend.topology else {
            return None;
        };
        let tracker = Tracker::new(
            Target::Sentinel(node.clone()),
            timeout,
            near.then(|| vec![format!("{namespace}:")]),
        );
        node.listen(Arc::new(FollowPrimary(Arc::downgrade(&tracker.state))));
        Some(tracker)
    }

    fn new(target: Target, timeout: Duration, broadcast: Option<Vec<String>>) -> Self {
        Tracker {
            state: Arc::new(State {
                target,
                timeout: timeout.max(Duration::from_millis(10)),
                links: ArcSwapOption::empty(),
                epoch: AtomicU64::new(0),
                connecting: AtomicBool::new(false),
                last_attempt_ms: AtomicU64::new(0),
                broadcast,
                listener: OnceLock::new(),
            }),
        }
    }

    /// Names who hears about changes; set once, before tracking starts.
    pub(crate) fn listen(&self, listener: Arc<dyn Listener>) {
        let _ = self.state.listener.set(listener);
    }

    /// The current epoch: taken with a ticket before a read.
    pub(crate) fn epoch(&self) -> u64 {
        self.state.epoch.load(Ordering::Acquire)
    }

    /// Whether tracking is established and was not lost since `epoch`.
    pub(crate) fn is_current(&self, epoch: u64) -> bool {
        self.state.epoch.load(Ordering::Acquire) == epoch && self.live()
    }

    /// Whether tracking is established.
    pub(crate) fn live(&self) -> bool {
        self.state.links.load().is_some()
    }

    /// Whether generation keys must be read on the tracking connection
    /// (default mode) rather than anywhere (broadcast mode).
    pub(crate) fn reads_on_tracking_connection(&self) -> bool {
        self.state.broadcast.is_none()
    }

    /// Starts connecting in the background unless tracking is established
    /// or an attempt is running (at most one attempt per
    /// [`RECONNECT_INTERVAL`]).
    pub(crate) fn ensure_connecting(&self) {
        self.state.ensure_connecting();
    }

    /// Reads `gkey` on the (single server's) tracking connection, so Redis
    /// tracks it for us. `None` when tracking is not established; an error
    /// when the read failed, which gives tracking up (so that the next calls
    /// go straight to the breaker-guarded path): `Timeout` when Redis did
    /// not answer in time, else the connection is gone (for instance with
    /// the runtime that drove it) and a new one is made.
    pub(crate) async fn read(&self, gkey: &str) -> Option<Result<Option<Vec<u8>>, ReadFailure>> {
        let state = &self.state;
        let links = state.links.load_full()?;
        let mut connection = links.connections.first()?.clone();
        let failure = match tokio::time::timeout(
            state.timeout,
            redis::cmd("GET").arg(gkey).query_async(&mut connection),
        )
        .await
        {
            Ok(Ok(reply)) => return Some(Ok(reply)),
            Ok(Err(e)) if e.is_timeout() => ReadFailure::Timeout,
            Ok(Err(_)) => ReadFailure::Gone,
            Err(_) => ReadFailure::Timeout,
        };
        state.lose();
        state.ensure_connecting();
        Some(Err(failure))
    }
}

/// Why a read on the tracking connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFailure {
    /// Redis did not answer in time.
    Timeout,
    /// The connection is gone.
    Gone,
}

impl State {
    fn listener(&self) -> Option<&Arc<dyn Listener>> {
        self.listener.get()
    }

    /// Tracking is lost: nothing held can be trusted any more.
    fn lose(&self) {
        self.links.store(None);
        self.drop_everything();
    }

    /// Nothing held can be trusted: a new epoch, and the listener told.
    fn drop_everything(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(listener) = self.listener() {
            listener.everything_changed();
        }
    }

    /// Loses tracking if the set `lost` belongs to is the one in use (a
    /// replaced set's trouble changes nothing); returns whether it was.
    fn lose_if_current(&self, lost: &Arc<AtomicBool>) -> bool {
        let current = self.links.load();
        let in_use = current
            .as_ref()
            .is_some_and(|links| Arc::ptr_eq(&links.lost, lost));
        if in_use {
            self.lose();
        }
        in_use
    }

    /// Handles one push message from a tracking connection (runs inside the
    /// connection's driver, in the order its node sent them).
    fn on_push(&self, lost: &Arc<AtomicBool>, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    let Some(listener) = self.listener() else {
                        return;
                    };
                    for key in keys {
                        match key {
                            Value::BulkString(bytes) => listener.changed(bytes),
                            Value::SimpleString(s) => listener.changed(s.as_bytes()),
                            _ => {}
                        }
                    }
                }
                // FLUSHDB / FLUSHALL: everything changed.
                _ => self.drop_everything(),
            },
            PushKind::Disconnection => {
                lost.store(true, Ordering::Release);
                self.lose_if_current(lost);
            }
            _ => {}
        }
    }

    fn ensure_connecting(self: &Arc<Self>) {
        if self.links.load().is_some() {
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
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            let Some(state) = weak.upgrade() else { return };
            let result = state.connect().await;
            state.connecting.store(false, Ordering::Release);
            match result {
                Ok(lost) => {
                    drop(state);
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
    async fn connect(self: &Arc<Self>) -> redis::RedisResult<Arc<AtomicBool>> {
        let lost = Arc::new(AtomicBool::new(false));
        let (clients, masters) = match &self.target {
            Target::Single(client) => (vec![client.clone()], Vec::new()),
            Target::Cluster {
                template,
                tls,
                backend,
            } => {
                let masters = backend.slot_masters().await.map_err(|e| {
                    redis::RedisError::from((redis::ErrorKind::Client, "cluster nodes", e.message))
                })?;
                let mut clients = Vec::with_capacity(masters.len());
                for (host, port) in &masters {
                    let info = template.clone().set_addr(at(template.addr(), host, *port));
                    clients.push(client_with_tls(info, tls.as_ref())?);
                }
                (clients, masters)
            }
            Target::Sentinel(node) => {
                let primary = node.current().ok_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Client, "no primary known yet"))
                })?;
                let client = redis::Client::open(resp3(primary.info.clone()))?;
                (vec![client], vec![primary.addr.clone()])
            }
        };
        let mut connections = Vec::with_capacity(clients.len());
        for client in &clients {
            connections.push(self.track_on(client, &lost).await?);
        }
        // Whatever was held before these connections is not tracked by them.
        self.lose();
        self.links.store(Some(Arc::new(Links {
            connections,
            masters,
            lost: lost.clone(),
        })));
        // A disconnection between subscribing and storing found no links to
        // drop, and a failover may have moved the primary meanwhile: drop
        // them now.
        if lost.load(Ordering::Acquire) || !self.on_current_primary() {
            self.lose();
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
        self: &Arc<Self>,
        client: &redis::Client,
        lost: &Arc<AtomicBool>,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let (for_pushes, flag) = (Arc::downgrade(self), lost.clone());
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(move |push: PushInfo| {
                if let Some(state) = for_pushes.upgrade() {
                    state.on_push(&flag, push);
                }
                Ok::<(), std::convert::Infallible>(())
            });
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut tracking = redis::cmd("CLIENT");
        tracking.arg("TRACKING").arg("ON");
        if let Some(prefixes) = &self.broadcast {
            tracking.arg("BCAST");
            for prefix in prefixes {
                tracking.arg("PREFIX").arg(prefix);
            }
        }
        let () = tracking.query_async(&mut connection).await?;
        Ok(connection)
    }

    /// Whether the tracking connections (if any) go to the primary the
    /// sentinels name now (always, for other targets).
    fn on_current_primary(&self) -> bool {
        let Target::Sentinel(node) = &self.target else {
            return true;
        };
        let Some(links) = self.links.load_full() else {
            return true;
        };
        let now = node.current().map(|primary| primary.addr.clone());
        now.as_ref() == links.masters.first()
    }

    /// Whether every tracking connection of `links` answers, and (on a
    /// cluster) the masters are still the ones tracked.
    async fn still_sound(&self, links: &Links) -> bool {
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
        if let Target::Cluster { backend, .. } = &self.target {
            // A failed query is the data path's business, not tracking's.
            if let Ok(masters) = backend.slot_masters().await {
                return masters == links.masters;
            }
        }
        self.on_current_primary()
    }
}

/// Moves tracking along with the primary of a Sentinel target: lost before
/// calls reach a new primary, established again once it is in place.
struct FollowPrimary(Weak<State>);

impl SwitchListener for FollowPrimary {
    fn leaving(&self) {
        if let Some(state) = self.0.upgrade() {
            state.lose();
        }
    }

    fn arrived(&self) {
        let Some(state) = self.0.upgrade() else {
            return;
        };
        // Connections made to the old primary while it was being left.
        if !state.on_current_primary() {
            state.lose();
        }
        state.last_attempt_ms.store(0, Ordering::Release);
        state.ensure_connecting();
    }
}

/// Pings the tracking connections of the set `lost` belongs to every
/// [`HEARTBEAT`] while they are the ones in use; gives tracking up when one
/// does not answer or the cluster's masters changed.
async fn heartbeat(weak: Weak<State>, lost: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let Some(state) = weak.upgrade() else { return };
        let Some(links) = state.links.load_full() else {
            return;
        };
        if !Arc::ptr_eq(&links.lost, &lost) {
            return;
        }
        if !state.still_sound(&links).await {
            // Only if the set was not replaced while we asked.
            if state.lose_if_current(&lost) {
                tracing::debug!(
                    "client tracking lost: a tracking connection stopped answering or the cluster changed"
                );
                state.ensure_connecting();
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
