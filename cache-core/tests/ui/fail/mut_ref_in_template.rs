use cache_core::cached;

#[cached(prefix = "fill", key = "{buf.len}")]
async fn fill(buf: &mut Vec<u8>, n: usize) -> usize {
    buf.resize(n, 0);
    buf.len()
}

fn main() {
    let _ = fill(&mut Vec::new(), 1);
}
