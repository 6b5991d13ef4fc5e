//! [`SentinelBuilder`]: a [`RedisSentinel`] with a master name of your
//! choice, passwords for the data servers and for the sentinels, and TLS.

use std::net::SocketAddr;
use std::path::Path;

use super::{RedisSentinel, SERVER_ARGS};
use crate::RedisServer;

/// Builds a [`RedisSentinel`]; see [`RedisSentinel::builder`].
///
/// - [`password`](Self::password): the primary and the replica require it
///   (`requirepass`, and `masterauth` to replicate each other), and the
///   sentinels use it to reach them (`sentinel auth-pass`).
/// - [`sentinel_password`](Self::sentinel_password): the sentinels require
///   it (`requirepass`), of clients and of each other (`sentinel
///   sentinel-pass`).
/// - [`tls`](Self::tls): every process listens on TLS only, replication and
///   the sentinels' own connections use TLS, and every certificate is
///   signed by one private CA ([`RedisSentinel::tls_ca_file`]).
///
/// ```no_run
/// let sentinel = cache_testkit::RedisSentinel::builder()
///     .master_name("orders")
///     .password("data-secret")
///     .start();
/// assert_eq!(sentinel.password(), Some("data-secret"));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct SentinelBuilder {
    options: Options,
}

impl Default for SentinelBuilder {
    fn default() -> Self {
        SentinelBuilder {
            options: Options {
                master_name: "mymaster".to_owned(),
                password: None,
                sentinel_password: None,
                tls: false,
            },
        }
    }
}

impl SentinelBuilder {
    /// The name the sentinels monitor the primary under (default
    /// `mymaster`; letters, digits, `-`, `_` and `.`).
    pub fn master_name(mut self, name: &str) -> Self {
        self.options.master_name = name.to_owned();
        self
    }

    /// A password the data servers require (letters and digits).
    pub fn password(mut self, password: &str) -> Self {
        self.options.password = Some(password.to_owned());
        self
    }

    /// A password the sentinels require (letters and digits).
    pub fn sentinel_password(mut self, password: &str) -> Self {
        self.options.sentinel_password = Some(password.to_owned());
        self
    }

    /// Everything over TLS only (needs `openssl` and a redis-server built
    /// with TLS).
    pub fn tls(mut self) -> Self {
        self.options.tls = true;
        self
    }

    /// Starts the fixture, as [`RedisSentinel::start`] describes.
    pub fn start(self) -> RedisSentinel {
        let o = &self.options;
        assert!(
            !o.master_name.is_empty()
                && o.master_name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "cache-testkit: invalid sentinel master name {:?} (use letters, digits, `-`, `_`, `.`)",
            o.master_name
        );
        for password in [&o.password, &o.sentinel_password].into_iter().flatten() {
            assert!(
                !password.is_empty() && password.chars().all(|c| c.is_ascii_alphanumeric()),
                "cache-testkit: use letters and digits for fixture passwords"
            );
        }
        super::sentinel_process::require_sentinel();
        RedisSentinel::launch(self.options)
    }
}

/// What a fixture was built with.
#[derive(Debug, Clone)]
pub(super) struct Options {
    pub(super) master_name: String,
    pub(super) password: Option<String>,
    pub(super) sentinel_password: Option<String>,
    pub(super) tls: bool,
}

impl Options {
    pub(super) fn scheme(&self) -> &'static str {
        if self.tls { "rediss" } else { "redis" }
    }

    /// A sentinel's URL with its password.
    pub(super) fn sentinel_url(&self, addr: SocketAddr) -> String {
        match &self.sentinel_password {
            Some(password) => format!("{}://:{password}@{addr}", self.scheme()),
            None => format!("{}://{addr}", self.scheme()),
        }
    }

    /// Starts a data server (a replica of the loopback port `replica_of`,
    /// if given); a TLS one uses the certificates in `certificates` (made
    /// afresh if `None`).
    pub(super) fn server(
        &self,
        replica_of: Option<u16>,
        certificates: Option<&Path>,
    ) -> RedisServer {
        let mut args: Vec<String> = SERVER_ARGS.iter().map(|a| (*a).to_owned()).collect();
        if let Some(password) = &self.password {
            for arg in ["--requirepass", password, "--masterauth", password] {
                args.push(arg.to_owned());
            }
        }
        if let Some(port) = replica_of {
            args.extend([
                "--replicaof".to_owned(),
                "127.0.0.1".to_owned(),
                port.to_string(),
            ]);
        }
        if self.tls {
            args.extend(["--tls-replication".to_owned(), "yes".to_owned()]);
            RedisServer::launch_tls(false, certificates, args, false)
        } else {
            RedisServer::launch(args, false)
        }
    }
}
