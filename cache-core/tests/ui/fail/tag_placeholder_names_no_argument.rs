use cache_core::cached;

#[cached(prefix = "order", key = "{id}", tags = ["customer:{customer_id}"])]
async fn order(id: u64, customer: u64) -> u64 {
    id + customer
}

fn main() {}
