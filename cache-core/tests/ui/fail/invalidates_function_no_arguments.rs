// No arguments: the key needs them (`get_item(..)` drops every entry).
use cache_core::{cached, invalidates};

#[cached(prefix = "item", key = "{name}")]
async fn get_item(name: &str) -> Option<usize> {
    Some(name.len())
}

#[invalidates(get_item())]
async fn update_item(name: &str) {}

fn main() {}
