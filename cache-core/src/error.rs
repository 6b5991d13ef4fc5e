//! Error types: configuration errors (typed, naming the variable), backend
//! errors (classified by kind, for stats and the circuit breaker) and the
//! errors of the direct API.

use std::fmt;

/// A configuration value that could not be used.
///
/// Every variant names the environment variable (or builder method) at fault,
/// so a misconfigured deployment says exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A variable holds a value of the wrong shape (for example `CACHE_TIMEOUT_MS=abc`).
    #[error("{variable}={value:?} is invalid: {reason}")]
    Invalid {
        /// The environment variable or builder setting, e.g. `CACHE_TIMEOUT_MS`.
        variable: &'static str,
        /// The offending value (URLs have their password redacted).
        value: String,
        /// What a valid value looks like.
        reason: String,
    },
    /// The Redis URL could not be parsed or names an unsupported scheme.
    #[error("{variable} is not a valid Redis URL ({url}): {reason}")]
    InvalidUrl {
        /// `REDIS_URL` or the builder method that received it.
        variable: &'static str,
        /// The URL with any password redacted.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// The class of a backend failure. Used for stats ("errors by kind"), for the
/// circuit breaker and in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The call did not complete within the configured timeout.
    Timeout,
    /// No connection could be made or the connection broke.
    Connection,
    /// The circuit breaker is open: the call was not attempted.
    CircuitOpen,
    /// Authentication failed (wrong password or ACL user).
    Auth,
    /// The server is out of memory (`maxmemory` reached with `noeviction`).
    OutOfMemory,
    /// The key holds a value of another type (`WRONGTYPE`).
    WrongType,
    /// The server answered with another error (includes cluster redirect failures).
    Server,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// All kinds, in a stable order.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Timeout,
        ErrorKind::Connection,
        ErrorKind::CircuitOpen,
        ErrorKind::Auth,
        ErrorKind::OutOfMemory,
        ErrorKind::WrongType,
        ErrorKind::Server,
        ErrorKind::Other,
    ];

    /// A short snake_case name (`"timeout"`, `"connection"`, ...), used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Auth => "auth",
            ErrorKind::OutOfMemory => "out_of_memory",
            ErrorKind::WrongType => "wrong_type",
            ErrorKind::Server => "server",
            ErrorKind::Other => "other",
        }
    }

    /// Whether this failure says the backend is unavailable (counts towards
    /// opening the circuit breaker). A `WRONGTYPE` or OOM answer proves the
    /// server is up, so it does not.
    pub fn is_availability(self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout | ErrorKind::Connection | ErrorKind::Auth | ErrorKind::Other
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure reported by a [`Backend`](crate::Backend).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind} error: {message}")]
pub struct BackendError {
    /// What class of failure this is.
    pub kind: ErrorKind,
    /// A human-readable description (never contains passwords).
    pub message: String,
}

impl BackendError {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        BackendError {
            kind,
            message: message.into(),
        }
    }
}

impl From<redis::RedisError> for BackendError {
    fn from(err: redis::RedisError) -> Self {
        use redis::ErrorKind as K;
        let kind = match err.code() {
            Some("OOM") => ErrorKind::OutOfMemory,
            Some("NOAUTH" | "WRONGPASS" | "NOPERM") => ErrorKind::Auth,
            Some("WRONGTYPE") => ErrorKind::WrongType,
            _ if err.is_timeout() => ErrorKind::Timeout,
            _ if err.is_io_error()
                || err.is_connection_dropped()
                || err.is_connection_refusal()
                || err.is_unrecoverable_error() =>
            {
                ErrorKind::Connection
            }
            _ => match err.kind() {
                K::AuthenticationFailed => ErrorKind::Auth,
                K::Server(_) | K::Extension => ErrorKind::Server,
                K::Io | K::ClusterConnectionNotFound => ErrorKind::Connection,
                _ => ErrorKind::Other,
            },
        };
        BackendError::new(kind, crate::config::redact_text(&err.to_string()))
    }
}

/// An error of the direct API ([`Cache::get`](crate::Cache::get) and friends).
///
/// Backend outages are *not* errors: the resilience layer serves from the
/// in-memory fallback and counts the failure in [`stats`](crate::Cache::stats).
/// What remains are mistakes a caller can fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The value could not be serialized by the codec.
    #[error("cannot encode the value for key {key:?}: {message}")]
    Encode {
        /// The logical key.
        key: String,
        /// The codec's message.
        message: String,
    },
    /// The encoded value is larger than the configured maximum; it was not stored.
    #[error("value for key {key:?} is {size} bytes, over the {limit}-byte limit; not stored")]
    TooLarge {
        /// The logical key.
        key: String,
        /// Encoded size in bytes.
        size: usize,
        /// The configured `max_value_bytes`.
        limit: usize,
    },
    /// The key or pattern is not usable (empty, or contains control characters).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The rejected key.
        key: String,
        /// Why.
        reason: &'static str,
    },
    /// A counter operation hit a key holding something other than an integer,
    /// or the backend failed while no fallback could answer.
    #[error(transparent)]
    Backend(#[from] BackendError),
}
