//! An orders repository cached with `#[cached]` and `#[invalidates]`: a
//! library crate whose tests use it only through its public API, the way a
//! service's other crates would.
//!
//! ```
//! use orders_app::repo::{Order, Repo};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let repo = Repo::default();
//! repo.insert(Order { id: 1, customer_id: 7, total_cents: 1250 });
//! // No cache installed: the functions simply run.
//! assert_eq!(repo.order_total(1).await, Ok(1250));
//! # }
//! ```

pub mod repo;
