use cache_core::{cached, invalidates};

#[cached(prefix = "customer", key = "{id}")]
async fn get_customer(id: u64) -> Option<u64> {
    Some(id)
}

// A function that doesn't exist.
#[invalidates(get_custmer(id))]
async fn wrong_name(id: u64) {}

// Too many arguments for the key.
#[invalidates(get_customer(id, 2))]
async fn wrong_count(id: u64) {}

// An argument of the wrong type.
#[invalidates(get_customer(name))]
async fn wrong_type(name: String) {}

fn main() {}
