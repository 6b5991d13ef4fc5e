use cache_core::cached;

// `q` is hashed into the default key but is not `Serialize`: the error
// names the argument and `skip(q)`.
#[cached(prefix = "search")]
async fn search(q: impl AsRef<str> + Send, limit: u32) -> Vec<String> {
    vec![q.as_ref().to_owned(); limit as usize]
}

fn main() {
    let _ = search("a", 1);
}
