//! Configuration: [`CacheConfig`], read from the environment or set through
//! [`CacheBuilder`](crate::CacheBuilder).

use std::path::PathBuf;
use std::time::Duration;

use crate::codec::CodecKind;
use crate::error::ConfigError;
use crate::redact::{redact_text, redact_url};

mod sentinel;
mod tls;

pub(crate) use sentinel::{SentinelVariables, check as check_sentinels};
use tls::{CA_VAR, CERT_VAR, KEY_VAR};
pub(crate) use tls::{TlsMaterial, TlsVariables, read_pem_certificates, read_pem_key};

/// Where the cache keeps its data.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisTarget {
    /// One Redis server (`redis://`, `rediss://`, `redis+unix://`).
    Single(String),
    /// A Redis Cluster, given by one or more seed node URLs.
    Cluster(Vec<String>),
    /// A primary and its replicas watched by Redis Sentinel: the sentinels
    /// name the primary at start-up and again after every failover.
    Sentinel {
        /// The sentinels (`redis://[user:password@]host:port`, `rediss://`
        /// for TLS); the user, password and scheme are those of the
        /// sentinels, and all of them use the same ones.
        sentinels: Vec<String>,
        /// The name the sentinels monitor the primary under
        /// (`sentinel monitor <name> ...`).
        master: String,
        /// How the primary is reached once a sentinel has named it: the
        /// scheme (`rediss://` for TLS), user, password and database of
        /// this URL; its host and port are not used (write `primary`).
        /// `None`: the sentinels' scheme, user and password, database 0.
        data_url: Option<String>,
    },
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Single(url) => f.debug_tuple("Single").field(&redact_url(url)).finish(),
            RedisTarget::Cluster(urls) => f
                .debug_tuple("Cluster")
                .field(&urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>())
                .finish(),
            RedisTarget::Sentinel {
                sentinels,
                master,
                data_url,
            } => f
                .debug_struct("Sentinel")
                .field(
                    "sentinels",
                    &sentinels.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
                )
                .field("master", master)
                .field("data_url", &data_url.as_deref().map(redact_url))
                .finish(),
        }
    }
}

impl RedisTarget {
    /// A printable description with passwords redacted.
    pub fn redacted(&self) -> String {
        match self {
            RedisTarget::Single(url) => redact_url(url),
            RedisTarget::Cluster(urls) => urls
                .iter()
                .map(|u| redact_url(u))
                .collect::<Vec<_>>()
                .join(","),
            RedisTarget::Sentinel {
                sentinels, master, ..
            } => format!(
                "{master} via sentinels {}",
                sentinels
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// Every setting of a [`Cache`](crate::Cache). Build one with
/// [`CacheConfig::default`] and the `with_*`-free public fields through
/// [`CacheBuilder`](crate::CacheBuilder), or read it from the environment with
/// [`CacheConfig::from_env`].
///
/// | variable | field | default |
/// |---|---|---|
/// | `REDIS_URL` | [`redis`](Self::redis) (comma-separated URLs or `REDIS_CLUSTER=true`: cluster) | unset: in-memory |
/// | `REDIS_SENTINELS` | [`redis`](Self::redis): comma-separated sentinel URLs ([`RedisTarget::Sentinel`]) | unset |
/// | `REDIS_SENTINEL_MASTER` | the name the sentinels monitor the primary under; required with `REDIS_SENTINELS` | unset |
/// | `REDIS_SENTINEL_DATA_URL` | scheme, user, password and database for the primary the sentinels name (`rediss://user:pass@primary/0`) | the sentinels' scheme and credentials |
/// | `CACHE_WAIT_REPLICAS` | [`wait_replicas`](Self::wait_replicas) | `0` (off) |
/// | `CACHE_ENABLED` | [`enabled`](Self::enabled) | `true` |
/// | `CACHE_NAMESPACE` | [`namespace`](Self::namespace) | `cache` |
/// | `CACHE_DEFAULT_TTL` | [`default_ttl`](Self::default_ttl) (seconds) | `300` |
/// | `REDIS_POOL_SIZE` | [`pool_size`](Self::pool_size) | `16` |
/// | `CACHE_TIMEOUT_MS` | [`timeout`](Self::timeout) | `250` |
/// | `CACHE_CB_FAILURES` | [`breaker_failures`](Self::breaker_failures) | `5` |
/// | `CACHE_CB_COOLDOWN_S` | [`breaker_cooldown`](Self::breaker_cooldown) | `30` |
/// | `CACHE_FALLBACK_TTL_S` | [`fallback_ttl_cap`](Self::fallback_ttl_cap) | `30` |
/// | `CACHE_LEASE_TTL_MS` | [`lease_ttl`](Self::lease_ttl) (renewed while the load runs) | `3000` |
/// | `CACHE_CODEC` | [`codec`](Self::codec) (`bincode` or `json`) | `bincode` |
/// | `REDIS_TCP_NODELAY` | [`tcp_nodelay`](Self::tcp_nodelay) | `true` |
/// | `CACHE_PREFIX_GENERATIONS` | [`prefix_generations`](Self::prefix_generations) | on for Redis, off for memory |
/// | `CACHE_NEAR_CAPACITY` | [`near_capacity`](Self::near_capacity) | unset: no near cache |
/// | `CACHE_NEAR_MAX_BYTES` | [`near_max_bytes`](Self::near_max_bytes) | `67108864` (64 MiB) |
/// | `CACHE_MAX_VALUE_BYTES` | [`max_value_bytes`](Self::max_value_bytes) | `4194304` |
/// | `CACHE_REQUIRE_REDIS` | [`require_redis`](Self::require_redis) | `false` |
/// | `CACHE_TRUST_PERSISTENCE` | [`trust_persistence`](Self::trust_persistence) | `false` |
/// | `REDIS_TLS_CA_FILE` | [`tls_ca_file`](Self::tls_ca_file) (PEM CA trusted besides the system roots) | unset: system roots only |
/// | `REDIS_TLS_CERT_FILE` | [`tls_cert_file`](Self::tls_cert_file) (PEM client certificate) | unset: no client certificate |
/// | `REDIS_TLS_KEY_FILE` | [`tls_key_file`](Self::tls_key_file) (PEM private key of the client certificate) | unset |
///
/// # TLS
///
/// A `rediss://` URL connects over TLS (rustls, default feature `tls`).
/// The server certificate is checked against the system's root
/// certificates plus, when `REDIS_TLS_CA_FILE` names a PEM file, the CA
/// certificates in that file (a private CA). Setting both
/// `REDIS_TLS_CERT_FILE` and `REDIS_TLS_KEY_FILE` presents a client
/// certificate (mutual TLS, `tls-auth-clients yes`). The files are read and
/// checked when the configuration is read: a missing or malformed file is a
/// [`ConfigError::TlsFile`] naming the variable.
///
/// ```
/// use cache_core::{CacheConfig, ConfigError};
/// let config = CacheConfig::from_lookup(|name| match name {
///     "REDIS_URL" => Some("rediss://redis.internal:6380".into()),
///     "REDIS_TLS_CA_FILE" => Some("/nonexistent/ca.pem".into()),
///     _ => None,
/// });
/// assert!(matches!(
///     config,
///     Err(ConfigError::TlsFile { variable: "REDIS_TLS_CA_FILE", .. })
/// ));
/// ```
///
/// # Start-up
///
/// By default a cache whose Redis is unreachable at start-up starts degraded
/// (serving from its in-memory fallback) and switches to Redis when it
/// answers. `CACHE_REQUIRE_REDIS=true` makes
/// [`CacheBuilder::build`](crate::CacheBuilder::build) fail instead, with a
/// [`ConfigError::RedisUnavailable`] saying why (unreachable, wrong password,
/// TLS handshake failure, unknown database...).
///
/// ```
/// use cache_core::CacheConfig;
/// let vars = [("CACHE_NAMESPACE", "shop"), ("CACHE_TIMEOUT_MS", "100")];
/// let config = CacheConfig::from_lookup(|name| {
///     vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
/// })
/// .unwrap();
/// assert_eq!(config.namespace, "shop");
/// assert_eq!(config.timeout.as_millis(), 100);
///
/// let bad = CacheConfig::from_lookup(|name| (name == "CACHE_TIMEOUT_MS").then(|| "soon".into()));
/// assert!(bad.unwrap_err().to_string().contains("CACHE_TIMEOUT_MS"));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CacheConfig {
    /// `false` turns caching off: cached functions run their bodies, the direct API stores nothing.
    pub enabled: bool,
    /// Redis server or cluster; `None` keeps everything in process memory.
    pub redis: Option<RedisTarget>,
    /// First segment of every key: `{namespace}:{prefix}:{key}`. Letters, digits, `_`, `-`, `.`.
    pub namespace: String,
    /// TTL used when a call gives none.
    pub default_ttl: Duration,
    /// Size of the bb8 pool that creates, health-checks and replaces Redis connections.
    pub pool_size: u32,
    /// Bound on every Redis call.
    pub timeout: Duration,
    /// Consecutive availability failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe call is let through.
    pub breaker_cooldown: Duration,
    /// Longest TTL of a value kept in the in-memory fallback while Redis is away
    /// (other instances cannot invalidate it, so keep it short).
    pub fallback_ttl_cap: Duration,
    /// Entries the in-memory fallback (and the memory backend) may hold.
    pub memory_capacity: u64,
    /// Codec used to write values (any known codec is read).
    pub codec: CodecKind,
    /// Largest encoded value stored or decoded; larger ones are refused and counted.
    pub max_value_bytes: usize,
    /// How long a loader's lease on a missing key lasts: other processes wait
    /// at most this long for its value before loading themselves.
    pub lease_ttl: Duration,
    /// Leases on misses (default on). Turning them off removes the guarantee
    /// that a load overtaken by an invalidation cannot store its stale value,
    /// and the cross-process stampede protection; it exists to measure them.
    pub leases: bool,
    /// TCP_NODELAY on Redis connections (`REDIS_TCP_NODELAY`, default on).
    ///
    /// Off (Nagle's algorithm, redis-rs's own default) lets the kernel
    /// coalesce the small writes of many concurrent callers on the shared
    /// connection: on the 2-core benchmark machine, over loopback, that cost
    /// less client CPU per call at 64 tasks (docs/BENCHMARKS.md). It stays
    /// on by default because over a real network Nagle holds the tail of
    /// any command longer than one segment (a value over ~1.4 KB) until the
    /// server acknowledges the first part, and the server delays that
    /// acknowledgement by up to 40 ms: a latency cliff no cache should hide
    /// in its defaults (redis-py, ioredis, Jedis and Lettuce all set
    /// NODELAY for the same reason). Turn it off only for small values on
    /// a fast link, after measuring.
    pub tcp_nodelay: bool,
    /// O(1) prefix invalidation (`CACHE_PREFIX_GENERATIONS`; `None`, the
    /// default, means on for Redis and Redis Cluster, off for the memory
    /// and custom backends). Each prefix has a generation (a random 64-bit
    /// value at `{namespace}:%gen:{prefix}`); values are labeled with the
    /// generation they were loaded under, and
    /// [`invalidate_prefix`](crate::Cache::invalidate_prefix) just replaces
    /// the generation: one write whatever the number of keys and whatever
    /// else the database holds, with the old values left to expire. On Redis
    /// and Redis Cluster each process holds the generations it has read and
    /// Redis tells it when one changes (RESP3 client tracking), so a hit
    /// stays one `GET`; while tracking is not established (and on custom
    /// backends) a hit reads the value and the generation in one `MGET`.
    /// Off, `invalidate_prefix` is SCAN + UNLINK, whose cost is the size of
    /// the whole database, not of the prefix.
    pub prefix_generations: Option<bool>,
    /// Entries of the near cache (`CACHE_NEAR_CAPACITY`; `None`, the
    /// default, means no near cache): a process-local level of decoded
    /// values in front of Redis or a Redis Cluster, kept correct by Redis
    /// client tracking in broadcast mode (on a cluster, one tracking
    /// connection per master). A near hit costs no round trip;
    /// another instance's write or delete reaches it once Redis' message
    /// about it arrives (see the crate docs for the measured window).
    pub near_capacity: Option<u64>,
    /// Bytes the near cache may hold (`CACHE_NEAR_MAX_BYTES`, 64 MiB by
    /// default), stored keys and values counted: whichever of this and
    /// [`near_capacity`](Self::near_capacity) is reached first evicts. A
    /// value over 64 KiB is never kept in the near cache.
    pub near_max_bytes: u64,
    /// Fail start-up instead of running degraded when Redis is unreachable
    /// or refuses the configuration (`CACHE_REQUIRE_REDIS`, default off).
    pub require_redis: bool,
    /// Whether values Redis kept across a restart (a snapshot or an
    /// append-only file) are trusted (`CACHE_TRUST_PERSISTENCE`, default
    /// `false`). A restart from persisted data can bring back values that
    /// were invalidated after the data was saved, so by default a single
    /// Redis server found restarted with data of an earlier run (its
    /// `run_id` differs from the one recorded in the namespace) has the
    /// cache's namespace cleared before the cache trusts it again: a cold
    /// cache after such a restart, never an invalidated value. Set it only
    /// when the persistence cannot lose writes (`appendfsync always`).
    pub trust_persistence: bool,
    /// PEM file of CA certificates trusted for `rediss://` in addition to
    /// the system's root certificates (`REDIS_TLS_CA_FILE`).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) presented to a server that requires
    /// one (`REDIS_TLS_CERT_FILE`); needs [`tls_key_file`](Self::tls_key_file).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of [`tls_cert_file`](Self::tls_cert_file) (`REDIS_TLS_KEY_FILE`).
    pub tls_key_file: Option<PathBuf>,
    /// Replicas that must acknowledge an invalidation (`CACHE_WAIT_REPLICAS`,
    /// default 0: off). Each key delete and generation write is followed
    /// by `WAIT n`, bounded by the call's timeout; one that fewer replicas
    /// acknowledge counts as not delivered: it is remembered and replayed
    /// (with `WAIT` again) like one made while Redis was away, and
    /// meanwhile this instance serves from its fallback. A replica promoted
    /// by a failover then holds every invalidation that returned before
    /// it. Single server (with replicas) or Sentinel; not on a cluster.
    pub wait_replicas: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            redis: None,
            namespace: "cache".to_owned(),
            default_ttl: Duration::from_secs(300),
            pool_size: 16,
            timeout: Duration::from_millis(250),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            fallback_ttl_cap: Duration::from_secs(30),
            memory_capacity: 100_000,
            codec: CodecKind::Bincode,
            max_value_bytes: 4 * 1024 * 1024,
            lease_ttl: Duration::from_secs(3),
            leases: true,
            tcp_nodelay: true,
            prefix_generations: None,
            near_capacity: None,
            near_max_bytes: 64 * 1024 * 1024,
            require_redis: false,
            trust_persistence: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            wait_replicas: 0,
        }
    }
}

impl CacheConfig {
    /// Reads the configuration from the process environment (see the table above).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (a variable name to its value),
    /// so it can be tested without touching the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = CacheConfig::default();
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        if let Some(v) = get("CACHE_ENABLED") {
            config.enabled = parse_bool("CACHE_ENABLED", &v)?;
        }
        let cluster = match get("REDIS_CLUSTER") {
            Some(v) => parse_bool("REDIS_CLUSTER", &v)?,
            None => false,
        };
        config.redis = sentinel::from_env(&get)?;
        if cluster && config.redis.is_some() {
            return Err(invalid(
                "REDIS_CLUSTER",
                "true",
                "a Redis Cluster is not found through sentinels: unset REDIS_SENTINELS or REDIS_CLUSTER",
            ));
        }
        if let Some(url) = get("REDIS_URL") {
            if config.redis.is_some() {
                return Err(invalid(
                    "REDIS_URL",
                    &redact_url(&url),
                    "set either REDIS_URL or REDIS_SENTINELS, not both",
                ));
            }
            let urls: Vec<String> = url.split(',').map(|u| u.trim().to_owned()).collect();
            for u in &urls {
                validate_url("REDIS_URL", u)?;
            }
            config.redis = Some(if cluster || urls.len() > 1 {
                RedisTarget::Cluster(urls)
            } else {
                RedisTarget::Single(urls.into_iter().next().unwrap_or_default())
            });
        }
        if let Some(v) = get("REDIS_TCP_NODELAY") {
            config.tcp_nodelay = parse_bool("REDIS_TCP_NODELAY", &v)?;
        }
        if let Some(v) = get("CACHE_PREFIX_GENERATIONS") {
            config.prefix_generations = Some(parse_bool("CACHE_PREFIX_GENERATIONS", &v)?);
        }
        if let Some(v) = get("CACHE_NEAR_CAPACITY") {
            config.near_capacity = Some(parse_num("CACHE_NEAR_CAPACITY", &v, 1, 100_000_000)?);
        }
        if let Some(v) = get("CACHE_NEAR_MAX_BYTES") {
            config.near_max_bytes = parse_num("CACHE_NEAR_MAX_BYTES", &v, 1024, 1 << 40)?;
        }
        if let Some(v) = get("CACHE_NAMESPACE") {
            validate_namespace("CACHE_NAMESPACE", &v)?;
            config.namespace = v;
        }
        if let Some(v) = get("CACHE_DEFAULT_TTL") {
            config.default_ttl =
                Duration::from_secs(parse_num("CACHE_DEFAULT_TTL", &v, 1, u64::MAX / 1000)?);
        }
        if let Some(v) = get("CACHE_LEASE_TTL_MS") {
            config.lease_ttl =
                Duration::from_millis(parse_num("CACHE_LEASE_TTL_MS", &v, 10, 3_600_000)?);
        }
        if let Some(v) = get("REDIS_POOL_SIZE") {
            config.pool_size = parse_num("REDIS_POOL_SIZE", &v, 1, 1024)? as u32;
        }
        if let Some(v) = get("CACHE_TIMEOUT_MS") {
            config.timeout = Duration::from_millis(parse_num("CACHE_TIMEOUT_MS", &v, 1, 600_000)?);
        }
        if let Some(v) = get("CACHE_CB_FAILURES") {
            config.breaker_failures = parse_num("CACHE_CB_FAILURES", &v, 1, 1_000_000)? as u32;
        }
        if let Some(v) = get("CACHE_CB_COOLDOWN_S") {
            config.breaker_cooldown =
                Duration::from_secs(parse_num("CACHE_CB_COOLDOWN_S", &v, 0, 86_400)?);
        }
        if let Some(v) = get("CACHE_FALLBACK_TTL_S") {
            config.fallback_ttl_cap =
                Duration::from_secs(parse_num("CACHE_FALLBACK_TTL_S", &v, 0, 86_400)?);
        }
        if let Some(v) = get("CACHE_CODEC") {
            config.codec = match v.to_ascii_lowercase().as_str() {
                "bincode" => CodecKind::Bincode,
                "json" => CodecKind::Json,
                _ => return Err(invalid("CACHE_CODEC", &v, "expected `bincode` or `json`")),
            };
        }
        if let Some(v) = get("CACHE_MAX_VALUE_BYTES") {
            config.max_value_bytes =
                parse_num("CACHE_MAX_VALUE_BYTES", &v, 16, 512 * 1024 * 1024)? as usize;
        }
        if let Some(v) = get("CACHE_REQUIRE_REDIS") {
            config.require_redis = parse_bool("CACHE_REQUIRE_REDIS", &v)?;
        }
        if let Some(v) = get("CACHE_TRUST_PERSISTENCE") {
            config.trust_persistence = parse_bool("CACHE_TRUST_PERSISTENCE", &v)?;
        }
        if let Some(v) = get("CACHE_WAIT_REPLICAS") {
            config.wait_replicas = parse_num("CACHE_WAIT_REPLICAS", &v, 0, 64)? as u32;
            config.check_wait_replicas("CACHE_WAIT_REPLICAS")?;
        }
        config.tls_ca_file = get(CA_VAR).map(PathBuf::from);
        config.tls_cert_file = get(CERT_VAR).map(PathBuf::from);
        config.tls_key_file = get(KEY_VAR).map(PathBuf::from);
        config.tls_certificates(TlsVariables::ENV)?;
        Ok(config)
    }

    /// Checks the settings a builder (or code that fills the fields
    /// directly) may have set to values the cache cannot work with; the
    /// environment path checks each variable as it reads it. Zero durations
    /// are refused: a zero TTL would keep values for an instant, a zero
    /// timeout would fail every call, a zero lease would protect no load.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let positive = |setting: &'static str, value: Duration| {
            if value.is_zero() {
                Err(invalid(
                    setting,
                    "0",
                    "expected a duration greater than zero",
                ))
            } else {
                Ok(())
            }
        };
        positive("default_ttl", self.default_ttl)?;
        positive("timeout", self.timeout)?;
        positive("lease_ttl", self.lease_ttl)?;
        if self.pool_size == 0 {
            return Err(invalid("pool_size", "0", "expected at least 1"));
        }
        if self.breaker_failures == 0 {
            return Err(invalid(
                "circuit_breaker",
                "0",
                "expected at least 1 failure",
            ));
        }
        self.check_wait_replicas("wait_replicas")
    }

    /// `WAIT` needs one primary: a cluster would need it on every master.
    fn check_wait_replicas(&self, variable: &'static str) -> Result<(), ConfigError> {
        if self.wait_replicas > 0 && matches!(self.redis, Some(RedisTarget::Cluster(_))) {
            return Err(invalid(
                variable,
                &self.wait_replicas.to_string(),
                "waiting for replicas needs a single Redis server or Sentinel, not a cluster",
            ));
        }
        Ok(())
    }

    /// A printable description of the backend target with passwords redacted
    /// (`"memory"` when no Redis is configured).
    pub fn target_description(&self) -> String {
        match &self.redis {
            None => "memory".to_owned(),
            Some(target) => target.redacted(),
        }
    }
}

fn invalid(variable: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        variable,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn parse_bool(variable: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(
            variable,
            value,
            "expected true/false, 1/0, yes/no or on/off",
        )),
    }
}

fn parse_num(variable: &'static str, value: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) => Err(invalid(
            variable,
            value,
            &format!("expected a whole number from {min} to {max}"),
        )),
        Err(_) => Err(invalid(
            variable,
            value,
            &format!("expected a whole number from {min} to {max}"),
        )),
    }
}

pub(crate) fn validate_namespace(variable: &'static str, ns: &str) -> Result<(), ConfigError> {
    if ns.is_empty() || ns.len() > 64 {
        return Err(invalid(variable, ns, "expected 1 to 64 characters"));
    }
    if !ns
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(invalid(
            variable,
            ns,
            "only ASCII letters, digits, `_`, `-` and `.` are allowed",
        ));
    }
    Ok(())
}

pub(crate) fn validate_url(variable: &'static str, url: &str) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError::InvalidUrl {
        variable,
        url: redact_url(url),
        reason,
    };
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        "redis" | "redis+unix" | "unix" => {}
        "rediss" => {
            if !cfg!(feature = "tls") {
                return Err(bad("rediss:// needs cache-core's `tls` feature".to_owned()));
            }
        }
        "" => {
            return Err(bad(
                "expected a URL such as redis://127.0.0.1:6379".to_owned()
            ));
        }
        other => {
            return Err(bad(format!(
                "unsupported scheme `{other}`; expected redis:// or rediss://"
            )));
        }
    }
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(|_| ())
        .map_err(|e| bad(redact_text(&e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<CacheConfig, ConfigError> {
        CacheConfig::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn the_lease_ttl_is_read_in_milliseconds_and_checked() {
        let config = from(&[("CACHE_LEASE_TTL_MS", "1500")]).unwrap();
        assert_eq!(config.lease_ttl, Duration::from_millis(1500));
        for bad in ["0", "abc", "-5"] {
            assert!(matches!(
                from(&[("CACHE_LEASE_TTL_MS", bad)]),
                Err(ConfigError::Invalid {
                    variable: "CACHE_LEASE_TTL_MS",
                    ..
                })
            ));
        }
    }

    #[tokio::test]
    async fn zero_durations_from_the_builder_are_errors_like_from_the_environment() {
        assert!(matches!(
            from(&[("CACHE_DEFAULT_TTL", "0")]),
            Err(ConfigError::Invalid {
                variable: "CACHE_DEFAULT_TTL",
                ..
            })
        ));
        let zero = Duration::ZERO;
        let cases = [
            ("default_ttl", crate::Cache::builder().default_ttl(zero)),
            ("timeout", crate::Cache::builder().timeout(zero)),
            ("lease_ttl", crate::Cache::builder().lease_ttl(zero)),
            ("pool_size", crate::Cache::builder().pool_size(0)),
        ];
        for (setting, builder) in cases {
            match builder.build().await {
                Err(ConfigError::Invalid { variable, .. }) => assert_eq!(variable, setting),
                other => panic!("{setting}: {other:?}"),
            }
        }
        assert!(
            crate::Cache::builder()
                .default_ttl(Duration::from_millis(1))
                .build()
                .await
                .is_ok()
        );
    }
}
