// `#[updates]` names a function that is not `#[cached]`: it has no entry.
use cache_core::updates;

async fn plain(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[updates(plain(id))]
async fn set_item(id: u64) -> Result<u64, String> {
    Ok(id)
}

fn main() {}
