use cache_core::cached;

#[cached(prefix = "", ttl = 0, key = "{nope}", bogus, ttl = 5)]
fn get_customer(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {
    let _ = get_customer(1);
}
