//! 20 tests in one binary, run in parallel by the test harness, each with
//! its own `TestCache` through `scope`. They all use the *same* keys
//! (`item:0`, `item:1`, ...), and each asserts exact counts from its own log
//! and stats: any sharing between them (a common store, a common log, the
//! macros picking another test's cache or the installed one) would change a
//! count or hand a test another test's value.

use std::time::Duration;

use cache_core::{Cache, cached, invalidates};
use cache_testkit::TestCache;

/// `tag` is not part of the key: a value cached by another test would come
/// back with that test's tag.
#[cached(prefix = "item", ttl = 60, key = "{id}")]
async fn item(tag: usize, id: u64) -> (usize, u64) {
    // Give the other tests a chance to run in between.
    tokio::time::sleep(Duration::from_millis((tag % 3) as u64)).await;
    (tag, id)
}

#[invalidates("item:{id}")]
async fn forget(id: u64) {}

async fn run(tag: usize) {
    let test = TestCache::new();
    let distinct = tag % 5 + 2; // 2..=6 keys
    let rounds = tag % 3 + 2; // 2..=4 reads of each
    let expire = tag % 2 == 1; // odd tests also let everything expire once

    test.scope(async {
        for _ in 0..rounds {
            for id in 0..distinct as u64 {
                assert_eq!(
                    item(tag, id).await,
                    (tag, id),
                    "test {tag} got a foreign value"
                );
                tokio::task::yield_now().await;
            }
        }
        forget(0).await;
        assert_eq!(item(tag, 0).await, (tag, 0));
        if expire {
            test.advance(Duration::from_secs(60));
            for id in 0..distinct as u64 {
                assert_eq!(item(tag, id).await, (tag, id));
            }
        }
    })
    .await;

    let reloads = if expire { distinct } else { 0 };
    let misses = distinct + 1 + reloads;
    let hits = distinct * (rounds - 1);
    test.prefix("item")
        .assert_misses(misses)
        .assert_hits(hits)
        .assert_sets(misses)
        .assert_invalidations(1);
    test.key("item:0")
        .assert_deletes(1)
        .assert_misses(2 + usize::from(expire));
    test.key("item:1").assert_hits(rounds - 1);
    // Exactly the backend calls this test caused: per miss a read, a lease
    // and the store under the lease; per hit one read; one delete.
    assert_eq!(test.calls() as usize, 3 * misses + hits + 1, "test {tag}");

    let stats = test.stats();
    let items = &stats.prefixes["item"];
    assert_eq!(items.hits as usize, hits, "test {tag}");
    assert_eq!(items.misses as usize, misses, "test {tag}");
    assert_eq!(items.loads as usize, misses, "test {tag}");
    assert_eq!(items.invalidations, 1, "test {tag}");
    assert_eq!(stats.total.total_errors(), 0, "test {tag}");
    assert_eq!(test.keys().len(), distinct, "test {tag}");
}

macro_rules! parallel_tests {
    ($flavor:tt: $($name:ident = $tag:expr),* $(,)?) => {
        $(
            #[tokio::test $flavor]
            async fn $name() {
                run($tag).await;
            }
        )*
    };
}

parallel_tests!((flavor = "current_thread"):
    t01 = 1, t02 = 2, t03 = 3, t04 = 4, t05 = 5,
    t06 = 6, t07 = 7, t08 = 8, t09 = 9, t10 = 10,
);

parallel_tests!((flavor = "multi_thread", worker_threads = 2):
    t11 = 11, t12 = 12, t13 = 13, t14 = 14, t15 = 15,
    t16 = 16, t17 = 17, t18 = 18, t19 = 19,
);

/// The 20th test also installs a process-wide cache: the scoped test caches
/// of every other test still win over it.
#[tokio::test]
async fn t20_scope_beats_an_installed_cache() {
    let decoy = Cache::memory();
    decoy.install();
    run(20).await;
    assert_eq!(
        decoy
            .stats()
            .prefixes
            .get("item")
            .map(|p| p.hits + p.misses),
        None
    );
}
