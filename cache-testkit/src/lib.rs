//! Test kit for `cache-core`.
//!
//! - [`RedisServer`]: an ephemeral, real `redis-server` on a free loopback
//!   port (no persistence, killed on drop) with `stop`/`restart`/`pause`/
//!   `resume` for fault tests.
//! - [`RedisCluster`]: a local Redis Cluster of `n` real masters.
//! - `TestCache` (in-memory backend with a controllable clock, operation log
//!   and fault injection) is added alongside these.
//!
//! The Redis fixtures need `redis-server` and `redis-cli` on `PATH`
//! (`apt-get install -y redis-server`).

mod cluster;
mod redis_server;

pub use cluster::RedisCluster;
pub use redis_server::RedisServer;
