use cache_core::cached;

struct Repo {
    cache: String,
}

impl Repo {
    #[cached(prefix = "item", key = "{id}", cache = self.cache)]
    async fn item(&self, id: u64) -> Option<u64> {
        Some(id)
    }
}

fn main() {
    let _ = Repo { cache: String::new() }.item(1);
}
