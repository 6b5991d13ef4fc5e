//! The orders repository: an in-process table standing in for a database,
//! read through `#[cached]` functions and written through `#[invalidates]`
//! ones.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use cache_core::{cached, invalidates};
use serde::{Deserialize, Serialize};

/// An order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The order's id.
    pub id: u64,
    /// Who placed it.
    pub customer_id: u64,
    /// Its total, in cents.
    pub total_cents: u64,
}

/// What the repository fails with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoError {
    /// No order has this id.
    NotFound(u64),
}

impl std::fmt::Display for RepoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepoError::NotFound(id) => write!(f, "order {id} not found"),
        }
    }
}

impl std::error::Error for RepoError {}

/// The orders table, counting how often it is really read.
#[derive(Default)]
pub struct Repo {
    orders: Mutex<HashMap<u64, Order>>,
    loads: AtomicUsize,
}

impl Repo {
    /// Writes `order` to the table directly (no invalidation: test set-up).
    pub fn insert(&self, order: Order) {
        self.table().insert(order.id, order);
    }

    /// How many times the table was read.
    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Order>> {
        self.orders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The order `id`.
    #[cached(prefix = "order", ttl = 600, key = "{id}")]
    pub async fn order(&self, id: u64) -> Result<Order, RepoError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.table()
            .get(&id)
            .cloned()
            .ok_or(RepoError::NotFound(id))
    }

    /// The total of order `id`, itself cached and read through [`Repo::order`].
    #[cached(prefix = "order_total", ttl = 600, key = "{id}")]
    pub async fn order_total(&self, id: u64) -> Result<u64, RepoError> {
        Ok(self.order(id).await?.total_cents)
    }

    /// The ids of a customer's orders (default hashed key).
    #[cached(prefix = "customer_orders", ttl = 600)]
    pub async fn customer_orders(&self, customer_id: u64) -> Vec<u64> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let mut ids: Vec<u64> = self
            .table()
            .values()
            .filter(|o| o.customer_id == customer_id)
            .map(|o| o.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Saves `order` and drops what the cache holds about it: its entries of
    /// [`Repo::order`] and [`Repo::order_total`], and every entry of
    /// [`Repo::customer_orders`].
    #[invalidates(
        Self::order(order.id),
        Self::order_total(order.id),
        Self::customer_orders(..)
    )]
    pub async fn save(&self, order: &Order) -> Result<(), RepoError> {
        self.insert(order.clone());
        Ok(())
    }
}

/// The smallest cached function: returns its argument.
#[cached(prefix = "triv", key = "{id}")]
pub async fn triv(id: u64) -> Result<u64, String> {
    Ok(id)
}
