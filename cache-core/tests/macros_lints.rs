//! Generated code is warning-free under `#![deny(warnings)]`, `missing_docs`
//! and `clippy::pedantic` (run `cargo clippy -p cache-core --tests`).
#![deny(warnings, missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

use cache_core::{Cache, cached, invalidates};

/// A public API whose functions are cached.
pub mod api {
    use std::time::Duration;

    use cache_core::{Cache, cached, invalidates};
    use serde::{Deserialize, Serialize};

    /// A customer.
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
    pub struct Customer {
        /// Its id.
        pub id: u64,
        /// Its name.
        pub name: String,
    }

    /// Loads a customer.
    ///
    /// # Errors
    /// When the id is zero.
    #[cached(prefix = "lint_customer", ttl = 60, key = "{id}")]
    pub async fn get_customer(id: u64) -> Result<Customer, String> {
        if id == 0 {
            return Err("zero".to_owned());
        }
        Ok(Customer {
            id,
            name: format!("c{id}"),
        })
    }

    /// Searches.
    #[cached(prefix = "lint_search", ttl = Duration::from_secs(5), skip(cache), cache = cache, unless = result.is_empty())]
    pub async fn search(cache: &Cache, q: &str, page: u32) -> Vec<String> {
        vec![format!("{q}{page}")]
    }

    /// Maybe finds.
    #[cached(
        prefix = "lint_find",
        key = "{name}",
        cache_none,
        none_ttl = 5,
        version = 2
    )]
    pub async fn find(name: &str) -> Option<u64> {
        name.parse().ok()
    }

    /// Saves.
    ///
    /// # Errors
    /// Never.
    #[invalidates("lint_customer:{customer.id}", search(..))]
    pub async fn save(customer: &Customer) -> Result<(), String> {
        let _ = customer;
        Ok(())
    }

    /// A repository.
    pub struct Repo {
        /// Its cache.
        pub cache: Cache,
    }

    impl Repo {
        /// Cached method.
        #[cached(prefix = "lint_repo", key = "{id}", cache = self.cache)]
        pub async fn item(&self, id: u64) -> Option<u64> {
            Some(id)
        }

        /// Generic cached method with a default key.
        #[cached(prefix = "lint_repo_generic", cache = self.cache)]
        pub async fn show<T>(&self, value: T) -> String
        where
            T: serde::Serialize + std::fmt::Display + Send,
        {
            value.to_string()
        }

        /// Invalidating method.
        #[invalidates("lint_repo:{id}", cache = self.cache)]
        pub async fn touch(&self, id: u64) {
            let _ = id;
        }
    }
}

#[cached(prefix = "lint_private")]
async fn private_unused_companion(id: u64) -> u64 {
    id
}

#[cached(prefix = "lint_unit")]
async fn unit() {}

#[async_trait::async_trait]
trait Store {
    async fn load(&self, id: u64) -> Option<u64>;
    async fn save(&self, id: u64);
}

struct S;

#[async_trait::async_trait]
impl Store for S {
    #[cached(prefix = "lint_async_trait", key = "{id}")]
    async fn load(&self, id: u64) -> Option<u64> {
        Some(id)
    }

    #[invalidates("lint_async_trait:{id}")]
    async fn save(&self, id: u64) {
        let _ = id;
    }
}

#[tokio::test]
async fn lint_clean_code_runs() {
    let cache = Cache::memory();
    cache
        .scope(async {
            assert_eq!(api::get_customer(1).await.unwrap().id, 1);
            assert_eq!(api::search(&cache, "q", 1).await, ["q1"]);
            assert_eq!(api::find("7").await, Some(7));
            api::save(&api::Customer {
                id: 1,
                name: String::new(),
            })
            .await
            .unwrap();
            let repo = api::Repo {
                cache: cache.clone(),
            };
            assert_eq!(repo.item(3).await, Some(3));
            assert_eq!(repo.show(3).await, "3");
            repo.touch(3).await;
            assert_eq!(private_unused_companion(1).await, 1);
            unit().await;
            assert_eq!(S.load(2).await, Some(2));
            S.save(2).await;
        })
        .await;
    assert_eq!(api::get_customer_cache_key(&1), "lint_customer:1");
    assert_eq!(api::find_cache_key("7"), "lint_find:v2:7");
}
