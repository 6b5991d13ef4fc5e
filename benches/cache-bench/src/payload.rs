//! The payload (a ~207-byte customer record) and the `#[cached]` functions
//! the cases call.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cache_core::{Cache, cached};
use serde::{Deserialize, Serialize};

/// Size of the hot key set read by the hit cases.
pub(crate) const HOT_KEYS: u64 = 1024;

/// First customer id (fixed-width ids keep every payload the same size).
pub(crate) const BASE_ID: u64 = 1_000_000;

/// Target size of the bincode-encoded payload.
pub(crate) const PAYLOAD_BYTES: usize = 207;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Customer {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) email: String,
    pub(crate) segment: String,
    pub(crate) country: String,
    pub(crate) lifetime_value_cents: u64,
    pub(crate) orders: u32,
    pub(crate) churn_score: f64,
    pub(crate) created_at_unix: i64,
    pub(crate) notes: String,
}

pub(crate) fn bincode_len(c: &Customer) -> usize {
    bincode::serde::encode_to_vec(c, bincode::config::standard())
        .expect("customer encodes")
        .len()
}

pub(crate) fn customer_base(id: u64) -> Customer {
    Customer {
        id,
        name: format!("Customer {id:010}"),
        email: format!("customer.{id:010}@example.com"),
        segment: "enterprise".to_owned(),
        country: "DE".to_owned(),
        lifetime_value_cents: 12_345_678,
        orders: 42,
        churn_score: 0.137,
        created_at_unix: 1_700_000_000,
        notes: String::new(),
    }
}

/// A customer whose bincode encoding is [`PAYLOAD_BYTES`] long.
pub(crate) fn customer(id: u64) -> Customer {
    static PAD: OnceLock<usize> = OnceLock::new();
    let pad = *PAD.get_or_init(|| PAYLOAD_BYTES - bincode_len(&customer_base(BASE_ID)));
    let mut c = customer_base(id);
    // The base already carries the (empty) notes' one-byte length prefix.
    c.notes = "n".repeat(pad);
    c
}

pub(crate) fn hot_id(i: u64) -> u64 {
    BASE_ID + i % HOT_KEYS
}

pub(crate) static HIT_BODY_RUNS: AtomicU64 = AtomicU64::new(0);

pub(crate) static FLIGHT_BODY_RUNS: AtomicU64 = AtomicU64::new(0);

pub(crate) static COLD_IDS: AtomicU64 = AtomicU64::new(10_000_000_000);

#[cached(prefix = "customer", key = "{id}", ttl = 3600, cache = cache)]
pub(crate) async fn customer_by_id(cache: &Cache, id: u64) -> Result<Customer, String> {
    HIT_BODY_RUNS.fetch_add(1, Ordering::Relaxed);
    Ok(customer(id))
}

/// [`customer_by_id`] with fail-safe: its values carry when they turn stale
/// (the extended envelope), which every hit checks.
#[cached(prefix = "customerfs", key = "{id}", ttl = 3600, fail_safe = 3600, cache = cache)]
pub(crate) async fn customer_fail_safe(cache: &Cache, id: u64) -> Result<Customer, String> {
    Ok(customer(id))
}

/// [`customer_by_id`] with a tag: its values carry the tag's generation,
/// which every hit checks against the one the cache holds (or reads).
#[cached(prefix = "customertag", key = "{id}", ttl = 3600, tags = ["account:{id}"], cache = cache)]
pub(crate) async fn customer_tagged(cache: &Cache, id: u64) -> Result<Customer, String> {
    Ok(customer(id))
}

/// Same as [`customer_by_id`], for the paused-Redis case (its own body counter
/// stays out of the hit figures).
#[cached(prefix = "customer", key = "{id}", ttl = 3600, cache = cache)]
pub(crate) async fn customer_by_id_paused(cache: &Cache, id: u64) -> Result<Customer, String> {
    Ok(customer(id))
}

#[cached(prefix = "cold", key = "{id}", ttl = 120, cache = cache)]
pub(crate) async fn cold_customer(cache: &Cache, id: u64) -> Result<Customer, String> {
    Ok(customer(id))
}

#[cached(prefix = "flight", key = "{id}", ttl = 120, cache = cache)]
pub(crate) async fn slow_customer(cache: &Cache, id: u64) -> Result<Customer, String> {
    FLIGHT_BODY_RUNS.fetch_add(1, Ordering::Relaxed);
    // A database query that takes a while: every cold caller arrives while it runs.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(customer(id))
}
