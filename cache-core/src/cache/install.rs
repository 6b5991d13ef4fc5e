//! Which cache the macros use: the process-wide installed one (read through
//! a per-thread copy), or one scoped to a task.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::Cache;

static INSTALLED: RwLock<Option<Cache>> = RwLock::new(None);
/// Bumped by every `install`; threads keep a copy of the installed cache and
/// refresh it when this moves, so the hot path takes no shared lock.
static INSTALL_GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // The thread's own `Arc` around its copy: cloning it on the hot path
    // touches a reference count no other thread writes (cloning the shared
    // `Cache` would bounce one cache line between all cores).
    static INSTALLED_HERE: std::cell::RefCell<(u64, Option<Arc<Cache>>)> = const { std::cell::RefCell::new((0, None)) };
}

tokio::task_local! {
    pub(crate) static SCOPED: Cache;
}

impl Cache {
    /// Makes this cache the process-wide default used by `#[cached]` and
    /// `#[invalidates]` (replacing any earlier one).
    pub fn install(&self) {
        *INSTALLED.write().unwrap_or_else(|e| e.into_inner()) = Some(self.clone());
        INSTALL_GENERATION.fetch_add(1, Ordering::AcqRel);
        tracing::info!(backend = self.inner.kind.name(), target = %self.inner.config.target_description(), "cache installed");
    }

    /// The installed process-wide cache, if any.
    pub fn installed() -> Option<Cache> {
        Self::installed_here().map(|c| Cache::clone(&c))
    }

    /// The installed cache through this thread's own `Arc` (see `INSTALLED_HERE`).
    pub(crate) fn installed_here() -> Option<Arc<Cache>> {
        let generation = INSTALL_GENERATION.load(Ordering::Acquire);
        INSTALLED_HERE
            .try_with(|here| {
                let mut here = here.borrow_mut();
                if here.0 != generation {
                    let installed = INSTALLED.read().unwrap_or_else(|e| e.into_inner()).clone();
                    *here = (generation, installed.map(Arc::new));
                }
                here.1.clone()
            })
            .unwrap_or_else(|_| {
                INSTALLED
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .map(Arc::new)
            })
    }

    /// Runs `fut` with this cache as the current one for the macros, in this
    /// task only (tasks spawned inside do not inherit it). Tests use it to run
    /// in parallel, each with its own cache.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = cache_core::Cache::memory();
    /// let seen = cache.scope(async { cache_core::Cache::current().is_some() }).await;
    /// assert!(seen);
    /// # }
    /// ```
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        SCOPED.scope(self.clone(), fut).await
    }

    /// The cache the macros would use here: the [`scope`](Self::scope)d one,
    /// else the [installed](Self::install) one.
    pub fn current() -> Option<Cache> {
        SCOPED.try_with(Cache::clone).ok().or_else(Self::installed)
    }
}
