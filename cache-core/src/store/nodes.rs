//! Faults kept where they are on a Redis Cluster: a circuit breaker per
//! master, chosen by the hash slot of the call's key, and recovery slot by
//! slot, so that a dead or stalled master costs only the keys it serves.
//!
//! - A call on one key ([`On::Key`], [`On::Read`]) is admitted by the
//!   breaker of the master that serves the key's slot; calls without a key
//!   or on several keys use the store's own breaker (the whole cluster).
//! - An invalidation a master missed gates the slots it concerns (a key's
//!   slot; every slot for a pattern), and so does a fallback write: until
//!   the master that serves the slot *now* (after a failover, the promoted
//!   replica) has confirmed the replay, calls on that slot go to the
//!   fallback. Other slots are not gated.
//! - The recovery task refreshes the slot map, pings every master, closes
//!   the breakers of those that answer, replays what their slots missed,
//!   drops the fallback's entries of the slots it ungates, and ends when
//!   nothing is gated and every master's breaker is closed.
//! - Whether an invalidation of some keys would be confirmed now
//!   ([`Store::undeliverable`], for `#[invalidates(fail_closed)]`) is
//!   asked of those keys' masters and slots only.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::breaker::Breaker;
use super::{Guard, Store};
use crate::backend::redis::cluster::{Cluster, NodeId, Route, slot_of};
use crate::clock;
use crate::error::BackendError;
use crate::join::{Boxed, join_all};
use crate::stats::CircuitState;

/// What a call works on: how the store picks its breaker and gating.
#[derive(Clone, Copy, Debug)]
pub(crate) enum On<'a> {
    /// A command on this one key.
    Key(&'a str),
    /// A read of this one key: a timeout while its node answers a `PING`
    /// at once, and no other call on that node failed, is blamed on the
    /// key (its size is checked before the next read), not on the node.
    Read(&'a str),
    /// No key, or several.
    Any,
}

impl<'a> On<'a> {
    pub(crate) fn key(self) -> Option<&'a str> {
        match self {
            On::Key(key) | On::Read(key) => Some(key),
            On::Any => None,
        }
    }
}

/// Breakers per master, by [`NodeId`] (ids past the table share a breaker:
/// a cluster has far fewer addresses).
const MAX_NODES: usize = 256;

pub(super) struct Nodes {
    breakers: Box<[Breaker]>,
}

impl Nodes {
    pub(super) fn new(failures: u32, cooldown: Duration) -> Self {
        Nodes {
            breakers: (0..MAX_NODES)
                .map(|_| Breaker::new(failures, cooldown))
                .collect(),
        }
    }

    pub(super) fn breaker(&self, id: NodeId) -> &Breaker {
        &self.breakers[usize::from(id) % MAX_NODES]
    }
}

/// Where a call's failures count and what gates it.
pub(super) struct Domain<'g> {
    pub(super) breaker: &'g Breaker,
    /// The key's slot and master (a cluster call on one key).
    pub(super) route: Option<Route>,
}

/// A log line of one kind at most once per [`LOG_EVERY`].
#[derive(Default)]
pub(super) struct Every(AtomicU64);

/// Shortest time between two recovery or fault log lines of one kind.
pub(super) const LOG_EVERY: Duration = Duration::from_secs(1);

impl Every {
    /// Whether a line may be logged now (and, if so, none for a second).
    pub(super) fn due(&self) -> bool {
        let last = self.0.load(Ordering::Relaxed);
        !clock::within(last, LOG_EVERY)
            && self
                .0
                .compare_exchange(last, clock::now_ms(), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }
}

/// Rate limits of the store's fault and recovery logs, one per kind.
#[derive(Default)]
pub(super) struct Logs {
    pub(super) opened: Every,
    pub(super) closed: Every,
    pub(super) recovered: Every,
    pub(super) suspect: Every,
    pub(super) failed: Every,
}

impl Store {
    /// The cluster below, when the store is over one.
    pub(super) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.primary.redis()?.cluster()
    }

    /// The breaker and slot a call on `on` answers to.
    #[inline]
    pub(super) fn domain<'g>(&self, guard: &'g Guard, on: On<'_>) -> Domain<'g> {
        if let (Some(nodes), Some(key)) = (&guard.nodes, on.key())
            && let Some(route) = self.cluster().and_then(|c| c.route(key.as_bytes()))
        {
            return Domain {
                breaker: nodes.breaker(route.node),
                route: Some(route),
            };
        }
        Domain {
            breaker: &guard.breaker,
            route: None,
        }
    }

    /// Where a domain is, for logs.
    pub(super) fn describe(&self, route: Option<Route>) -> String {
        match (route, self.cluster()) {
            (Some(route), Some(cluster)) => match cluster.node(route.node) {
                Some(node) => format!("Redis Cluster master {node:?}"),
                None => "a Redis Cluster master".to_owned(),
            },
            _ => "the cache backend".to_owned(),
        }
    }

    /// The worst breaker state among the store's own and (on a cluster)
    /// those of the masters that serve slots now.
    pub(super) fn worst_circuit(&self, guard: &Guard) -> CircuitState {
        let mut worst = guard.breaker.state();
        if let (Some(nodes), Some(cluster)) = (&guard.nodes, self.cluster()) {
            for node in cluster.map().masters() {
                worst = match (worst, nodes.breaker(node.id).state()) {
                    (CircuitState::Open, _) | (_, CircuitState::Open) => CircuitState::Open,
                    (CircuitState::HalfOpen, _) | (_, CircuitState::HalfOpen) => {
                        CircuitState::HalfOpen
                    }
                    (state, _) => state,
                };
            }
        }
        worst
    }

    /// Why an invalidation made now might not be confirmed (`None`: as far
    /// as the store knows, it would be). With `keys` (storage keys: an
    /// invalidation of those keys and nothing else) on a cluster, only
    /// their masters and slots count: a master whose breaker is not
    /// closed, a slot awaiting a replay, a slot no master is known for.
    /// Otherwise the whole backend counts: any breaker not closed (on a
    /// cluster, any master's), or anything awaiting a replay.
    pub(crate) fn undeliverable(&self, keys: Option<&[String]>) -> Option<&'static str> {
        let guard = self.guard.as_ref()?;
        if let (Some(keys), Some(nodes), Some(cluster)) = (keys, &guard.nodes, self.cluster()) {
            for key in keys {
                let Some(route) = cluster.route(key.as_bytes()) else {
                    return Some("no Redis Cluster master is known for the key's slot");
                };
                if nodes.breaker(route.node).state() != CircuitState::Closed {
                    return Some("the circuit breaker of the key's Redis Cluster master is open");
                }
                if guard.recovery.gates(Some(route.slot)) {
                    return Some(
                        "invalidations the key's Redis Cluster slot missed are not replayed yet",
                    );
                }
            }
            return None;
        }
        match self.worst_circuit(guard) {
            CircuitState::Open | CircuitState::HalfOpen => Some("the circuit breaker is open"),
            _ if guard.recovery.needed() => Some("invalidations Redis missed are not replayed yet"),
            _ => None,
        }
    }

    /// One round of cluster recovery (see the module docs): `Ok` when
    /// nothing is gated and every master's breaker is closed.
    pub(super) async fn recover_nodes(
        &self,
        guard: &Guard,
        cluster: &Cluster,
    ) -> Result<(), BackendError> {
        let Some(nodes) = &guard.nodes else {
            return Ok(());
        };
        cluster.refresh().await?;
        let masters = cluster.map().masters().to_vec();
        let pings = masters
            .iter()
            .map(|node| {
                let id = node.id;
                Box::pin(async move { (id, cluster.ping_node(id).await) })
                    as Boxed<'_, (NodeId, Result<(), BackendError>)>
            })
            .collect();
        let mut answered: HashSet<NodeId> = HashSet::new();
        let mut last_error = None;
        for (id, ping) in join_all(pings).await {
            match ping {
                Ok(()) => {
                    answered.insert(id);
                }
                Err(e) => last_error = Some(e),
            }
        }
        let map = cluster.map();
        let owner_answered = |slot: u16| {
            map.owner(slot)
                .map(|n| n.id)
                .filter(|id| answered.contains(id))
        };
        // What each answering master's slots missed, replayed on it.
        let primary = self.primary.backend();
        let mut replayed = 0;
        let mut replay_failed = false;
        for (_, batch) in guard.recovery.take_keyed(&owner_answered) {
            let outcome = tokio::time::timeout(self.bulk_timeout(), self.replay(primary, &batch));
            match outcome.await {
                Ok(Ok(())) => replayed += batch.len(),
                Ok(Err(e)) => {
                    replay_failed = true;
                    guard.recovery.put_back(batch);
                    last_error = Some(e);
                }
                Err(_) => {
                    replay_failed = true;
                    guard.recovery.put_back(batch);
                }
            }
        }
        let everyone = !replay_failed && masters.iter().all(|n| answered.contains(&n.id));
        if everyone && let Some(batch) = guard.recovery.take_global() {
            let outcome = tokio::time::timeout(self.bulk_timeout(), self.replay(primary, &batch));
            match outcome.await {
                Ok(Ok(())) => replayed += batch.len().max(1),
                Ok(Err(e)) => {
                    guard.recovery.put_back(batch);
                    last_error = Some(e);
                }
                Err(_) => guard.recovery.put_back(batch),
            }
        }
        for node in &masters {
            if answered.contains(&node.id)
                && nodes.breaker(node.id).on_success()
                && guard.logs.closed.due()
            {
                tracing::info!(
                    node = ?node,
                    "Redis Cluster master answers again: its slots are served from Redis once their missed invalidations are replayed"
                );
            }
        }
        if everyone {
            guard.breaker.on_success();
        }
        let owner_ok = |slot: u16| owner_answered(slot).is_some();
        let ungated = guard.recovery.ungate(&owner_ok, everyone);
        if !ungated.is_empty() {
            let slots: HashSet<u16> = ungated.iter().copied().collect();
            guard
                .fallback
                .clear_where(|key| slots.contains(&slot_of(key.as_bytes())))
                .await;
        }
        let done = guard.recovery.finish_if_clear(&guard.fallback);
        guard.recovery.tell_waiters();
        if (replayed > 0 || !ungated.is_empty()) && guard.logs.recovered.due() {
            tracing::info!(
                replayed,
                slots = ungated.len(),
                "Redis Cluster slots back on Redis: missed invalidations replayed, their fallback entries dropped"
            );
        }
        let closed = masters
            .iter()
            .all(|n| nodes.breaker(n.id).state() == CircuitState::Closed);
        match (done && closed && everyone, last_error) {
            (true, _) => Ok(()),
            (false, Some(e)) => Err(e),
            (false, None) => Err(BackendError::new(
                crate::ErrorKind::Connection,
                "a Redis Cluster master is not back yet",
            )),
        }
    }
}
