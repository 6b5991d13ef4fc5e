//! The flat count and assertion methods (`test.hits(key)`,
//! `test.assert_prefix_misses(prefix, n)`, ...).

use super::{Op, Scope, TestCache};

impl TestCache {
    /// Reads of `key` that found bytes ([`Op::Get`] with `found`).
    pub fn hits(&self, key: &str) -> usize {
        self.count(|e| e.key == key && e.is_hit())
    }

    /// Reads of `key` that found nothing.
    pub fn misses(&self, key: &str) -> usize {
        self.count(|e| e.key == key && e.is_miss())
    }

    /// Values written at `key` (`set`, `set_many`, and `set_if_lease` that stored).
    pub fn sets(&self, key: &str) -> usize {
        self.count(|e| e.key == key && e.is_set())
    }

    /// Deletes naming `key` (whether or not it existed).
    pub fn deletes(&self, key: &str) -> usize {
        self.count(|e| e.key == key && e.is_delete())
    }

    /// Deletes naming `key` plus pattern deletes that removed it.
    pub fn invalidations(&self, key: &str) -> usize {
        self.count(|e| e.key == key && (e.is_delete() || e.op == Op::RemovedByPattern))
    }

    /// Calls on `key` that ran into an injected fault.
    pub fn failures(&self, key: &str) -> usize {
        self.count(|e| e.key == key && e.is_fault())
    }

    /// Reads that found bytes, over every key of `prefix` (`"customer"`).
    pub fn prefix_hits(&self, prefix: &str) -> usize {
        self.count(|e| e.prefix() == prefix && e.is_hit())
    }

    /// Reads that found nothing, over every key of `prefix`.
    pub fn prefix_misses(&self, prefix: &str) -> usize {
        self.count(|e| e.prefix() == prefix && e.is_miss())
    }

    /// Values written, over every key of `prefix`.
    pub fn prefix_sets(&self, prefix: &str) -> usize {
        self.count(|e| e.prefix() == prefix && e.is_set())
    }

    /// Key deletes, over every key of `prefix`.
    pub fn prefix_deletes(&self, prefix: &str) -> usize {
        self.count(|e| e.prefix() == prefix && e.is_delete())
    }

    /// Invalidation operations on `prefix`: key deletes plus pattern deletes
    /// whose pattern starts with `prefix:` (as `#[invalidates(prefix = ..)]`
    /// and `Cache::invalidate_prefix` issue), each pattern delete counted
    /// once however many keys it removed.
    pub fn prefix_invalidations(&self, prefix: &str) -> usize {
        self.count(|e| {
            e.prefix() == prefix && (e.is_delete() || matches!(e.op, Op::DeletePattern { .. }))
        })
    }

    /// Calls on keys of `prefix` that ran into an injected fault.
    pub fn prefix_failures(&self, prefix: &str) -> usize {
        self.count(|e| e.prefix() == prefix && e.is_fault())
    }

    /// Pattern deletes with exactly this (logical) pattern, e.g. `"search:*"`.
    pub fn pattern_deletes(&self, pattern: &str) -> usize {
        self.count(|e| e.key == pattern && matches!(e.op, Op::DeletePattern { .. }))
    }

    /// Panics (printing the key's log) unless `key` had exactly `n` hits.
    #[track_caller]
    pub fn assert_hits(&self, key: &str, n: usize) {
        self.check("hit(s)", Scope::Key(key), n, self.hits(key));
    }

    /// Panics (printing the key's log) unless `key` had exactly `n` misses.
    #[track_caller]
    pub fn assert_misses(&self, key: &str, n: usize) {
        self.check("miss(es)", Scope::Key(key), n, self.misses(key));
    }

    /// Panics (printing the key's log) unless `key` had exactly `n` sets.
    #[track_caller]
    pub fn assert_sets(&self, key: &str, n: usize) {
        self.check("set(s)", Scope::Key(key), n, self.sets(key));
    }

    /// Panics (printing the key's log) unless `key` had exactly `n` deletes.
    #[track_caller]
    pub fn assert_deletes(&self, key: &str, n: usize) {
        self.check("delete(s)", Scope::Key(key), n, self.deletes(key));
    }

    /// Panics (printing the key's log) unless `key` had exactly `n`
    /// [invalidations](Self::invalidations).
    #[track_caller]
    pub fn assert_invalidations(&self, key: &str, n: usize) {
        self.check(
            "invalidation(s)",
            Scope::Key(key),
            n,
            self.invalidations(key),
        );
    }

    /// Panics (printing the key's log) unless `key` had exactly `n` faulted calls.
    #[track_caller]
    pub fn assert_failures(&self, key: &str, n: usize) {
        self.check("faulted call(s)", Scope::Key(key), n, self.failures(key));
    }

    /// Panics (printing the prefix's log) unless `prefix` had exactly `n` hits.
    #[track_caller]
    pub fn assert_prefix_hits(&self, prefix: &str, n: usize) {
        self.check("hit(s)", Scope::Prefix(prefix), n, self.prefix_hits(prefix));
    }

    /// Panics (printing the prefix's log) unless `prefix` had exactly `n` misses.
    #[track_caller]
    pub fn assert_prefix_misses(&self, prefix: &str, n: usize) {
        self.check(
            "miss(es)",
            Scope::Prefix(prefix),
            n,
            self.prefix_misses(prefix),
        );
    }

    /// Panics (printing the prefix's log) unless `prefix` had exactly `n` sets.
    #[track_caller]
    pub fn assert_prefix_sets(&self, prefix: &str, n: usize) {
        self.check("set(s)", Scope::Prefix(prefix), n, self.prefix_sets(prefix));
    }

    /// Panics (printing the prefix's log) unless `prefix` had exactly `n`
    /// [invalidations](Self::prefix_invalidations).
    #[track_caller]
    pub fn assert_prefix_invalidations(&self, prefix: &str, n: usize) {
        self.check(
            "invalidation(s)",
            Scope::Prefix(prefix),
            n,
            self.prefix_invalidations(prefix),
        );
    }
}
