//! The guarded store: the one way down to a [`Backend`].
//!
//! [`Store`] owns the primary backend and, for a remote one, everything that
//! keeps its failures away from callers: a timeout on every call (one
//! [`Deadline`] per cache call, so a call that meets several steps still
//! ends on time), a circuit breaker with a background probe, an in-memory
//! fallback with the backend's lease semantics, the replay of invalidations
//! the backend missed, and the keys suspected of being too large to read.
//! It knows storage keys and bytes only: labels, generations, leases as a
//! protocol, flights and the near level belong to the consistency layer
//! above it, which sees the store through its methods alone.
//!
//! Invariants this layer owns:
//! - no call waits longer than its deadline, whatever lock, reconnection or
//!   recovery it meets (a recovery runs in the background; a call that finds
//!   one running uses the fallback);
//! - an invalidation that did not reach the backend is remembered (bounded)
//!   and replayed before the backend is trusted again, including those made
//!   while the replay runs; then the fallback is dropped;
//! - a value written to the fallback is never read from it once the backend
//!   is trusted again.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::backend::redis::cluster::refused_by_cluster;
use crate::backend::redis::hit::{get_cmd, send_get};
use crate::backend::{Backend, MemoryBackend, Primary};
use crate::error::{BackendError, ErrorKind};
use crate::stats::{CircuitState, PrefixEntry, StatsRegistry};

pub(crate) mod breaker;
mod leases;
mod nodes;
mod ops;
mod recovery;
mod replicas;
mod suspects;

use breaker::{Breaker, Permit};
pub(crate) use nodes::On;
use nodes::{Domain, Logs, Nodes};
use recovery::Recovery;
use suspects::Suspects;

/// What the store needs to know of the configuration.
pub(crate) struct Settings {
    /// Bound on one call's work against the backend.
    pub(crate) timeout: Duration,
    /// Longest TTL of a value in the fallback.
    pub(crate) fallback_ttl_cap: Duration,
    /// Values larger than this are not ours (suspect keys are checked against it).
    pub(crate) max_value_bytes: usize,
    /// How long a lease lasts without renewal.
    pub(crate) lease_ttl: Duration,
    /// The namespace, for whole-namespace replays.
    pub(crate) namespace: String,
    /// Breaker threshold and cooldown.
    pub(crate) breaker_failures: u32,
    pub(crate) breaker_cooldown: Duration,
    /// Entries the fallback may hold.
    pub(crate) fallback_capacity: u64,
    /// Replicas that must acknowledge an invalidation (0: none).
    pub(crate) wait_replicas: u32,
}

/// When one cache call must be done with the backend. A call that needs
/// several backend steps (a generation, a value, a lease) shares one
/// deadline among them; a step that finds it passed fails as a timeout
/// without waiting. The clock starts at the first step (a call that makes
/// one step, a hit, reads the clock once), and that first step relies on
/// the backend's own timeout where it has one.
#[derive(Debug)]
pub(crate) struct Deadline {
    /// When the first step began; `None`: not yet. A mutex, not an
    /// atomic: it is only ever taken by the one call that owns the
    /// deadline, so it never waits, and it holds an [`Instant`] as it is
    /// (a hit's clock read is then one `Instant::now`).
    started: std::sync::Mutex<Option<Instant>>,
    budget: Duration,
}

impl Clone for Deadline {
    fn clone(&self) -> Self {
        Deadline {
            started: std::sync::Mutex::new(self.started_at()),
            budget: self.budget,
        }
    }
}

impl Deadline {
    /// A budget of `budget`, starting at the first step.
    pub(crate) fn after(budget: Duration) -> Self {
        Deadline {
            started: std::sync::Mutex::new(None),
            budget,
        }
    }

    fn started_at(&self) -> Option<Instant> {
        *self.started.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Time left for a step, if any, and whether this is the first step
    /// (which starts the clock).
    #[inline]
    fn claim(&self) -> Option<(Duration, bool)> {
        let now = Instant::now();
        let started = {
            let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
            match *started {
                Some(at) => at,
                None => {
                    *started = Some(now);
                    return Some((self.budget, true));
                }
            }
        };
        let spent = now.saturating_duration_since(started);
        self.budget
            .checked_sub(spent)
            .filter(|left| !left.is_zero())
            .map(|left| (left, false))
    }

    /// Time left, if any (starting the clock if no step did yet).
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.claim().map(|(left, _)| left)
    }

    /// The same budget again, from the next step (each look while waiting
    /// for another process's load is a call of its own).
    pub(crate) fn renewed(&self) -> Self {
        Deadline::after(self.budget)
    }

    /// This deadline moved `by` later: what was left of the budget before a
    /// loader ran is left after it (the loader's time is not the cache's).
    pub(crate) fn extended_by(&self, by: Duration) -> Self {
        let moved = self.started_at().map(|at| at.checked_add(by).unwrap_or(at));
        Deadline {
            started: std::sync::Mutex::new(moved),
            budget: self.budget,
        }
    }
}

/// A boxed step, for paths the hit path does not take.
type Step<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The resilience state of a remote backend.
struct Guard {
    /// The backend's breaker (on a cluster: of calls without one key).
    breaker: Breaker,
    /// On a cluster, a breaker per master.
    nodes: Option<Nodes>,
    logs: Logs,
    fallback: MemoryBackend,
    recovery: Recovery,
    suspects: Suspects,
    write_failure: ops::WriteFailure,
    scripts: leases::ScriptsRefused,
    /// The last replay failed for want of replicas (see `replicas.rs`).
    replicas_behind: std::sync::atomic::AtomicBool,
}

/// The store behind a cache (see the module docs).
pub(crate) struct Store {
    primary: Primary,
    guard: Option<Guard>,
    settings: Settings,
    stats: Arc<StatsRegistry>,
    /// This store, for background work (recovery, lease release).
    me: Weak<Store>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.primary.backend().kind().name())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store over `primary`; `remote` gives it timeouts, a breaker, a
    /// fallback and replay.
    pub(crate) fn new(
        primary: Primary,
        remote: bool,
        settings: Settings,
        stats: Arc<StatsRegistry>,
    ) -> Arc<Store> {
        let cluster = primary.redis().is_some_and(|r| r.cluster().is_some());
        let guard = remote.then(|| Guard {
            breaker: Breaker::new(settings.breaker_failures, settings.breaker_cooldown),
            nodes: cluster
                .then(|| Nodes::new(settings.breaker_failures, settings.breaker_cooldown)),
            logs: Logs::default(),
            fallback: MemoryBackend::new(settings.fallback_capacity),
            recovery: Recovery::default(),
            suspects: Suspects::default(),
            write_failure: ops::WriteFailure::default(),
            scripts: leases::ScriptsRefused::default(),
            replicas_behind: Default::default(),
        });
        Arc::new_cyclic(|me| Store {
            primary,
            guard,
            settings,
            stats,
            me: me.clone(),
        })
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The primary backend (health, info).
    pub(crate) fn backend(&self) -> &dyn Backend {
        self.primary.backend()
    }

    /// The built-in memory backend, when that is the store: it is read
    /// without any guard.
    pub(crate) fn memory(&self) -> Option<&MemoryBackend> {
        self.primary.memory()
    }

    /// Now on the clock logical expiry is judged against (see
    /// [`Backend::now_unix_ms`]): the system clock for the built-in
    /// backends.
    pub(crate) fn now_ms(&self) -> u64 {
        match &self.primary {
            Primary::Custom(custom) => custom.now_unix_ms(),
            _ => crate::backend::system_now_ms(),
        }
    }

    /// A deadline for one cache call.
    pub(crate) fn deadline(&self) -> Deadline {
        Deadline::after(self.settings.timeout)
    }

    /// The circuit breaker's state (`NotApplicable` without one); on a
    /// cluster, the worst of its masters' breakers.
    pub(crate) fn circuit(&self) -> CircuitState {
        match &self.guard {
            Some(guard) => self.worst_circuit(guard),
            None => CircuitState::NotApplicable,
        }
    }

    /// Whether the fallback may hold data or invalidations await replay.
    pub(crate) fn fallback_active(&self) -> bool {
        self.guard
            .as_ref()
            .is_some_and(|guard| guard.recovery.needed())
    }

    /// Whether calls reach the backend right now (breaker closed, nothing
    /// to replay first).
    pub(crate) fn trusted(&self) -> bool {
        match &self.guard {
            Some(guard) => {
                self.worst_circuit(guard) == CircuitState::Closed && !guard.recovery.needed()
            }
            None => true,
        }
    }

    /// Caps `ttl` for the fallback.
    pub(crate) fn fallback_ttl(&self, ttl: Duration) -> Duration {
        ttl.min(self.settings.fallback_ttl_cap)
    }

    /// Bound of bulk work (pattern deletes, replays).
    pub(crate) fn bulk_timeout(&self) -> Duration {
        (self.settings.timeout * 40).max(Duration::from_secs(10))
    }

    /// The backend could not be asked (down, slow, breaker open, not yet
    /// trusted again).
    pub(crate) fn unavailable(error: &BackendError) -> bool {
        error.kind.is_availability() || error.kind == ErrorKind::CircuitOpen
    }

    /// Runs `op` on the primary within `deadline`, with the breaker and
    /// recovery in front of it: the backend's, or on a cluster, those of
    /// the master serving the key `on` names. A read of one key
    /// ([`On::Read`]) that times out while its node keeps answering is
    /// blamed on the key (see [`Suspects`]), not on the node.
    pub(crate) async fn call<'s, T, Fut>(
        &'s self,
        entry: &PrefixEntry,
        deadline: &Deadline,
        on: On<'_>,
        op: impl FnOnce(&'s dyn Backend) -> Fut,
    ) -> Result<T, BackendError>
    where
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let primary = self.primary.backend();
        let Some(guard) = &self.guard else {
            return op(primary).await;
        };
        let domain = self.domain(guard, on);
        if guard.recovery.gates(domain.route.map(|r| r.slot)) {
            let waited: Step<'_, _> =
                Box::pin(self.while_recovering(entry, guard, &domain, deadline));
            waited.await?;
        }
        let (permit, left, first) = self.admit(entry, domain.breaker, deadline)?;
        let result = if first && primary.enforces_timeouts() {
            op(primary).await
        } else {
            match tokio::time::timeout(left, op(primary)).await {
                Ok(result) => result,
                Err(_) => Err(BackendError::new(
                    ErrorKind::Timeout,
                    format!("no answer within {left:?}"),
                )),
            }
        };
        match &result {
            Ok(_) => Self::succeeded(domain.breaker, permit),
            Err(e) => {
                let blame = match on {
                    On::Read(key) => Some(key),
                    _ => None,
                };
                let settled: Step<'_, ()> =
                    Box::pin(self.failed(entry, guard, &domain, permit, blame, e));
                settled.await;
            }
        }
        result
    }

    /// Lets a call through `breaker` and starts or checks its deadline:
    /// its permit, the time it has, and whether it is the call's first step.
    #[inline]
    fn admit<'g>(
        &self,
        entry: &PrefixEntry,
        breaker: &'g Breaker,
        deadline: &Deadline,
    ) -> Result<(PermitGuard<'g>, Duration, bool), BackendError> {
        // A new connection found Redis restarted with old data (possibly
        // outside any call: the start-up ping): clear before trusting it.
        if let Some(redis) = self.primary.redis()
            && redis.take_restart()
        {
            self.remember(recovery::Missed::Everything);
            return Err(BackendError::new(
                ErrorKind::CircuitOpen,
                "Redis restarted with old data: clearing the namespace before trusting it",
            ));
        }
        let permit = breaker.allow();
        if permit == Permit::Rejected {
            // Normally running already; this covers a task that ended just
            // as the backend failed again.
            self.start_recovery();
            self.stats.record_error(entry, ErrorKind::CircuitOpen);
            return Err(BackendError::new(
                ErrorKind::CircuitOpen,
                "circuit breaker open",
            ));
        }
        let permit = PermitGuard {
            breaker,
            permit: Some(permit),
        };
        let Some((left, first)) = deadline.claim() else {
            return Err(BackendError::new(
                ErrorKind::Timeout,
                "the call's time was spent before this step",
            ));
        };
        Ok((permit, left, first))
    }

    /// A call that succeeded: the breaker hears it.
    #[inline]
    fn succeeded(breaker: &Breaker, mut permit: PermitGuard<'_>) {
        permit.take();
        breaker.on_success();
    }

    /// A call that failed: a timeout reading one key is blamed on the key
    /// when it is the only failure on its node since the node last
    /// answered and the node answers a `PING` at once; else an
    /// availability failure counts against the breaker. Counted either way.
    async fn failed(
        &self,
        entry: &PrefixEntry,
        guard: &Guard,
        domain: &Domain<'_>,
        mut permit: PermitGuard<'_>,
        key: Option<&str>,
        error: &BackendError,
    ) {
        // The failure may be a new connection finding Redis restarted with
        // old data: whatever it holds of this namespace is cleared before
        // Redis is trusted again.
        if let Some(redis) = self.primary.redis()
            && redis.take_restart()
        {
            self.remember(recovery::Missed::Everything);
        }
        self.stats.record_error(entry, error.kind);
        // A command the ACL refuses proves Redis is up: a configuration
        // error, not an outage.
        if !error.kind.is_availability() || error.is_permission_denied() {
            permit.take();
            domain.breaker.on_success();
            return;
        }
        // The node answers, but the cluster does not let it serve now (a
        // master failed and is not replaced yet, with full coverage
        // required): the call uses the fallback; the node is not at fault.
        if refused_by_cluster(error) {
            permit.take();
            return;
        }
        let (in_a_row, opened) = domain.breaker.on_failure(permit.take());
        if error.kind == ErrorKind::Timeout
            && let Some(key) = key
            && in_a_row == 1
            && self.answers_at_once(domain).await
        {
            if guard.suspects.add(key) && guard.logs.suspect.due() {
                tracing::warn!(
                    key,
                    "reading this key timed out while its Redis node answered a PING at once and nothing else failed there; its size is checked before the next read"
                );
            }
            return;
        }
        if opened && guard.logs.opened.due() {
            tracing::warn!(
                failures = in_a_row,
                error = %error,
                cooldown_s = domain.breaker.cooldown().as_secs_f64(),
                "cache circuit breaker opened for {}: its keys are served from the in-memory fallback until it answers again",
                self.describe(domain.route)
            );
        } else if guard.logs.failed.due() {
            tracing::debug!(error = %error, "cache backend call failed; using the in-memory fallback");
        }
        if domain.breaker.state() != CircuitState::Closed {
            self.start_recovery();
        }
    }

    /// A Redis `GET` of `skey`, the hit path: [`call`](Self::call) written
    /// out for the one command, so that it is one future, not three nested
    /// ones (`None` when the built-in Redis backend is not the store).
    #[inline]
    pub(crate) async fn redis_get(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        deadline: &Deadline,
    ) -> Option<Result<Option<Vec<u8>>, BackendError>> {
        let (Some(redis), Some(guard)) = (self.primary.redis(), &self.guard) else {
            return None;
        };
        if guard.recovery.needed() || guard.nodes.is_some() {
            // Recovering, or a cluster (its master's breaker and slot).
            let read: Step<'_, _> =
                Box::pin(self.call(entry, deadline, On::Read(skey), |_| redis.get_direct(skey)));
            return Some(read.await);
        }
        let (permit, left, first) = match self.admit(entry, &guard.breaker, deadline) {
            Ok(admitted) => admitted,
            Err(e) => return Some(Err(e)),
        };
        let result = if first && redis.enforces_timeouts() {
            // The connection's own timeout bounds this first step; awaited
            // here, redis-rs' future is the only one below this one.
            match redis.hit_connection() {
                Some((mut conn, id)) => {
                    let cmd = get_cmd(skey);
                    let sent = send_get(&cmd, &mut conn).await;
                    match redis.finish_get(id, sent) {
                        Some(done) => done,
                        None => redis.get_direct(skey).await,
                    }
                }
                None => redis.get_direct(skey).await,
            }
        } else {
            // A later step of the call (or a cluster): boxed, so the timer
            // does not weigh on the hit path's future.
            let bounded: Step<'_, _> = Box::pin(async move {
                match tokio::time::timeout(left, redis.get_direct(skey)).await {
                    Ok(result) => result,
                    Err(_) => Err(BackendError::new(
                        ErrorKind::Timeout,
                        format!("no answer within {left:?}"),
                    )),
                }
            });
            bounded.await
        };
        match result {
            Ok(value) => {
                Self::succeeded(&guard.breaker, permit);
                Some(Ok(value))
            }
            // Boxed with what it needs: the hit path's future holds neither.
            Err(e) => {
                let settled: Step<'_, _> = Box::pin(async move {
                    let domain = Domain {
                        breaker: &guard.breaker,
                        route: None,
                    };
                    self.failed(entry, guard, &domain, permit, Some(skey), &e)
                        .await;
                    Err(e)
                });
                Some(settled.await)
            }
        }
    }

    /// A call made while missed invalidations await replay (on a cluster:
    /// of its key's slot): until they are replayed the backend may serve
    /// what they removed. The replay runs in the background; the call asks
    /// its node for a `PING` within its deadline (so an outage keeps
    /// counting against the breaker, which then opens as usual), and if it
    /// answers, wakes the replay and waits for it for what is left of its
    /// deadline. `Ok`: replayed, go on; otherwise the fallback answers.
    async fn while_recovering(
        &self,
        entry: &PrefixEntry,
        guard: &Guard,
        domain: &Domain<'_>,
        deadline: &Deadline,
    ) -> Result<(), BackendError> {
        self.start_recovery();
        let recovering = || {
            BackendError::new(
                ErrorKind::CircuitOpen,
                "replaying missed invalidations before trusting the backend again",
            )
        };
        if self.waiting_for_replicas(guard) {
            self.stats.record_error(entry, ErrorKind::CircuitOpen);
            return Err(recovering());
        }
        let permit = domain.breaker.allow();
        if permit == Permit::Rejected {
            self.stats.record_error(entry, ErrorKind::CircuitOpen);
            return Err(recovering());
        }
        let mut permit = PermitGuard {
            breaker: domain.breaker,
            permit: Some(permit),
        };
        let Some(left) = deadline.remaining() else {
            return Err(recovering());
        };
        let error = match tokio::time::timeout(left, self.ping(domain)).await {
            Ok(Ok(())) => {
                permit.take();
                domain.breaker.on_success();
                let Some(left) = deadline.remaining() else {
                    return Err(recovering());
                };
                let slot = domain.route.map(|r| r.slot);
                return match guard.recovery.replayed_within(left, slot).await {
                    true => Ok(()),
                    false => Err(recovering()),
                };
            }
            Ok(Err(e)) => e,
            Err(_) => BackendError::new(ErrorKind::Timeout, format!("no answer within {left:?}")),
        };
        if error.kind.is_availability() && !error.is_permission_denied() {
            domain.breaker.on_failure(permit.take());
        } else {
            permit.take();
            domain.breaker.on_success();
        }
        self.stats.record_error(entry, error.kind);
        Err(recovering())
    }

    /// A `PING` of the domain's node (on a cluster), else of the backend.
    async fn ping(&self, domain: &Domain<'_>) -> Result<(), BackendError> {
        match (domain.route, self.cluster()) {
            (Some(route), Some(cluster)) => cluster.ping_node(route.node).await,
            _ => self.primary.backend().ping().await,
        }
    }

    /// Whether the domain's node answers a `PING` at once (within a tenth
    /// of a second): a slow key is told from a slow node without stretching
    /// the call much past its deadline. The `PING` usually needs a new
    /// connection (the one the read timed out on is dropped), whose set-up
    /// is bounded by the call timeout; on a loaded machine it can miss a
    /// short one while the connection still comes up, so a `PING` that
    /// failed is tried once more within the tenth of a second.
    async fn answers_at_once(&self, domain: &Domain<'_>) -> bool {
        let bound = Duration::from_millis(100);
        let started = Instant::now();
        for _ in 0..2 {
            let left = bound.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, self.ping(domain)).await {
                Ok(Ok(())) => return true,
                Ok(Err(_)) if started.elapsed() < bound => continue,
                _ => return false,
            }
        }
        false
    }

    /// The guard's fallback, when there is one.
    fn fallback(&self) -> Option<&MemoryBackend> {
        self.guard.as_ref().map(|guard| &guard.fallback)
    }
}

/// Hands an unused breaker permit back (a probe abandoned by a dropped call
/// must not keep the breaker from probing again).
struct PermitGuard<'a> {
    breaker: &'a Breaker,
    permit: Option<Permit>,
}

impl PermitGuard<'_> {
    fn take(&mut self) -> Permit {
        self.permit.take().unwrap_or(Permit::Allowed)
    }
}

impl Drop for PermitGuard<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.abandon(permit);
        }
    }
}
