//! The runtime against real redis-servers and Redis Clusters (and the test
//! kit's backend where faults are injected): every backend's behaviour,
//! consistency under races, prefix generations, the near cache, the
//! consistency promise over every read, invalidation and configuration,
//! resilience and faults, Redis Sentinel and its failovers. One test binary (one link) for all; each module's
//! doc says what it covers.

mod common;

mod backends;
mod cluster_faults;
mod cluster_nodes;
mod consistency;
mod expiry;
mod fail_safe;
mod faults;
mod generations;
mod near;
mod promise_matrix;
mod refresh_ahead;
mod resilience;
mod sentinel;
mod slow_loads;
mod tags;
mod timeouts;
mod updates;
mod wrappers;
