use cache_core::cached;

trait Store {
    #[cached(prefix = "item")]
    async fn item(&self, id: u64) -> Option<u64>;
}

fn main() {}
