use cache_core::cached;

#[cached(prefix = "search", key = "{q}", unless = result.len())]
async fn search(q: &str) -> Vec<String> {
    vec![q.to_owned()]
}

fn main() {
    let _ = search("a");
}
