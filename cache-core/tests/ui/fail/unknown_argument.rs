use cache_core::cached;

#[cached(prefix = "customer", tll = 60)]
async fn get_customer(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {
    let _ = get_customer(1);
}
