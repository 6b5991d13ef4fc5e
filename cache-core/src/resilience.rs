//! The resilience layer between the cache and a remote backend: a timeout
//! on every call, a circuit breaker with a background recovery probe, an
//! in-memory fallback with the same lease semantics as the backend, and the
//! replay of invalidations the backend missed while it was away.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::backend::{Backend, MemoryBackend};
use crate::breaker::{Breaker, Permit};
use crate::cache::{Cache, Inner};
use crate::clock;
use crate::error::{BackendError, ErrorKind};
use crate::keys::glob_literal;
use crate::stats::{CircuitState, PrefixEntry};

/// Most distinct invalidations remembered while the backend is away. Past
/// this, remembered keys are folded into whole-prefix invalidations of their
/// prefixes, and past that again into one invalidation of the namespace.
const MAX_PENDING_INVALIDATIONS: usize = 10_000;

/// First delay of the background recovery probe after the breaker opens; it
/// doubles up to [`MAX_PROBE_INTERVAL`] (or the cooldown, if shorter).
const FIRST_PROBE_DELAY: Duration = Duration::from_millis(250);
/// Longest pause between two background probes, so that the cache is back on
/// the backend within about a second of the backend answering again.
const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How long after the backend refused the lease scripts they are not tried
/// again (an ACL change may be undone: leases come back by themselves).
const SCRIPTS_RETRY: Duration = Duration::from_secs(10);

/// Most keys remembered as suspect (see `Resilience::suspects`).
const MAX_SUSPECT_KEYS: usize = 1024;

/// How long a failed write keeps `health()` degraded without another write.
const WRITE_FAILURE_MEMORY: Duration = Duration::from_secs(60);

pub(crate) struct Resilience {
    pub(crate) breaker: Breaker,
    pub(crate) fallback: MemoryBackend,
    /// The fallback holds data or invalidations are pending: reconcile before
    /// trusting the backend again. Set and cleared only under `pending`'s lock.
    needs_recovery: AtomicBool,
    pending: Mutex<Pending>,
    recovery: tokio::sync::Mutex<()>,
    /// A background recovery probe is running.
    prober: AtomicBool,
    /// The last write the backend refused for a reason of its own (out of
    /// memory, read-only replica, ...) while answering reads: health reports it.
    write_failure: Mutex<Option<(Instant, String)>>,
    /// Whether `write_failure` holds one: a successful store (every miss)
    /// checks this instead of taking the lock.
    write_failing: AtomicBool,
    /// When the backend last refused to run the lease scripts (an ACL
    /// without `@scripting`), a [`clock::now_ms`] (0: never):
    /// for [`SCRIPTS_RETRY`] after that, misses load without a lease and
    /// store nothing.
    no_scripting_since: AtomicU64,
    /// Keys whose last read timed out while the backend kept answering
    /// (typically a value far too large to read): their size is checked
    /// before they are read again.
    suspects: Mutex<HashSet<String>>,
    any_suspects: AtomicBool,
}

impl Resilience {
    pub(crate) fn new(breaker: Breaker, fallback: MemoryBackend) -> Self {
        Resilience {
            breaker,
            fallback,
            needs_recovery: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
            recovery: tokio::sync::Mutex::new(()),
            prober: AtomicBool::new(false),
            write_failure: Mutex::new(None),
            write_failing: AtomicBool::new(false),
            suspects: Mutex::new(HashSet::new()),
            any_suspects: AtomicBool::new(false),
            no_scripting_since: AtomicU64::new(0),
        }
    }

    /// Whether the fallback may hold data or invalidations await replay.
    pub(crate) fn fallback_active(&self) -> bool {
        self.needs_recovery.load(Ordering::Acquire)
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The write failure health should report, if a recent write failed.
    pub(crate) fn write_failure(&self) -> Option<String> {
        let failure = self.write_failure.lock().unwrap_or_else(|e| e.into_inner());
        failure
            .as_ref()
            .filter(|(at, _)| at.elapsed() < WRITE_FAILURE_MEMORY)
            .map(|(_, what)| what.clone())
    }

    /// The backend refused the lease scripts; returns whether this is news
    /// (the first refusal since scripts last worked).
    pub(crate) fn scripts_refused(&self) -> bool {
        self.no_scripting_since
            .swap(clock::now_ms(), Ordering::Relaxed)
            == 0
    }

    /// Whether the lease scripts were refused within [`SCRIPTS_RETRY`].
    pub(crate) fn scripts_off(&self) -> bool {
        match self.no_scripting_since.load(Ordering::Relaxed) {
            0 => false,
            since => {
                if clock::within(since, SCRIPTS_RETRY) {
                    true
                } else {
                    self.no_scripting_since.store(0, Ordering::Relaxed);
                    false
                }
            }
        }
    }

    fn suspects(&self) -> MutexGuard<'_, HashSet<String>> {
        self.suspects.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn suspect(&self, key: &str) {
        let mut suspects = self.suspects();
        if suspects.len() < MAX_SUSPECT_KEYS {
            suspects.insert(key.to_owned());
            self.any_suspects.store(true, Ordering::Release);
        }
    }

    /// Whether `key` is suspect; the check is one atomic load while none is.
    pub(crate) fn is_suspect(&self, key: &str) -> bool {
        self.any_suspects.load(Ordering::Acquire) && self.suspects().contains(key)
    }

    pub(crate) fn clear_suspect(&self, key: &str) {
        let mut suspects = self.suspects();
        suspects.remove(key);
        if suspects.is_empty() {
            self.any_suspects.store(false, Ordering::Release);
        }
    }

    pub(crate) fn note_write(&self, outcome: Result<(), &BackendError>) {
        if outcome.is_ok() && !self.write_failing.load(Ordering::Acquire) {
            return;
        }
        let mut failure = self.write_failure.lock().unwrap_or_else(|e| e.into_inner());
        *failure = outcome
            .err()
            .map(|e| (Instant::now(), format!("writes are failing: {e}")));
        self.write_failing
            .store(failure.is_some(), Ordering::Release);
    }
}

/// Invalidations the backend missed, replayed before it is trusted again.
/// Sets, so that an invalidation repeated during an outage is replayed once.
#[derive(Default)]
struct Pending {
    /// Storage keys to delete.
    keys: HashSet<String>,
    /// Glob patterns to delete (`delete_pattern`, prefix invalidations
    /// without generations).
    patterns: HashSet<String>,
    /// Prefixes to invalidate whole: a generation bump with prefix
    /// generations on, a pattern delete otherwise.
    prefixes: HashSet<String>,
    /// Too much to remember: invalidate the whole namespace.
    everything: bool,
}

impl Pending {
    fn len(&self) -> usize {
        self.keys.len() + self.patterns.len() + self.prefixes.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0 && !self.everything
    }

    fn merge(&mut self, other: Pending) {
        self.keys.extend(other.keys);
        self.patterns.extend(other.patterns);
        self.prefixes.extend(other.prefixes);
        self.everything |= other.everything;
    }

    /// Keeps the set bounded: keys fold into their prefixes, and if that is
    /// not enough, everything folds into the namespace.
    fn bound(&mut self, namespace: &str) {
        if self.len() <= MAX_PENDING_INVALIDATIONS {
            return;
        }
        let head = format!("{namespace}:");
        for key in std::mem::take(&mut self.keys) {
            let rest = key.strip_prefix(&head).unwrap_or(&key);
            let prefix = rest.split(':').next().unwrap_or(rest);
            self.prefixes.insert(prefix.to_owned());
        }
        if self.len() > MAX_PENDING_INVALIDATIONS {
            *self = Pending {
                everything: true,
                ..Pending::default()
            };
        }
    }
}

/// What a missed invalidation was.
pub(crate) enum Missed<'a> {
    Keys(&'a [String]),
    Pattern(&'a str),
    Prefix(&'a str),
}

impl Cache {
    /// Runs `op` on the primary backend with timeout, breaker and recovery.
    pub(crate) async fn on_primary<'s, T, Fut>(
        &'s self,
        entry: &PrefixEntry,
        timeout: Duration,
        op: impl FnOnce(&'s dyn Backend) -> Fut,
    ) -> Result<T, BackendError>
    where
        Fut: Future<Output = Result<T, BackendError>>,
    {
        self.on_primary_for(entry, timeout, None, op).await
    }

    /// [`on_primary`](Self::on_primary) for a call that reads one `key`: a
    /// timeout is not held against the backend if it answers a `PING` at
    /// once (the key is at fault, for example a value far too large to
    /// read in time); the key becomes suspect instead. One bad key must not
    /// open the breaker for every key.
    pub(crate) async fn on_primary_for<'s, T, Fut>(
        &'s self,
        entry: &PrefixEntry,
        timeout: Duration,
        key: Option<&str>,
        op: impl FnOnce(&'s dyn Backend) -> Fut,
    ) -> Result<T, BackendError>
    where
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let Some(res) = &self.inner.resilience else {
            return op(self.inner.primary.backend()).await;
        };
        let permit = res.breaker.allow();
        if permit == Permit::Rejected {
            self.inner.stats.record_error(entry, ErrorKind::CircuitOpen);
            return Err(BackendError::new(
                ErrorKind::CircuitOpen,
                "circuit breaker open",
            ));
        }
        let mut guard = ProbeGuard {
            breaker: &res.breaker,
            permit: Some(permit),
        };
        if res.needs_recovery.load(Ordering::Acquire)
            && let Err(e) = self.recover(res).await
        {
            self.fail(entry, res, guard.take(), &e);
            return Err(e);
        }
        let primary = self.inner.primary.backend();
        let result = if primary.enforces_timeouts() {
            op(primary).await
        } else {
            match tokio::time::timeout(timeout, op(primary)).await {
                Ok(result) => result,
                Err(_) => Err(BackendError::new(
                    ErrorKind::Timeout,
                    format!("no answer within {timeout:?}"),
                )),
            }
        };
        match &result {
            Ok(_) => {
                guard.take();
                res.breaker.on_success();
            }
            Err(e)
                if e.kind == ErrorKind::Timeout
                    && let Some(key) = key
                    && self.answers_at_once(primary).await =>
            {
                guard.take();
                res.breaker.on_success();
                self.inner.stats.record_error(entry, e.kind);
                res.suspect(key);
                tracing::warn!(
                    key,
                    "reading this key timed out while Redis kept answering; its size is checked before the next read"
                );
            }
            // A command the ACL refuses proves Redis is up: it is a
            // configuration error, not an outage.
            Err(e) if e.kind.is_availability() && !e.is_permission_denied() => {
                self.fail(entry, res, guard.take(), e)
            }
            Err(e) => {
                guard.take();
                res.breaker.on_success();
                self.inner.stats.record_error(entry, e.kind);
            }
        }
        result
    }

    /// Whether the backend answers a `PING` within the call timeout.
    async fn answers_at_once(&self, primary: &dyn Backend) -> bool {
        matches!(
            tokio::time::timeout(self.inner.config.timeout, primary.ping()).await,
            Ok(Ok(()))
        )
    }

    fn fail(&self, entry: &PrefixEntry, res: &Resilience, permit: Permit, error: &BackendError) {
        res.breaker.on_failure(permit);
        self.inner.stats.record_error(entry, error.kind);
        tracing::debug!(error = %error, "cache backend call failed; using the in-memory fallback");
        if res.breaker.state() != CircuitState::Closed {
            self.spawn_recovery_probe(res);
        }
    }

    /// While the breaker is open, pings the backend in the background (250 ms,
    /// then doubling up to a second) and closes the breaker as soon as the
    /// backend answers and the missed invalidations are replayed, instead of
    /// waiting for a call after the cooldown.
    fn spawn_recovery_probe(&self, res: &Resilience) {
        if res.prober.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            res.prober.store(false, Ordering::Release);
            return;
        };
        let guard = ProberGuard(Arc::downgrade(&self.inner));
        let cap = MAX_PROBE_INTERVAL.min(self.inner.config.breaker_cooldown.max(FIRST_PROBE_DELAY));
        runtime.spawn(async move {
            let mut delay = FIRST_PROBE_DELAY;
            loop {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(cap);
                // Hold the cache only while probing: a dropped cache ends the probe.
                let Some(inner) = guard.0.upgrade() else {
                    return;
                };
                let cache = Cache { inner };
                let Some(res) = &cache.inner.resilience else {
                    return;
                };
                if res.breaker.state() == CircuitState::Closed {
                    return;
                }
                let answered = matches!(
                    tokio::time::timeout(
                        cache.inner.config.timeout * 4,
                        cache.inner.primary.backend().ping()
                    )
                    .await,
                    Ok(Ok(()))
                );
                if answered && cache.recover(res).await.is_ok() {
                    res.breaker.on_success();
                    return;
                }
            }
        });
    }

    /// Replays invalidations missed during an outage, then drops the fallback.
    ///
    /// Invalidations remembered while a replay runs (calls the breaker turned
    /// away meanwhile) are replayed by the same recovery: it ends only when
    /// the set is empty, and it clears the flag under the lock that
    /// remembering takes, so none can slip between the last replay and the
    /// flag.
    pub(crate) async fn recover(&self, res: &Resilience) -> Result<(), BackendError> {
        let _lock = res.recovery.lock().await;
        if !res.needs_recovery.load(Ordering::Acquire) {
            return Ok(());
        }
        let primary = self.inner.primary.backend();
        // Nothing is reconciled until the backend really answers.
        self.bounded(primary.ping()).await?;
        let mut replayed = 0;
        loop {
            let batch = {
                let mut pending = res.pending();
                if pending.is_empty() {
                    res.fallback.clear();
                    res.needs_recovery.store(false, Ordering::Release);
                    break;
                }
                std::mem::take(&mut *pending)
            };
            replayed += batch.len().max(usize::from(batch.everything));
            if let Err(e) = self.bounded(self.replay(primary, &batch)).await {
                // Keep them for the next attempt.
                res.pending().merge(batch);
                return Err(e);
            }
        }
        tracing::info!(
            replayed,
            "cache backend recovered: missed invalidations replayed, fallback cleared"
        );
        Ok(())
    }

    async fn replay(&self, primary: &dyn Backend, batch: &Pending) -> Result<(), BackendError> {
        let namespace = &self.inner.config.namespace;
        if batch.everything {
            let all = format!("{}:*", glob_literal(namespace));
            primary.delete_pattern(&all).await?;
            return Ok(());
        }
        let keys: Vec<String> = batch.keys.iter().cloned().collect();
        for chunk in keys.chunks(500) {
            primary.delete(chunk).await?;
        }
        for pattern in &batch.patterns {
            primary.delete_pattern(pattern).await?;
        }
        for prefix in &batch.prefixes {
            if self.generations_on() {
                let fresh = self.fresh_generation().to_string().into_bytes();
                primary
                    .set(
                        &self.generation_key(prefix),
                        fresh,
                        crate::generations::GENERATION_TTL,
                    )
                    .await?;
            } else {
                let pattern = format!("{}:{}:*", glob_literal(namespace), glob_literal(prefix));
                primary.delete_pattern(&pattern).await?;
            }
        }
        Ok(())
    }

    /// Bounds a recovery step by the bulk timeout.
    async fn bounded<T>(
        &self,
        step: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.bulk_timeout(), step).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::new(
                ErrorKind::Timeout,
                "replaying invalidations timed out",
            )),
        }
    }

    /// Remembers an invalidation the backend did not receive.
    pub(crate) fn remember_invalidation(&self, res: &Resilience, missed: Missed<'_>) {
        let mut pending = res.pending();
        match missed {
            Missed::Keys(keys) => pending.keys.extend(keys.iter().cloned()),
            Missed::Pattern(pattern) => {
                pending.patterns.insert(pattern.to_owned());
            }
            Missed::Prefix(prefix) => {
                pending.prefixes.insert(prefix.to_owned());
            }
        }
        pending.bound(&self.inner.config.namespace);
        res.needs_recovery.store(true, Ordering::Release);
    }

    /// The fallback was written: it must be dropped before the backend is
    /// trusted again (under the pending lock, see [`Cache::recover`]).
    pub(crate) fn mark_fallback_written(&self) {
        if let Some(res) = &self.inner.resilience {
            let _pending = res.pending();
            res.needs_recovery.store(true, Ordering::Release);
        }
    }

    pub(crate) fn bulk_timeout(&self) -> Duration {
        (self.inner.config.timeout * 40).max(Duration::from_secs(10))
    }

    pub(crate) fn fallback_ttl(&self, ttl: Duration) -> Duration {
        ttl.min(self.inner.config.fallback_ttl_cap)
    }
}

/// Lets the next outage start a new background probe when this one ends
/// (also when its runtime shuts down and drops it).
struct ProberGuard(Weak<Inner>);

impl Drop for ProberGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade()
            && let Some(res) = &inner.resilience
        {
            res.prober.store(false, Ordering::Release);
        }
    }
}

struct ProbeGuard<'a> {
    breaker: &'a Breaker,
    permit: Option<Permit>,
}

impl ProbeGuard<'_> {
    fn take(&mut self) -> Permit {
        self.permit.take().unwrap_or(Permit::Allowed)
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.abandon(permit);
        }
    }
}
