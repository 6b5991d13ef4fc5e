//! The typed shell of the read-through path shared by `#[cached]` and
//! [`Cache::get_or_set`]: hit → decode; miss → the consistency layer's
//! byte-level steps around the body, which is awaited here.
//!
//! Only [`Cache::load_through`] is generic: it does nothing but what
//! depends on the function's types (decode, encode, the typed copy, which
//! part of the result is stored) and awaits the body itself, so the
//! caller's future is `Send` exactly when the body is. The read is the
//! consistency layer's one read operation (inline: a memory or near hit
//! completes without a box); the miss steps are awaited behind boxes, which
//! keep their state out of every caller's future and keep the generated
//! future types shallow (a caller in another crate computes their layout
//! and auto traits through every nested future held inline, a walk bounded
//! by the default `recursion_limit`).

use super::Cache;
use super::call::Action;
use super::loader::{JobKind, Spawn};
use super::policy::Effective;
use super::shell::{Body, PrefixName, ReadThrough, Step};
use super::typed::{Mode, TypedCopy};
use crate::backend::RawBytes;
use crate::consistency::load::{AfterMiss, Found, Patience};
use crate::consistency::read::{Key, Local, Read};
use crate::error::Outcome;
use crate::stats::{Event, PrefixEntry};

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
    /// how. `first`: a read already made (a background load continues a
    /// caller's); `action`: [`refresh`](crate::refresh) or
    /// [`prime`](crate::prime); `spawn`: how to run a load in the
    /// background, for bodies that own what they use.
    pub(crate) async fn load_through<R, M, B, U>(
        &self,
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
        if !self.is_enabled() {
            if let Some(Action::Update(_, done)) = &action {
                // Nothing to update; the body must not run.
                done.store(true, std::sync::atomic::Ordering::Release);
                return std::future::pending().await;
            }
            return (body.start().await, Outcome::Uncached);
        }
        let layer = &self.inner.layer;
        let entry = match prefix {
            PrefixName::Static(p) => self.inner.stats.prefix_static(p),
            PrefixName::Borrowed(p) => self.inner.stats.prefix(p),
        };
        let prefix = prefix.as_str();
        let deadline = layer.store().deadline();
        let key = Key {
            skey: &skey,
            prefix,
            near,
        };
        let effective = || Effective::of(policy, &self.inner.config);
        let load_with = |effective| super::loader::Load {
            entry: &entry,
            key,
            ttl,
            none_ttl,
            typed,
            policy,
            effective,
        };
        if let Some(action) = action {
            let load = load_with(effective());
            let patience = load.effective.patience();
            match action {
                Action::Prime(payload) => {
                    let primed: Step<'_, _> = Box::pin(self.prime_now::<R, M>(&load, payload));
                    if let Some(answer) = primed.await {
                        return answer;
                    }
                }
                Action::Update(payload, done) => {
                    let updated: Step<'_, _> = Box::pin(self.update_now::<R, M>(&load, payload));
                    updated.await;
                    done.store(true, std::sync::atomic::Ordering::Release);
                    return std::future::pending().await;
                }
                Action::Refresh => {
                    let leased: Step<'_, _> =
                        Box::pin(layer.lease_for_refresh(&entry, key, &deadline));
                    return match leased.await {
                        // A reload asked for answers with what the body
                        // returned, never with the value it was to replace.
                        Some(loading) => {
                            let patience = Patience {
                                stale_ok: false,
                                ..patience
                            };
                            self.run_load::<R, M, B::Fut, U>(
                                &load,
                                loading,
                                body.start(),
                                unless,
                                patience,
                            )
                            .await
                        }
                        None => (body.start().await, Outcome::Miss),
                    };
                }
            }
        }
        // The prefix generation seen by the last read before the load: the
        // value is labeled with it, so a prefix invalidation during the load
        // leaves the value invisible.
        // The one read's steps, made here: a local hit builds no future.
        let (read, mut generation) = match first {
            Some(first) => first,
            None => match layer.read_now(&entry, key) {
                Local::Read(read, current) => (read, current),
                Local::TagsUnchecked(read, current) => {
                    layer.with_tags_checked(read, current, &deadline).await
                }
                Local::Remote => layer.read_awaited(&entry, key, &deadline).await,
            },
        };
        // The hit, answered before anything only a miss needs is set up:
        // a function that uses none of the loader options pays nothing for
        // them.
        let mut read = match read {
            Read::Bytes(bytes) => {
                let found = Found::Raw(bytes);
                match self.decode_found::<M::Stored>(&entry, &skey, &found, typed) {
                    Some(v) => {
                        self.inner.stats.record(&entry, Event::Hit);
                        if let Some(policy) = policy
                            && (policy.refresh_ahead.is_some() || policy.sliding)
                        {
                            let (mut body, mut unless) = (Some(body), Some(unless));
                            self.after_hit::<R, M, B, U>(
                                &load_with(effective()),
                                &found,
                                &v,
                                generation,
                                &mut body,
                                &mut unless,
                                spawn,
                            );
                        }
                        return (M::from_stored(v), Outcome::Hit);
                    }
                    None => Read::Missing { garbage: true },
                }
            }
            other => other,
        };
        let load = load_with(effective());
        let patience = load.effective.patience();
        let mut body = Some(body);
        let mut unless = Some(unless);
        loop {
            let miss = match read {
                Read::Bytes(bytes) => {
                    let found = Found::Raw(bytes);
                    if let Some(v) = self.decode_found::<M::Stored>(&entry, &skey, &found, typed) {
                        self.inner.stats.record(&entry, Event::Hit);
                        if let Some(policy) = policy
                            && (policy.refresh_ahead.is_some() || policy.sliding)
                        {
                            self.after_hit::<R, M, B, U>(
                                &load,
                                &found,
                                &v,
                                generation,
                                &mut body,
                                &mut unless,
                                spawn,
                            );
                        }
                        return (M::from_stored(v), Outcome::Hit);
                    }
                    Read::Missing { garbage: true }
                }
                Read::Stale(bytes) if load.effective.fail_safe.is_some() => {
                    if let Some(answer) = self.throttled::<R, M>(&load, &bytes) {
                        return answer;
                    }
                    match (
                        &load.effective.soft_timeout,
                        spawn,
                        body.take(),
                        unless.take(),
                    ) {
                        (Some(_), Some(spawn), Some(body_now), Some(unless_now)) => {
                            let stale = Read::Stale(RawBytes::Owned(bytes.to_vec()));
                            let job = load.job(JobKind::Load(stale, generation), unless_now);
                            let mut waiting = spawn(self.clone(), job, body_now.start());
                            let soft = patience.soft.unwrap_or_else(std::time::Instant::now);
                            if let Ok(answer) =
                                tokio::time::timeout_at(soft.into(), &mut waiting).await
                            {
                                return answer;
                            }
                            // The soft timeout passed: the stale value now,
                            // while the load goes on in the background.
                            if let Some(answer) = self.soft_timed_out::<R, M>(&load, &bytes) {
                                return answer;
                            }
                            return waiting.await;
                        }
                        (_, _, body_now, unless_now) => {
                            body = body_now;
                            unless = unless_now;
                            Read::Stale(bytes)
                        }
                    }
                }
                Read::Unlabeled(bytes) => {
                    // Decoded only to count foreign or corrupt bytes.
                    let _ = self.decode::<M::Stored>(&entry, &skey, &bytes);
                    Read::Missing { garbage: true }
                }
                other => other,
            };
            let (Some(body_now), Some(unless_now)) = (body.take(), unless.take()) else {
                // The body went to a background load that did not answer:
                // nothing left to run.
                unreachable!("a call whose body left for the background returns its answer");
            };
            let after: Step<'_, _> =
                Box::pin(layer.after_miss(&entry, key, miss, generation, &deadline, patience));
            match after.await {
                AfterMiss::Value(found) => {
                    match self.answer_found::<R, M>(&load, &found, Outcome::Coalesced) {
                        Some(answer) => return answer,
                        None => {
                            (read, generation) = (Read::Missing { garbage: true }, None);
                            body = Some(body_now);
                            unless = Some(unless_now);
                        }
                    }
                }
                AfterMiss::RunUncached => return (body_now.start().await, Outcome::Miss),
                AfterMiss::Late(found) => {
                    return match self.late::<R, M>(&load, found, patience) {
                        Some(answer) => answer,
                        None => (body_now.start().await, Outcome::Miss),
                    };
                }
                AfterMiss::Load(loading) => {
                    return self
                        .run_load::<R, M, B::Fut, U>(
                            &load,
                            loading,
                            body_now.start(),
                            unless_now,
                            patience,
                        )
                        .await;
                }
            }
        }
    }
}
