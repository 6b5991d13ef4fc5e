// A function that is not `#[cached]` has no key to invalidate.
use cache_core::invalidates;

async fn plain(id: u64) -> u64 {
    id
}

#[invalidates(plain(id))]
async fn update(id: u64) {
    plain(id).await;
}

fn main() {}
