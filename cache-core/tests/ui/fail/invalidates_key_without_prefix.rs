use cache_core::invalidates;

#[invalidates("{id}")]
async fn save(id: u64) -> Result<(), String> {
    let _ = id;
    Ok(())
}

fn main() {
    let _ = save(1);
}
