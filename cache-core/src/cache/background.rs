//! Loads that go on in the background, with what starts them: a caller's
//! load that its soft timeout left behind, and a refresh-ahead (started by
//! a hit, with sliding expiry's TTL restart beside it).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Cache;
use super::loader::{Leading, Load, Loaded, within};
use super::policy::{Effective, Policy};
use super::shell::{PrefixName, ReadThrough, Ready, Step};
use super::typed::{KeyString, Mode, TypedCopy};
use crate::codec;
use crate::consistency::load::{Found, Loading, Patience};
use crate::consistency::read::{Key, Read};
use crate::error::Outcome;
use crate::stats::Event;
use crate::store::On;

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
                    Cache::load_through::<R, M, Ready<F>, U>(Some(&cache), call, first, None, None)
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

impl Cache {
    /// Runs the body of a refresh-ahead (within its hard timeout), then
    /// stores its result under the lease, or after a failure puts back the
    /// value the lease replaced.
    async fn run_load<R, M, F, U>(
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
        let tagged = {
            let read: Step<'_, _> = Box::pin(self.tags_for(load, &loading));
            read.await
        };
        let timed_out = load.policy.and_then(|p| p.timed_out);
        let hard = patience.hard.filter(|_| timed_out.is_some());
        let started = Instant::now();
        let result = within(hard, body).await;
        let loaded = Loaded::of::<M, U>(result, unless, started);
        let leading = Box::new(Leading {
            loading,
            patience,
            tagged,
        });
        self.after_load::<R, M>(load, leading, loaded).await
    }

    /// After a hit on `value`: restarts the TTL (sliding expiry), and says
    /// whether a refresh-ahead is due (`can_refresh`: the caller can start
    /// one), for the caller to start with the body.
    pub(super) fn after_hit<R, M: Mode<R>>(
        &self,
        load: &Load<'_, R, M::Stored>,
        found: &Found,
        value: &M::Stored,
        generation: Option<u64>,
        can_refresh: bool,
    ) -> Option<JobKind> {
        let policy = load.policy?;
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
        if !can_refresh || policy.refresh_ahead.is_none() {
            return None;
        }
        let due = codec::extended(found)
            .and_then(|h| h.refresh_at)
            .is_some_and(|at| self.inner.layer.now_ms() >= at);
        if !due || self.inner.layer.refreshing(load.key.skey) {
            return None;
        }
        Some(JobKind::Refresh(Arc::from(&**found), generation))
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
}
