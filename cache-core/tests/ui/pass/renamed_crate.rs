//! `crate = path` for a renamed or re-exported cache-core.
mod infra {
    pub use ::cache_core as caching;
}

use infra::caching;

#[caching::cached(prefix = "a", key = "{id}", crate = infra::caching)]
async fn a(id: u64) -> u64 {
    id
}

#[caching::cached(prefix = "b", crate = "crate::infra::caching")]
async fn b(id: u64) -> u64 {
    id
}

#[caching::invalidates("a:{id}", crate = caching)]
async fn c(id: u64) {}

fn main() {
    let _ = (a(1), b(1), c(1));
}
