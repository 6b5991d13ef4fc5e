//! Redis Cluster routing: a slot map and one shared connection per master.
//!
//! redis-rs' cluster client drives every node's connection from one task,
//! and its slot refresh holds a lock that every command waits for, while
//! it dials and pings each node, the dead or stalled one included: one bad
//! master delays commands for all of them. Here each master is a
//! [`SingleNode`] of its own (a shared multiplexed connection, replaced when
//! it breaks), a key goes to the master that serves its hash slot, and the
//! slot map is refreshed in the background (`CLUSTER SLOTS`, asked of every
//! known master at once, the first answer wins): after a failure, after a
//! `MOVED`, and at most every [`REFRESH_INTERVAL`] when asked. A command
//! never waits for a refresh, so a master's fault costs only the commands
//! sent to it; which master a key belongs to ([`Cluster::route`]) lets the
//! store above keep a circuit breaker per master.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::MultiplexedConnection;
use redis::{Cmd, ConnectionInfo, FromRedisValue, RedisResult, ServerErrorKind, Value};

use super::connection::{SingleNode, at, driver_gone, host_port};
use super::slots::first_ok;
pub(crate) use super::slots::{SLOT_COUNT, slot_of};
use crate::clock;
use crate::config::TlsMaterial;
use crate::error::{BackendError, ErrorKind};
use crate::join::{Boxed, join_all};

/// Shortest time between two refreshes of the slot map that failures ask for.
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// A master's identity in this process: one per address, never reused for
/// another address (so a per-master breaker can be kept by it).
pub(crate) type NodeId = u16;

/// Owner index of a slot no master serves.
const NO_OWNER: u16 = u16::MAX;

/// A master, as this process reaches it.
pub(crate) struct Node {
    pub(crate) id: NodeId,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) link: SingleNode,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Which master serves each slot.
pub(crate) struct SlotMap {
    /// Per slot, an index into `masters` ([`NO_OWNER`]: none known).
    owners: Box<[u16]>,
    /// The masters that serve slots, in the order `CLUSTER SLOTS` named them.
    masters: Vec<Arc<Node>>,
}

impl SlotMap {
    fn empty() -> Self {
        SlotMap {
            owners: vec![NO_OWNER; SLOT_COUNT].into_boxed_slice(),
            masters: Vec::new(),
        }
    }

    /// The master serving `slot`, if one is known.
    pub(crate) fn owner(&self, slot: u16) -> Option<&Arc<Node>> {
        let at = *self.owners.get(usize::from(slot))?;
        self.masters.get(usize::from(at))
    }

    /// The masters that serve slots.
    pub(crate) fn masters(&self) -> &[Arc<Node>] {
        &self.masters
    }
}

/// Where a key's command goes: its slot and the master serving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) slot: u16,
    pub(crate) node: NodeId,
}

/// A master and the positions of the keys it serves among those asked about.
pub(crate) type NodeKeys = (Arc<Node>, Vec<usize>);

/// Why a command on one node did not answer.
enum Failure {
    /// The slot lives elsewhere (`MOVED`) or is moving (`ASK`).
    Redirect {
        host: String,
        port: u16,
        ask: bool,
    },
    Error(BackendError),
}

/// A Redis Cluster (see the module docs).
pub(crate) struct Cluster {
    /// How every node is reached (credentials, database, TLS, protocol):
    /// the first seed URL's settings, at each node's address.
    template: ConnectionInfo,
    seeds: Vec<(String, u16)>,
    tls: Option<TlsMaterial>,
    pool_size: u32,
    timeout: Duration,
    map: ArcSwap<SlotMap>,
    /// Every node dialed so far; a node's id is its index.
    nodes: Mutex<Vec<Arc<Node>>>,
    /// When the slot map was last refreshed ([`clock::now_ms`]).
    refreshed_ms: AtomicU64,
    /// When a background refresh was last started.
    asked_ms: AtomicU64,
    /// Held while a refresh runs: refreshes do not overlap.
    refreshing: tokio::sync::Mutex<()>,
    me: Weak<Cluster>,
}

impl Cluster {
    /// A cluster reached through `seeds` (parsed URLs); nothing is dialed yet.
    pub(crate) fn new(
        seeds: Vec<ConnectionInfo>,
        tls: Option<&TlsMaterial>,
        pool_size: u32,
        timeout: Duration,
    ) -> Result<Arc<Cluster>, BackendError> {
        let template = seeds
            .first()
            .cloned()
            .ok_or_else(|| BackendError::new(ErrorKind::Config, "no cluster seed URL"))?;
        let seeds = seeds
            .iter()
            .filter_map(|info| host_port(info.addr()))
            .collect();
        Ok(Arc::new_cyclic(|me| Cluster {
            template,
            seeds,
            tls: tls.cloned(),
            pool_size,
            timeout,
            map: ArcSwap::from_pointee(SlotMap::empty()),
            nodes: Mutex::new(Vec::new()),
            refreshed_ms: AtomicU64::new(0),
            asked_ms: AtomicU64::new(0),
            refreshing: tokio::sync::Mutex::new(()),
            me: me.clone(),
        }))
    }

    /// The slot map in use.
    pub(crate) fn map(&self) -> arc_swap::Guard<Arc<SlotMap>> {
        self.map.load()
    }

    /// The slot of `key` and the master serving it now (`None`: not known
    /// yet; a refresh is asked for).
    pub(crate) fn route(&self, key: &[u8]) -> Option<Route> {
        let slot = slot_of(key);
        match self.map.load().owner(slot) {
            Some(node) => Some(Route {
                slot,
                node: node.id,
            }),
            None => {
                self.refresh_soon();
                None
            }
        }
    }

    /// The master serving `slot` now.
    pub(crate) fn owner_of(&self, slot: u16) -> Option<Arc<Node>> {
        let owner = self.map.load().owner(slot).cloned();
        if owner.is_none() {
            self.refresh_soon();
        }
        owner
    }

    /// The node dialed as `id`, if any.
    pub(crate) fn node(&self, id: NodeId) -> Option<Arc<Node>> {
        self.nodes().get(usize::from(id)).cloned()
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Node>>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node at `host:port`, made (not dialed) on first use.
    fn node_at(&self, host: &str, port: u16) -> Result<Arc<Node>, BackendError> {
        let mut nodes = self.nodes();
        if let Some(node) = nodes.iter().find(|n| n.port == port && n.host == host) {
            return Ok(node.clone());
        }
        let id = NodeId::try_from(nodes.len()).map_err(|_| {
            BackendError::new(ErrorKind::Other, "too many Redis Cluster node addresses")
        })?;
        let info = self
            .template
            .clone()
            .set_addr(at(self.template.addr(), host, port));
        let node = Arc::new(Node {
            id,
            host: host.to_owned(),
            port,
            link: SingleNode::open(info, self.tls.as_ref(), self.pool_size, self.timeout)?,
        });
        nodes.push(node.clone());
        Ok(node)
    }

    /// Starts a refresh of the slot map in the background, unless one was
    /// started within [`REFRESH_INTERVAL`].
    pub(crate) fn refresh_soon(&self) {
        let asked = self.asked_ms.load(Ordering::Relaxed);
        if clock::within(asked, REFRESH_INTERVAL)
            || self
                .asked_ms
                .compare_exchange(asked, clock::now_ms(), Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (Some(me), Ok(runtime)) = (self.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = me.refresh().await {
                tracing::debug!(error = %e, "Redis Cluster slot map not refreshed");
            }
        });
    }

    /// Refreshes the slot map unless it is younger than `age`.
    pub(crate) async fn refresh_if_older(&self, age: Duration) -> Result<(), BackendError> {
        if clock::within(self.refreshed_ms.load(Ordering::Acquire), age) {
            return Ok(());
        }
        self.refresh().await
    }

    /// Asks every known master (and the seeds) for `CLUSTER SLOTS` at once;
    /// the first answer becomes the slot map.
    pub(crate) async fn refresh(&self) -> Result<(), BackendError> {
        let started = clock::now_ms();
        let _one = self.refreshing.lock().await;
        // Another refresh finished while this one waited: it is as fresh.
        if self.refreshed_ms.load(Ordering::Acquire) >= started {
            return Ok(());
        }
        let mut candidates: Vec<Arc<Node>> = self.map.load().masters().to_vec();
        for (host, port) in &self.seeds {
            if !candidates
                .iter()
                .any(|n| n.port == *port && &n.host == host)
            {
                candidates.push(self.node_at(host, *port)?);
            }
        }
        type Ask = (
            Arc<Node>,
            Result<Result<Value, Failure>, tokio::time::error::Elapsed>,
        );
        let asks: Vec<Boxed<'_, Ask>> = candidates
            .into_iter()
            .map(|node| {
                Box::pin(async move {
                    let cmd = redis::cmd("CLUSTER").arg("SLOTS").clone();
                    let answer = tokio::time::timeout(
                        self.timeout * 4,
                        self.on_node(&node, |mut c| {
                            let cmd = cmd.clone();
                            async move { cmd.query_async::<Value>(&mut c).await }
                        }),
                    )
                    .await;
                    (node, answer)
                }) as Boxed<'_, Ask>
            })
            .collect();
        let mut last = BackendError::new(ErrorKind::Connection, "no Redis Cluster node known");
        let found = first_ok(asks, |(node, answer)| match answer {
            Ok(Ok(slots)) => Some((node, slots)),
            Ok(Err(Failure::Error(e))) => {
                last = e;
                None
            }
            Ok(Err(Failure::Redirect { .. })) => None,
            Err(_) => {
                last = BackendError::new(ErrorKind::Timeout, "no answer to CLUSTER SLOTS");
                None
            }
        })
        .await;
        let Some((asked, slots)) = found else {
            return Err(last);
        };
        let map = self.parse_slots(slots, &asked.host)?;
        self.map.store(Arc::new(map));
        self.refreshed_ms.store(clock::now_ms(), Ordering::Release);
        Ok(())
    }

    /// The slot map `CLUSTER SLOTS` describes (an empty host is the asked one's).
    fn parse_slots(&self, slots: Value, asked_host: &str) -> Result<SlotMap, BackendError> {
        let bad = || BackendError::new(ErrorKind::Server, "unexpected CLUSTER SLOTS reply");
        let Value::Array(ranges) = slots else {
            return Err(bad());
        };
        let mut map = SlotMap::empty();
        for range in ranges {
            let Value::Array(fields) = range else {
                return Err(bad());
            };
            let (Some(start), Some(end), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err(bad());
            };
            let start = u16::from_redis_value(start.clone()).map_err(|_| bad())?;
            let end = u16::from_redis_value(end.clone()).map_err(|_| bad())?;
            let host = master
                .first()
                .and_then(|h| String::from_redis_value(h.clone()).ok())
                .filter(|h| !h.is_empty() && h != "?")
                .unwrap_or_else(|| asked_host.to_owned());
            let port = master
                .get(1)
                .and_then(|p| u16::from_redis_value(p.clone()).ok())
                .ok_or_else(bad)?;
            let node = self.node_at(&host, port)?;
            let at = match map.masters.iter().position(|n| n.id == node.id) {
                Some(at) => at,
                None => {
                    map.masters.push(node);
                    map.masters.len() - 1
                }
            };
            let at = u16::try_from(at).map_err(|_| bad())?;
            for slot in start..=end.min(SLOT_COUNT as u16 - 1) {
                map.owners[usize::from(slot)] = at;
            }
        }
        Ok(map)
    }

    /// Runs `op` on a clone of `node`'s shared connection; a connection
    /// whose driver is gone is replaced and `op` runs once more.
    async fn on_node<T, F, Fut>(&self, node: &Node, op: F) -> Result<T, Failure>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let link = &node.link;
        let (conn, id) = match link.current() {
            Some(found) => found,
            None => Box::pin(link.connection()).await.map_err(Failure::Error)?,
        };
        let first = op(conn).await;
        let (result, id) = match first {
            Err(e) if driver_gone(&e) => {
                let (conn, id) = Box::pin(link.replace(id)).await.map_err(Failure::Error)?;
                (op(conn).await, id)
            }
            other => (other, id),
        };
        result.map_err(|e| match e.kind() {
            redis::ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask) => {
                let ask = e.kind() == redis::ErrorKind::Server(ServerErrorKind::Ask);
                match e
                    .redirect_node()
                    .and_then(|(addr, _)| addr.rsplit_once(':'))
                {
                    Some((host, port)) if port.parse::<u16>().is_ok() => Failure::Redirect {
                        host: host.to_owned(),
                        port: port.parse().unwrap_or_default(),
                        ask,
                    },
                    _ => Failure::Error(BackendError::from(e)),
                }
            }
            // The node answers, but cannot serve the slot now (failing
            // over, loading, cluster down): an availability failure.
            redis::ErrorKind::Server(
                ServerErrorKind::ClusterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::BusyLoading,
            ) => Failure::Error(BackendError::new(
                ErrorKind::Connection,
                format!(
                    "{CLUSTER_REFUSAL}: {}",
                    crate::redact::redact_text(&e.to_string())
                ),
            )),
            _ => Failure::Error(link.failed(id, e)),
        })
    }

    /// Runs `op` on the master serving `key`, following a `MOVED` (and
    /// asking for a new slot map) or an `ASK` (on a connection of its own,
    /// so that `ASKING` is the command right before `op`'s).
    pub(crate) async fn on_key<T, F, Fut>(&self, key: &[u8], op: F) -> Result<T, BackendError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let slot = slot_of(key);
        let Some(mut node) = self.owner_of(slot) else {
            return Err(no_owner(slot));
        };
        for _ in 0..3 {
            match self.on_node(&node, &op).await {
                Ok(value) => return Ok(value),
                Err(Failure::Redirect { host, port, ask }) => {
                    let target = self.node_at(&host, port)?;
                    if !ask {
                        self.refresh_soon();
                        node = target;
                        continue;
                    }
                    let mut own = target.link.pool.dedicated_connection().await?;
                    let () = redis::cmd("ASKING")
                        .query_async(&mut own.conn)
                        .await
                        .map_err(BackendError::from)?;
                    return op(own.conn).await.map_err(BackendError::from);
                }
                Err(Failure::Error(e)) => {
                    if e.kind.is_availability() {
                        self.refresh_soon();
                    }
                    return Err(e);
                }
            }
        }
        Err(BackendError::new(
            ErrorKind::Connection,
            format!("slot {slot} keeps moving"),
        ))
    }

    /// `cmd` (whose first argument is its key) on the master serving that key.
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        key: &[u8],
        cmd: &Cmd,
    ) -> Result<T, BackendError> {
        self.on_key(
            key,
            |mut c| async move { cmd.query_async::<T>(&mut c).await },
        )
        .await
    }

    /// `cmd` on node `node` itself (no redirect followed).
    pub(crate) async fn query_node<T: FromRedisValue>(
        &self,
        node: &Node,
        cmd: &Cmd,
    ) -> Result<T, BackendError> {
        match self
            .on_node(
                node,
                |mut c| async move { cmd.query_async::<T>(&mut c).await },
            )
            .await
        {
            Ok(value) => Ok(value),
            Err(Failure::Error(e)) => {
                if e.kind.is_availability() {
                    self.refresh_soon();
                }
                Err(e)
            }
            Err(Failure::Redirect { .. }) => {
                self.refresh_soon();
                Err(BackendError::new(ErrorKind::Connection, "slot moved"))
            }
        }
    }

    /// A `PING` of node `id` (bounded by the call timeout).
    pub(crate) async fn ping_node(&self, id: NodeId) -> Result<(), BackendError> {
        let node = self
            .node(id)
            .ok_or_else(|| BackendError::new(ErrorKind::Connection, "unknown cluster node"))?;
        let cmd = redis::cmd("PING");
        let ping = self.query_node::<String>(&node, &cmd);
        match tokio::time::timeout(self.timeout, ping).await {
            Ok(answer) => answer.map(|_| ()),
            Err(_) => Err(BackendError::new(
                ErrorKind::Timeout,
                format!("no answer to PING within {:?}", self.timeout),
            )),
        }
    }

    /// `keys` grouped by the master serving them (with each key's position
    /// in `keys`); keys of a slot no master is known for make an error.
    pub(crate) fn by_node<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Result<Vec<NodeKeys>, BackendError> {
        let map = self.map.load();
        let mut groups: Vec<NodeKeys> = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let slot = slot_of(key);
            let Some(node) = map.owner(slot) else {
                self.refresh_soon();
                return Err(no_owner(slot));
            };
            match groups.iter_mut().find(|(n, _)| n.id == node.id) {
                Some((_, at)) => at.push(i),
                None => groups.push((node.clone(), vec![i])),
            }
        }
        Ok(groups)
    }

    /// One command per key, pipelined per master, all masters at once;
    /// `cmd(key)` builds a key's command. Answers come back in `keys`'
    /// order. A master that redirects gets its keys one by one.
    pub(crate) async fn per_key<T>(
        &self,
        keys: &[&[u8]],
        cmd: impl Fn(&[u8]) -> Cmd + Sync,
    ) -> Result<Vec<T>, BackendError>
    where
        T: FromRedisValue + Send,
    {
        let groups = self.by_node(keys.iter().copied())?;
        let cmd = &cmd;
        let runs = groups
            .into_iter()
            .map(|(node, at)| {
                Box::pin(async move {
                    let mut pipe = redis::pipe();
                    for &i in &at {
                        pipe.add_command(cmd(keys[i]));
                    }
                    let pipe = &pipe;
                    let answers = match self
                        .on_node(&node, |mut c| async move {
                            pipe.query_async::<Vec<T>>(&mut c).await
                        })
                        .await
                    {
                        Ok(answers) => answers,
                        Err(Failure::Redirect { .. }) => {
                            self.refresh_soon();
                            let mut answers = Vec::with_capacity(at.len());
                            for &i in &at {
                                answers.push(self.query(keys[i], &cmd(keys[i])).await?);
                            }
                            answers
                        }
                        Err(Failure::Error(e)) => {
                            if e.kind.is_availability() {
                                self.refresh_soon();
                            }
                            return Err(e);
                        }
                    };
                    Ok::<_, BackendError>((at, answers))
                }) as Boxed<'_, Result<(Vec<usize>, Vec<T>), BackendError>>
            })
            .collect();
        let mut out: Vec<Option<T>> = keys.iter().map(|_| None).collect();
        for group in join_all(runs).await {
            let (at, answers) = group?;
            for (i, answer) in at.into_iter().zip(answers) {
                out[i] = Some(answer);
            }
        }
        out.into_iter()
            .map(|a| a.ok_or_else(|| BackendError::new(ErrorKind::Server, "missing reply")))
            .collect()
    }

    /// The masters serving slots now, refreshed first if the map is older
    /// than [`REFRESH_INTERVAL`] (sorted addresses).
    pub(crate) async fn masters(&self) -> Result<Vec<Arc<Node>>, BackendError> {
        self.refresh_if_older(REFRESH_INTERVAL).await?;
        let masters = self.map.load().masters().to_vec();
        if masters.is_empty() {
            return Err(BackendError::new(
                ErrorKind::Connection,
                "no Redis Cluster master known",
            ));
        }
        Ok(masters)
    }
}

/// How the message of an error [`refused_by_cluster`] begins.
const CLUSTER_REFUSAL: &str = "the Redis Cluster node answers but may not serve this slot now";

/// Whether `error` is a node's answer that the cluster does not let it
/// serve now (`CLUSTERDOWN`, `TRYAGAIN`, `MASTERDOWN`, `LOADING`): not a
/// fault of that node.
pub(crate) fn refused_by_cluster(error: &BackendError) -> bool {
    error.message.starts_with(CLUSTER_REFUSAL)
}

fn no_owner(slot: u16) -> BackendError {
    BackendError::new(
        ErrorKind::Connection,
        format!("no Redis Cluster master known for slot {slot}"),
    )
}
