use cache_core::invalidates;

#[invalidates("customer:{id}")]
fn save(id: u64) -> Result<(), String> {
    let _ = id;
    Ok(())
}

fn main() {
    let _ = save(1);
}
