use cache_core::cached;

#[cached(prefix = "churn", key = "{id}", refresh_ahead = 1.5)]
async fn churn(id: u64) -> u64 {
    id
}

fn main() {}
