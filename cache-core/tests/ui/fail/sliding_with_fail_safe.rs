use cache_core::cached;

#[cached(prefix = "session", key = "{id}", sliding, fail_safe = 60)]
async fn session(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
