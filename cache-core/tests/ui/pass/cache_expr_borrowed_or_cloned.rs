//! `cache = expr` in every shape: the generated code borrows the cache for
//! the call when the body cannot move what the expression names, and clones
//! it otherwise; each shape compiles and caches.
use std::sync::LazyLock;

use cache_core::{Cache, cached};

static SHARED: LazyLock<Cache> = LazyLock::new(Cache::memory);

fn shared() -> &'static Cache {
    &SHARED
}

// A by-value `Cache` the body moves: cloned.
#[cached(prefix = "moved", key = "{id}", cache = cache)]
async fn moved(cache: Cache, id: u64) -> u64 {
    drop(cache);
    id
}

// A by-value `Cache` the body names only inside a format string: cloned.
#[cached(prefix = "in_format", key = "{id}", cache = cache)]
async fn in_format(cache: Cache, id: u64) -> String {
    format!("{id} from {cache:?}")
}

// A `&Cache` the body also uses: borrowed (the body copies the reference).
#[cached(prefix = "by_ref", key = "{id}", cache = cache)]
async fn by_ref(cache: &Cache, id: u64) -> u64 {
    id + u64::from(cache.namespace().is_empty())
}

// A by-value `Cache` the body never names: borrowed.
#[cached(prefix = "unused", key = "{id}", cache = cache)]
async fn unused(cache: Cache, id: u64) -> u64 {
    id
}

// Expressions naming no argument: a static, a function call.
#[cached(prefix = "from_static", key = "{id}", cache = SHARED)]
async fn from_static(id: u64) -> u64 {
    id
}

#[cached(prefix = "from_call", key = "{id}", cache = shared())]
async fn from_call(id: u64) -> u64 {
    id
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cache = Cache::memory();
    for _ in 0..2 {
        assert_eq!(moved(cache.clone(), 1).await, 1);
        assert_eq!(by_ref(&cache, 2).await, 2);
        assert_eq!(unused(cache.clone(), 3).await, 3);
        assert!(in_format(cache.clone(), 6).await.starts_with("6 from"));
        assert_eq!(from_static(4).await, 4);
        assert_eq!(from_call(5).await, 5);
    }
    let stats = cache.stats();
    for prefix in ["moved", "by_ref", "unused", "in_format"] {
        assert_eq!(stats.prefixes[prefix].hits, 1, "{prefix}");
    }
    let shared_stats = SHARED.stats();
    for prefix in ["from_static", "from_call"] {
        assert_eq!(shared_stats.prefixes[prefix].hits, 1, "{prefix}");
    }
}
