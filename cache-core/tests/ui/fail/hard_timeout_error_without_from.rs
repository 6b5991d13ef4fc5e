// The error type must be able to carry `LoadTimedOut`.
use cache_core::cached;

#[derive(Debug)]
pub struct DbError;

#[cached(prefix = "slow", key = "{id}", hard_timeout = 1)]
async fn slow(id: u64) -> Result<u64, DbError> {
    Ok(id)
}

fn main() {}
