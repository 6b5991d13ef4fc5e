//! Cached functions of this library awaited from another crate deep inside
//! async blocks, spawned tasks, joins and test-cache scopes, on both tokio
//! runtimes. Compiling this file at the default `recursion_limit` is the
//! point: the futures the macros generate must stay shallow.

// The nesting is the test.
#![allow(clippy::redundant_async_block)]
// Below the default (128), so the futures the macros generate keep a
// margin: a user's crate nests them deeper than this file does.
#![recursion_limit = "96"]

use std::sync::Arc;

use cache_testkit::TestCache;
use orders_app::repo::{self, Order, Repo};

fn repo_with_orders() -> Arc<Repo> {
    let repo = Repo::default();
    for id in 1..=4 {
        repo.insert(Order {
            id,
            customer_id: 7,
            total_cents: id * 100,
        });
    }
    Arc::new(repo)
}

/// Awaits every spawned handle in order (a join without `futures`).
async fn join_all<T: Send + 'static>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("task panicked"));
    }
    out
}

#[test]
fn four_blocks_deep_on_a_current_thread_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let repo = repo_with_orders();
    let test = TestCache::new();
    let (triv, total) = rt.block_on(async {
        async {
            async {
                test.scope(async {
                    async {
                        let triv = repo::triv(1).await;
                        let total = repo.order_total(2).await;
                        assert_eq!(repo.order_total(2).await, total);
                        (triv, total)
                    }
                    .await
                })
                .await
            }
            .await
        }
        .await
    });
    assert_eq!(triv, Ok(1));
    assert_eq!(total, Ok(200));
    assert_eq!(repo.loads(), 1, "the second total is a hit");
    test.prefix("order_total").assert_hits(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_tasks_four_blocks_deep_on_a_multi_thread_runtime() {
    let repo = repo_with_orders();
    let test = Arc::new(TestCache::new());
    let handles = (1..=4)
        .map(|id| {
            let (repo, test) = (repo.clone(), test.clone());
            tokio::spawn(async move {
                async {
                    test.scope(async {
                        async {
                            async {
                                let order = repo.order(id).await.unwrap();
                                let total = repo.order_total(id).await.unwrap();
                                let triv = repo::triv(id).await.unwrap();
                                (order.id, total, triv)
                            }
                            .await
                        }
                        .await
                    })
                    .await
                }
                .await
            })
        })
        .collect();
    let results = join_all(handles).await;
    assert_eq!(
        results,
        vec![(1, 100, 1), (2, 200, 2), (3, 300, 3), (4, 400, 4)]
    );
    // `order_total` reads `order`, which the task had just cached.
    assert_eq!(repo.loads(), 4);
    test.prefix("order").assert_hits(4);
}

#[tokio::test]
async fn tokio_join_inside_a_scope_and_an_invalidation() {
    let repo = repo_with_orders();
    let test = TestCache::new();
    test.scope(async {
        async {
            async {
                async {
                    let (a, b, c) =
                        tokio::join!(repo.order_total(1), repo.customer_orders(7), async {
                            repo::triv(9).await
                        });
                    assert_eq!((a, b, c), (Ok(100), vec![1, 2, 3, 4], Ok(9)));
                    let changed = Order {
                        id: 1,
                        customer_id: 8,
                        total_cents: 150,
                    };
                    repo.save(&changed).await.unwrap();
                    let (a, b) = tokio::join!(repo.order_total(1), repo.customer_orders(7));
                    assert_eq!((a, b), (Ok(150), vec![2, 3, 4]));
                }
                .await
            }
            .await
        }
        .await
    })
    .await;
    test.prefix("order_total").assert_hits(0);
    assert_eq!(test.stats().prefixes["order_total"].misses, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_scope_inside_a_spawned_task() {
    let repo = repo_with_orders();
    let test = Arc::new(TestCache::new());
    let outer = {
        let (repo, test) = (repo.clone(), test.clone());
        tokio::spawn(async move {
            let inner = tokio::spawn(async move {
                test.scope(async { async { async { repo.order_total(3).await }.await }.await })
                    .await
            });
            async { async { inner.await.unwrap() }.await }.await
        })
    };
    assert_eq!(outer.await.unwrap(), Ok(300));
}
