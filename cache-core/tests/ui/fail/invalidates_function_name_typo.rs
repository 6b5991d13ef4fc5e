// A typo in the name of the `#[cached]` function: the compiler suggests
// the function's own name, which is what the attribute takes.
use cache_core::{cached, invalidates};

#[cached(prefix = "item", key = "{id}")]
async fn get_item(id: u64) -> Option<u64> {
    Some(id)
}

#[invalidates(get_itme(id))]
async fn update_item(id: u64) {}

fn main() {}
