//! Generic `#[cached]` functions: every instantiation has its own entries,
//! which its `_cache_key` companion names and `#[invalidates]` can drop
//! one instantiation at a time.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use cache_core::{Cache, cached, invalidates};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq)]
struct Order {
    id: u64,
    customer_id: u64,
    total_cents: u64,
}

/// Two views with the same layout: bytes of one decode as the other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Summary {
    id: u64,
    total_cents: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CustomerRef {
    id: u64,
    customer_id: u64,
}

impl From<Order> for Summary {
    fn from(o: Order) -> Self {
        Summary {
            id: o.id,
            total_cents: o.total_cents,
        }
    }
}

impl From<Order> for CustomerRef {
    fn from(o: Order) -> Self {
        CustomerRef {
            id: o.id,
            customer_id: o.customer_id,
        }
    }
}

#[derive(Default)]
struct Repo {
    loads: AtomicUsize,
}

impl Repo {
    #[cached(prefix = "v", key = "{id}")]
    async fn view<V: From<Order> + Serialize + DeserializeOwned>(
        &self,
        id: u64,
    ) -> Result<V, String> {
        self.loads.fetch_add(1, SeqCst);
        Ok(V::from(Order {
            id,
            customer_id: 7,
            total_cents: 1250,
        }))
    }

    #[invalidates(Self::view::<Summary>(order.id))]
    async fn reprice(&self, order: &Order) -> Result<(), String> {
        let _ = order;
        Ok(())
    }
}

/// A free generic function with the default (hashed) key and two type parameters.
#[cached(prefix = "pair")]
async fn pair<
    A: Default + Serialize + DeserializeOwned,
    B: Default + Serialize + DeserializeOwned,
>(
    n: u32,
) -> (A, B, u32) {
    (A::default(), B::default(), n)
}

#[tokio::test]
async fn each_instantiation_has_its_own_entries() {
    let cache = Cache::memory();
    let repo = Repo::default();
    cache
        .scope(async {
            let summary: Summary = repo.view(6).await.unwrap();
            assert_eq!(
                summary,
                Summary {
                    id: 6,
                    total_cents: 1250
                }
            );
            let customer = repo.view::<CustomerRef>(6).await.unwrap();
            assert_eq!(
                customer,
                CustomerRef {
                    id: 6,
                    customer_id: 7
                },
                "the second instantiation must not read the first one's entry"
            );
            assert_eq!(repo.loads.load(SeqCst), 2);
            // Each is then a hit of its own.
            assert_eq!(repo.view::<Summary>(6).await.unwrap(), summary);
            assert_eq!(repo.view::<CustomerRef>(6).await.unwrap(), customer);
            assert_eq!(repo.loads.load(SeqCst), 2);

            assert_eq!(pair::<u8, String>(1).await, (0, String::new(), 1));
            assert_eq!(pair::<String, u8>(1).await, (String::new(), 0, 1));
        })
        .await;
    assert_eq!(cache.stats().prefixes["v"].hits, 2);
    assert_eq!(cache.stats().prefixes["pair"].hits, 0);
}

#[tokio::test]
async fn companions_name_one_instantiation_and_invalidates_drops_only_it() {
    let cache = Cache::memory();
    let repo = Repo::default();
    let summary_key = Repo::view_cache_key::<Summary>(&6);
    let customer_key = Repo::view_cache_key::<CustomerRef>(&6);
    assert_ne!(summary_key, customer_key);
    for key in [&summary_key, &customer_key] {
        assert!(key.starts_with("v:") && key.ends_with(":6"), "{key}");
        // `v:` + 16 hex digits + `:` + the template.
        assert_eq!(key.len(), "v:".len() + 17 + "6".len(), "{key}");
    }
    assert_eq!(
        Repo::view_cache_key::<Summary>(&6),
        summary_key,
        "stable within a build"
    );
    assert_ne!(
        pair_cache_key::<u8, String>(&1),
        pair_cache_key::<String, u8>(&1)
    );

    cache
        .scope(async {
            let _: Summary = repo.view(6).await.unwrap();
            let _: CustomerRef = repo.view(6).await.unwrap();
        })
        .await;
    assert!(cache.get::<Summary>(&summary_key).await.unwrap().is_some());
    assert!(
        cache
            .get::<CustomerRef>(&customer_key)
            .await
            .unwrap()
            .is_some()
    );

    let order = Order {
        id: 6,
        customer_id: 7,
        total_cents: 1250,
    };
    cache.scope(repo.reprice(&order)).await.unwrap();
    assert_eq!(cache.get::<Summary>(&summary_key).await.unwrap(), None);
    assert!(
        cache
            .get::<CustomerRef>(&customer_key)
            .await
            .unwrap()
            .is_some(),
        "the other instantiation's entry stays"
    );
    cache
        .scope(async {
            let _: Summary = repo.view(6).await.unwrap();
            let _: CustomerRef = repo.view(6).await.unwrap();
        })
        .await;
    assert_eq!(repo.loads.load(SeqCst), 3, "only the summary was reloaded");
}
