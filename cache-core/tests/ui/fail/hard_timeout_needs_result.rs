// `hard_timeout` answers through the function's error.
use cache_core::cached;

#[cached(prefix = "slow", key = "{id}", hard_timeout = 1)]
async fn slow(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
