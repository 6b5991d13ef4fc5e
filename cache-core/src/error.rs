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
    /// A TLS certificate or key file is missing, unreadable or malformed, or
    /// one of a client certificate and its key is given without the other.
    #[error("{variable}={path:?} is invalid: {reason}")]
    TlsFile {
        /// `REDIS_TLS_CA_FILE`, `REDIS_TLS_CERT_FILE`, `REDIS_TLS_KEY_FILE`
        /// or the builder method that received the path.
        variable: &'static str,
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Redis was required at start-up (`CACHE_REQUIRE_REDIS=true`,
    /// [`CacheBuilder::require_redis`](crate::CacheBuilder::require_redis))
    /// but could not be used.
    #[error(
        "Redis is required (CACHE_REQUIRE_REDIS) but unusable at {target}: {kind} error: {reason}"
    )]
    RedisUnavailable {
        /// The target with passwords redacted.
        target: String,
        /// The class of the failure (`connection`, `auth`, `config`, ...).
        kind: ErrorKind,
        /// What went wrong and what to fix.
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
    /// Authentication failed (wrong password or ACL user) or the ACL user
    /// lacks a permission the cache needs (`NOPERM`).
    Auth,
    /// The server refuses the connection's configuration (for example a
    /// database index out of range in the URL's `/db` path).
    Config,
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
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Timeout,
        ErrorKind::Connection,
        ErrorKind::CircuitOpen,
        ErrorKind::Auth,
        ErrorKind::Config,
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
            ErrorKind::Config => "config",
            ErrorKind::OutOfMemory => "out_of_memory",
            ErrorKind::WrongType => "wrong_type",
            ErrorKind::Server => "server",
            ErrorKind::Other => "other",
        }
    }

    /// Whether this failure says the backend is unavailable (counts towards
    /// opening the circuit breaker). A `WRONGTYPE` or OOM answer proves the
    /// server is up, so it does not. Refused credentials, permissions or
    /// database do: the backend cannot serve until someone fixes them.
    pub fn is_availability(self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout
                | ErrorKind::Connection
                | ErrorKind::Auth
                | ErrorKind::Config
                | ErrorKind::Other
        )
    }

    /// Whether someone must change the deployment (credentials, ACL, URL)
    /// before the backend can serve: such failures are logged at ERROR.
    pub fn needs_operator(self) -> bool {
        matches!(self, ErrorKind::Auth | ErrorKind::Config)
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

    /// Whether Redis refused the command for lack of ACL permission
    /// (`NOPERM`): an [`Auth`](ErrorKind::Auth) error that proves Redis is
    /// up, unlike a refused password.
    pub(crate) fn is_permission_denied(&self) -> bool {
        self.message.contains("NOPERM") || self.message.contains("NoPerm")
    }
}

/// What to fix, for failures that need an operator.
const FIX_PASSWORD: &str = "check the user name and password in REDIS_URL \
     (redis://user:password@host:port) against the server's requirepass or ACL users";
pub(crate) const FIX_PERMISSION: &str = "grant the ACL user the commands and key pattern the cache \
     needs (see the README's minimal ACL), or use another user";
const FIX_DATABASE: &str = "the database index in REDIS_URL (redis://host:port/<db>) \
     must be below the server's `databases` setting (16 by default)";

impl From<redis::RedisError> for BackendError {
    fn from(err: redis::RedisError) -> Self {
        use redis::ErrorKind as K;
        let text = err.to_string();
        let (kind, fix) = match err.code() {
            Some("OOM") => (ErrorKind::OutOfMemory, None),
            Some("NOPERM") => (ErrorKind::Auth, Some(FIX_PERMISSION)),
            Some("NOAUTH" | "WRONGPASS") => (ErrorKind::Auth, Some(FIX_PASSWORD)),
            Some("WRONGTYPE") => (ErrorKind::WrongType, None),
            // Checked before the connection classes below: redis-rs marks a
            // refused AUTH as "reconnect", which is not what fixes it.
            _ if err.kind() == K::AuthenticationFailed => (ErrorKind::Auth, Some(FIX_PASSWORD)),
            _ if text.contains("refused to switch database")
                || text.contains("DB index is out of range") =>
            {
                (ErrorKind::Config, Some(FIX_DATABASE))
            }
            _ => (classify(&err), None),
        };
        let message = crate::redact::redact_text(&text);
        BackendError::new(
            kind,
            match fix {
                Some(fix) => format!("{message}; {fix}"),
                None => message,
            },
        )
    }
}

fn classify(err: &redis::RedisError) -> ErrorKind {
    use redis::ErrorKind as K;
    if err.is_timeout() {
        ErrorKind::Timeout
    } else if err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
    {
        ErrorKind::Connection
    } else {
        match err.kind() {
            K::Server(_) | K::Extension => ErrorKind::Server,
            K::ClusterConnectionNotFound => ErrorKind::Connection,
            _ => ErrorKind::Other,
        }
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

/// A write refused before it ran, because its invalidation could not be
/// delivered: `#[invalidates(..., fail_closed)]` on a cache whose Redis is
/// away (circuit breaker open, or missed invalidations not replayed yet).
/// Carry it in the function's error type (`E: From<WriteRefused>`) and
/// answer it as "try again later" (HTTP 503): availability traded for
/// consistency, the write is not acknowledged while other instances could
/// not learn of it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("write refused: its cache invalidation cannot be delivered now ({reason})")]
pub struct WriteRefused {
    reason: &'static str,
}

impl WriteRefused {
    pub(crate) fn new(reason: &'static str) -> Self {
        WriteRefused { reason }
    }

    /// Why (the breaker is open, or missed invalidations await replay).
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}
