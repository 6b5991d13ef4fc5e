//! Support for the code `#[cached]` and `#[invalidates]` generate. Not a
//! public API: names and signatures change without notice.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::Cache;
use crate::cache::call;
use crate::cache::install::SCOPED;
use crate::cache::shell::{Lazy, PrefixName, ReadThrough, Ready};

pub use crate::cache::policy::Policy;

#[path = "private_keys.rs"]
mod keys;
pub use keys::*;

/// Appends `value`'s `Display` form with key-special characters escaped.
pub fn push_escaped<T: Display + ?Sized>(buf: &mut String, value: &T) {
    crate::keys::push_escaped_display(buf, value);
}

pub use core::time::Duration;

pub use crate::cache::typed::{
    KeyString, Mode, OptionMode, OptionWithNone, PlainMode, Probe, ResultMode, TypedCopy, ViaBytes,
    ViaClone,
};

/// Values a cached function can return.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be cached: the cached value must implement `serde::Serialize` and `serde::de::DeserializeOwned`",
    label = "the stored part of this return type must be serde-serializable",
    note = "derive them with `#[derive(serde::Serialize, serde::Deserialize)]`; for `Result<T, E>` only `T` is stored, for `Option<T>` only `T`"
)]
pub trait Storable {}
impl<T: Serialize + DeserializeOwned> Storable for T {}

/// Compile-time check emitted at the return type's span.
pub fn assert_storable<R, M: Mode<R>>()
where
    M::Stored: Storable,
{
}

static WARNED_NONE: AtomicBool = AtomicBool::new(false);

/// The cache a generated function uses: `cache = expr`, else the task's
/// scoped cache, else the installed one; `None` runs uncached (warned once).
pub fn resolve(explicit: Option<&Cache>) -> Option<Cache> {
    resolve_handle(explicit).map(|handle| Cache::clone(&handle))
}

/// The cache a `#[cached]` call runs against, held for the call: borrowed
/// from `cache = expr` where the macro can prove that is sound, else the
/// thread's handle to the installed cache, else an owned clone. Only the
/// clone writes the reference count every thread shares (the common cases,
/// `cache = &..` and the installed cache, do not).
pub enum Handle<'a> {
    /// `cache = expr`, borrowed.
    Borrowed(&'a Cache),
    /// The installed cache, through this thread's `Arc`.
    Installed(std::sync::Arc<Cache>),
    /// A clone (`cache = expr` that the body also moves, or a scoped cache).
    Owned(Cache),
}

impl std::ops::Deref for Handle<'_> {
    type Target = Cache;
    fn deref(&self) -> &Cache {
        match self {
            Handle::Borrowed(cache) => cache,
            Handle::Installed(cache) => cache,
            Handle::Owned(cache) => cache,
        }
    }
}

/// [`resolve`] for `#[cached]`: `cache = expr` borrowed for the call.
pub fn resolve_borrowed(explicit: &Cache) -> Option<Handle<'_>> {
    Some(Handle::Borrowed(explicit))
}

/// [`resolve`] for `#[cached]`, as a [`Handle`]: `cache = expr` cloned (the
/// body moves what the expression borrows), or the current cache.
pub fn resolve_handle(explicit: Option<&Cache>) -> Option<Handle<'static>> {
    if let Some(cache) = explicit {
        return Some(Handle::Owned(cache.clone()));
    }
    let found = current_handle();
    if found.is_none() && !WARNED_NONE.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "a #[cached]/#[invalidates] function ran with no cache installed: running uncached \
             (call `Cache::from_env().await?.install()` at start-up)"
        );
    }
    found
}

/// [`Cache::current`] as a [`Handle`]: the task's scoped cache, else the
/// installed one through this thread's `Arc`.
pub(crate) fn current_handle() -> Option<Handle<'static>> {
    if let Ok(scoped) = SCOPED.try_with(Cache::clone) {
        return Some(Handle::Owned(scoped));
    }
    Cache::installed_here().map(Handle::Installed)
}

/// A key buffer that already holds `{namespace}:{prefix}:`, with room for
/// `rest` more bytes, so the storage key is built in one allocation (or none:
/// see [`KeyString`]).
pub fn key_buffer(cache: Option<&Handle<'_>>, prefix: &str, rest: usize) -> KeyString {
    let Some(cache) = cache else {
        return KeyString::from(String::new());
    };
    let mut key = KeyString::with_capacity(cache.key_head_len() + prefix.len() + 1 + rest);
    cache.push_key_head(&mut key);
    key.push_str(prefix);
    key.push(':');
    key
}

/// The body of every `#[cached]` function.
#[allow(clippy::too_many_arguments)]
pub async fn cached<R, M, F, U>(
    cache: Option<Handle<'_>>,
    prefix: &'static str,
    storage_key: KeyString,
    ttl: Option<Duration>,
    none_ttl: Option<Duration>,
    unless: U,
    typed: Option<TypedCopy<M::Stored>>,
    near: bool,
    policy: Option<&Policy<'_, R, M::Stored>>,
    body: F,
) -> R
where
    M: Mode<R>,
    F: Future<Output = R>,
    U: FnOnce(&M::Stored) -> bool,
{
    let claim = call::claim();
    // Without a cache (or bypassed) the shell runs the body uncached: one
    // place awaits it.
    let cache = cache.as_deref().filter(|_| !claim.bypass);
    let (result, outcome) = Cache::load_through::<R, M, Ready<F>, U>(
        cache,
        ReadThrough {
            prefix: PrefixName::Static(prefix),
            skey: storage_key,
            ttl,
            none_ttl,
            unless,
            typed,
            near,
            body: Ready(body),
            policy,
        },
        None,
        claim.action,
        None,
    )
    .await;
    if claim.report {
        call::report(outcome);
    }
    result
}

/// The body of a `#[cached]` function whose loads may outlive the call
/// (`soft_timeout`, `refresh_ahead`): `body` makes a load that owns what
/// it uses, and is called only when a load is needed.
#[allow(clippy::too_many_arguments)]
pub async fn cached_owned<R, M, C, F, U>(
    cache: Option<Handle<'_>>,
    prefix: &'static str,
    storage_key: KeyString,
    ttl: Option<Duration>,
    none_ttl: Option<Duration>,
    unless: U,
    typed: Option<TypedCopy<M::Stored>>,
    near: bool,
    policy: Option<&Policy<'_, R, M::Stored>>,
    body: C,
) -> R
where
    R: Send + 'static,
    M: Mode<R> + 'static,
    M::Stored: Send + Sync + 'static,
    C: FnOnce() -> F,
    F: Future<Output = R> + Send + 'static,
    U: FnOnce(&M::Stored) -> bool + Send + 'static,
{
    let claim = call::claim();
    // Without a cache (or bypassed) the shell runs the body uncached: one
    // place awaits it.
    let cache = cache.as_deref().filter(|_| !claim.bypass);
    let (result, outcome) = Cache::load_through::<R, M, Lazy<C>, U>(
        cache,
        ReadThrough {
            prefix: PrefixName::Static(prefix),
            skey: storage_key,
            ttl,
            none_ttl,
            unless,
            typed,
            near,
            body: Lazy(body),
            policy,
        },
        None,
        claim.action,
        Some(crate::cache::background::spawn_job::<R, M, F, U>),
    )
    .await;
    if claim.report {
        call::report(outcome);
    }
    result
}

/// Errors a `hard_timeout` function can return.
#[diagnostic::on_unimplemented(
    message = "`hard_timeout` answers a load that takes too long with `Err(E::from(cache_core::LoadTimedOut))`, and `{Self}` can't carry it",
    label = "the function's error type must implement `From<cache_core::LoadTimedOut>`",
    note = "add `impl From<cache_core::LoadTimedOut> for {Self}` (e.g. a `Timeout(LoadTimedOut)` variant), or remove `hard_timeout`"
)]
pub trait CarriesTimeout {
    /// `Self::from(timed_out)`.
    fn from_timed_out(timed_out: crate::LoadTimedOut) -> Self;
}

impl<E: From<crate::LoadTimedOut>> CarriesTimeout for E {
    fn from_timed_out(timed_out: crate::LoadTimedOut) -> Self {
        E::from(timed_out)
    }
}

/// `hard_timeout`'s error: `E::from(timed_out)`.
pub fn timed_out<E: CarriesTimeout>(timed_out: crate::LoadTimedOut) -> E {
    E::from_timed_out(timed_out)
}

/// Values a background load (`soft_timeout`, `refresh_ahead`) needs its own
/// copy of: what a reference argument points to.
#[diagnostic::on_unimplemented(
    message = "`soft_timeout` and `refresh_ahead` finish loads in the background, after the caller has its answer, so the load needs its own copy of this argument: `{Self}` must be `Clone + Send + 'static` (or `str`, or a slice of such)",
    label = "borrowed by the body, which may outlive the call",
    note = "derive or implement `Clone` for it, take it by value (an `Arc<..>`), or remove `soft_timeout`/`refresh_ahead`"
)]
pub trait OwnForBackground {
    /// The owned copy.
    type Owned: std::borrow::Borrow<Self> + Send + 'static;
    /// Makes the copy.
    fn own_for_background(&self) -> Self::Owned;
}

impl<T: Clone + Send + 'static> OwnForBackground for T {
    type Owned = T;
    fn own_for_background(&self) -> T {
        self.clone()
    }
}

impl OwnForBackground for str {
    type Owned = String;
    fn own_for_background(&self) -> String {
        self.to_owned()
    }
}

impl<T: Clone + Send + 'static> OwnForBackground for [T] {
    type Owned = Vec<T>;
    fn own_for_background(&self) -> Vec<T> {
        self.to_vec()
    }
}

/// The owned copy of a reference argument a background load uses.
pub fn own<T: OwnForBackground + ?Sized>(value: &T) -> T::Owned {
    value.own_for_background()
}

/// The receiver of a method whose loads may run in the background.
#[diagnostic::on_unimplemented(
    message = "`soft_timeout` and `refresh_ahead` finish loads in the background, after the caller has its answer, so the load needs its own copy of `self`: `{Self}` must be `Clone + Send + Sync + 'static`",
    label = "`&self` is borrowed by the body, which may outlive the call",
    note = "derive `Clone` for `{Self}` (keep what it holds behind `Arc`s so the copy is cheap), or remove `soft_timeout`/`refresh_ahead`"
)]
pub trait OwnSelf: Sized {
    /// The copy.
    fn own_self(&self) -> Self;
}

impl<T: Clone + Send + Sync + 'static> OwnSelf for T {
    fn own_self(&self) -> T {
        self.clone()
    }
}

/// The owned copy of `self` a background load uses.
pub fn own_self<T: OwnSelf>(this: &T) -> T {
    this.own_self()
}

/// The key of a `#[cached]` function for some arguments: implemented by
/// the hidden struct `#[cached]` gives a free function (named like it), for
/// the tuple of references to its key's arguments.
#[diagnostic::on_unimplemented(
    message = "`#[invalidates({Self}(..))]`: these arguments don't make a key of the `#[cached]` function `{Self}`",
    label = "pass the arguments its key is built from, in the order of `{Self}_cache_key`'s parameters",
    note = "`{Self}(..)` (two dots) drops every entry of `{Self}` instead"
)]
pub trait KeyOf<A> {
    /// The key for `args`.
    fn key_of(args: A) -> String;
}

/// The prefix of a `#[cached]` function (its hidden struct).
pub trait CachedPrefix {
    /// The prefix.
    const PREFIX: &'static str;
}

/// Records an `#[invalidates(outbox = ..)]` invalidation through
/// `connection` (nothing without a cache: there is no namespace to record).
pub async fn outbox_record<C: crate::outbox::OutboxConnection + ?Sized>(
    cache: Option<&Cache>,
    connection: &mut C,
    keys: &[String],
    prefixes: &[&str],
) -> Result<(), crate::outbox::OutboxError> {
    match cache {
        Some(cache) if cache.is_enabled() => {
            crate::outbox::record(connection, cache.namespace(), keys, prefixes).await
        }
        _ => Ok(()),
    }
}

/// `#[invalidates(fail_closed)]`: refuses the write while the cache could
/// not deliver its invalidation of `keys` (logical `"prefix:rest"` keys)
/// and `prefixes`.
pub fn refuse_when_undeliverable(
    cache: Option<&Cache>,
    keys: &[String],
    prefixes: &[&str],
) -> Result<(), crate::WriteRefused> {
    match cache {
        Some(cache) => cache.check_deliverable_for(keys, prefixes),
        None => Ok(()),
    }
}

/// Invalidation that runs when the body is done, or when the future is dropped.
#[must_use = "call .finish().await after the body"]
pub struct InvalidationGuard {
    work: Option<Work>,
}

/// What an `#[invalidates]` function invalidates.
struct Work {
    cache: Cache,
    keys: Vec<String>,
    prefixes: &'static [&'static str],
    tags: Vec<String>,
}

/// Prepares the invalidation of `keys` (logical `"prefix:rest"` keys) and `prefixes`.
pub fn invalidation(
    cache: Option<Cache>,
    keys: Vec<String>,
    prefixes: &'static [&'static str],
) -> InvalidationGuard {
    invalidation_with_tags(cache, keys, prefixes, Vec::new())
}

/// [`invalidation`] of `tags` too (`#[invalidates(tags = [..])]`).
pub fn invalidation_with_tags(
    cache: Option<Cache>,
    keys: Vec<String>,
    prefixes: &'static [&'static str],
    tags: Vec<String>,
) -> InvalidationGuard {
    InvalidationGuard {
        work: cache.map(|cache| Work {
            cache,
            keys,
            prefixes,
            tags,
        }),
    }
}

async fn run_invalidation(work: Work) {
    let Work {
        cache,
        keys,
        prefixes,
        tags,
    } = work;
    // Boxed: the invalidation's steps (and a backend's) stay out of the
    // caller's future, whose layout a caller's crate computes through every
    // future held inline (bounded by the default `recursion_limit`).
    let invalidate: std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>> =
        Box::pin(cache.invalidate_all(&keys, prefixes, &tags));
    let delivered = invalidate.await;
    tracing::debug!(keys = ?keys, prefixes = ?prefixes, tags = ?tags, delivered, "invalidated");
}

impl InvalidationGuard {
    /// Runs the invalidation now.
    pub async fn finish(mut self) {
        if let Some(work) = self.work.take() {
            run_invalidation(work).await;
        }
    }
}

impl Drop for InvalidationGuard {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            // The future was dropped after the body started: the write may
            // have happened, so invalidate anyway.
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(run_invalidation(work));
                }
                Err(_) => tracing::error!(
                    keys = ?work.keys,
                    "invalidation dropped outside a tokio runtime; keys may be stale"
                ),
            }
        }
    }
}

/// `#[updates(f(..))]` after its body returned `Ok(value)`: `call` (the
/// `#[cached]` call, not yet polled) replaces its entry with `value`.
pub async fn update_store<F: Future, T: Serialize + Send + 'static>(call: F, value: T) {
    let payload: call::Payload =
        Box::new(move |kind, out| crate::codec::encode_payload(kind, &value, out));
    run_update(call, Some(payload)).await;
}

/// `#[updates(f(..))]` after its body returned `Err`: the write may have
/// happened in part, so `call`'s entry is dropped.
pub async fn update_drop<F: Future>(call: F) {
    run_update(call, None).await;
}

/// Polls `call` with the update action until the update is done (the call
/// itself never completes then, and is dropped before its body runs).
async fn run_update<F: Future>(call: F, payload: Option<call::Payload>) {
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let action = call::Action::Update(payload, done.clone());
    let mut fut = std::pin::pin!(call::with_action(action, call));
    let completed = std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        std::task::Poll::Ready(_) => std::task::Poll::Ready(true),
        std::task::Poll::Pending if done.load(Ordering::Acquire) => std::task::Poll::Ready(false),
        std::task::Poll::Pending => std::task::Poll::Pending,
    })
    .await;
    if completed {
        tracing::error!(
            "#[updates]: the function it names ran without taking the update: it is not #[cached]; nothing was stored"
        );
    }
}
