//! The installed cache, as `#[cached]` functions without `cache = ...` find
//! it: each thread keeps its own handle, and a new `install` reaches every
//! thread. (Its own test binary: installing is process-wide.)

use cache_core::{Cache, cached};

#[cached(prefix = "inst", key = "{id}")]
async fn installed_fn(id: u64) -> u64 {
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_install_reaches_every_thread() {
    assert_eq!(installed_fn(0).await, 0, "nothing installed: runs uncached");

    let first = Cache::memory();
    first.install();
    let calls = |n: u64| async move {
        let tasks: Vec<_> = (0..n)
            .map(|i| tokio::spawn(async move { installed_fn(i % 4).await }))
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap(), i as u64 % 4);
        }
    };
    calls(64).await;
    let stats = first.stats().prefixes["inst"].clone();
    assert_eq!(stats.hits + stats.misses, 64);

    let second = Cache::memory();
    second.install();
    calls(64).await;
    assert_eq!(
        first.stats().prefixes["inst"].hits + first.stats().prefixes["inst"].misses,
        64,
        "the old cache sees no more calls on any thread"
    );
    let stats = second.stats().prefixes["inst"].clone();
    assert_eq!(stats.hits + stats.misses, 64);
    let installed = Cache::installed().unwrap();
    installed.set("x:1", &1u8, None).await.unwrap();
    assert_eq!(second.get::<u8>("x:1").await.unwrap(), Some(1));
    assert_eq!(first.get::<u8>("x:1").await.unwrap(), None);
}
