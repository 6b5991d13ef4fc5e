//! Support for the code `#[cached]` and `#[invalidates]` generate. Not a
//! public API: names and signatures change without notice.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::Cache;
use crate::install::BYPASS;
use crate::stats::Event;

#[path = "private_keys.rs"]
mod keys;
pub use keys::*;

/// Appends `value`'s `Display` form with key-special characters escaped.
pub fn push_escaped<T: Display + ?Sized>(buf: &mut String, value: &T) {
    crate::keys::push_escaped_display(buf, value);
}

pub use core::time::Duration;

/// How a return type maps to what is stored.
pub trait Mode<R> {
    /// The stored part of `R`.
    type Stored: Serialize + DeserializeOwned;
    /// The part of `result` to store, if any.
    fn stored(result: &R) -> Option<&Self::Stored>;
    /// Rebuilds the return value from a stored one.
    fn from_stored(stored: Self::Stored) -> R;
    /// Whether this stored value is a negative entry (`None` under `cache_none`).
    fn is_negative(_stored: &Self::Stored) -> bool {
        false
    }
}

/// `Result<T, E>`: only `Ok(T)` is stored.
pub struct ResultMode;
/// `Option<T>`: only `Some(T)` is stored.
pub struct OptionMode;
/// `Option<T>` with `cache_none`: `Some` and `None` are stored.
pub struct OptionWithNone;
/// Any other `T`: stored as is.
pub struct PlainMode;

impl<T: Serialize + DeserializeOwned, E> Mode<Result<T, E>> for ResultMode {
    type Stored = T;
    fn stored(result: &Result<T, E>) -> Option<&T> {
        result.as_ref().ok()
    }
    fn from_stored(stored: T) -> Result<T, E> {
        Ok(stored)
    }
}

impl<T: Serialize + DeserializeOwned> Mode<Option<T>> for OptionMode {
    type Stored = T;
    fn stored(result: &Option<T>) -> Option<&T> {
        result.as_ref()
    }
    fn from_stored(stored: T) -> Option<T> {
        Some(stored)
    }
}

impl<T: Serialize + DeserializeOwned> Mode<Option<T>> for OptionWithNone {
    type Stored = Option<T>;
    fn stored(result: &Option<T>) -> Option<&Option<T>> {
        Some(result)
    }
    fn from_stored(stored: Option<T>) -> Option<T> {
        stored
    }
    fn is_negative(stored: &Option<T>) -> bool {
        stored.is_none()
    }
}

impl<T: Serialize + DeserializeOwned> Mode<T> for PlainMode {
    type Stored = T;
    fn stored(result: &T) -> Option<&T> {
        Some(result)
    }
    fn from_stored(stored: T) -> T {
        stored
    }
}

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
    if let Ok(scoped) = crate::install::SCOPED.try_with(Cache::clone) {
        return Some(Handle::Owned(scoped));
    }
    Cache::installed_here().map(Handle::Installed)
}

/// A key buffer that already holds `{namespace}:{prefix}:`, with room for
/// `rest` more bytes, so the storage key is built in one allocation (or none:
/// see [`KeyString`]).
pub fn key_buffer(cache: Option<&Handle<'_>>, prefix: &str, rest: usize) -> KeyString {
    let Some(cache) = cache else {
        return KeyString(String::new());
    };
    let mut key = KeyString::with_capacity(cache.key_head_len() + prefix.len() + 1 + rest);
    cache.push_key_head(&mut key);
    key.push_str(prefix);
    key.push(':');
    key
}

thread_local! {
    /// The buffer of this thread's last dropped [`KeyString`].
    static SPARE_KEY: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

/// The storage key of one `#[cached]` call. Its buffer goes back to a
/// per-thread spare when the call ends, and the next call on that thread
/// reuses it: a hit then allocates no key.
pub struct KeyString(String);

impl KeyString {
    /// An empty key with room for `capacity` bytes, reusing this thread's spare.
    fn with_capacity(capacity: usize) -> Self {
        let mut buf = SPARE_KEY
            .try_with(std::cell::Cell::take)
            .unwrap_or_default();
        buf.reserve(capacity);
        KeyString(buf)
    }
}

impl Drop for KeyString {
    fn drop(&mut self) {
        /// Longer buffers are freed, not kept for the next key.
        const MAX_SPARE: usize = 256;
        let mut buf = std::mem::take(&mut self.0);
        // An unallocated buffer (no cache: the key was never built) would
        // only replace a real spare.
        if buf.capacity() != 0 && buf.capacity() <= MAX_SPARE {
            buf.clear();
            let _ = SPARE_KEY.try_with(|spare| spare.set(buf));
        }
    }
}

impl From<String> for KeyString {
    fn from(key: String) -> Self {
        KeyString(key)
    }
}

impl std::ops::Deref for KeyString {
    type Target = String;
    fn deref(&self) -> &String {
        &self.0
    }
}

impl std::ops::DerefMut for KeyString {
    fn deref_mut(&mut self) -> &mut String {
        &mut self.0
    }
}

fn bypassed() -> bool {
    BYPASS.try_with(|b| *b).unwrap_or(false)
}

/// How the memory backend keeps a decoded copy of a `Clone` value, so a
/// memory hit clones it instead of decoding bytes. Built by [`ViaClone`];
/// `None` (from [`ViaBytes`]) for payloads that are not `Clone`.
pub struct TypedCopy<T> {
    pub(crate) keep: fn(&T) -> crate::backend::memory::Decoded,
    pub(crate) take: fn(&crate::backend::memory::Decoded) -> Option<T>,
}

impl<T> Clone for TypedCopy<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for TypedCopy<T> {}

/// Autoref-specialization probe for [`TypedCopy`].
pub struct Probe<T>(std::marker::PhantomData<fn() -> T>);

impl<T> Probe<T> {
    /// The probe.
    pub const NEW: Self = Probe(std::marker::PhantomData);
}

/// Chosen when the payload is `Clone + Send + Sync + 'static`.
pub trait ViaClone<T> {
    /// A typed copy strategy.
    fn typed_copy(&self) -> Option<TypedCopy<T>>;
}

impl<T: Clone + Send + Sync + 'static> ViaClone<T> for Probe<T> {
    fn typed_copy(&self) -> Option<TypedCopy<T>> {
        Some(TypedCopy {
            keep: |value| std::sync::Arc::new(value.clone()),
            take: |decoded| decoded.downcast_ref::<T>().cloned(),
        })
    }
}

/// The fallback: decode the bytes on every hit.
pub trait ViaBytes<T> {
    /// No typed copy.
    fn typed_copy(&self) -> Option<TypedCopy<T>>;
}

impl<T> ViaBytes<T> for &Probe<T> {
    fn typed_copy(&self) -> Option<TypedCopy<T>> {
        None
    }
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
        .load_through::<R, M, F, U>(crate::load::ReadThrough {
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
    if !keys.is_empty() {
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        for key in &refs {
            let entry = cache
                .inner
                .stats
                .prefix(key.split(':').next().unwrap_or(key));
            cache.inner.stats.record(&entry, Event::Invalidation);
        }
        let skeys: Vec<String> = keys.iter().map(|k| cache.storage_key(k)).collect();
        let entry = cache
            .inner
            .stats
            .prefix(refs[0].split(':').next().unwrap_or(refs[0]));
        cache.raw_delete(&entry, &skeys).await;
        tracing::debug!(keys = ?keys, "invalidated");
    }
    for prefix in prefixes {
        let _ = cache.invalidate_prefix(prefix).await;
        tracing::debug!(prefix, "invalidated prefix");
    }
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

#[cfg(test)]
mod tests {
    use super::{KeyString, SPARE_KEY};

    #[test]
    fn a_reused_key_buffer_starts_empty_and_long_ones_are_not_kept() {
        let mut first = KeyString::with_capacity(16);
        first.push_str("ns:customer:42");
        let buffer = first.as_ptr();
        drop(first);
        let second = KeyString::with_capacity(16);
        assert!(second.is_empty());
        assert_eq!(second.as_ptr(), buffer, "the spare buffer is reused");
        // Two keys alive at once (a cached call inside a cached call): each
        // has its own buffer.
        let mut inner = KeyString::with_capacity(16);
        inner.push_str("ns:other:1");
        assert_ne!(inner.as_ptr(), second.as_ptr());
        drop(inner);
        drop(second);

        let mut long = KeyString::with_capacity(1024);
        long.push_str(&"x".repeat(1000));
        drop(long);
        let next = KeyString::with_capacity(0);
        assert!(next.capacity() <= 256, "a long buffer is freed, not kept");
        drop(next);

        // An uncached call's empty key does not displace the spare.
        let mut kept = KeyString::with_capacity(16);
        kept.push_str("ns:customer:7");
        drop(kept);
        drop(KeyString(String::new()));
        let spare_capacity = SPARE_KEY.with(|spare| {
            let buffer = spare.take();
            let capacity = buffer.capacity();
            spare.set(buffer);
            capacity
        });
        assert!(
            spare_capacity >= 16,
            "the spare was replaced: {spare_capacity}"
        );
    }
}
