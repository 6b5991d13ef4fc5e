// `refresh_ahead` reloads in the background: reference arguments the body
// uses are copied.
use cache_core::cached;

pub struct Db;

#[cached(prefix = "churn", key = "{id}", refresh_ahead = 0.8)]
async fn churn(db: &Db, id: u64) -> u64 {
    let _ = db;
    id
}

fn main() {}
