use cache_core::cached;

#[derive(Debug)]
struct Customer {
    id: u64,
}

#[cached(prefix = "customer", key = "{id}")]
async fn get_customer(id: u64) -> Result<Customer, String> {
    Ok(Customer { id })
}

fn main() {
    let _ = get_customer(1);
}
