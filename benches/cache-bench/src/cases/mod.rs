//! The cases that are not one call repeated: single flight, a paused Redis,
//! prefix invalidation, writes among foreign keys, the near cache's
//! invalidation window, paired latency, and Redis Sentinel (invalidations
//! waiting for a replica, a forced failover).

mod flight;
mod invalidation;
mod near_window;
mod paired;
mod paused;
mod sentinel;
mod writes;

#[cfg(feature = "cached-crate")]
pub(crate) use flight::FLIGHT_CALLERS;
pub(crate) use flight::single_flight;
pub(crate) use invalidation::{invalidate_prefix, invalidate_prefix_generations};
pub(crate) use near_window::{Target, near_invalidation_window};
pub(crate) use paired::paired_p50;
pub(crate) use paused::redis_paused;
pub(crate) use sentinel::{invalidate_wait_replicas, sentinel_failover};
pub(crate) use writes::write_with_foreign_keys;
