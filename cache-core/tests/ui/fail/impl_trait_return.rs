// A cached value is decoded into the return type, which must be concrete.
use cache_core::cached;

#[cached(prefix = "items")]
async fn items() -> impl Iterator<Item = u64> {
    vec![1, 2, 3].into_iter()
}

fn main() {}
