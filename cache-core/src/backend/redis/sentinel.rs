//! Redis Sentinel: the primary of a monitored set, found through the
//! sentinels at start-up and again after every failover, without a
//! restart.
//!
//! - **Finding the primary** is redis-rs's own `SentinelClient`
//!   (`SENTINEL MASTERS` on up to three sentinels at once, then `ROLE` on
//!   the master one names, which must answer that it is one). The address
//!   it finds is dialed with the data settings (scheme, user, password,
//!   database, TLS) and asked `ROLE` once more before commands go to it.
//! - **A failover is noticed** three ways: the `+switch-master` message of
//!   a sentinel (one subscription, to the first sentinel that answers,
//!   pinged every [`PING_INTERVAL`] and moved to the next one when it stops
//!   answering; the message names the new primary, which is used at once),
//!   a `READONLY` answer (the old primary was made a replica), and a
//!   connection failure or timeout on the primary. The last two ask the
//!   sentinels again: one lookup at a time, at most one per
//!   [`LOOKUP_INTERVAL`]. A (re)subscription looks up too, for a failover
//!   made while no sentinel was listened to.
//! - **Commands run on a [`SingleNode`]** of the current primary, exactly as
//!   on a single server. A new primary gets a new node (pool, shared
//!   connection); whoever holds state tied to the old one (client
//!   tracking) is told before and after ([`SwitchListener`]).
//!
//! redis-rs's lookup takes the first sentinel's answer, not the newest
//! configuration: a sentinel that has not heard of a failover yet names the
//! old primary, which answers `ROLE` as a master until the sentinels
//! demote it (several seconds). So a primary left for another is not taken
//! back for [`LEFT_MEMORY`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, TlsMode, Value};

use super::connection::{SingleNode, at, host_port};
#[cfg(feature = "tls")]
use super::tls::certificates;
use super::tls::client_with_tls;
use crate::clock;
use crate::config::TlsMaterial;
use crate::error::{BackendError, ErrorKind};
use crate::redact::redact_text;

/// Runs `$body` (a future using `$conn`, a `&mut MultiplexedConnection`)
/// on the current primary's shared connection, as `on_single!` does on a
/// single server; a failure that may mean the primary changed makes the
/// sentinels be asked again.
macro_rules! on_sentinel {
    ($sentinel:expr, |$conn:ident| $body:expr) => {{
        let sentinel: &Arc<SentinelNode> = $sentinel;
        let primary = sentinel.primary()?;
        let result = async { on_single!(&primary.node, |$conn| $body) }.await;
        if let Err(e) = &result {
            sentinel.noticed(e);
        }
        result
    }};
}

/// Least time between two lookups triggered by failing calls.
const LOOKUP_INTERVAL: Duration = Duration::from_millis(250);
/// Shortest bound on one lookup (redis-rs dials each sentinel and the
/// master it names with its own 1 s connection timeout).
const LOOKUP_FLOOR: Duration = Duration::from_secs(2);
/// How often the subscribed sentinel is pinged.
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(1);
/// Pause before subscribing to the next sentinel after one failed.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(250);
/// How long a primary left for another is not taken back from a lookup.
pub(crate) const LEFT_MEMORY: Duration = Duration::from_secs(10);
/// How often a primary a `+switch-master` message names is asked `ROLE`
/// before the sentinels are asked instead.
const ROLE_TRIES: u32 = 5;
/// Counts the primaries followed after the first.
const FAILOVERS_METRIC: &str = "cache_failovers_total";
/// The channel a sentinel announces a new primary on.
const SWITCH_CHANNEL: &str = "+switch-master";

/// Told when the primary changes.
pub(crate) trait SwitchListener: Send + Sync + 'static {
    /// The primary is about to be replaced: nothing tied to the old one may
    /// be used any more.
    fn leaving(&self);
    /// The new primary is in place.
    fn arrived(&self);
}

/// The primary commands go to.
pub(crate) struct PrimaryNode {
    /// Its host and port, as the sentinels name it.
    pub(crate) addr: (String, u16),
    /// How it is reached (address, credentials, TLS).
    pub(crate) info: ConnectionInfo,
    /// Its pool and shared connection.
    pub(crate) node: SingleNode,
}

/// What [`SentinelNode::connect`] needs.
pub(crate) struct SentinelSettings<'a> {
    pub(crate) sentinels: &'a [String],
    pub(crate) master: &'a str,
    pub(crate) data_url: Option<&'a str>,
    pub(crate) tls: Option<&'a TlsMaterial>,
    pub(crate) pool_size: u32,
    pub(crate) timeout: Duration,
    pub(crate) tcp: redis::io::tcp::TcpSettings,
}

/// A Redis primary followed through its sentinels (see the module docs).
pub(crate) struct SentinelNode {
    master: String,
    /// redis-rs's lookup; one at a time (it needs `&mut`).
    lookup: tokio::sync::Mutex<SentinelClient>,
    /// A client per sentinel, for the `+switch-master` subscription.
    sentinels: Vec<redis::Client>,
    /// How the primary is reached; its address is replaced by the one the
    /// sentinels name.
    template: ConnectionInfo,
    current: ArcSwapOption<PrimaryNode>,
    /// Held while the primary is replaced.
    switching: tokio::sync::Mutex<()>,
    pool_size: u32,
    timeout: Duration,
    /// A lookup triggered by a failing call runs.
    looking: AtomicBool,
    last_lookup_ms: AtomicU64,
    /// The subscription task runs.
    watching: AtomicBool,
    /// The primary last left for another, and when.
    left: Mutex<Option<((String, u16), Instant)>>,
    listeners: Mutex<Vec<Arc<dyn SwitchListener>>>,
    /// Why the last lookup found no primary, for the error calls get while
    /// none is known (a refused password must read as one).
    last_failure: Mutex<Option<BackendError>>,
}

impl SentinelNode {
    /// Builds the lookup, tries it once (bounded; the sentinels being away
    /// is not an error: calls fail over to the cache's fallback and every
    /// failing call looks again) and starts listening to the sentinels.
    pub(crate) async fn connect(s: SentinelSettings<'_>) -> Result<Arc<Self>, BackendError> {
        let config = |e: redis::RedisError| {
            BackendError::new(ErrorKind::Config, redact_text(&e.to_string()))
        };
        let mut sentinel_infos = Vec::with_capacity(s.sentinels.len());
        for url in s.sentinels {
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(config)?
                .set_tcp_settings(s.tcp.clone());
            sentinel_infos.push(info);
        }
        let first = sentinel_infos
            .first()
            .ok_or_else(|| BackendError::new(ErrorKind::Config, "no sentinel URL"))?
            .clone();
        let sentinel_tls = matches!(first.addr(), ConnectionAddr::TcpTls { .. });
        let sentinels = sentinel_infos
            .iter()
            .map(|info| client_with_tls(info.clone(), s.tls.filter(|_| sentinel_tls)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(config)?;
        // The data nodes: the data URL's settings, else the sentinels'.
        let data = match s.data_url {
            Some(url) => url.into_connection_info().map_err(config)?,
            None => {
                let settings = first.redis_settings().clone();
                let mut plain = redis::RedisConnectionInfo::default();
                if let Some(user) = settings.username() {
                    plain = plain.set_username(user);
                }
                if let Some(password) = settings.password() {
                    plain = plain.set_password(password);
                }
                first.clone().set_redis_settings(plain)
            }
        }
        .set_tcp_settings(s.tcp.clone());
        let (data_tls, insecure) = match data.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => (true, *insecure),
            _ => (false, false),
        };
        let template = client_with_tls(data.clone(), s.tls.filter(|_| data_tls))
            .map_err(config)?
            .get_connection_info()
            .clone();

        let mut builder = SentinelClientBuilder::new(
            sentinel_infos.iter().map(|info| info.addr().clone()),
            s.master,
            SentinelServerType::Master,
        )
        .map_err(config)?
        .set_client_to_sentinel_tcp_settings(s.tcp.clone())
        .set_client_to_redis_tcp_settings(s.tcp.clone());
        let sentinel_settings = first.redis_settings();
        if let Some(user) = sentinel_settings.username() {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = sentinel_settings.password() {
            builder = builder.set_client_to_sentinel_password(password);
        }
        let data_settings = data.redis_settings();
        if let Some(user) = data_settings.username() {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = data_settings.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if data_settings.db() != 0 {
            builder = builder.set_client_to_redis_db(data_settings.db());
        }
        if data_tls {
            builder = builder.set_client_to_redis_tls_mode(if insecure {
                TlsMode::Insecure
            } else {
                TlsMode::Secure
            });
        }
        #[cfg(feature = "tls")]
        if let Some(material) = s.tls {
            if sentinel_tls {
                builder = builder.set_client_to_sentinel_certificates(certificates(material));
            }
            if data_tls {
                builder = builder.set_client_to_redis_certificates(certificates(material));
            }
        }
        let lookup = builder.build().map_err(config)?;

        let node = Arc::new(SentinelNode {
            master: s.master.to_owned(),
            lookup: tokio::sync::Mutex::new(lookup),
            sentinels,
            template,
            current: ArcSwapOption::empty(),
            switching: tokio::sync::Mutex::new(()),
            pool_size: s.pool_size,
            timeout: s.timeout,
            looking: AtomicBool::new(false),
            last_lookup_ms: AtomicU64::new(clock::now_ms()),
            watching: AtomicBool::new(false),
            left: Mutex::new(None),
            listeners: Mutex::new(Vec::new()),
            last_failure: Mutex::new(None),
        });
        // Exported at 0 from start-up, so a rate over it exists.
        metrics::counter!(FAILOVERS_METRIC).increment(0);
        if let Err(e) = node.resolve().await {
            tracing::warn!(master = %node.master, error = %e, "no sentinel named a reachable primary at start; running degraded until one does");
        }
        node.ensure_watching();
        Ok(node)
    }

    /// The primary commands go to now; when none is known, an error, and
    /// the sentinels are asked again.
    pub(crate) fn primary(self: &Arc<Self>) -> Result<Arc<PrimaryNode>, BackendError> {
        match self.current.load_full() {
            Some(primary) => Ok(primary),
            None => {
                self.resolve_soon();
                let last = self
                    .last_failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                Err(match last {
                    Some(e) => BackendError::new(
                        if e.kind.needs_operator() {
                            e.kind
                        } else {
                            ErrorKind::Connection
                        },
                        format!("no primary known for `{}`: {}", self.master, e.message),
                    ),
                    None => BackendError::new(
                        ErrorKind::Connection,
                        format!(
                            "no primary known for `{}`: no sentinel has named a reachable one yet",
                            self.master
                        ),
                    ),
                })
            }
        }
    }

    /// The current primary, without asking the sentinels.
    pub(crate) fn current(&self) -> Option<Arc<PrimaryNode>> {
        self.current.load_full()
    }

    /// Registers who is told when the primary changes.
    pub(crate) fn listen(&self, listener: Arc<dyn SwitchListener>) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(listener);
    }

    /// A call on the primary failed with `error`: a `READONLY` answer (the
    /// primary was demoted), a broken connection or a timeout makes the
    /// sentinels be asked again.
    pub(crate) fn noticed(self: &Arc<Self>, error: &BackendError) {
        if error.message.contains("READONLY")
            || matches!(error.kind, ErrorKind::Connection | ErrorKind::Timeout)
        {
            self.resolve_soon();
        }
    }

    /// Asks the sentinels in the background, unless a lookup runs or ran
    /// within [`LOOKUP_INTERVAL`].
    fn resolve_soon(self: &Arc<Self>) {
        self.ensure_watching();
        if clock::within(self.last_lookup_ms.load(Ordering::Acquire), LOOKUP_INTERVAL)
            || self.looking.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.last_lookup_ms
            .store(clock::now_ms(), Ordering::Release);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.looking.store(false, Ordering::Release);
            return;
        };
        let me = self.clone();
        runtime.spawn(async move {
            if let Err(e) = me.resolve().await {
                tracing::debug!(master = %me.master, error = %e, "sentinel lookup failed");
            }
            me.looking.store(false, Ordering::Release);
        });
    }

    /// Asks the sentinels for the primary (redis-rs's lookup) and switches
    /// to it if it is another one; a failure is kept for
    /// [`primary`](Self::primary)'s error.
    async fn resolve(&self) -> Result<(), BackendError> {
        let result = self.look_up_and_switch().await;
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = result.clone().err();
        result
    }

    async fn look_up_and_switch(&self) -> Result<(), BackendError> {
        let bound = (self.timeout * 4).max(LOOKUP_FLOOR);
        let client = {
            let mut lookup = self.lookup.lock().await;
            tokio::time::timeout(bound, lookup.async_get_client())
                .await
                .map_err(|_| {
                    BackendError::new(
                        ErrorKind::Timeout,
                        format!("no sentinel named the primary within {bound:?}"),
                    )
                })?
                .map_err(BackendError::from)?
        };
        let addr = host_port(client.get_connection_info().addr()).ok_or_else(|| {
            BackendError::new(ErrorKind::Other, "a sentinel named a non-TCP primary")
        })?;
        if self.recently_left(&addr) {
            tracing::debug!(
                master = %self.master,
                host = %addr.0,
                port = addr.1,
                "a sentinel still names the primary left in the last failover; keeping the new one"
            );
            return Ok(());
        }
        self.switch_to(addr).await
    }

    fn recently_left(&self, addr: &(String, u16)) -> bool {
        let left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        matches!(&*left, Some((old, at)) if old == addr && at.elapsed() < LEFT_MEMORY)
    }

    /// Makes `addr` the primary unless it is already: dials it, checks it
    /// answers `ROLE` as a master, tells the listeners, swaps the node.
    async fn switch_to(&self, addr: (String, u16)) -> Result<(), BackendError> {
        let _switching = self.switching.lock().await;
        let before = self.current.load_full();
        if before.as_ref().is_some_and(|p| p.addr == addr) {
            return Ok(());
        }
        let info = self
            .template
            .clone()
            .set_addr(at(self.template.addr(), &addr.0, addr.1));
        let client = redis::Client::open(info.clone())?;
        let node = SingleNode::new(info.clone(), client, self.pool_size, self.timeout)?;
        let (mut conn, _) = node.connection().await?;
        let role: Value = tokio::time::timeout(
            self.timeout.max(Duration::from_millis(500)),
            redis::cmd("ROLE").query_async(&mut conn),
        )
        .await
        .map_err(|_| BackendError::new(ErrorKind::Timeout, "no answer to ROLE"))??;
        if !is_master(&role) {
            return Err(BackendError::new(
                ErrorKind::Connection,
                format!("{}:{} is not a primary (yet)", addr.0, addr.1),
            ));
        }
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if before.is_some() {
            for listener in &listeners {
                listener.leaving();
            }
        }
        self.current.store(Some(Arc::new(PrimaryNode {
            addr: addr.clone(),
            info,
            node,
        })));
        for listener in &listeners {
            listener.arrived();
        }
        if let Some(before) = &before {
            *self.left.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((before.addr.clone(), Instant::now()));
            metrics::counter!(FAILOVERS_METRIC).increment(1);
            tracing::warn!(
                master = %self.master,
                from = %format!("{}:{}", before.addr.0, before.addr.1),
                to = %format!("{}:{}", addr.0, addr.1),
                "Redis primary changed (failover); following it"
            );
        } else {
            tracing::info!(master = %self.master, host = %addr.0, port = addr.1, "Redis primary found through the sentinels");
        }
        Ok(())
    }

    /// A `+switch-master` message: `<name> <old-ip> <old-port> <new-ip>
    /// <new-port>`. The new primary is taken at once (after it answers
    /// `ROLE` as a master, retried for a moment); failing that, the
    /// sentinels are asked.
    async fn switch_announced(&self, payload: &str) {
        let fields: Vec<&str> = payload.split_whitespace().collect();
        let [name, _, _, host, port] = fields[..] else {
            return;
        };
        let Ok(port) = port.parse::<u16>() else {
            return;
        };
        if name != self.master {
            return;
        }
        let addr = (host.to_owned(), port);
        for _ in 0..ROLE_TRIES {
            match self.switch_to(addr.clone()).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "the primary a sentinel announced is not ready")
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Err(e) = self.resolve().await {
            tracing::debug!(master = %self.master, error = %e, "sentinel lookup failed");
        }
    }

    /// Starts the subscription task unless it runs.
    fn ensure_watching(self: &Arc<Self>) {
        if self.watching.load(Ordering::Acquire) || self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.watching.store(false, Ordering::Release);
            return;
        };
        let flag = WatchingFlag(Arc::downgrade(self));
        runtime.spawn(async move {
            watch(&flag.0).await;
            drop(flag);
        });
    }
}

/// Whether a `ROLE` answer is a primary's (`master`).
fn is_master(role: &Value) -> bool {
    let Value::Array(fields) = role else {
        return false;
    };
    match fields.first() {
        Some(Value::BulkString(bytes)) => bytes == b"master",
        Some(Value::SimpleString(text)) => text == "master",
        _ => false,
    }
}

/// Lets a later call start the subscription again when its task ends (or
/// its runtime drops it).
struct WatchingFlag(Weak<SentinelNode>);

impl Drop for WatchingFlag {
    fn drop(&mut self) {
        if let Some(node) = self.0.upgrade() {
            node.watching.store(false, Ordering::Release);
        }
    }
}

/// Subscribes to `+switch-master` on one sentinel after another, for as
/// long as the node lives.
async fn watch(weak: &Weak<SentinelNode>) {
    let mut next = 0usize;
    loop {
        let Some(node) = weak.upgrade() else { return };
        let client = node.sentinels[next % node.sentinels.len()].clone();
        next += 1;
        let bound = (node.timeout * 4).max(LOOKUP_FLOOR);
        let subscribed = tokio::time::timeout(bound, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(SWITCH_CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let pubsub = match subscribed {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                tracing::debug!(error = %BackendError::from(e), "cannot subscribe to a sentinel; trying the next one");
                drop(node);
                tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                continue;
            }
            Err(_) => {
                drop(node);
                tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
                continue;
            }
        };
        // A failover made while no sentinel was listened to.
        if let Err(e) = node.resolve().await {
            tracing::debug!(master = %node.master, error = %e, "sentinel lookup failed");
        }
        let ping_bound = (node.timeout * 4).max(PING_INTERVAL);
        drop(node);
        listen(weak, pubsub, ping_bound).await;
        tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
    }
}

/// Handles one sentinel's messages until it stops answering its `PING`.
async fn listen(weak: &Weak<SentinelNode>, pubsub: redis::aio::PubSub, ping_bound: Duration) {
    use futures_core::Stream;
    let (mut sink, mut stream) = pubsub.split();
    let mut tick = tokio::time::interval(PING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = std::future::poll_fn(|cx| std::pin::Pin::new(&mut stream).poll_next(cx)) => {
                let Some(message) = message else { return };
                let Some(node) = weak.upgrade() else { return };
                if let Ok(payload) = message.get_payload::<String>() {
                    node.switch_announced(&payload).await;
                }
            }
            _ = tick.tick() => {
                if weak.strong_count() == 0 {
                    return;
                }
                let answer = tokio::time::timeout(ping_bound, sink.ping::<Value>()).await;
                if !matches!(answer, Ok(Ok(_))) {
                    tracing::debug!("the subscribed sentinel stopped answering; subscribing to another");
                    return;
                }
            }
        }
    }
}
