//! [`Health`]: the answer of [`Cache::health`](crate::Cache::health).

use serde::Serialize;

use crate::stats::CircuitState;

/// Overall state of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthStatus {
    /// The backend answers.
    Healthy,
    /// The backend is unreachable or recovering; calls are served by the
    /// in-memory fallback (cached functions still return their results).
    Degraded,
    /// Caching is turned off.
    Disabled,
}

/// A health report.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// Overall state.
    pub status: HealthStatus,
    /// Backend name (`redis`, `redis-cluster`, `memory`, ...).
    pub backend: &'static str,
    /// Round-trip time of a PING, in milliseconds.
    pub latency_ms: Option<f64>,
    /// Server version.
    pub redis_version: Option<String>,
    /// Memory the server uses, in bytes.
    pub used_memory_bytes: Option<u64>,
    /// Clients connected to the server.
    pub connected_clients: Option<u64>,
    /// Keys in the server (all namespaces).
    pub total_keys: Option<u64>,
    /// Circuit breaker state.
    pub circuit: CircuitState,
    /// Commands the Redis user may not run (its ACL): each one turns a
    /// feature off (for example no leases without scripting). Empty when
    /// everything is allowed.
    pub missing_permissions: Vec<String>,
    /// Whether the cache holds prefix generations and near-cache entries
    /// under Redis client tracking right now (`None`: it does not use
    /// tracking).
    pub tracking: Option<bool>,
    /// Why the status is not healthy.
    pub error: Option<String>,
}

impl Health {
    pub(crate) fn new(status: HealthStatus, backend: &'static str, circuit: CircuitState) -> Self {
        Health {
            status,
            backend,
            latency_ms: None,
            redis_version: None,
            used_memory_bytes: None,
            connected_clients: None,
            total_keys: None,
            circuit,
            missing_permissions: Vec::new(),
            tracking: None,
            error: None,
        }
    }
}
