//! Getting back to the backend after it failed: the invalidations it
//! missed, remembered and replayed before it is trusted again, and the one
//! background task that probes it and replays them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::Store;
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
struct Pending {
    keys: HashSet<String>,
    patterns: HashSet<String>,
    writes: HashMap<String, (Vec<u8>, Duration)>,
    /// Too much to remember: delete the whole namespace.
    everything: bool,
}

impl Pending {
    fn len(&self) -> usize {
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
#[derive(Default)]
pub(super) struct Recovery {
    /// The fallback holds data or invalidations are pending: replay before
    /// trusting the backend again. Set and cleared only under `pending`'s lock.
    needed: AtomicBool,
    pending: Mutex<Pending>,
    /// The recovery task is running.
    running: AtomicBool,
    /// Wakes the task from its pause between probes (a call saw the
    /// backend answer).
    wake: std::sync::Arc<tokio::sync::Notify>,
    /// Told when a replay ends with nothing left pending.
    replayed: tokio::sync::Notify,
}

impl Recovery {
    pub(super) fn needed(&self) -> bool {
        self.needed.load(Ordering::Acquire)
    }

    /// Wakes the recovery task and waits up to `wait` for the replay to
    /// end; returns whether it did.
    pub(super) async fn replayed_within(&self, wait: Duration) -> bool {
        let replayed = self.replayed.notified();
        tokio::pin!(replayed);
        replayed.as_mut().enable();
        if !self.needed() {
            return true;
        }
        self.wake.notify_one();
        tokio::time::timeout(wait, replayed).await.is_ok() && !self.needed()
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, missed: Missed<'_>, namespace: &str) {
        let mut pending = self.pending();
        match missed {
            Missed::Keys(keys) => pending.keys.extend(keys.iter().cloned()),
            Missed::Pattern(pattern) => {
                pending.patterns.insert(pattern.to_owned());
            }
            Missed::Write(key, bytes, ttl) => {
                pending.writes.insert(key.to_owned(), (bytes.to_vec(), ttl));
            }
            Missed::Everything => {
                *pending = Pending {
                    everything: true,
                    ..Pending::default()
                };
            }
        }
        pending.bound(namespace);
        self.needed.store(true, Ordering::Release);
    }

    fn mark_needed(&self) {
        let _pending = self.pending();
        self.needed.store(true, Ordering::Release);
    }
}

impl Store {
    /// Remembers an invalidation the backend did not receive; it is
    /// replayed before the backend is trusted again.
    pub(crate) fn remember(&self, missed: Missed<'_>) {
        if let Some(guard) = &self.guard {
            guard.recovery.remember(missed, &self.settings.namespace);
            self.start_recovery();
        }
    }

    /// The fallback was written: it must be dropped before the backend is
    /// trusted again.
    pub(crate) fn mark_fallback_written(&self) {
        if let Some(guard) = &self.guard {
            guard.recovery.mark_needed();
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
                if guard.breaker.state() == CircuitState::Closed && !guard.recovery.needed() {
                    return;
                }
                match store.recover().await {
                    Ok(()) => {
                        guard.breaker.on_success();
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
        if was_needed || guard.breaker.state() != CircuitState::Closed {
            tracing::info!(
                replayed,
                "cache backend recovered: missed invalidations replayed, fallback cleared"
            );
        }
        Ok(())
    }

    async fn replay(&self, primary: &dyn Backend, batch: &Pending) -> Result<(), BackendError> {
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
