//! Support for the code `#[cached]` and `#[invalidates]` generate. Not a
//! public API: names and signatures change without notice.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::Cache;
use crate::cache::install::{BYPASS, SCOPED};

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

fn bypassed() -> bool {
    BYPASS.try_with(|b| *b).unwrap_or(false)
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
    body: F,
) -> R
where
    M: Mode<R>,
    F: Future<Output = R>,
    U: FnOnce(&M::Stored) -> bool,
{
    let Some(cache) = cache else {
        return body.await;
    };
    if bypassed() {
        return body.await;
    }
    cache
        .load_through::<R, M, F, U>(crate::cache::read_through::ReadThrough {
            prefix,
            skey: storage_key,
            ttl,
            none_ttl,
            unless,
            typed,
            near,
            body,
        })
        .await
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
    work: Option<(Cache, Vec<String>, &'static [&'static str])>,
}

/// Prepares the invalidation of `keys` (logical `"prefix:rest"` keys) and `prefixes`.
pub fn invalidation(
    cache: Option<Cache>,
    keys: Vec<String>,
    prefixes: &'static [&'static str],
) -> InvalidationGuard {
    InvalidationGuard {
        work: cache.map(|c| (c, keys, prefixes)),
    }
}

async fn run_invalidation(cache: Cache, keys: Vec<String>, prefixes: &'static [&'static str]) {
    // Boxed: the invalidation's steps (and a backend's) stay out of the
    // caller's future, whose layout a caller's crate computes through every
    // future held inline (bounded by the default `recursion_limit`).
    let invalidate: std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>> =
        Box::pin(cache.invalidate_all(&keys, prefixes));
    let delivered = invalidate.await;
    tracing::debug!(keys = ?keys, prefixes = ?prefixes, delivered, "invalidated");
}

impl InvalidationGuard {
    /// Runs the invalidation now.
    pub async fn finish(mut self) {
        if let Some((cache, keys, prefixes)) = self.work.take() {
            run_invalidation(cache, keys, prefixes).await;
        }
    }
}

impl Drop for InvalidationGuard {
    fn drop(&mut self) {
        if let Some((cache, keys, prefixes)) = self.work.take() {
            // The future was dropped after the body started: the write may
            // have happened, so invalidate anyway.
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(run_invalidation(cache, keys, prefixes));
                }
                Err(_) => tracing::error!(
                    ?keys,
                    "invalidation dropped outside a tokio runtime; keys may be stale"
                ),
            }
        }
    }
}
