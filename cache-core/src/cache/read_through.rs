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

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use super::Cache;
use super::typed::{KeyString, Mode, TypedCopy};
use crate::backend::RawBytes;
use crate::consistency::load::{AfterMiss, Found};
use crate::consistency::read::{Key, Read};
use crate::stats::{Event, PrefixEntry};

/// One read-through call: the key, how long to keep a loaded value, and
/// what to run on a miss.
pub(crate) struct ReadThrough<'p, S, F, U> {
    /// The key's prefix (stats, generations).
    pub(crate) prefix: &'p str,
    /// The storage key, `{namespace}:{prefix}:{rest}`.
    pub(crate) skey: KeyString,
    pub(crate) ttl: Option<Duration>,
    /// TTL of a negative entry (`None` under `cache_none`).
    pub(crate) none_ttl: Option<Duration>,
    /// A loaded value this returns `true` for is not stored.
    pub(crate) unless: U,
    pub(crate) typed: Option<TypedCopy<S>>,
    /// Whether the near cache may serve and keep this value.
    pub(crate) near: bool,
    /// The load.
    pub(crate) body: F,
}

/// A boxed step of the miss path.
type Step<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Cache {
    /// Decodes a found value, through the typed copy kept beside a memory
    /// slot when the payload has one (a hit then clones, decoding once).
    fn decode_found<S: serde::de::DeserializeOwned>(
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

    /// The generic shell of a read-through call.
    pub(crate) async fn load_through<R, M, F, U>(&self, call: ReadThrough<'_, M::Stored, F, U>) -> R
    where
        M: Mode<R>,
        F: Future<Output = R>,
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
        } = call;
        if !self.is_enabled() {
            return body.await;
        }
        let layer = &self.inner.layer;
        let entry = self.inner.stats.prefix(prefix);
        let deadline = layer.store().deadline();
        let key = Key {
            skey: &skey,
            prefix,
            near,
        };
        // The prefix generation seen by the last read before the load: the
        // value is labeled with it, so a prefix invalidation during the load
        // leaves the value invisible.
        let (mut read, mut generation) = layer.read(&entry, key, &deadline).await;
        loop {
            let miss = match read {
                Read::Bytes(bytes) => {
                    let found = Found::Raw(bytes);
                    if let Some(v) = self.decode_found::<M::Stored>(&entry, &skey, &found, typed) {
                        self.inner.stats.record(&entry, Event::Hit);
                        return M::from_stored(v);
                    }
                    Read::Missing { garbage: true }
                }
                Read::Unlabeled(bytes) => {
                    // Decoded only to count foreign or corrupt bytes.
                    let _ = self.decode::<M::Stored>(&entry, &skey, &bytes);
                    Read::Missing { garbage: true }
                }
                other => other,
            };
            let after: Step<'_, _> =
                Box::pin(layer.after_miss(&entry, key, miss, generation, &deadline));
            match after.await {
                AfterMiss::Value(found) => {
                    if let Some(v) = self.decode_found::<M::Stored>(&entry, &skey, &found, typed) {
                        self.inner.stats.record(&entry, Event::Hit);
                        return M::from_stored(v);
                    }
                    (read, generation) = (Read::Missing { garbage: true }, None);
                }
                AfterMiss::RunUncached => return body.await,
                AfterMiss::Load(loading) => {
                    let started = Instant::now();
                    let result = body.await;
                    // The body's time is not the cache's: what was left of
                    // the call's budget before it is left after it.
                    let deadline = loading.deadline().extended_by(started.elapsed());
                    self.inner.stats.record(&entry, Event::Load);
                    let encoded = M::stored(&result).filter(|s| !unless(s)).and_then(|value| {
                        let bytes = self
                            .encode(&entry, &skey, value, loading.generation())
                            .ok()?;
                        let ttl = if M::is_negative(value) {
                            none_ttl.or(ttl)
                        } else {
                            ttl
                        };
                        Some((bytes, ttl.unwrap_or(self.inner.config.default_ttl)))
                    });
                    let done: Step<'_, ()> =
                        Box::pin(layer.complete(&entry, &skey, loading, encoded, &deadline));
                    done.await;
                    return result;
                }
            }
        }
    }
}
