//! What a caller asks of the `#[cached]` calls inside a future: run them
//! uncached ([`uncached`](crate::uncached)), report what answered
//! ([`with_outcome`](crate::with_outcome)), reload whatever is cached
//! ([`refresh`](crate::refresh)), or store a given value
//! ([`prime`](crate::prime)). One task-local holds all of it, so a call
//! looks it up once.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::codec::CodecKind;
use crate::error::Outcome;

tokio::task_local! {
    pub(crate) static CALL: CallScope;
}

/// How many call scopes exist now, in any task: while none does, a
/// `#[cached]` call skips the task-local lookup (a hit outside every
/// wrapper pays one atomic load for them).
static SCOPES: AtomicUsize = AtomicUsize::new(0);

/// Counts one scope for as long as it lives (its future completed or
/// dropped).
struct Counted;

impl Counted {
    fn new() -> Self {
        SCOPES.fetch_add(1, Ordering::AcqRel);
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        SCOPES.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Encodes the value a [`prime`](crate::prime) stores, in a codec's format.
pub(crate) type Payload = Box<dyn Fn(CodecKind, &mut Vec<u8>) -> Result<(), String> + Send>;

/// What the first `#[cached]` call in a scope does instead of a plain read.
pub(crate) enum Action {
    /// Run the body and store its result, whatever is cached.
    Refresh,
    /// Store this value (and return it) instead of running the body.
    Prime(Payload),
    /// `#[updates]`: drop the entry (the one invalidation), then store this
    /// value, if any, as a load would; set the flag once done. The call
    /// never completes: its caller drops it once the flag is set, so the
    /// body never runs.
    Update(
        Option<Payload>,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    ),
}

/// The state one of the wrappers set up for the future it runs.
#[derive(Default)]
pub(crate) struct CallScope {
    bypass: Cell<bool>,
    /// Taken by the first `#[cached]` call that starts in the scope.
    action: Cell<Option<Action>>,
    /// Whether the first `#[cached]` call reports its outcome (taken by it).
    report: Cell<bool>,
    outcome: Cell<Option<Outcome>>,
}

/// What a `#[cached]` call found in its scope.
#[derive(Default)]
pub(crate) struct Claim {
    pub(crate) bypass: bool,
    pub(crate) action: Option<Action>,
    /// Whether this call reports its outcome (see [`report`]).
    pub(crate) report: bool,
}

/// Takes what the current scope asks of the `#[cached]` call starting now
/// (one task-local lookup; nothing outside any wrapper).
#[inline]
pub(crate) fn claim() -> Claim {
    // A scope is entered in its own task before the future it wraps runs,
    // so a call inside one always sees the count above zero.
    if SCOPES.load(Ordering::Acquire) == 0 {
        return Claim::default();
    }
    CALL.try_with(|scope| Claim {
        bypass: scope.bypass.get(),
        action: scope.action.take(),
        report: scope.report.take(),
    })
    .unwrap_or_default()
}

/// Records what answered the call that claimed the report.
pub(crate) fn report(outcome: Outcome) {
    let _ = CALL.try_with(|scope| scope.outcome.set(Some(outcome)));
}

/// Runs `fut` in a call scope set up by `setup`: the enclosing one when
/// there is one (so wrappers nest: `with_outcome(refresh(f))`), restored
/// afterwards, else a new one. Returns the output and the outcome reported.
async fn enter<F: Future>(setup: impl Fn(&CallScope), fut: F) -> (F::Output, Option<Outcome>) {
    let saved = CALL.try_with(|scope| {
        let saved = (scope.bypass.get(), scope.report.get());
        setup(scope);
        saved
    });
    match saved {
        Ok((bypass, report)) => {
            let output = fut.await;
            let outcome = CALL
                .try_with(|scope| {
                    scope.bypass.set(bypass);
                    scope.report.set(report);
                    scope.outcome.get()
                })
                .ok()
                .flatten();
            (output, outcome)
        }
        Err(_) => {
            let scope = CallScope::default();
            setup(&scope);
            let counted = Counted::new();
            CALL.scope(scope, async move {
                let _counted = counted;
                let output = fut.await;
                (output, CALL.try_with(|s| s.outcome.get()).ok().flatten())
            })
            .await
        }
    }
}

/// Runs `fut` with every `#[cached]` function in it bypassing the cache.
pub(crate) async fn bypass<F: Future>(fut: F) -> F::Output {
    enter(|scope| scope.bypass.set(true), fut).await.0
}

/// Runs `fut`; the first `#[cached]` call in it reports what answered it.
pub(crate) async fn outcome_of<F: Future>(fut: F) -> (F::Output, Outcome) {
    let (output, outcome) = enter(
        |scope| {
            scope.report.set(true);
            scope.outcome.set(None);
        },
        fut,
    )
    .await;
    (output, outcome.unwrap_or(Outcome::Uncached))
}

/// Runs `fut` with `action` for its first `#[cached]` call; whether a
/// call took it.
pub(crate) async fn with_action<F: Future>(action: Action, fut: F) -> (F::Output, bool) {
    let action = std::sync::Mutex::new(Some(action));
    let (output, _) = enter(
        |scope| {
            scope
                .action
                .set(action.lock().unwrap_or_else(|e| e.into_inner()).take())
        },
        async {
            let output = fut.await;
            let left = CALL
                .try_with(|scope| scope.action.take().is_some())
                .unwrap_or(false);
            (output, !left)
        },
    )
    .await;
    output
}
