//! Getting back to the backend after it failed: the invalidations it
//! missed, remembered and replayed before it is trusted again, and the one
//! background task that probes it and replays them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::Store;
use super::nodes::On;
use crate::backend::redis::cluster::{NodeId, SLOT_COUNT, slot_of};
use crate::backend::{Backend, InvalidationWrite};
use crate::error::{BackendError, ErrorKind};
use crate::keys::glob_literal;
use crate::stats::CircuitState;

/// Most distinct invalidations remembered while the backend is away. Past
/// this, remembered keys are folded into deletes of their prefixes' keys,
/// and past that again into one delete of the whole namespace.
const MAX_PENDING_INVALIDATIONS: usize = 10_000;

/// Delay before the second probe; it doubles up to [`MAX_PROBE_INTERVAL`]
/// (or the breaker's cooldown, if shorter). The first probe runs at once.
const FIRST_PROBE_DELAY: Duration = Duration::from_millis(250);
/// Longest pause between two probes, so that the cache is back on the
/// backend within about a second of the backend answering again.
const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// What a missed invalidation was.
pub(crate) enum Missed<'a> {
    /// Storage keys to delete.
    Keys(&'a [String]),
    /// A glob pattern to delete.
    Pattern(&'a str),
    /// A key to write (a prefix generation): replayed with the same bytes.
    Write(&'a str, &'a [u8], Duration),
    /// Every key of the namespace (the backend came back with old data).
    Everything,
}

/// Invalidations the backend missed. Sets, so that an invalidation repeated
/// during an outage is replayed once.
#[derive(Default)]
pub(super) struct Pending {
    keys: HashSet<String>,
    patterns: HashSet<String>,
    writes: HashMap<String, (Vec<u8>, Duration)>,
    /// Too much to remember: delete the whole namespace.
    everything: bool,
}

impl Pending {
    pub(super) fn len(&self) -> usize {
        self.keys.len() + self.patterns.len() + self.writes.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0 && !self.everything
    }

    fn merge(&mut self, other: Pending) {
        self.keys.extend(other.keys);
        self.patterns.extend(other.patterns);
        for (key, write) in other.writes {
            // A newer write of the same key (made meanwhile) wins.
            self.writes.entry(key).or_insert(write);
        }
        self.everything |= other.everything;
    }

    /// Keeps the set bounded: keys fold into their prefixes' patterns, and
    /// if that is not enough, everything folds into the namespace.
    fn bound(&mut self, namespace: &str) {
        if self.len() <= MAX_PENDING_INVALIDATIONS {
            return;
        }
        let head = format!("{namespace}:");
        for key in std::mem::take(&mut self.keys) {
            let rest = key.strip_prefix(&head).unwrap_or(&key);
            let prefix = rest.split(':').next().unwrap_or(rest);
            self.patterns.insert(format!(
                "{}:{}:*",
                glob_literal(namespace),
                glob_literal(prefix)
            ));
        }
        if self.len() > MAX_PENDING_INVALIDATIONS {
            *self = Pending {
                everything: true,
                ..Pending::default()
            };
        }
    }
}

/// The recovery state of a guarded store.
pub(super) struct Recovery {
    /// The fallback holds data or invalidations are pending: replay before
    /// trusting the backend again. Set and cleared only under `pending`'s lock.
    needed: AtomicBool,
    /// Every slot (every call) waits for the replay: always on a single
    /// server; on a cluster, for a missed pattern or a write without a key.
    all: AtomicBool,
    /// On a cluster, the slots (a bit each) whose missed invalidations or
    /// fallback writes must be dealt with before their master is trusted
    /// again. Set and cleared under `pending`'s lock.
    slots: Box<[AtomicU64]>,
    pending: Mutex<Pending>,
    /// The recovery task is running.
    running: AtomicBool,
    /// Wakes the task from its pause between probes (a call saw the
    /// backend answer).
    wake: std::sync::Arc<tokio::sync::Notify>,
    /// Told when a replay ends with nothing left pending.
    replayed: tokio::sync::Notify,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            needed: AtomicBool::new(false),
            all: AtomicBool::new(false),
            slots: (0..SLOT_COUNT / 64).map(|_| AtomicU64::new(0)).collect(),
            pending: Mutex::default(),
            running: AtomicBool::new(false),
            wake: std::sync::Arc::default(),
            replayed: tokio::sync::Notify::new(),
        }
    }
}

impl Recovery {
    pub(super) fn needed(&self) -> bool {
        self.needed.load(Ordering::Acquire)
    }

    /// Whether a call on `slot` (`None`: no single slot) must wait for a
    /// replay first.
    #[inline]
    pub(super) fn gates(&self, slot: Option<u16>) -> bool {
        self.needed()
            && match slot {
                None => true,
                Some(slot) => self.all.load(Ordering::Acquire) || self.slot_gated(slot),
            }
    }

    fn slot_gated(&self, slot: u16) -> bool {
        let word = &self.slots[usize::from(slot) / 64];
        word.load(Ordering::Acquire) & (1 << (slot % 64)) != 0
    }

    /// Gates `slot` (`None`: everything); call under `pending`'s lock.
    fn gate(&self, slot: Option<u16>) {
        match slot {
            Some(slot) => {
                self.slots[usize::from(slot) / 64].fetch_or(1 << (slot % 64), Ordering::AcqRel);
            }
            None => self.all.store(true, Ordering::Release),
        }
        self.needed.store(true, Ordering::Release);
    }

    /// Wakes the recovery task and waits up to `wait` for the replay that
    /// `slot` waits for to end; returns whether it did.
    pub(super) async fn replayed_within(&self, wait: Duration, slot: Option<u16>) -> bool {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let replayed = self.replayed.notified();
            tokio::pin!(replayed);
            replayed.as_mut().enable();
            if !self.gates(slot) {
                return true;
            }
            self.wake.notify_one();
            if tokio::time::timeout_at(until, replayed).await.is_err() {
                return !self.gates(slot);
            }
        }
    }

    /// Tells the calls waiting in [`replayed_within`](Self::replayed_within)
    /// to look again.
    pub(super) fn tell_waiters(&self) {
        self.replayed.notify_waiters();
    }

    /// Takes the missed key deletes and writes whose slot `owner` names an
    /// answering master for, grouped by that master.
    pub(super) fn take_keyed(
        &self,
        owner: &dyn Fn(u16) -> Option<NodeId>,
    ) -> Vec<(NodeId, Pending)> {
        let mut pending = self.pending();
        let mut out: Vec<(NodeId, Pending)> = Vec::new();
        let batch_of = |id: NodeId, out: &mut Vec<(NodeId, Pending)>| match out
            .iter()
            .position(|(n, _)| *n == id)
        {
            Some(at) => at,
            None => {
                out.push((id, Pending::default()));
                out.len() - 1
            }
        };
        let keys: Vec<String> = pending.keys.iter().cloned().collect();
        for key in keys {
            if let Some(id) = owner(slot_of(key.as_bytes())) {
                pending.keys.remove(&key);
                let at = batch_of(id, &mut out);
                out[at].1.keys.insert(key);
            }
        }
        let writes: Vec<String> = pending.writes.keys().cloned().collect();
        for key in writes {
            if let Some(id) = owner(slot_of(key.as_bytes()))
                && let Some(write) = pending.writes.remove(&key)
            {
                let at = batch_of(id, &mut out);
                out[at].1.writes.insert(key, write);
            }
        }
        out
    }

    /// Takes the missed patterns (they need every master), if any.
    pub(super) fn take_global(&self) -> Option<Pending> {
        let mut pending = self.pending();
        if pending.patterns.is_empty() && !pending.everything {
            return None;
        }
        Some(Pending {
            patterns: std::mem::take(&mut pending.patterns),
            everything: std::mem::replace(&mut pending.everything, false),
            ..Pending::default()
        })
    }

    /// Remembers a batch whose replay failed again.
    pub(super) fn put_back(&self, batch: Pending) {
        self.pending().merge(batch);
    }

    /// Ungates the gated slots whose master answered (`owner_ok`) and that
    /// have nothing left to replay, and everything when `everyone` answered
    /// and no pattern is left; returns the slots ungated.
    pub(super) fn ungate(&self, owner_ok: &dyn Fn(u16) -> bool, everyone: bool) -> Vec<u16> {
        let pending = self.pending();
        let busy: HashSet<u16> = pending
            .keys
            .iter()
            .chain(pending.writes.keys())
            .map(|key| slot_of(key.as_bytes()))
            .collect();
        let mut ungated = Vec::new();
        for (w, word) in self.slots.iter().enumerate() {
            let bits = word.load(Ordering::Acquire);
            if bits == 0 {
                continue;
            }
            for bit in 0..64u16 {
                let slot = (w as u16) * 64 + bit;
                if bits & (1 << bit) != 0 && owner_ok(slot) && !busy.contains(&slot) {
                    word.fetch_and(!(1 << bit), Ordering::AcqRel);
                    ungated.push(slot);
                }
            }
        }
        if everyone
            && pending.patterns.is_empty()
            && !pending.everything
            && self.all.load(Ordering::Acquire)
        {
            self.all.store(false, Ordering::Release);
        }
        ungated
    }

    /// Ends the recovery if nothing is gated or pending any more (the
    /// fallback is then dropped); returns whether it did.
    pub(super) fn finish_if_clear(&self, fallback: &crate::backend::MemoryBackend) -> bool {
        let pending = self.pending();
        let clear = pending.is_empty()
            && !self.all.load(Ordering::Acquire)
            && self.slots.iter().all(|w| w.load(Ordering::Acquire) == 0);
        if clear && self.needed() {
            fallback.clear();
            self.needed.store(false, Ordering::Release);
        }
        clear
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers `missed`; `slots`: gate only the slots it concerns (a
    /// cluster), else everything.
    fn remember(&self, missed: Missed<'_>, namespace: &str, slots: bool) {
        let mut pending = self.pending();
        let gate = |key: &str| slots.then(|| slot_of(key.as_bytes()));
        match missed {
            Missed::Keys(keys) => {
                for key in keys {
                    self.gate(gate(key));
                }
                pending.keys.extend(keys.iter().cloned());
            }
            Missed::Pattern(pattern) => {
                self.gate(None);
                pending.patterns.insert(pattern.to_owned());
            }
            Missed::Write(key, bytes, ttl) => {
                self.gate(gate(key));
                pending.writes.insert(key.to_owned(), (bytes.to_vec(), ttl));
            }
            Missed::Everything => {
                self.gate(None);
                *pending = Pending {
                    everything: true,
                    ..Pending::default()
                };
            }
        }
        let folded = pending.len() > MAX_PENDING_INVALIDATIONS;
        pending.bound(namespace);
        if folded {
            // Keys folded into patterns: every slot waits for them.
            self.gate(None);
        }
        self.needed.store(true, Ordering::Release);
    }

    fn mark_needed(&self, slot: Option<u16>) {
        let _pending = self.pending();
        self.gate(slot);
    }
}

impl Store {
    /// Remembers an invalidation the backend did not receive; it is
    /// replayed before the backend is trusted again.
    pub(crate) fn remember(&self, missed: Missed<'_>) {
        if let Some(guard) = &self.guard {
            let slots = guard.nodes.is_some();
            guard
                .recovery
                .remember(missed, &self.settings.namespace, slots);
            self.start_recovery();
        }
    }

    /// The fallback was written (for the key of `on`): it must be dropped
    /// (on a cluster, its entries of that key's slot) before the backend
    /// is trusted again (for that slot).
    pub(crate) fn mark_fallback_written(&self, on: On<'_>) {
        if let Some(guard) = &self.guard {
            let slot = on
                .key()
                .filter(|_| guard.nodes.is_some())
                .map(|key| slot_of(key.as_bytes()));
            guard.recovery.mark_needed(slot);
            self.start_recovery();
        }
    }

    /// Starts the recovery task unless it runs: it probes the backend (at
    /// once, then after 250 ms, doubling up to a second) and, once the
    /// backend answers, replays what it missed, drops the fallback and
    /// closes the breaker. Calls never wait for it.
    pub(crate) fn start_recovery(&self) {
        let Some(guard) = &self.guard else { return };
        // A load first: while the task runs, calls only read the flag.
        if guard.recovery.running.load(Ordering::Acquire)
            || guard.recovery.running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            guard.recovery.running.store(false, Ordering::Release);
            return;
        };
        let task = RunningFlag(self.me.clone());
        let wake = guard.recovery.wake.clone();
        let cap = MAX_PROBE_INTERVAL.min(self.settings.breaker_cooldown.max(FIRST_PROBE_DELAY));
        runtime.spawn(async move {
            let mut delay = Duration::ZERO;
            loop {
                if !delay.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = wake.notified() => {}
                    }
                }
                delay = (delay * 2).clamp(FIRST_PROBE_DELAY, cap);
                // Hold the store only while probing: a dropped cache ends the task.
                let Some(store) = task.0.upgrade() else {
                    return;
                };
                let Some(guard) = &store.guard else { return };
                if store.worst_circuit(guard) == CircuitState::Closed && !guard.recovery.needed() {
                    return;
                }
                let round = match store.cluster() {
                    Some(cluster) => store.recover_nodes(guard, cluster).await,
                    None => store.recover().await,
                };
                match round {
                    Ok(()) => {
                        if guard.breaker.on_success() && guard.logs.closed.due() {
                            tracing::info!(
                                "cache circuit breaker closed: the backend answers again"
                            );
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cache backend not recovered yet");
                    }
                }
            }
        });
    }

    /// Pings the backend, replays what it missed until nothing is pending
    /// (invalidations remembered while a replay runs are replayed by the
    /// same recovery: the flag is cleared under the lock that remembering
    /// takes), then drops the fallback.
    async fn recover(&self) -> Result<(), BackendError> {
        let Some(guard) = &self.guard else {
            return Ok(());
        };
        let primary = self.primary.backend();
        let ping = tokio::time::timeout(self.settings.timeout * 4, primary.ping()).await;
        match ping {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(BackendError::new(ErrorKind::Timeout, "no answer to PING"));
            }
        }
        let mut replayed = 0;
        let mut was_needed = false;
        loop {
            let batch = {
                let mut pending = guard.recovery.pending();
                if pending.is_empty() {
                    was_needed |= guard.recovery.needed();
                    guard.fallback.clear();
                    guard.recovery.all.store(false, Ordering::Release);
                    guard.recovery.needed.store(false, Ordering::Release);
                    guard.recovery.replayed.notify_waiters();
                    break;
                }
                std::mem::take(&mut *pending)
            };
            was_needed = true;
            replayed += batch.len().max(usize::from(batch.everything));
            let replay = tokio::time::timeout(self.bulk_timeout(), self.replay(primary, &batch));
            let outcome = match replay.await {
                Ok(outcome) => outcome,
                Err(_) => Err(BackendError::new(
                    ErrorKind::Timeout,
                    "replaying invalidations timed out",
                )),
            };
            if let Err(e) = outcome {
                // Keep them for the next attempt.
                guard.recovery.pending().merge(batch);
                return Err(e);
            }
        }
        if (was_needed || guard.breaker.state() != CircuitState::Closed)
            && guard.logs.recovered.due()
        {
            tracing::info!(
                replayed,
                "cache backend recovered: missed invalidations replayed, fallback cleared"
            );
        }
        Ok(())
    }

    pub(super) async fn replay(
        &self,
        primary: &dyn Backend,
        batch: &Pending,
    ) -> Result<(), BackendError> {
        if batch.everything {
            let all = format!("{}:*", glob_literal(&self.settings.namespace));
            self.replay_one(primary, InvalidationWrite::DeletePattern(&all))
                .await?;
            // The namespace's record of the server's run went with it.
            if let Some(redis) = self.primary.redis() {
                redis.mark_run().await;
            }
            return Ok(());
        }
        let keys: Vec<String> = batch.keys.iter().cloned().collect();
        for chunk in keys.chunks(500) {
            self.replay_one(primary, InvalidationWrite::Delete(chunk))
                .await?;
        }
        for pattern in &batch.patterns {
            self.replay_one(primary, InvalidationWrite::DeletePattern(pattern))
                .await?;
        }
        for (key, (bytes, ttl)) in &batch.writes {
            let (value, ttl) = (bytes.as_slice(), *ttl);
            self.replay_one(primary, InvalidationWrite::Write { key, value, ttl })
                .await?;
        }
        Ok(())
    }
}

/// Lets the next failure start a new recovery task when this one ends
/// (also when its runtime shuts down and drops it).
struct RunningFlag(std::sync::Weak<Store>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        if let Some(store) = self.0.upgrade()
            && let Some(guard) = &store.guard
        {
            guard.recovery.running.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_invalidations_stay_bounded() {
        let mut pending = Pending::default();
        for i in 0..MAX_PENDING_INVALIDATIONS + 5 {
            pending.keys.insert(format!("ns:p{}:{i}", i % 3));
        }
        pending.bound("ns");
        assert!(pending.keys.is_empty());
        assert_eq!(pending.patterns.len(), 3, "{:?}", pending.patterns);
        assert!(pending.patterns.contains("ns:p0:*"));
    }
}
