//! [`CacheBuilder`]: settings, validation, and connecting at start-up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Cache;
use crate::backend::redis::RedisBackend;
use crate::backend::redis::tracking::Tracker;
use crate::backend::{Backend, BackendKind, MemoryBackend, Primary};
use crate::config::{
    CacheConfig, RedisTarget, SentinelVariables, TlsVariables, check_sentinels,
    read_pem_certificates, read_pem_key, validate_namespace, validate_url,
};
use crate::consistency::Consistency;
use crate::consistency::near::NearCache;
use crate::error::{ConfigError, ErrorKind};
use crate::stats::StatsRegistry;
use crate::store::Store;

/// Names of the builder's TLS settings, used in its errors.
const BUILDER_TLS: TlsVariables = TlsVariables {
    ca: "tls_ca_file",
    cert: "tls_client_cert",
    key: "tls_client_cert",
};

/// Builds a [`Cache`]; see [`Cache::builder`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct CacheBuilder {
    config: CacheConfig,
    error: Option<ConfigError>,
    /// TLS files were given through the builder (errors name its methods).
    tls_from_builder: bool,
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
    /// Uses the primary the Redis Sentinels at `sentinels` monitor as
    /// `master`, found at start-up and again after every failover
    /// (`REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`). The sentinel URLs'
    /// user, password and scheme (`rediss://` for TLS) are the sentinels';
    /// the primary is reached with the same ones unless
    /// [`sentinel_data_url`](Self::sentinel_data_url) says otherwise.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), cache_core::ConfigError> {
    /// let cache = cache_core::Cache::builder()
    ///     .redis_sentinel(
    ///         ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3:26379"],
    ///         "mymaster",
    ///     )
    ///     .sentinel_data_url("redis://cache:secret@primary/0")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn redis_sentinel<I, S>(mut self, sentinels: I, master: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let sentinels: Vec<String> = sentinels.into_iter().map(Into::into).collect();
        let master = master.into();
        let data_url = match self.config.redis.take() {
            Some(RedisTarget::Sentinel { data_url, .. }) => data_url,
            _ => None,
        };
        if let Err(e) = check_sentinels(
            SentinelVariables::BUILDER,
            &sentinels,
            &master,
            data_url.as_deref(),
        ) {
            self.error.get_or_insert(e);
        }
        self.config.redis = Some(RedisTarget::Sentinel {
            sentinels,
            master,
            data_url,
        });
        self
    }
    /// How the primary the sentinels name is reached
    /// (`REDIS_SENTINEL_DATA_URL`): the scheme (`rediss://` for TLS), user,
    /// password and database of `url`, whose host is not used
    /// (`redis://cache:secret@primary/2`). Call it after
    /// [`redis_sentinel`](Self::redis_sentinel).
    pub fn sentinel_data_url(mut self, url: impl Into<String>) -> Self {
        let url = url.into();
        match &mut self.config.redis {
            Some(RedisTarget::Sentinel {
                sentinels,
                master,
                data_url,
            }) => {
                if let Err(e) =
                    check_sentinels(SentinelVariables::BUILDER, sentinels, master, Some(&url))
                {
                    self.error.get_or_insert(e);
                }
                *data_url = Some(url);
            }
            _ => {
                self.error.get_or_insert(ConfigError::Invalid {
                    variable: "sentinel_data_url",
                    value: crate::redact_url(&url),
                    reason: "call redis_sentinel first".to_owned(),
                });
            }
        }
        self
    }
    /// Makes every invalidation wait until `replicas` replicas acknowledge
    /// it (`CACHE_WAIT_REPLICAS`; 0, the default, turns it off). See
    /// [`CacheConfig::wait_replicas`].
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), cache_core::ConfigError> {
    /// let cache = cache_core::Cache::builder()
    ///     .redis_sentinel(["redis://10.0.0.1:26379"], "mymaster")
    ///     .wait_replicas(1)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn wait_replicas(mut self, replicas: u32) -> Self {
        self.config.wait_replicas = replicas;
        self
    }
    /// Fail-safe for every load (a function's `fail_safe` wins): a value is
    /// kept `max_stale` past its TTL, and a reload that fails or times out
    /// answers with it (never with one an invalidation removed); failed
    /// reloads of a key are then throttled for `min(30 s, ttl)`
    /// ([`fail_safe_throttle`](Self::fail_safe_throttle)). See the macros
    /// guide's `fail_safe`.
    pub fn fail_safe(mut self, max_stale: Duration) -> Self {
        self.config.fail_safe_max_stale = Some(max_stale);
        self
    }
    /// How long a stale value answers after a failed load before a load is
    /// tried again ([`CacheConfig::fail_safe_throttle`]).
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.config.fail_safe_throttle = Some(throttle);
        self
    }
    /// TTL spread of every stored value: `0.1` draws each TTL from ±10%, so
    /// entries written together do not expire together. Clamped to 0 to 0.5;
    /// NaN is no jitter.
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        // NaN is no jitter (`clamp` would keep it, and it must not spread).
        self.config.ttl_jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 0.5)
        };
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
    /// A near cache of `capacity` entries in front of Redis or a cluster
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
    /// The most bytes the near cache may hold (see
    /// [`CacheConfig::near_max_bytes`]; at least 1 KiB).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), cache_core::ConfigError> {
    /// let cache = cache_core::Cache::builder()
    ///     .redis_url("redis://127.0.0.1:6379")
    ///     .near_cache(100_000)
    ///     .near_cache_max_bytes(16 * 1024 * 1024)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn near_cache_max_bytes(mut self, bytes: u64) -> Self {
        self.config.near_max_bytes = bytes.max(1024);
        self
    }
    /// Fail [`build`](Self::build) when Redis cannot be used at start-up
    /// (unreachable, wrong password, missing permission, unknown database,
    /// TLS handshake failure) instead of starting degraded on the in-memory
    /// fallback (default off; `CACHE_REQUIRE_REDIS`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use cache_core::{Cache, ConfigError};
    /// let built = Cache::builder()
    ///     .redis_url("redis://127.0.0.1:1") // nothing listens there
    ///     .require_redis(true)
    ///     .build()
    ///     .await;
    /// assert!(matches!(built, Err(ConfigError::RedisUnavailable { .. })));
    /// # }
    /// ```
    pub fn require_redis(mut self, required: bool) -> Self {
        self.config.require_redis = required;
        self
    }
    /// Trusts values a Redis server kept across a restart (see
    /// [`CacheConfig::trust_persistence`]; default off).
    pub fn trust_persistence(mut self, trusted: bool) -> Self {
        self.config.trust_persistence = trusted;
        self
    }
    /// Trusts the CA certificates of this PEM file, besides the system's
    /// root certificates, for a `rediss://` server (`REDIS_TLS_CA_FILE`).
    /// The file is read and checked now; a missing or malformed one makes
    /// [`build`](Self::build) fail with [`ConfigError::TlsFile`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cache_core::ConfigError> {
    /// let cache = cache_core::Cache::builder()
    ///     .redis_url("rediss://redis.internal:6380")
    ///     .tls_ca_file("/etc/redis/ca.pem")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        if let Err(e) = read_pem_certificates(BUILDER_TLS.ca, &path) {
            self.error.get_or_insert(e);
        }
        self.config.tls_ca_file = Some(path);
        self.tls_from_builder = true;
        self
    }
    /// Presents this PEM client certificate (chain) and private key to a
    /// `rediss://` server that requires one, mutual TLS
    /// (`REDIS_TLS_CERT_FILE`, `REDIS_TLS_KEY_FILE`). Both files are read
    /// and checked now.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cache_core::ConfigError> {
    /// let cache = cache_core::Cache::builder()
    ///     .redis_url("rediss://redis.internal:6380")
    ///     .tls_ca_file("/etc/redis/ca.pem")
    ///     .tls_client_cert("/etc/redis/client.pem", "/etc/redis/client.key")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        let (cert, key) = (cert.into(), key.into());
        if let Err(e) = read_pem_certificates(BUILDER_TLS.cert, &cert) {
            self.error.get_or_insert(e);
        }
        if let Err(e) = read_pem_key(BUILDER_TLS.key, &key) {
            self.error.get_or_insert(e);
        }
        self.config.tls_cert_file = Some(cert);
        self.config.tls_key_file = Some(key);
        self.tls_from_builder = true;
        self
    }
    /// Turns caching on or off.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.config.enabled = enabled;
        self
    }

    /// Builds the cache. Redis being down is not an error: the cache starts
    /// degraded (fallback serving) and switches to Redis when it answers,
    /// unless [`require_redis`](Self::require_redis) is on.
    /// A malformed URL, setting or TLS file is.
    pub async fn build(self) -> Result<Cache, ConfigError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let config = self.config;
        config.validate()?;
        if !config.enabled {
            return Ok(Cache::from_parts(
                config,
                BackendKind::Disabled,
                Primary::Disabled,
            ));
        }
        let Some(target) = config.redis.clone() else {
            return Ok(Cache::memory_with(config));
        };
        let names = if self.tls_from_builder {
            BUILDER_TLS
        } else {
            TlsVariables::ENV
        };
        let tls = config.tls_certificates(names)?;
        let backend = match RedisBackend::connect(
            &target,
            config.pool_size,
            config.timeout,
            config.tcp_nodelay,
            tls.as_ref(),
            (!config.trust_persistence).then(|| format!("{}:%run", config.namespace)),
        )
        .await
        {
            Ok(backend) => backend,
            Err(e) if config.require_redis => {
                return Err(ConfigError::RedisUnavailable {
                    target: target.redacted(),
                    kind: e.kind,
                    reason: e.message,
                });
            }
            Err(e) => {
                return Err(ConfigError::InvalidUrl {
                    variable: match target {
                        RedisTarget::Sentinel { .. } => "REDIS_SENTINELS",
                        _ => "REDIS_URL",
                    },
                    url: target.redacted(),
                    reason: e.message,
                });
            }
        };
        let backend = Arc::new(backend);
        let probe = backend.clone();
        let cache = Cache::from_parts(config, backend.kind(), Primary::Redis(backend));
        let wait = cache.config().timeout * 4;
        let failure = match tokio::time::timeout(wait, probe.ping()).await {
            Ok(Ok(())) => {
                tracing::info!(target = %target.redacted(), "cache connected to Redis");
                let namespace = &cache.config().namespace;
                let missing = match tokio::time::timeout(
                    wait * 4,
                    probe.check_permissions(namespace, cache.config().wait_replicas > 0),
                )
                .await
                {
                    Ok(Ok(missing)) => missing,
                    _ => Vec::new(), // unreachable now: the calls will tell
                };
                let wanted = cache.config().wait_replicas;
                if wanted > 0
                    && let Ok(Ok(replicas)) =
                        tokio::time::timeout(wait, probe.connected_replicas()).await
                    && replicas < u64::from(wanted)
                {
                    tracing::warn!(target = %target.redacted(), replicas, wanted, "the primary has fewer replicas than CACHE_WAIT_REPLICAS: invalidations are not acknowledged and the cache serves from its fallback until enough replicas are connected");
                }
                if missing.is_empty() {
                    return Ok(cache);
                }
                let reason = format!(
                    "the Redis user may not run {} on `{namespace}:*`; grant them (see the README's minimal ACL)",
                    missing.join(", ")
                );
                if cache.config().require_redis {
                    tracing::error!(target = %target.redacted(), "{reason}");
                    return Err(ConfigError::RedisUnavailable {
                        target: target.redacted(),
                        kind: ErrorKind::Auth,
                        reason,
                    });
                }
                tracing::error!(target = %target.redacted(), "{reason}; the calls that need them fail over to the in-memory fallback");
                return Ok(cache);
            }
            Ok(Err(e)) => e,
            Err(_) => crate::error::BackendError::new(
                ErrorKind::Timeout,
                format!("no answer to PING within {wait:?}"),
            ),
        };
        if cache.config().require_redis {
            tracing::error!(target = %target.redacted(), error = %failure, "Redis is required (CACHE_REQUIRE_REDIS) but unusable at start");
            return Err(ConfigError::RedisUnavailable {
                target: target.redacted(),
                kind: failure.kind,
                reason: failure.message,
            });
        }
        if failure.kind.needs_operator() {
            tracing::error!(target = %target.redacted(), error = %failure, "Redis refuses the cache's configuration; running degraded on the in-memory fallback until it is fixed");
        } else {
            tracing::warn!(target = %target.redacted(), error = %failure, "Redis unreachable at start; running degraded on the in-memory fallback");
        }
        Ok(cache)
    }
}

// ----- making a cache ------------------------------------------------------

impl Cache {
    /// Reads [`CacheConfig::from_env`] and builds: `REDIS_URL` set means
    /// Redis (degraded, not failed, if it is down), unset means in-memory.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_core::ConfigError> {
    /// // With no REDIS_URL in the environment this is an in-memory cache.
    /// let cache = cache_core::Cache::from_env().await?;
    /// cache.install();
    /// # Ok(()) }
    /// ```
    pub async fn from_env() -> Result<Cache, ConfigError> {
        Cache::builder()
            .config(CacheConfig::from_env()?)
            .build()
            .await
    }

    /// A builder starting from [`CacheConfig::default`].
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), cache_core::ConfigError> {
    /// let cache = cache_core::Cache::builder()
    ///     .redis_url("redis://127.0.0.1:6379")
    ///     .namespace("app")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// An in-memory cache with default settings.
    pub fn memory() -> Cache {
        Cache::memory_with(CacheConfig::default())
    }

    /// An in-memory cache with `config` (its `redis` field is ignored).
    pub fn memory_with(config: CacheConfig) -> Cache {
        let backend = MemoryBackend::new(config.memory_capacity);
        Cache::from_parts(config, BackendKind::Memory, Primary::Memory(backend))
    }

    /// A cache over any [`Backend`] (for example `cache-testkit`'s
    /// `TestCache`). When `backend.kind().is_remote()`, calls get the
    /// timeout, circuit breaker and in-memory fallback of `config`.
    pub fn with_backend(backend: Arc<dyn Backend>, config: CacheConfig) -> Cache {
        let kind = backend.kind();
        Cache::from_parts(config, kind, Primary::Custom(backend))
    }

    /// A cache over `primary`, of kind `kind`: the store, the consistency
    /// layer on it, and the handle on that.
    pub(crate) fn from_parts(config: CacheConfig, kind: BackendKind, primary: Primary) -> Cache {
        let stats = Arc::new(StatsRegistry::new());
        let generations = config.prefix_generations.unwrap_or(matches!(
            kind,
            BackendKind::Redis | BackendKind::RedisCluster | BackendKind::RedisSentinel
        ));
        let redis = primary.redis().cloned();
        let store = Store::new(
            primary,
            kind.is_remote(),
            crate::store::Settings {
                timeout: config.timeout,
                fallback_ttl_cap: config.fallback_ttl_cap,
                max_value_bytes: config.max_value_bytes,
                lease_ttl: config.lease_ttl,
                namespace: config.namespace.clone(),
                breaker_failures: config.breaker_failures,
                breaker_cooldown: config.breaker_cooldown,
                fallback_capacity: config.memory_capacity,
                wait_replicas: config.wait_replicas,
            },
            stats.clone(),
        );
        let redis_target = match (&config.redis, &redis) {
            (Some(target), Some(_)) => Some(target),
            _ => None,
        };
        let near_capacity = config.near_capacity.filter(|_| redis_target.is_some());
        let tracker = redis_target
            .filter(|_| generations || near_capacity.is_some())
            .and_then(|target| {
                // Already read and checked when the backend connected.
                let tls = config
                    .tls_certificates(crate::config::TlsVariables::ENV)
                    .ok()
                    .flatten();
                let (namespace, near) = (&config.namespace, near_capacity.is_some());
                match target {
                    RedisTarget::Single(url) => {
                        Tracker::single(url, namespace, config.timeout, near, tls.as_ref())
                    }
                    RedisTarget::Cluster(urls) => Tracker::cluster(
                        urls.first()?,
                        redis.clone()?,
                        namespace,
                        config.timeout,
                        near,
                        tls.as_ref(),
                    ),
                    RedisTarget::Sentinel { .. } => {
                        Tracker::sentinel(redis.as_deref()?, namespace, config.timeout, near)
                    }
                }
            });
        let near = near_capacity.filter(|_| tracker.is_some()).map(|capacity| {
            NearCache::new(
                capacity,
                config.near_max_bytes,
                config.default_ttl.max(Duration::from_secs(1)),
            )
        });
        let layer = Consistency::new(
            store,
            stats.clone(),
            crate::consistency::Settings {
                namespace: config.namespace.clone(),
                generations,
                leases: config.leases,
                lease_ttl: config.lease_ttl,
            },
            tracker,
            near,
            seed(),
        );
        Cache::from_layer(config, kind, stats, layer)
    }
}

/// A random start for lease tokens and generations.
fn seed() -> u64 {
    static COUNTER: OnceLock<AtomicU64> = OnceLock::new();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let pid = u64::from(std::process::id());
    let n = COUNTER
        .get_or_init(|| AtomicU64::new(1))
        .fetch_add(1, Ordering::Relaxed);
    // Distinct per process and per cache; only needs to be unlikely to collide.
    (nanos ^ (pid << 40) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_mul(0xBF58_476D_1CE4_E5B9)
}
