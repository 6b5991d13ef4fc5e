use cache_core::invalidates;

#[invalidates("search")]
async fn reindex() -> Result<(), String> {
    Ok(())
}

fn main() {
    let _ = reindex();
}
