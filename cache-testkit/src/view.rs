//! [`LogView`]: the operation log of one key or one prefix, with the same
//! counts and assertions for every kind of event.

use crate::test_cache::{LogEntry, Scope, TestCache};

/// What the backend did at one key ([`TestCache::key`]) or over every key
/// of one prefix ([`TestCache::prefix`]). Every count has an assertion that
/// panics with the scope's log when it does not match; assertions return
/// the view, so they chain.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use cache_testkit::TestCache;
///
/// let test = TestCache::new();
/// let cache = test.cache();
/// cache.set("customer:42", &"Ada", None).await.unwrap();
/// let _ = cache.get::<String>("customer:42").await.unwrap();
/// let _ = cache.get::<String>("customer:7").await.unwrap();
///
/// test.key("customer:42").assert_sets(1).assert_hits(1).assert_misses(0);
/// test.prefix("customer").assert_hits(1).assert_misses(1);
/// assert_eq!(test.key("customer:7").misses(), 1);
/// # }
/// ```
#[derive(Clone, Copy)]
pub struct LogView<'t> {
    test: &'t TestCache,
    scope: Scope<'t>,
}

impl<'t> LogView<'t> {
    pub(crate) fn new(test: &'t TestCache, scope: Scope<'t>) -> Self {
        LogView { test, scope }
    }

    /// Reads that found bytes.
    pub fn hits(&self) -> usize {
        match self.scope {
            Scope::Key(key) => self.test.hits(key),
            Scope::Prefix(prefix) => self.test.prefix_hits(prefix),
        }
    }

    /// Reads that found nothing.
    pub fn misses(&self) -> usize {
        match self.scope {
            Scope::Key(key) => self.test.misses(key),
            Scope::Prefix(prefix) => self.test.prefix_misses(prefix),
        }
    }

    /// Values written (`set`, `set_many`, and `set_if_lease` that stored).
    pub fn sets(&self) -> usize {
        match self.scope {
            Scope::Key(key) => self.test.sets(key),
            Scope::Prefix(prefix) => self.test.prefix_sets(prefix),
        }
    }

    /// Key deletes (whether or not the key existed).
    pub fn deletes(&self) -> usize {
        match self.scope {
            Scope::Key(key) => self.test.deletes(key),
            Scope::Prefix(prefix) => self.test.prefix_deletes(prefix),
        }
    }

    /// Invalidations: for a key, deletes of it plus pattern deletes that
    /// removed it; for a prefix, key deletes plus pattern deletes of the
    /// prefix (each counted once however many keys it removed).
    pub fn invalidations(&self) -> usize {
        match self.scope {
            Scope::Key(key) => self.test.invalidations(key),
            Scope::Prefix(prefix) => self.test.prefix_invalidations(prefix),
        }
    }

    /// Calls that ran into an injected fault.
    pub fn failures(&self) -> usize {
        match self.scope {
            Scope::Key(key) => self.test.failures(key),
            Scope::Prefix(prefix) => self.test.prefix_failures(prefix),
        }
    }

    /// The log entries of this scope, oldest first.
    pub fn entries(&self) -> Vec<LogEntry> {
        match self.scope {
            Scope::Key(key) => self.test.log_for(key),
            Scope::Prefix(prefix) => self
                .test
                .log()
                .into_iter()
                .filter(|e| e.prefix() == prefix)
                .collect(),
        }
    }

    /// Panics (printing this scope's log) unless there were exactly `n` hits.
    #[track_caller]
    pub fn assert_hits(&self, n: usize) -> &Self {
        self.test.check("hit(s)", self.scope, n, self.hits());
        self
    }

    /// Panics unless there were exactly `n` misses.
    #[track_caller]
    pub fn assert_misses(&self, n: usize) -> &Self {
        self.test.check("miss(es)", self.scope, n, self.misses());
        self
    }

    /// Panics unless exactly `n` values were written.
    #[track_caller]
    pub fn assert_sets(&self, n: usize) -> &Self {
        self.test.check("set(s)", self.scope, n, self.sets());
        self
    }

    /// Panics unless there were exactly `n` key deletes.
    #[track_caller]
    pub fn assert_deletes(&self, n: usize) -> &Self {
        self.test.check("delete(s)", self.scope, n, self.deletes());
        self
    }

    /// Panics unless there were exactly `n` [invalidations](Self::invalidations).
    #[track_caller]
    pub fn assert_invalidations(&self, n: usize) -> &Self {
        self.test
            .check("invalidation(s)", self.scope, n, self.invalidations());
        self
    }

    /// Panics unless exactly `n` calls ran into an injected fault.
    #[track_caller]
    pub fn assert_failures(&self, n: usize) -> &Self {
        self.test
            .check("faulted call(s)", self.scope, n, self.failures());
        self
    }
}
