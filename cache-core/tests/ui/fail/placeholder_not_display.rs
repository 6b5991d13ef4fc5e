use cache_core::cached;

#[cached(prefix = "tags", key = "{tags}")]
async fn count(tags: Vec<String>) -> usize {
    tags.len()
}

fn main() {
    let _ = count(Vec::new());
}
