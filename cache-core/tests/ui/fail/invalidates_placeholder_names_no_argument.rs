use cache_core::invalidates;

struct Customer {
    id: u64,
}

#[invalidates("customer:{cust.id}")]
async fn save(customer: &Customer) -> Result<(), String> {
    let _ = customer.id;
    Ok(())
}

fn main() {
    let _ = save(&Customer { id: 1 });
}
