use cache_core::cached;

struct Repo {
    tenant: u32,
}

impl Repo {
    #[cached(prefix = "item", key = "{self.tenant}:{id}")]
    async fn item(&self, id: u64) -> Option<u64> {
        Some(id + u64::from(self.tenant))
    }
}

fn main() {
    let _ = Repo { tenant: 1 }.item(1);
}
