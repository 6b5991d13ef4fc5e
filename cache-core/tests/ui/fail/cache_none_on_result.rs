use cache_core::cached;

#[cached(prefix = "customer", key = "{id}", cache_none)]
async fn get_customer(id: u64) -> Result<u64, String> {
    Ok(id)
}

fn main() {
    let _ = get_customer(1);
}
