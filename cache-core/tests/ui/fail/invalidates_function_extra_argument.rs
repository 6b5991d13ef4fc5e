// The function's arguments instead of its key's: one error that names the
// attribute and lists the arguments the key takes.
use cache_core::{cached, invalidates};

pub struct Db;

#[cached(prefix = "item", key = "{id}")]
async fn get_item(db: &Db, id: u64) -> Option<u64> {
    let _ = db;
    Some(id)
}

#[invalidates(get_item(db, id))]
async fn update_item(db: &Db, id: u64) {}

fn main() {}
