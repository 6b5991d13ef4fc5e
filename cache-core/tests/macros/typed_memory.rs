//! Memory hits of `Clone` payloads clone a decoded copy instead of decoding
//! bytes each time; other payloads still decode. Both stay correct across
//! invalidation.

use std::sync::atomic::{AtomicUsize, Ordering};

use cache_core::{Cache, cached, invalidates};
use serde::{Deserialize, Deserializer, Serialize};

static DECODES: AtomicUsize = AtomicUsize::new(0);

/// Counts how often it is deserialized.
#[derive(Debug, PartialEq, Serialize)]
struct Counted(u64);

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DECODES.fetch_add(1, Ordering::SeqCst);
        u64::deserialize(d).map(Counted)
    }
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        Counted(self.0)
    }
}

/// Not `Clone`: must take the decoding path.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Plain(u64);

#[cached(prefix = "counted", key = "{id}")]
async fn counted(id: u64) -> Counted {
    Counted(id * 10)
}

#[cached(prefix = "plain", key = "{id}")]
async fn plain(id: u64) -> Plain {
    Plain(id * 10)
}

#[invalidates("counted:{id}")]
async fn touch(id: u64) {
    let _ = id;
}

#[tokio::test]
async fn clone_payloads_decode_once_then_clone() {
    let cache = Cache::memory();
    cache
        .scope(async {
            assert_eq!(counted(1).await, Counted(10)); // miss: load + store
            let before = DECODES.load(Ordering::SeqCst);
            for _ in 0..100 {
                assert_eq!(counted(1).await, Counted(10));
            }
            let decodes = DECODES.load(Ordering::SeqCst) - before;
            assert!(decodes <= 1, "100 hits decoded {decodes} times");
            touch(1).await;
            assert_eq!(counted(1).await, Counted(10));
            assert_eq!(
                cache.stats().prefixes["counted"].loads,
                2,
                "invalidation reached the typed copy too"
            );
            for _ in 0..10 {
                assert_eq!(plain(2).await, Plain(20));
            }
            assert_eq!(cache.stats().prefixes["plain"].hits, 9);
        })
        .await;
}
