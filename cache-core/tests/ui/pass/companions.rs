//! Companions: `<name>_cache_key` with the function's visibility, docs, cfg.
mod repo {
    use cache_core::cached;

    /// A customer.
    #[cached(prefix = "customer", key = "{id}")]
    pub async fn get_customer(id: u64) -> Option<u64> {
        Some(id)
    }

    pub struct Repo;

    impl Repo {
        #[cached(prefix = "churn", key = "{id}")]
        pub async fn churn(&self, id: u64) -> Option<f64> {
            Some(id as f64)
        }
    }

    #[cfg(any())]
    #[cached(prefix = "gone")]
    pub async fn gone() -> u8 {
        0
    }
}

fn main() {
    assert_eq!(repo::get_customer_cache_key(&42), "customer:42");
    assert_eq!(repo::Repo::churn_cache_key(&7), "churn:7");
}
