use cache_core::invalidates;

#[invalidates("customer:{id}", fail_closed)]
async fn save(id: u64) -> u64 {
    id
}

fn main() {}
