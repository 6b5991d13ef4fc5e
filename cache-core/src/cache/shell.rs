//! The pieces of a read-through call that its hit path and its load steps
//! share: the call itself ([`ReadThrough`]), where its load comes from
//! ([`Body`]), and the boxed step type.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::policy::Policy;
use super::typed::{KeyString, TypedCopy};

/// One read-through call: the key, how long to keep a loaded value, and
/// what to run on a miss.
pub(crate) struct ReadThrough<'p, R, S, B, U> {
    /// The key's prefix (stats, generations).
    pub(crate) prefix: PrefixName<'p>,
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
    pub(crate) body: B,
    /// Fail-safe, timeouts, refresh-ahead, expiry, tags (`None`: none of it).
    pub(crate) policy: Option<&'p Policy<'p, R, S>>,
}

/// A key's prefix, and whether it is a `'static` string (the prefix of a
/// `#[cached]` function), which the stats registry finds by its address
/// instead of comparing names.
#[derive(Clone, Copy)]
pub(crate) enum PrefixName<'p> {
    /// A `#[cached]` function's prefix.
    Static(&'static str),
    /// A prefix taken from a key given at run time.
    Borrowed(&'p str),
}

impl<'p> PrefixName<'p> {
    /// The prefix.
    #[inline]
    pub(crate) fn as_str(self) -> &'p str {
        match self {
            PrefixName::Static(p) => p,
            PrefixName::Borrowed(p) => p,
        }
    }
}

/// Where a call's load comes from: a future made by the caller ([`Ready`]),
/// or a closure that makes one when a load is needed ([`Lazy`]), for a body
/// that owns what it uses (it may outlive the call).
pub(crate) trait Body<R> {
    /// The load.
    type Fut: Future<Output = R>;
    /// Makes the load.
    fn start(self) -> Self::Fut;
}

/// A load made by the caller.
pub(crate) struct Ready<F>(pub(crate) F);

impl<F: Future> Body<F::Output> for Ready<F> {
    type Fut = F;
    fn start(self) -> F {
        self.0
    }
}

/// A load made on demand (see [`Body`]).
pub(crate) struct Lazy<C>(pub(crate) C);

impl<C: FnOnce() -> F, F: Future> Body<F::Output> for Lazy<C> {
    type Fut = F;
    fn start(self) -> F {
        (self.0)()
    }
}

/// A boxed step of the miss path.
pub(crate) type Step<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
