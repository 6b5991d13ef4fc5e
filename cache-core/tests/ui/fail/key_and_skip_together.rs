use cache_core::cached;

struct Db;

#[cached(prefix = "customer", key = "{id}", skip(db))]
async fn get_customer(db: &Db, id: u64) -> Option<u64> {
    let _ = db;
    Some(id)
}

fn main() {
    let _ = get_customer(&Db, 1);
}
