//! The typed steps of a read-through call around its load: running the
//! body (within its hard timeout), what to store and for how long (TTL,
//! jitter, per-value TTL, fail-safe expiry, refresh-ahead, tags), what to
//! answer when the load fails or is late (fail-safe), loads that go on in
//! the background (soft timeout, refresh-ahead), sliding expiry, and
//! [`prime`](crate::prime).
//!
//! Byte-level work (leases, putting a stale value back, publishing to
//! followers) is the consistency layer's; non-generic steps are awaited
//! behind boxes, the body inline (so a call's future is `Send` exactly when
//! its body is).

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Cache;
use super::call::Payload;
use super::policy::{self, Effective, Policy};
use super::shell::{Body, PrefixName, ReadThrough, Ready, Step};
use super::typed::{KeyString, Mode, TypedCopy};
use crate::codec::{self, Meta};
use crate::consistency::load::{Completion, Found, Loading, Patience};
use crate::consistency::read::{Key, Read};
use crate::error::{LoadTimedOut, Outcome};
use crate::stats::{Event, PrefixEntry};
use crate::store::On;

/// One read-through call's key and settings, as its steps need them.
pub(super) struct Load<'a, R, S> {
    pub(super) entry: &'a PrefixEntry,
    pub(super) key: Key<'a>,
    pub(super) ttl: Option<Duration>,
    pub(super) none_ttl: Option<Duration>,
    pub(super) typed: Option<TypedCopy<S>>,
    pub(super) policy: Option<&'a Policy<'a, R, S>>,
    pub(super) effective: Effective,
}

/// Runs a load in the background (a body that owns what it uses): returns
/// the wait for its answer (a refresh-ahead's is never ready).
pub(crate) type Spawn<R, S, F, U> = fn(Cache, Job<R, S, U>, F) -> Step<'static, (R, Outcome)>;

/// A load handed to the background.
pub(crate) struct Job<R, S, U> {
    prefix: String,
    skey: String,
    ttl: Option<Duration>,
    none_ttl: Option<Duration>,
    unless: U,
    typed: Option<TypedCopy<S>>,
    near: bool,
    policy: Policy<'static, R, S>,
    tags: Vec<String>,
    kind: JobKind,
}

/// What a background load is.
pub(crate) enum JobKind {
    /// A caller's load that its soft timeout left behind: what the caller
    /// read, and its prefix generation.
    Load(Read, Option<u64>),
    /// A refresh-ahead of the value a hit found.
    Refresh(Arc<[u8]>, Option<u64>),
}

impl<R, S> Load<'_, R, S> {
    /// The logical key (`prefix:rest`).
    fn logical_key(&self) -> &str {
        let skey = self.key.skey;
        skey.find(':').map_or(skey, |at| &skey[at + 1..])
    }

    /// A background job of this call.
    pub(super) fn job<U>(&self, kind: JobKind, unless: U) -> Job<R, S, U> {
        let policy = self.policy.map_or_else(Policy::none, |p| Policy {
            // The background does not answer anyone early.
            soft_timeout: None,
            tags: &[],
            ..*p
        });
        Job {
            prefix: self.key.prefix.to_owned(),
            skey: self.key.skey.to_owned(),
            ttl: self.ttl,
            none_ttl: self.none_ttl,
            unless,
            typed: self.typed,
            near: self.key.near,
            policy,
            tags: self.policy.map_or_else(Vec::new, |p| p.tags.to_vec()),
            kind,
        }
    }
}

/// Runs `job` on the runtime; the [`Spawn`] of bodies that own what they
/// use (`#[cached]` with `soft_timeout` or `refresh_ahead`).
pub(crate) fn spawn_job<R, M, F, U>(
    cache: Cache,
    job: Job<R, M::Stored, U>,
    body: F,
) -> Step<'static, (R, Outcome)>
where
    R: Send + 'static,
    M: Mode<R> + 'static,
    M::Stored: Send + Sync + 'static,
    F: Future<Output = R> + Send + 'static,
    U: FnOnce(&M::Stored) -> bool + Send + 'static,
{
    let run = async move {
        let Job {
            prefix,
            skey,
            ttl,
            none_ttl,
            unless,
            typed,
            near,
            policy,
            tags,
            kind,
        } = job;
        let policy = Policy {
            tags: &tags,
            ..policy
        };
        match kind {
            JobKind::Load(first, generation) => {
                let call = ReadThrough {
                    prefix: PrefixName::Borrowed(&prefix),
                    skey: KeyString::from(skey),
                    ttl,
                    none_ttl,
                    unless,
                    typed,
                    near,
                    body: Ready(body),
                    policy: Some(&policy),
                };
                let first = Some((first, generation));
                Some(
                    cache
                        .load_through::<R, M, Ready<F>, U>(call, first, None, None)
                        .await,
                )
            }
            JobKind::Refresh(current, generation) => {
                let entry = cache.inner.stats.prefix(&prefix);
                let load = Load {
                    entry: &entry,
                    key: Key {
                        skey: &skey,
                        prefix: &prefix,
                        near,
                    },
                    ttl,
                    none_ttl,
                    typed,
                    policy: Some(&policy),
                    effective: Effective::of(Some(&policy), &cache.inner.config),
                };
                cache
                    .refresh_ahead::<R, M, F, U>(&load, &current, generation, body, unless)
                    .await;
                None
            }
        }
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Box::pin(async move {
            match run.await {
                Some(answer) => answer,
                None => std::future::pending().await,
            }
        });
    };
    let handle = runtime.spawn(run);
    Box::pin(async move {
        match handle.await {
            Ok(Some(answer)) => answer,
            Ok(None) => std::future::pending().await,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => panic!("a background load was cancelled: the runtime is shutting down"),
            },
        }
    })
}

/// What a load's body left: its result (`None`: abandoned at the hard
/// timeout), whether `unless` refused to store it, when it started, and
/// the generations of the tags it is stored under.
struct Loaded<R> {
    result: Option<R>,
    skipped: bool,
    started: Instant,
    tagged: Vec<(String, u64)>,
}

impl Cache {
    /// Runs the body of a load this call leads (within its hard timeout),
    /// then stores its result under the lease, or after a failure puts
    /// back the stale value the lease replaced and (fail-safe) answers
    /// with it.
    pub(super) async fn run_load<R, M, F, U>(
        &self,
        load: &Load<'_, R, M::Stored>,
        loading: Loading<'_>,
        body: F,
        unless: U,
        patience: Patience,
    ) -> (R, Outcome)
    where
        M: Mode<R>,
        F: Future<Output = R>,
        U: FnOnce(&M::Stored) -> bool,
    {
        // Only this part depends on the body's and `unless`'s types, which
        // differ for every function: what follows the body is generic over
        // the return type alone, compiled once for all functions sharing it.
        let tags = load.policy.map_or(&[][..], |p| p.tags);
        let tagged = if tags.is_empty() {
            Vec::new()
        } else {
            let deadline = loading.deadline();
            let read: Step<'_, _> = Box::pin(self.inner.layer.tag_generations(tags, &deadline));
            read.await
        };
        let timed_out = load.policy.and_then(|p| p.timed_out);
        let hard = patience.hard.filter(|_| timed_out.is_some());
        let started = Instant::now();
        let result = match hard {
            None => Some(body.await),
            Some(at) => within(at, body).await,
        };
        let skipped = match &result {
            Some(result) if !M::is_failure(result) => M::stored(result).is_some_and(unless),
            _ => false,
        };
        let loaded = Loaded {
            result,
            skipped,
            started,
            tagged,
        };
        self.after_load::<R, M>(load, loading, loaded, patience)
            .await
    }

    /// The rest of [`run_load`](Self::run_load) once the body ended: store
    /// its result under the lease, or after a failure put back the stale
    /// value the lease replaced and (fail-safe) answer with it.
    async fn after_load<R, M>(
        &self,
        load: &Load<'_, R, M::Stored>,
        loading: Loading<'_>,
        loaded: Loaded<R>,
        patience: Patience,
    ) -> (R, Outcome)
    where
        M: Mode<R>,
    {
        let layer = &self.inner.layer;
        let (entry, skey) = (load.entry, load.key.skey);
        let Loaded {
            result,
            skipped,
            started,
            tagged,
        } = loaded;
        let timed_out = load.policy.and_then(|p| p.timed_out);
        // The body's time is not the cache's: what was left of the call's
        // budget before it is left after it.
        let deadline = loading.deadline().extended_by(started.elapsed());
        let effective = &load.effective;
        let base_ttl = load.ttl.unwrap_or(self.inner.config.default_ttl);
        let refresh = loading.is_refresh();
        let throttle =
            (effective.fail_safe.is_some() || refresh).then(|| effective.throttle(base_ttl));
        let completion = match &result {
            None => {
                self.inner.stats.record(entry, Event::HardTimeout);
                Completion::Failed { throttle }
            }
            Some(result) => {
                self.inner.stats.record(entry, Event::Load);
                if M::is_failure(result) {
                    Completion::Failed { throttle }
                } else {
                    match M::stored(result).filter(|_| !skipped) {
                        None => Completion::Skip,
                        Some(value) => self.completion_for(
                            load,
                            value,
                            M::is_negative(value),
                            loading.generation(),
                            &tagged,
                        ),
                    }
                }
            }
        };
        let failed = matches!(completion, Completion::Failed { .. });
        let done: Step<'_, _> =
            Box::pin(layer.complete(entry, skey, loading, completion, &deadline));
        let restored = done.await;
        if failed
            && !refresh
            && patience.stale_ok
            && let Some(stale) = restored
            && let Some(v) =
                self.decode_found::<M::Stored>(entry, skey, &Found::Shared(stale), None)
        {
            self.inner.stats.record(entry, Event::FailSafe);
            self.inner.stats.record(entry, Event::StaleHit);
            tracing::warn!(key = %load.logical_key(), "load failed: answered with the stale value (fail-safe)");
            return (M::from_stored(v), Outcome::Stale);
        }
        match (result, timed_out, effective.hard_timeout) {
            (Some(result), _, _) => (result, Outcome::Miss),
            (None, Some(timed_out), Some(after)) => (
                timed_out(LoadTimedOut::new(load.logical_key(), after)),
                Outcome::Miss,
            ),
            (None, _, _) => unreachable!("a load is only abandoned with a hard timeout to answer"),
        }
    }

    /// What to store for a loaded `value`: its bytes (labeled with
    /// `generation` and `tags`, with its logical expiry) and physical TTL.
    fn completion_for<R, S: Serialize>(
        &self,
        load: &Load<'_, R, S>,
        value: &S,
        negative: bool,
        generation: Option<u64>,
        tags: &[(String, u64)],
    ) -> Completion {
        let mut ttl = match negative {
            true => load.none_ttl.or(load.ttl),
            false => load.ttl,
        }
        .unwrap_or(self.inner.config.default_ttl);
        if !negative && let Some(ttl_from) = load.policy.and_then(|p| p.ttl_from) {
            ttl = ttl_from(value);
        }
        if ttl.is_zero() {
            return Completion::Skip;
        }
        let effective = &load.effective;
        let ttl = effective.jittered(ttl);
        let now = match effective.fail_safe.is_some() || effective.refresh_ahead.is_some() {
            true => self.inner.layer.now_ms(),
            false => 0,
        };
        let (times, refresh_at, physical) = effective.timing(now, ttl);
        let meta = policy::meta(generation, (times, refresh_at), tags);
        match self.encode_meta(load.entry, load.key.skey, value, &meta) {
            Ok(bytes) => Completion::Store {
                bytes,
                ttl: physical,
            },
            Err(_) => Completion::Skip,
        }
    }

    /// A stale value whose failed load is being throttled: answered as
    /// stale without loading.
    pub(super) fn throttled<R, M: Mode<R>>(
        &self,
        load: &Load<'_, R, M::Stored>,
        bytes: &[u8],
    ) -> Option<(R, Outcome)> {
        let header = codec::extended(bytes)?;
        let until = header.times?.fresh_until;
        if !header.throttled || self.inner.layer.now_ms() >= until {
            return None;
        }
        let v = self.decode::<M::Stored>(load.entry, load.key.skey, bytes)?;
        self.inner.stats.record(load.entry, Event::StaleHit);
        Some((M::from_stored(v), Outcome::Stale))
    }

    /// The soft timeout passed with the load still running: the stale value.
    pub(super) fn soft_timed_out<R, M: Mode<R>>(
        &self,
        load: &Load<'_, R, M::Stored>,
        bytes: &[u8],
    ) -> Option<(R, Outcome)> {
        let v = self.decode::<M::Stored>(load.entry, load.key.skey, bytes)?;
        self.inner.stats.record(load.entry, Event::SoftTimeout);
        self.inner.stats.record(load.entry, Event::StaleHit);
        Some((M::from_stored(v), Outcome::Stale))
    }

    /// A value another caller's load produced (or a stale one a failed
    /// load put back): decoded, with what answered.
    pub(super) fn answer_found<R, M: Mode<R>>(
        &self,
        load: &Load<'_, R, M::Stored>,
        found: &Found,
        outcome: Outcome,
    ) -> Option<(R, Outcome)> {
        let v = self.decode_found::<M::Stored>(load.entry, load.key.skey, found, load.typed)?;
        let stale = codec::extended(found).is_some_and(|h| h.throttled);
        let (event, outcome) = match stale {
            true => (Event::StaleHit, Outcome::Stale),
            false => (Event::Hit, outcome),
        };
        self.inner.stats.record(load.entry, event);
        Some((M::from_stored(v), outcome))
    }

    /// No value came within the caller's patience: the stale value it has
    /// (fail-safe), else the hard timeout's error; `None`: neither, the
    /// body runs uncached.
    pub(super) fn late<R, M: Mode<R>>(
        &self,
        load: &Load<'_, R, M::Stored>,
        found: Option<Found>,
        patience: Patience,
    ) -> Option<(R, Outcome)> {
        let hard = patience.hard.is_some_and(|at| Instant::now() >= at);
        let event = if hard {
            Event::HardTimeout
        } else {
            Event::SoftTimeout
        };
        self.inner.stats.record(load.entry, event);
        if let Some(found) = found.filter(|_| load.effective.fail_safe.is_some())
            && let Some(v) = self.decode_found::<M::Stored>(load.entry, load.key.skey, &found, None)
        {
            self.inner.stats.record(load.entry, Event::StaleHit);
            return Some((M::from_stored(v), Outcome::Stale));
        }
        let timed_out = load.policy.and_then(|p| p.timed_out)?;
        let after = load.effective.hard_timeout?;
        Some((
            timed_out(LoadTimedOut::new(load.logical_key(), after)),
            Outcome::Miss,
        ))
    }

    /// After a hit on `value`: restarts the TTL (sliding expiry), and
    /// starts a refresh-ahead when it is due (handing it the body).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn after_hit<R, M, B, U>(
        &self,
        load: &Load<'_, R, M::Stored>,
        found: &Found,
        value: &M::Stored,
        generation: Option<u64>,
        body: &mut Option<B>,
        unless: &mut Option<U>,
        spawn: Option<Spawn<R, M::Stored, B::Fut, U>>,
    ) where
        M: Mode<R>,
        B: Body<R>,
    {
        let Some(policy) = load.policy else { return };
        if policy.sliding {
            // The TTL the value was stored with: `none_ttl` for a negative
            // value, its own (`ttl_from`) for others, else the function's.
            let ttl = match M::is_negative(value) {
                true => load.none_ttl.or(load.ttl),
                false => policy.ttl_from.map(|f| f(value)).or(load.ttl),
            }
            .unwrap_or(self.inner.config.default_ttl);
            if !ttl.is_zero() {
                self.slide(load, load.effective.jittered(ttl));
            }
        }
        let Some(spawn) = spawn.filter(|_| policy.refresh_ahead.is_some()) else {
            return;
        };
        let due = codec::extended(found)
            .and_then(|h| h.refresh_at)
            .is_some_and(|at| self.inner.layer.now_ms() >= at);
        if !due || self.inner.layer.refreshing(load.key.skey) {
            return;
        }
        if let (Some(body), Some(unless)) = (body.take(), unless.take()) {
            let job = load.job(JobKind::Refresh(Arc::from(&**found), generation), unless);
            drop(spawn(self.clone(), job, body.start()));
        }
    }

    /// Restarts the TTL of the key a hit read (to `ttl`), in the background.
    fn slide<R, S>(&self, load: &Load<'_, R, S>, ttl: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (cache, prefix, skey) = (
            self.clone(),
            load.key.prefix.to_owned(),
            load.key.skey.to_owned(),
        );
        runtime.spawn(async move {
            let entry = cache.inner.stats.prefix(&prefix);
            let store = cache.inner.layer.store();
            let deadline = store.deadline();
            let (skey, cap) = (skey.as_str(), store.fallback_ttl(ttl));
            let _ = store
                .with_fallback(
                    &entry,
                    &deadline,
                    On::Key(skey),
                    |b| async move { b.expire(skey, ttl).await },
                    |f| async move { crate::backend::Backend::expire(&f, skey, cap).await },
                )
                .await;
        });
    }

    /// A refresh-ahead, in the background: takes the lease from the value
    /// (unless someone else is refreshing it), runs the body, stores the
    /// result; a failure keeps the value (its next refresh moved by the
    /// throttle) and is logged.
    async fn refresh_ahead<R, M, F, U>(
        &self,
        load: &Load<'_, R, M::Stored>,
        current: &[u8],
        generation: Option<u64>,
        body: F,
        unless: U,
    ) where
        M: Mode<R>,
        F: Future<Output = R>,
        U: FnOnce(&M::Stored) -> bool,
    {
        let layer = &self.inner.layer;
        let deadline = layer.store().deadline();
        let started: Step<'_, _> =
            Box::pin(layer.start_refresh(load.entry, load.key, current, generation, &deadline));
        let Some((loading, _refreshing)) = started.await else {
            return;
        };
        self.inner.stats.record(load.entry, Event::RefreshStarted);
        let patience = Patience {
            hard: load.effective.hard_timeout.map(|t| Instant::now() + t),
            ..Patience::default()
        };
        let (result, _) = self
            .run_load::<R, M, F, U>(load, loading, body, unless, patience)
            .await;
        if M::is_failure(&result) {
            self.inner.stats.record(load.entry, Event::RefreshFailed);
            tracing::warn!(
                key = %load.logical_key(),
                "refresh-ahead failed: the cached value stays until its TTL (the next refresh is throttled)"
            );
        }
    }

    /// `#[updates]`: the entry is invalidated through the one invalidation
    /// (near entries evicted, flights sealed, the key and any load's lease
    /// deleted, replayed if Redis missed it), so a load that started before
    /// the update can no longer store its older value; then, for an `Ok`,
    /// the new value is stored as [`prime`](crate::prime) stores it (the
    /// function's TTL, labels and tags). Should that store fail, the entry
    /// is gone, not stale: the next read loads it.
    pub(super) async fn update_now<R, M: Mode<R>>(
        &self,
        load: &Load<'_, R, M::Stored>,
        payload: Option<Payload>,
    ) {
        let keys = [load.key.skey.to_owned()];
        self.inner
            .layer
            .invalidate(crate::consistency::invalidate::Invalidation {
                keys: &keys,
                ..Default::default()
            })
            .await;
        if let Some(payload) = payload {
            let stored = self.prime_now::<R, M>(load, payload).await;
            drop(stored);
        }
    }

    /// [`prime`](crate::prime): stores the value `payload` encodes as this
    /// call's cached value (replacing whatever is there, including a load
    /// in progress, whose lease it overwrites), and answers with it.
    /// `None` when the value does not read back as the function's type.
    pub(super) async fn prime_now<R, M: Mode<R>>(
        &self,
        load: &Load<'_, R, M::Stored>,
        payload: Payload,
    ) -> Option<(R, Outcome)> {
        let config = &self.inner.config;
        let layer = &self.inner.layer;
        let deadline = layer.store().deadline();
        let generation = layer
            .generation_for(load.entry, load.key.prefix, &deadline)
            .await;
        let tags = load.policy.map_or(&[][..], |p| p.tags);
        let tagged = layer.tag_generations(tags, &deadline).await;
        let plain = codec::envelope(config.codec, &Meta::default(), |out| {
            payload(config.codec, out)
        });
        // No value is held across an await: the stored one is read back.
        let (stored, completion) = {
            let Some(value) = plain
                .ok()
                .and_then(|b| codec::decode::<M::Stored>(&b, config.max_value_bytes).ok())
            else {
                tracing::error!(
                    key = %load.logical_key(),
                    "prime: the value does not read back as the function's cached type; not stored"
                );
                return None;
            };
            let completion =
                self.completion_for(load, &value, M::is_negative(&value), generation, &tagged);
            (
                self.encode(load.entry, load.key.skey, &value, None).ok()?,
                completion,
            )
        };
        if let Completion::Store { bytes, ttl } = completion {
            layer
                .write(load.entry, load.key.skey, bytes, ttl, &deadline)
                .await;
        }
        let value = codec::decode::<M::Stored>(&stored, config.max_value_bytes).ok()?;
        Some((M::from_stored(value), Outcome::Miss))
    }
}

/// `fut`'s output, or `None` once `at` passed (the future is dropped).
/// The timer is boxed: it stays out of every caller's future.
async fn within<F: Future>(at: Instant, fut: F) -> Option<F::Output> {
    let mut timer = Box::pin(tokio::time::sleep_until(at.into()));
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}
