//! [`Health`]: the answer of [`Cache::health`](crate::Cache::health).

use serde::Serialize;

use std::time::Instant;

use super::Cache;
use crate::backend::BackendInfo;
use crate::stats::{CacheStats, CircuitState};

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
    /// Backend name (`redis`, `redis-sentinel`, `redis-cluster`, `memory`, ...).
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
    /// `host:port` of the primary the sentinels named (Redis Sentinel only).
    pub primary: Option<String>,
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
            primary: None,
            circuit,
            missing_permissions: Vec::new(),
            tracking: None,
            error: None,
        }
    }
}

impl Cache {
    /// Hit/miss figures, total and per prefix, with the circuit state and backend.
    pub fn stats(&self) -> CacheStats {
        let (total, prefixes) = self.inner.stats.snapshot();
        let store = self.inner.layer.store();
        let (circuit, fallback_active) = (store.circuit(), store.fallback_active());
        CacheStats {
            enabled: self.is_enabled(),
            backend: self.inner.kind.name(),
            target: self.inner.config.target_description(),
            namespace: self.inner.config.namespace.clone(),
            circuit,
            fallback_active,
            total,
            prefixes,
            near: self.inner.layer.near_stats(),
        }
    }

    /// Server facts (key count, memory, version); empty when unreachable.
    pub async fn backend_info(&self) -> BackendInfo {
        if !self.is_enabled() {
            return BackendInfo::default();
        }
        match tokio::time::timeout(
            self.inner.config.timeout * 4,
            self.inner.layer.store().backend().info(),
        )
        .await
        {
            Ok(Ok(info)) => info,
            _ => BackendInfo::default(),
        }
    }

    /// Pings the backend (bounded by the timeout) and reports status,
    /// latency and server facts. Never fails: an unreachable Redis is
    /// [`HealthStatus::Degraded`].
    pub async fn health(&self) -> Health {
        let circuit = self.stats().circuit;
        if !self.is_enabled() {
            return Health::new(HealthStatus::Disabled, self.inner.kind.name(), circuit);
        }
        let started = Instant::now();
        let timeout = self.inner.config.timeout * 4;
        let ping = tokio::time::timeout(timeout, self.inner.layer.store().backend().ping()).await;
        let latency = started.elapsed();
        let mut health = Health::new(HealthStatus::Healthy, self.inner.kind.name(), circuit);
        match ping {
            Ok(Ok(())) => {
                health.latency_ms = Some(latency.as_secs_f64() * 1000.0);
                if let Ok(Ok(info)) =
                    tokio::time::timeout(timeout, self.inner.layer.store().backend().info()).await
                {
                    health.redis_version = info.version;
                    health.used_memory_bytes = info.used_memory_bytes;
                    health.connected_clients = info.connected_clients;
                    health.total_keys = info.total_keys;
                    health.primary = info.primary;
                    health.missing_permissions = info.missing_permissions;
                }
                health.tracking = self.inner.layer.tracking();
                if circuit == CircuitState::Open {
                    health.status = HealthStatus::Degraded;
                    health.error = Some("circuit breaker open; recovering".to_owned());
                } else if !health.missing_permissions.is_empty() {
                    // Redis answers, but some features are off for this user.
                    health.status = HealthStatus::Degraded;
                    health.error = Some(format!(
                        "the Redis user may not run: {}",
                        health.missing_permissions.join(", ")
                    ));
                } else if let Some(failure) = self.write_still_failing(timeout).await {
                    // Reads answer but values cannot be stored (for example
                    // Redis at maxmemory with noeviction): every call is a miss.
                    health.status = HealthStatus::Degraded;
                    health.error = Some(failure);
                }
            }
            Ok(Err(e)) => {
                health.status = HealthStatus::Degraded;
                health.error = Some(e.to_string());
            }
            Err(_) => {
                health.status = HealthStatus::Degraded;
                health.error = Some(format!("no answer within {timeout:?}"));
            }
        }
        health
    }

    /// The last refused write, if writes still fail: a recent failure is
    /// checked with a write of our own (a 1 s key in the namespace), so
    /// health reports the backend as it is now, not as the last write left it.
    async fn write_still_failing(&self, timeout: std::time::Duration) -> Option<String> {
        let store = self.inner.layer.store();
        let failure = store.write_failure()?;
        let probe = format!("{}:%health", self.inner.config.namespace);
        let written = tokio::time::timeout(
            timeout,
            self.inner.layer.store().backend().set(
                &probe,
                b"1".to_vec(),
                std::time::Duration::from_secs(1),
            ),
        )
        .await;
        match written {
            Ok(Ok(())) => {
                store.note_write(Ok(()));
                None
            }
            Ok(Err(e)) => Some(format!("writes are failing: {e}")),
            Err(_) => Some(failure),
        }
    }
}
