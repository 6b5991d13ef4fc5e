// A typo in the name of the `#[cached]` function `#[updates]` names.
use cache_core::{cached, updates};

pub struct Db;

#[cached(prefix = "item", key = "{id}")]
async fn get_item(db: &Db, id: u64) -> Result<u64, String> {
    let _ = db;
    Ok(id)
}

#[updates(get_itme(db, id))]
async fn set_item(db: &Db, id: u64) -> Result<u64, String> {
    let _ = db;
    Ok(id)
}

fn main() {}
