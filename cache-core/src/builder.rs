//! [`CacheBuilder`]: settings, validation, and connecting at start-up.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::redis::RedisBackend;
use crate::backend::{Backend, BackendKind};
use crate::cache::Cache;
use crate::config::{CacheConfig, RedisTarget, validate_namespace, validate_url};
use crate::error::ConfigError;

/// Builds a [`Cache`]; see [`Cache::builder`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct CacheBuilder {
    config: CacheConfig,
    error: Option<ConfigError>,
}

impl CacheBuilder {
    /// Starts from an existing configuration (for example [`CacheConfig::from_env`]).
    pub fn config(mut self, config: CacheConfig) -> Self {
        self.config = config;
        self
    }
    /// Uses the Redis server at `url` (`redis://[user:password@]host:port[/db]`).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        let url = url.into();
        if let Err(e) = validate_url("redis_url", &url) {
            self.error.get_or_insert(e);
        }
        self.config.redis = Some(RedisTarget::Single(url));
        self
    }
    /// Uses the Redis Cluster reachable through these seed nodes.
    pub fn redis_cluster<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let urls: Vec<String> = urls.into_iter().map(Into::into).collect();
        for url in &urls {
            if let Err(e) = validate_url("redis_cluster", url) {
                self.error.get_or_insert(e);
            }
        }
        self.config.redis = Some(RedisTarget::Cluster(urls));
        self
    }
    /// First segment of every key (default `cache`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        if let Err(e) = validate_namespace("namespace", &namespace) {
            self.error.get_or_insert(e);
        }
        self.config.namespace = namespace;
        self
    }
    /// TTL used when a call names none (default 300 s).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_ttl = ttl;
        self
    }
    /// Bound on every backend call (default 250 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }
    /// Consecutive failures that open the breaker, and how long it stays open.
    pub fn circuit_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.config.breaker_failures = failures;
        self.config.breaker_cooldown = cooldown;
        self
    }
    /// Longest TTL in the in-memory fallback (default 30 s).
    pub fn fallback_ttl_cap(mut self, cap: Duration) -> Self {
        self.config.fallback_ttl_cap = cap;
        self
    }
    /// Size of the bb8 connection pool (default 16).
    pub fn pool_size(mut self, size: u32) -> Self {
        self.config.pool_size = size;
        self
    }
    /// Codec for written values (default bincode).
    pub fn codec(mut self, codec: crate::CodecKind) -> Self {
        self.config.codec = codec;
        self
    }
    /// Largest encoded value stored or read (default 4 MiB).
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.config.max_value_bytes = bytes;
        self
    }
    /// How long a loader's lease lasts (default 3 s).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.config.lease_ttl = ttl;
        self
    }
    /// Turns leases on misses on or off (default on; see [`CacheConfig::leases`]).
    pub fn leases(mut self, on: bool) -> Self {
        self.config.leases = on;
        self
    }
    /// TCP_NODELAY on Redis connections (default on; see [`CacheConfig::tcp_nodelay`]).
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.config.tcp_nodelay = on;
        self
    }
    /// O(1) prefix invalidation through per-prefix generations (default on
    /// for Redis and Redis Cluster, off for memory; see
    /// [`CacheConfig::prefix_generations`]).
    pub fn prefix_generations(mut self, on: bool) -> Self {
        self.config.prefix_generations = Some(on);
        self
    }
    /// A near cache of `capacity` entries in front of a single Redis server
    /// (see [`CacheConfig::near_capacity`]).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), cache_core::ConfigError> {
    /// let cache = cache_core::Cache::builder()
    ///     .redis_url("redis://127.0.0.1:6379")
    ///     .near_cache(10_000)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn near_cache(mut self, capacity: u64) -> Self {
        self.config.near_capacity = Some(capacity.max(1));
        self
    }
    /// Turns caching on or off.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.config.enabled = enabled;
        self
    }

    /// Builds the cache. Redis being down is not an error: the cache starts
    /// degraded (fallback serving) and switches to Redis when it answers.
    /// A malformed URL or setting is.
    pub async fn build(self) -> Result<Cache, ConfigError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let config = self.config;
        if !config.enabled {
            return Ok(Cache::from_parts(
                config,
                BackendKind::Disabled,
                None,
                None,
                None,
            ));
        }
        let Some(target) = config.redis.clone() else {
            return Ok(Cache::memory_with(config));
        };
        let backend = match RedisBackend::connect(
            &target,
            config.pool_size,
            config.timeout,
            config.tcp_nodelay,
        )
        .await
        {
            Ok(backend) => backend,
            Err(e) => {
                return Err(ConfigError::InvalidUrl {
                    variable: "REDIS_URL",
                    url: target.redacted(),
                    reason: e.message,
                });
            }
        };
        let backend = Arc::new(backend);
        let cache = Cache::from_parts(
            config,
            backend.kind(),
            Some(backend.clone()),
            None,
            Some(backend),
        );
        match tokio::time::timeout(cache.inner.config.timeout * 4, cache.inner.primary.ping()).await
        {
            Ok(Ok(())) => tracing::info!(target = %target.redacted(), "cache connected to Redis"),
            Ok(Err(e)) => {
                tracing::warn!(target = %target.redacted(), error = %e, "Redis unreachable at start; running degraded on the in-memory fallback")
            }
            Err(_) => {
                tracing::warn!(target = %target.redacted(), "Redis did not answer at start; running degraded on the in-memory fallback")
            }
        }
        Ok(cache)
    }
}
