//! The typed steps of a read-through call around its load: what to store
//! and for how long (TTL, jitter, per-value TTL, fail-safe expiry,
//! refresh-ahead, tags), what to answer when the load fails or is late
//! (fail-safe), `#[updates]` and [`prime`](crate::prime). Loads that go on
//! in the background are in `background`.
//!
//! Byte-level work (leases, putting a stale value back, publishing to
//! followers) is the consistency layer's; non-generic steps are awaited
//! behind boxes, the body inline (so a call's future is `Send` exactly when
//! its body is).

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Cache;
use super::call::Payload;
use super::policy::{self, Effective, Policy};
use super::shell::Step;
use super::typed::{Mode, TypedCopy};
use crate::codec::{self, Meta};
use crate::consistency::load::{Completion, Found, Loading, Patience};
use crate::consistency::read::Key;
use crate::error::{LoadTimedOut, Outcome};
use crate::stats::{Event, PrefixEntry};

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

impl<R, S> Load<'_, R, S> {
    /// The logical key (`prefix:rest`).
    pub(super) fn logical_key(&self) -> &str {
        let skey = self.key.skey;
        skey.find(':').map_or(skey, |at| &skey[at + 1..])
    }
}

/// A load this call leads, as its body starts.
pub(super) struct Leading<'c> {
    pub(super) loading: Loading<'c>,
    pub(super) patience: Patience,
    /// The generations of the tags the loaded value is labeled with.
    pub(super) tagged: Vec<(String, u64)>,
}

/// What a load's body left: its result (`None`: abandoned at the hard
/// timeout), whether `unless` refused to store it, and when it started.
pub(super) struct Loaded<R> {
    pub(super) result: Option<R>,
    pub(super) skipped: bool,
    pub(super) started: Instant,
}

impl<R> Loaded<R> {
    /// What a body that started at `started` left: `result`, and whether
    /// `unless` refuses to store it (asked only of a cacheable value).
    pub(super) fn of<M: Mode<R>, U: FnOnce(&M::Stored) -> bool>(
        result: Option<R>,
        unless: U,
        started: Instant,
    ) -> Self {
        let skipped = match &result {
            Some(result) if !M::is_failure(result) => M::stored(result).is_some_and(unless),
            _ => false,
        };
        Loaded {
            result,
            skipped,
            started,
        }
    }
}

impl Cache {
    /// The generations of the tags a load's value is stored under (read
    /// before the body runs, so a tag invalidation during the load leaves
    /// the value invisible).
    pub(super) async fn tags_for<R, S>(
        &self,
        load: &Load<'_, R, S>,
        loading: &Loading<'_>,
    ) -> Vec<(String, u64)> {
        let tags = load.policy.map_or(&[][..], |p| p.tags);
        if tags.is_empty() {
            return Vec::new();
        }
        let deadline = loading.deadline();
        self.inner.layer.tag_generations(tags, &deadline).await
    }

    /// What follows a load's body: store its result under the lease, or
    /// after a failure put back the stale value the lease replaced and
    /// (fail-safe) answer with it.
    pub(super) async fn after_load<R, M>(
        &self,
        load: &Load<'_, R, M::Stored>,
        leading: Box<Leading<'_>>,
        loaded: Loaded<R>,
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
        } = loaded;
        let Leading {
            loading,
            patience,
            tagged,
        } = *leading;
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
        // Each step boxed: this future's layout is computed in the crate of
        // every `#[cached]` function, and nested inline the steps would go
        // deeper than a caller's `recursion_limit` may allow.
        let keys = [load.key.skey.to_owned()];
        let invalidated: Step<'_, _> = Box::pin(self.inner.layer.invalidate(
            crate::consistency::invalidate::Invalidation {
                keys: &keys,
                ..Default::default()
            },
        ));
        invalidated.await;
        if let Some(payload) = payload {
            let primed: Step<'_, _> = Box::pin(self.prime_now::<R, M>(load, payload));
            drop(primed.await);
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
        // Steps boxed, as in `update_now`.
        let generation: Step<'_, _> =
            Box::pin(layer.generation_for(load.entry, load.key.prefix, &deadline));
        let generation = generation.await;
        let tags = load.policy.map_or(&[][..], |p| p.tags);
        let tagged: Step<'_, _> = Box::pin(layer.tag_generations(tags, &deadline));
        let tagged = tagged.await;
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
            let written: Step<'_, _> =
                Box::pin(layer.write(load.entry, load.key.skey, bytes, ttl, &deadline));
            written.await;
        }
        let value = codec::decode::<M::Stored>(&stored, config.max_value_bytes).ok()?;
        Some((M::from_stored(value), Outcome::Miss))
    }
}

/// `fut`'s output, or `None` once `at` passed (the future is dropped);
/// with no `at`, `fut`'s output. The timer is boxed: it stays out of every
/// caller's future.
pub(super) async fn within<F: Future>(at: Option<Instant>, fut: F) -> Option<F::Output> {
    let mut timer = at.map(|at| Box::pin(tokio::time::sleep_until(at.into())));
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        match timer.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    })
    .await
}
