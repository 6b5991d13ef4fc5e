//! Inside `#[async_trait]` impls: the macro caches the future async-trait
//! builds; no companion is generated there.
use cache_core::{async_trait, cached, invalidates};

/// The prefix of `search`, for `#[invalidates(prefix = ..)]`.
const SEARCH: &str = "search";

#[async_trait]
pub trait Store: Send + Sync {
    async fn load(&self, id: u64) -> Result<String, String>;
    async fn search(&self, q: &str, page: u32) -> Vec<String>;
    async fn save(&self, id: u64) -> Result<(), String>;
    async fn unit(&self);
}

struct Repo;

#[async_trait]
impl Store for Repo {
    #[cached(prefix = "load", key = "{id}", ttl = 60)]
    async fn load(&self, id: u64) -> Result<String, String> {
        let n: u64 = "1".parse().map_err(|e: std::num::ParseIntError| e.to_string())?;
        Ok(format!("{}", id + n))
    }

    #[cached(prefix = "search")]
    async fn search(&self, q: &str, page: u32) -> Vec<String> {
        vec![format!("{q}{page}")]
    }

    #[invalidates("load:{id}", prefix = SEARCH)]
    async fn save(&self, id: u64) -> Result<(), String> {
        if id == 0 {
            return Err("zero".to_owned());
        }
        Ok(())
    }

    #[cached(prefix = "unit")]
    async fn unit(&self) {}
}

fn assert_send<T: Send>(_: &T) {}

fn main() {
    let store: Box<dyn Store> = Box::new(Repo);
    let fut = store.load(1);
    assert_send(&fut);
}
