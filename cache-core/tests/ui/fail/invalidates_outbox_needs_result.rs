use cache_core::invalidates;

struct Connection;

#[invalidates("customer:{id}", outbox = tx)]
async fn rename(tx: &mut Connection, id: u64) -> u64 {
    let _ = tx;
    id
}

fn main() {}
