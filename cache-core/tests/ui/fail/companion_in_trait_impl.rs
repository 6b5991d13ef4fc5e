use cache_core::cached;

trait Store {
    fn item(&self, id: u64) -> impl Future<Output = Option<u64>> + Send;
}

struct Repo;

impl Store for Repo {
    // A trait impl can't hold the `item_cache_key` companion: the errors
    // name `no_companions`.
    #[cached(prefix = "item", key = "{id}")]
    async fn item(&self, id: u64) -> Option<u64> {
        Some(id)
    }
}

fn main() {
    let _ = Repo.item(1);
}
