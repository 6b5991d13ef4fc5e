// `#[updates]` stores the `Ok` value: the function returns a `Result`.
use cache_core::{cached, updates};

#[cached(prefix = "item", key = "{id}")]
async fn get_item(id: u64) -> Option<u64> {
    Some(id)
}

#[updates(get_item(id))]
async fn set_item(id: u64) -> u64 {
    id
}

fn main() {}
