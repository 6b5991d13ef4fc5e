//! The typed pieces of a read-through call that generated code names: how
//! a return type maps to what is stored ([`Mode`]), the decoded copy kept
//! beside a memory slot ([`TypedCopy`]), and the per-thread storage key
//! buffer ([`KeyString`]). Re-exported for generated code by `__private`.

use serde::Serialize;
use serde::de::DeserializeOwned;

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
    /// Whether `result` is a failed load (an `Err`): fail-safe answers it
    /// with the stale value, if there is one.
    fn is_failure(_result: &R) -> bool {
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
    fn is_failure(result: &Result<T, E>) -> bool {
        result.is_err()
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
    pub(crate) fn with_capacity(capacity: usize) -> Self {
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
