//! Native `async fn` in a trait impl: `no_companions`.
use cache_core::cached;

trait Store {
    fn item(&self, id: u64) -> impl Future<Output = Option<u64>> + Send;
}

struct Repo;

impl Store for Repo {
    #[cached(prefix = "item", key = "{id}", no_companions)]
    async fn item(&self, id: u64) -> Option<u64> {
        Some(id)
    }
}

fn main() {
    let _ = Repo.item(1);
}
