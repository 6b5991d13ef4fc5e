// `prefix = PATH` must name a `&str` constant: a typo in the path fails to
// resolve, another type is a type error.
use cache_core::{cached, invalidates};

#[cached(prefix = "search")]
async fn search(q: &str) -> Vec<String> {
    vec![q.to_owned()]
}

const LIMIT: u32 = 3;

#[invalidates(prefix = SERACH_CACHE_PREFIX)]
async fn reindex() {}

#[invalidates(prefix = LIMIT)]
async fn reindex_limit() {}

fn main() {}
