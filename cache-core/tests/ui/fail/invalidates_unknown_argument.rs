use cache_core::invalidates;

#[invalidates("customer:{id}", prefixes = "search")]
async fn save(id: u64) -> Result<(), String> {
    let _ = id;
    Ok(())
}

fn main() {
    let _ = save(1);
}
