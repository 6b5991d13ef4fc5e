//! The flat count and assertion methods of the first versions
//! (`test.hits(key)`, `test.assert_prefix_misses(prefix, n)`, ...), kept so
//! that existing tests still compile. Each is a thin wrapper over the
//! scoped view ([`TestCache::key`], [`TestCache::prefix`]) and its
//! deprecation note names the replacement.

use super::TestCache;

impl TestCache {
    #[deprecated(note = "use `test.key(key).hits()`")]
    #[doc(hidden)]
    pub fn hits(&self, key: &str) -> usize {
        self.key(key).hits()
    }

    #[deprecated(note = "use `test.key(key).misses()`")]
    #[doc(hidden)]
    pub fn misses(&self, key: &str) -> usize {
        self.key(key).misses()
    }

    #[deprecated(note = "use `test.key(key).sets()`")]
    #[doc(hidden)]
    pub fn sets(&self, key: &str) -> usize {
        self.key(key).sets()
    }

    #[deprecated(note = "use `test.key(key).deletes()`")]
    #[doc(hidden)]
    pub fn deletes(&self, key: &str) -> usize {
        self.key(key).deletes()
    }

    #[deprecated(note = "use `test.key(key).invalidations()`")]
    #[doc(hidden)]
    pub fn invalidations(&self, key: &str) -> usize {
        self.key(key).invalidations()
    }

    #[deprecated(note = "use `test.key(key).failures()`")]
    #[doc(hidden)]
    pub fn failures(&self, key: &str) -> usize {
        self.key(key).failures()
    }

    #[deprecated(note = "use `test.prefix(prefix).hits()`")]
    #[doc(hidden)]
    pub fn prefix_hits(&self, prefix: &str) -> usize {
        self.prefix(prefix).hits()
    }

    #[deprecated(note = "use `test.prefix(prefix).misses()`")]
    #[doc(hidden)]
    pub fn prefix_misses(&self, prefix: &str) -> usize {
        self.prefix(prefix).misses()
    }

    #[deprecated(note = "use `test.prefix(prefix).sets()`")]
    #[doc(hidden)]
    pub fn prefix_sets(&self, prefix: &str) -> usize {
        self.prefix(prefix).sets()
    }

    #[deprecated(note = "use `test.prefix(prefix).deletes()`")]
    #[doc(hidden)]
    pub fn prefix_deletes(&self, prefix: &str) -> usize {
        self.prefix(prefix).deletes()
    }

    #[deprecated(note = "use `test.prefix(prefix).invalidations()`")]
    #[doc(hidden)]
    pub fn prefix_invalidations(&self, prefix: &str) -> usize {
        self.prefix(prefix).invalidations()
    }

    #[deprecated(note = "use `test.prefix(prefix).failures()`")]
    #[doc(hidden)]
    pub fn prefix_failures(&self, prefix: &str) -> usize {
        self.prefix(prefix).failures()
    }

    #[deprecated(note = "use `test.key(pattern).pattern_deletes()`")]
    #[doc(hidden)]
    pub fn pattern_deletes(&self, pattern: &str) -> usize {
        self.key(pattern).pattern_deletes()
    }

    #[deprecated(note = "use `test.key(key).assert_hits(n)`")]
    #[doc(hidden)]
    #[track_caller]
    pub fn assert_hits(&self, key: &str, n: usize) {
        self.key(key).assert_hits(n);
    }

    #[deprecated(note = "use `test.key(key).assert_misses(n)`")]
    #[doc(hidden)]
    #[track_caller]
    pub fn assert_misses(&self, key: &str, n: usize) {
        self.key(key).assert_misses(n);
    }

    #[deprecated(note = "use `test.key(key).assert_sets(n)`")]
    #[doc(hidden)]
    #[track_caller]
    pub fn assert_sets(&self, key: &str, n: usize) {
        self.key(key).assert_sets(n);
    }

    #[deprecated(note = "use `test.key(key).assert_deletes(n)`")]
    #[doc(hidden)]
    #[track_caller]
    pub fn assert_deletes(&self, key: &str, n: usize) {
        self.key(key).assert_deletes(n);
    }

    #[deprecated(note = "use `test.key(key).assert_invalidations(n)`")]
    #[doc(hidden)]
    #[track_caller]
    pub fn assert_invalidations(&self, key: &str, n: usize) {
        self.key(key).assert_invalidations(n);
    }

    #[deprecated(note = "use `test.key(key).assert_failures(n)`")]
    #[doc(hidden)]
    #[track_caller]
    pub fn assert_failures(&self, key: &str, n: usize) {
        self.key(key).assert_failures(n);
    }

    #[deprecated(note = "use `test.prefix(prefix).assert_hits(n)`")]
    #[doc(hidden)]
    #[track_caller]
    pub fn assert_prefix_hits(&self, prefix: &str, n: usize) {
        self.prefix(prefix).assert_hits(n);
    }

    #[deprecated(note = "use `test.prefix(prefix).assert_misses(n)`")]
    #[doc(hidden)]
    #[track_caller]
    pub fn assert_prefix_misses(&self, prefix: &str, n: usize) {
        self.prefix(prefix).assert_misses(n);
    }

    #[deprecated(note = "use `test.prefix(prefix).assert_sets(n)`")]
    #[doc(hidden)]
    #[track_caller]
    pub fn assert_prefix_sets(&self, prefix: &str, n: usize) {
        self.prefix(prefix).assert_sets(n);
    }

    #[deprecated(note = "use `test.prefix(prefix).assert_invalidations(n)`")]
    #[doc(hidden)]
    #[track_caller]
    pub fn assert_prefix_invalidations(&self, prefix: &str, n: usize) {
        self.prefix(prefix).assert_invalidations(n);
    }
}

#[cfg(test)]
#[allow(deprecated)]
mod tests {
    use super::TestCache;

    /// Every wrapper counts and asserts what its replacement does.
    #[tokio::test]
    async fn the_flat_methods_agree_with_the_views() {
        let test = TestCache::new();
        let cache = test.cache();
        cache.set("customer:42", &"Ada", None).await.unwrap();
        let _ = cache.get::<String>("customer:42").await.unwrap();
        let _ = cache.get::<String>("customer:7").await.unwrap();
        cache.delete("customer:42").await.unwrap();
        cache.set("customer:1", &"Bo", None).await.unwrap();
        cache.delete_pattern("customer:*").await.unwrap();
        test.fail_next(1);
        let _ = cache.get::<String>("customer:9").await;

        for key in ["customer:42", "customer:7", "customer:1", "customer:9"] {
            let view = test.key(key);
            assert_eq!(test.hits(key), view.hits(), "{key}");
            assert_eq!(test.misses(key), view.misses(), "{key}");
            assert_eq!(test.sets(key), view.sets(), "{key}");
            assert_eq!(test.deletes(key), view.deletes(), "{key}");
            assert_eq!(test.invalidations(key), view.invalidations(), "{key}");
            assert_eq!(test.failures(key), view.failures(), "{key}");
            test.assert_hits(key, view.hits());
            test.assert_misses(key, view.misses());
            test.assert_sets(key, view.sets());
            test.assert_deletes(key, view.deletes());
            test.assert_invalidations(key, view.invalidations());
            test.assert_failures(key, view.failures());
        }
        let prefix = test.prefix("customer");
        assert_eq!(test.prefix_hits("customer"), prefix.hits());
        assert_eq!(test.prefix_misses("customer"), prefix.misses());
        assert_eq!(test.prefix_sets("customer"), prefix.sets());
        assert_eq!(test.prefix_deletes("customer"), prefix.deletes());
        assert_eq!(
            test.prefix_invalidations("customer"),
            prefix.invalidations()
        );
        assert_eq!(test.prefix_failures("customer"), prefix.failures());
        test.assert_prefix_hits("customer", prefix.hits());
        test.assert_prefix_misses("customer", prefix.misses());
        test.assert_prefix_sets("customer", prefix.sets());
        test.assert_prefix_invalidations("customer", prefix.invalidations());
        assert_eq!(test.pattern_deletes("customer:*"), 1);
        assert_eq!(
            test.pattern_deletes("customer:*"),
            test.key("customer:*").pattern_deletes()
        );

        // The counts themselves, so that agreeing is not agreeing on zero.
        assert_eq!(
            (
                prefix.hits(),
                prefix.misses(),
                prefix.sets(),
                prefix.deletes()
            ),
            (1, 1, 2, 1)
        );
        assert_eq!((prefix.invalidations(), prefix.failures()), (2, 1));
        assert_eq!(test.invalidations("customer:1"), 1);
    }
}
