// The call in `#[updates]` is checked like any call of the function.
use cache_core::{cached, updates};

pub struct Db;

#[cached(prefix = "item", key = "{id}")]
async fn get_item(db: &Db, id: u64) -> Result<u64, String> {
    let _ = db;
    Ok(id)
}

#[updates(get_item(id))]
async fn set_item(db: &Db, id: u64) -> Result<u64, String> {
    let _ = db;
    Ok(id)
}

fn main() {}
