// A tag template of `#[invalidates]` is checked like a key template.
use cache_core::invalidates;

#[invalidates(tags = ["customer:{customer_id}"])]
async fn update_customer(id: u64) {
    let _ = id;
}

fn main() {}
