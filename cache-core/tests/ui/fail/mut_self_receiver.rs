use std::pin::Pin;

use cache_core::cached;

struct Counter {
    calls: u64,
}

impl Counter {
    // A hit skips the body, and with it the change to `self`.
    #[cached(prefix = "count", key = "{id}")]
    async fn next(&mut self, id: u64) -> Option<u64> {
        self.calls += 1;
        Some(id + self.calls)
    }

    #[cached(prefix = "count_pinned", key = "{id}")]
    async fn next_pinned(self: Pin<&mut Self>, id: u64) -> Option<u64> {
        Some(id)
    }
}

fn main() {}
