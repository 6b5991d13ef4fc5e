// An argument of another type than the key's.
use cache_core::{cached, invalidates};

#[cached(prefix = "item", key = "{id}")]
async fn get_item(id: u64) -> Option<u64> {
    Some(id)
}

#[invalidates(get_item(name))]
async fn rename(name: String) {}

fn main() {}
