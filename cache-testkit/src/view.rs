//! [`LogView`]: the operation log of one key or one prefix, with the same
//! counts and assertions for every kind of event.

use crate::test_cache::{LogEntry, Op, Scope, TestCache};

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
///
/// // A pattern delete is logged under its pattern, and at each key it removed.
/// cache.delete_pattern("customer:*").await.unwrap();
/// test.key("customer:*").assert_pattern_deletes(1);
/// test.key("customer:42").assert_invalidations(1);
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

    /// How many entries of this scope `keep` accepts.
    fn count(&self, keep: impl Fn(&LogEntry) -> bool) -> usize {
        let scope = self.scope;
        self.test.count(|e| scope.contains(e) && keep(e))
    }

    /// Reads that found bytes ([`Op::Get`] with `found`).
    pub fn hits(&self) -> usize {
        self.count(LogEntry::is_hit)
    }

    /// Reads that found nothing.
    pub fn misses(&self) -> usize {
        self.count(LogEntry::is_miss)
    }

    /// Values written (`set`, `set_many`, and `set_if_lease` that stored).
    pub fn sets(&self) -> usize {
        self.count(LogEntry::is_set)
    }

    /// Key deletes (whether or not the key existed).
    pub fn deletes(&self) -> usize {
        self.count(LogEntry::is_delete)
    }

    /// Invalidations: for a key, deletes of it plus pattern deletes that
    /// removed it; for a prefix, key deletes plus pattern deletes whose
    /// pattern starts with `prefix:` (as `#[invalidates(prefix = ..)]` and
    /// `Cache::invalidate_prefix` issue), each counted once however many
    /// keys it removed.
    pub fn invalidations(&self) -> usize {
        match self.scope {
            Scope::Key(_) => self.count(|e| e.is_delete() || e.op == Op::RemovedByPattern),
            Scope::Prefix(_) => {
                self.count(|e| e.is_delete() || matches!(e.op, Op::DeletePattern { .. }))
            }
        }
    }

    /// Calls that ran into an injected fault.
    pub fn failures(&self) -> usize {
        self.count(LogEntry::is_fault)
    }

    /// Pattern deletes: on a key view, those with exactly this (logical)
    /// pattern (`test.key("search:*")`); on a prefix view, those whose
    /// pattern starts with `prefix:` (`test.prefix("search")`).
    pub fn pattern_deletes(&self) -> usize {
        self.count(|e| matches!(e.op, Op::DeletePattern { .. }))
    }

    /// The log entries of this scope, oldest first.
    pub fn entries(&self) -> Vec<LogEntry> {
        self.test.entries_of(self.scope)
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

    /// Panics unless there were exactly `n` [pattern deletes](Self::pattern_deletes).
    #[track_caller]
    pub fn assert_pattern_deletes(&self, n: usize) -> &Self {
        self.test
            .check("pattern delete(s)", self.scope, n, self.pattern_deletes());
        self
    }
}
