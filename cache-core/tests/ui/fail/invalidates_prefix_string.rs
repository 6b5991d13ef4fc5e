// A prefix written as a string can't be checked (a typo would drop
// nothing): name the `#[cached]` function, or a constant holding the prefix.
use cache_core::{cached, invalidates};

#[cached(prefix = "search")]
async fn search(q: &str) -> Vec<String> {
    vec![q.to_owned()]
}

#[invalidates(prefix = "serach")]
async fn reindex() {}

fn main() {}
