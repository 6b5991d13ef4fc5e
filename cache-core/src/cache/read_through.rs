//! The typed shell of the read-through path shared by `#[cached]` and
//! [`Cache::get_or_set`]: hit → decode; miss → the consistency layer's
//! byte-level steps around the body, which is awaited here.
//!
//! The shell is generic over the body and `unless`, whose types differ for
//! every function, so it is compiled once per function: it keeps to the
//! hit and to what only the body's type can do (start it, await it, hand
//! it to the background). Everything else a miss needs (the actions, the
//! wait for another caller's load, fail-safe, the soft timeout's choice)
//! is [`Cache::plan_miss`], generic over the function's return type alone
//! and so compiled once for all functions sharing it; it tells the shell
//! what to do with the body as a [`Next`]. The body is awaited in the
//! shell, so the caller's future is `Send` exactly when the body is.
//!
//! The read is the consistency layer's one read operation (inline: a
//! memory or near hit completes without a box); the miss steps are awaited
//! behind boxes, which keep their state out of every caller's future and
//! keep the generated future types shallow (a caller in another crate
//! computes their layout and auto traits through every nested future held
//! inline, a walk bounded by the default `recursion_limit`).

use std::time::Instant;

use super::Cache;
use super::background::{JobKind, Spawn};
use super::call::Action;
use super::loader::{Leading, Load, Loaded, within};
use super::policy::Effective;
use super::shell::{Body, PrefixName, ReadThrough, Step};
use super::typed::{Mode, TypedCopy};
use crate::backend::RawBytes;
use crate::consistency::load::{AfterMiss, Found, Patience};
use crate::consistency::read::{Key, Local, Read};
use crate::error::Outcome;
use crate::stats::{Event, PrefixEntry};
use crate::store::Deadline;

/// What the shell does with the body, as [`Cache::plan_miss`] decided.
pub(super) enum Next<'c, R> {
    /// Answered without the body.
    Answer((R, Outcome)),
    /// Run the body and store nothing.
    Uncached(Outcome),
    /// Never complete (an update with nothing to update): the body must
    /// not run.
    Pending,
    /// Run the body under this lease, then store its result (boxed: the
    /// lease is large, and every function's future would hold it inline).
    Load(Box<Leading<'c>>),
    /// Hand the body to the background and wait for it until the soft
    /// timeout, then answer with the stale value.
    Background {
        /// What the background load starts from.
        first: Read,
        generation: Option<u64>,
        /// The stale value.
        stale: RawBytes,
        soft: Instant,
    },
}

/// What a miss starts from.
pub(super) enum MissFrom {
    /// An action ([`refresh`](crate::refresh), [`prime`](crate::prime),
    /// `#[updates]`), made before any read.
    Action(Action),
    /// A read that found no fresh value (or one that did not decode).
    Read(Read, Option<u64>),
}

impl Cache {
    /// Decodes a found value, through the typed copy kept beside a memory
    /// slot when the payload has one (a hit then clones, decoding once).
    pub(super) fn decode_found<S: serde::de::DeserializeOwned>(
        &self,
        entry: &PrefixEntry,
        skey: &str,
        bytes: &Found,
        typed: Option<TypedCopy<S>>,
    ) -> Option<S> {
        match (bytes, typed) {
            (Found::Raw(RawBytes::Shared(slot)), Some(typed)) => {
                if let Some(value) = slot.decoded.get().and_then(|d| (typed.take)(d)) {
                    return Some(value);
                }
                let value = self.decode::<S>(entry, skey, slot)?;
                let _ = slot.decoded.set((typed.keep)(&value));
                Some(value)
            }
            (found, _) => self.decode::<S>(entry, skey, found),
        }
    }

    /// The generic shell of a read-through call: what answered it, and
    /// how. `cache`: `None` (or a disabled cache) runs the body uncached;
    /// `first`: a read already made (a background load continues a
    /// caller's); `action`: [`refresh`](crate::refresh),
    /// [`prime`](crate::prime) or `#[updates]`; `spawn`: how to run a load
    /// in the background, for bodies that own what they use.
    ///
    /// The body is awaited in one place whatever led to it (no cache, an
    /// uncacheable result, a load under a lease): each await of it would be
    /// one more state of every function's future, holding the body.
    pub(crate) async fn load_through<R, M, B, U>(
        cache: Option<&Cache>,
        call: ReadThrough<'_, R, M::Stored, B, U>,
        first: Option<(Read, Option<u64>)>,
        action: Option<Action>,
        spawn: Option<Spawn<R, M::Stored, B::Fut, U>>,
    ) -> (R, Outcome)
    where
        M: Mode<R>,
        B: Body<R>,
        U: FnOnce(&M::Stored) -> bool,
    {
        let ReadThrough {
            prefix,
            skey,
            ttl,
            none_ttl,
            unless,
            typed,
            near,
            body,
            policy,
        } = call;
        let cache = cache.filter(|c| c.is_enabled());
        let entry = cache.map(|c| match prefix {
            PrefixName::Static(p) => c.inner.stats.prefix_static(p),
            PrefixName::Borrowed(p) => c.inner.stats.prefix(p),
        });
        let deadline = cache.map(|c| c.inner.layer.store().deadline());
        let key = Key {
            skey: &skey,
            prefix: prefix.as_str(),
            near,
        };
        let mut load = None;
        let next = match (cache, &entry, &deadline) {
            (Some(this), Some(entry), Some(deadline)) => {
                let layer = &this.inner.layer;
                // Built only once a hit is not the whole answer: a function
                // that uses none of the loader options pays nothing for
                // them on a hit.
                let new_load = || Load {
                    entry,
                    key,
                    ttl,
                    none_ttl,
                    typed,
                    policy,
                    effective: Effective::of(policy, &this.inner.config),
                };
                let from = if let Some(action) = action {
                    MissFrom::Action(action)
                } else if let Some((read, generation)) = first {
                    MissFrom::Read(read, generation)
                } else {
                    // The one read's steps, made here: a local hit
                    // builds no future. The prefix generation it saw
                    // labels a loaded value, so a prefix invalidation
                    // during the load leaves that value invisible.
                    let mut local = layer.read_now(entry, key);
                    if let Local::Plain(current) = local {
                        let raw = layer.plain_get(entry, key, deadline).await;
                        local = layer.classified(raw, current);
                    }
                    let (read, generation) = match local {
                        Local::Read(read, current) => (read, current),
                        Local::TagsUnchecked(read, current) => {
                            layer.with_tags_checked(read, current, deadline).await
                        }
                        Local::Plain(_) | Local::Remote => {
                            layer.read_awaited(entry, key, deadline).await
                        }
                    };
                    let read = match read {
                        Read::Bytes(bytes) => {
                            let found = Found::Raw(bytes);
                            match this.decode_found::<M::Stored>(entry, &skey, &found, typed) {
                                Some(v) => {
                                    this.inner.stats.record(entry, Event::Hit);
                                    if let Some(policy) = policy
                                        && (policy.refresh_ahead.is_some() || policy.sliding)
                                    {
                                        let load = new_load();
                                        let due = this.after_hit::<R, M>(
                                            &load,
                                            &found,
                                            &v,
                                            generation,
                                            spawn.is_some(),
                                        );
                                        if let (Some(kind), Some(spawn)) = (due, spawn) {
                                            let job = load.job(kind, unless);
                                            drop(spawn(this.clone(), job, body.start()));
                                        }
                                    }
                                    return (M::from_stored(v), Outcome::Hit);
                                }
                                None => Read::Missing { garbage: true },
                            }
                        }
                        other => other,
                    };
                    MissFrom::Read(read, generation)
                };
                let load = load.insert(new_load());
                let plan: Step<'_, _> =
                    Box::pin(this.plan_miss::<R, M>(load, from, spawn.is_some(), deadline));
                plan.await
            }
            _ => match &action {
                Some(Action::Update(_, done)) => {
                    // Nothing to update; the body must not run.
                    done.store(true, std::sync::atomic::Ordering::Release);
                    Next::Pending
                }
                _ => Next::Uncached(Outcome::Uncached),
            },
        };
        let (leading, outcome) = match next {
            Next::Answer(answer) => return answer,
            Next::Pending => return std::future::pending().await,
            Next::Uncached(outcome) => (None, outcome),
            Next::Load(leading) => (Some(leading), Outcome::Miss),
            Next::Background {
                first,
                generation,
                stale,
                soft,
            } => {
                let (Some(this), Some(load), Some(spawn)) = (cache, &load, spawn) else {
                    unreachable!("a load goes to the background only with a way to spawn it");
                };
                let job = load.job(JobKind::Load(first, generation), unless);
                let waiting = spawn(this.clone(), job, body.start());
                let answered: Step<'_, _> =
                    Box::pin(this.soft_wait::<R, M>(load, waiting, stale, soft));
                return answered.await;
            }
        };
        // A load is abandoned at its hard timeout only when the function
        // can answer with the timeout's error.
        let timed_out = policy.and_then(|p| p.timed_out);
        let hard = leading
            .as_ref()
            .and_then(|leading| leading.patience.hard)
            .filter(|_| timed_out.is_some());
        let started = Instant::now();
        let result = within(hard, body.start()).await;
        let (Some(this), Some(load), Some(leading)) = (cache, &load, leading) else {
            let Some(result) = result else {
                unreachable!("a body runs without a hard timeout unless it loads");
            };
            return (result, outcome);
        };
        let loaded = Loaded::of::<M, U>(result, unless, started);
        this.after_load::<R, M>(load, leading, loaded).await
    }

    /// Everything a miss needs that does not depend on the body's type:
    /// the action, the wait for another caller's load (and its value),
    /// fail-safe's throttle, and whether the soft timeout sends the load to
    /// the background (`can_spawn`: the body owns what it uses). Its steps
    /// are boxed: its future's layout is computed in every crate with a
    /// `#[cached]` function (it is generic), and held inline they would
    /// nest deeper than the default `recursion_limit` allows.
    pub(super) async fn plan_miss<'c, R, M: Mode<R>>(
        &'c self,
        load: &Load<'_, R, M::Stored>,
        from: MissFrom,
        can_spawn: bool,
        deadline: &Deadline,
    ) -> Next<'c, R> {
        let layer = &self.inner.layer;
        let (entry, key) = (load.entry, load.key);
        let patience = load.effective.patience();
        let (mut read, mut generation) = match from {
            MissFrom::Read(read, generation) => (read, generation),
            MissFrom::Action(action) => {
                let acted: Step<'_, _> = Box::pin(self.act::<R, M>(load, action, deadline));
                if let Some(next) = acted.await {
                    return next;
                }
                // A primed value that did not read back: read as usual.
                let read: Step<'_, _> = Box::pin(layer.read(entry, key, deadline));
                read.await
            }
        };
        if let Read::Bytes(bytes) = read {
            // A hit after all (a prime that did not read back): with no
            // body at hand, a refresh-ahead due is left to the next hit.
            let found = Found::Raw(bytes);
            match self.decode_found::<M::Stored>(entry, key.skey, &found, load.typed) {
                Some(v) => {
                    self.inner.stats.record(entry, Event::Hit);
                    let _ = self.after_hit::<R, M>(load, &found, &v, generation, false);
                    return Next::Answer((M::from_stored(v), Outcome::Hit));
                }
                None => read = Read::Missing { garbage: true },
            }
        }
        loop {
            let miss = match read {
                Read::Stale(bytes) if load.effective.fail_safe.is_some() => {
                    if let Some(answer) = self.throttled::<R, M>(load, &bytes) {
                        return Next::Answer(answer);
                    }
                    if load.effective.soft_timeout.is_some() && can_spawn {
                        let first = Read::Stale(RawBytes::Owned(bytes.to_vec()));
                        return Next::Background {
                            first,
                            generation,
                            stale: bytes,
                            soft: patience.soft.unwrap_or_else(Instant::now),
                        };
                    }
                    Read::Stale(bytes)
                }
                Read::Unlabeled(bytes) => {
                    // Decoded only to count foreign or corrupt bytes.
                    let _ = self.decode::<M::Stored>(entry, key.skey, &bytes);
                    Read::Missing { garbage: true }
                }
                other => other,
            };
            let after: Step<'_, _> =
                Box::pin(layer.after_miss(entry, key, miss, generation, deadline, patience));
            match after.await {
                AfterMiss::Value(found) => {
                    match self.answer_found::<R, M>(load, &found, Outcome::Coalesced) {
                        Some(answer) => return Next::Answer(answer),
                        None => (read, generation) = (Read::Missing { garbage: true }, None),
                    }
                }
                AfterMiss::RunUncached => return Next::Uncached(Outcome::Miss),
                AfterMiss::Late(found) => {
                    return match self.late::<R, M>(load, found, patience) {
                        Some(answer) => Next::Answer(answer),
                        None => Next::Uncached(Outcome::Miss),
                    };
                }
                AfterMiss::Load(loading) => {
                    let tagged: Step<'_, _> = Box::pin(self.tags_for(load, &loading));
                    let tagged = tagged.await;
                    return Next::Load(Box::new(Leading {
                        loading,
                        patience,
                        tagged,
                    }));
                }
            }
        }
    }

    /// An action, before any read: `None` when a primed value did not read
    /// back as the function's type (the call then reads as usual).
    async fn act<'c, R, M: Mode<R>>(
        &'c self,
        load: &Load<'_, R, M::Stored>,
        action: Action,
        deadline: &Deadline,
    ) -> Option<Next<'c, R>> {
        match action {
            Action::Prime(payload) => {
                let primed: Step<'_, _> = Box::pin(self.prime_now::<R, M>(load, payload));
                primed.await.map(Next::Answer)
            }
            Action::Update(payload, done) => {
                let updated: Step<'_, _> = Box::pin(self.update_now::<R, M>(load, payload));
                updated.await;
                done.store(true, std::sync::atomic::Ordering::Release);
                Some(Next::Pending)
            }
            Action::Refresh => {
                let leased: Step<'_, _> = Box::pin(
                    self.inner
                        .layer
                        .lease_for_refresh(load.entry, load.key, deadline),
                );
                let leased = leased.await;
                Some(match leased {
                    // A reload asked for answers with what the body
                    // returned, never with the value it was to replace.
                    Some(loading) => {
                        let patience = Patience {
                            stale_ok: false,
                            ..load.effective.patience()
                        };
                        let tagged: Step<'_, _> = Box::pin(self.tags_for(load, &loading));
                        let tagged = tagged.await;
                        Next::Load(Box::new(Leading {
                            loading,
                            patience,
                            tagged,
                        }))
                    }
                    None => Next::Uncached(Outcome::Miss),
                })
            }
        }
    }

    /// Waits for a load sent to the background until the soft timeout,
    /// then answers with the stale value while the load goes on.
    async fn soft_wait<R, M: Mode<R>>(
        &self,
        load: &Load<'_, R, M::Stored>,
        mut waiting: Step<'static, (R, Outcome)>,
        stale: RawBytes,
        soft: Instant,
    ) -> (R, Outcome) {
        if let Ok(answer) = tokio::time::timeout_at(soft.into(), &mut waiting).await {
            return answer;
        }
        if let Some(answer) = self.soft_timed_out::<R, M>(load, &stale) {
            return answer;
        }
        waiting.await
    }
}
