//! How tests reach a [`RedisServer`]: its port, URLs, password and clients.

use std::fs;
use std::net::SocketAddr;

use super::RedisServer;
use crate::ports::loopback;

impl RedisServer {
    /// The TCP port (stays the same across [`stop`](RedisServer::stop) /
    /// [`restart`](RedisServer::restart)).
    ///
    /// ```no_run
    /// let server = cache_testkit::RedisServer::start();
    /// assert!(server.port() > 0);
    /// ```
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    ///
    /// ```no_run
    /// let server = cache_testkit::RedisServer::start();
    /// assert!(server.addr().ip().is_loopback());
    /// ```
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// `redis://127.0.0.1:<port>`, without credentials even if the server
    /// requires a password (see [`RedisServer::authed_url`]).
    ///
    /// ```no_run
    /// let server = cache_testkit::RedisServer::start();
    /// assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    /// ```
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Like [`RedisServer::url`], with the `--requirepass` password if one was
    /// given (`redis://:<password>@127.0.0.1:<port>`); otherwise equal to `url()`.
    ///
    /// ```no_run
    /// let server = cache_testkit::RedisServer::start_with(&["--requirepass", "secret"]);
    /// assert_eq!(server.authed_url(), format!("redis://:secret@127.0.0.1:{}", server.port()));
    /// ```
    pub fn authed_url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}", self.port),
            None => self.url(),
        }
    }

    /// The `--requirepass` password given to [`RedisServer::start_with`], if any.
    ///
    /// ```no_run
    /// assert_eq!(cache_testkit::RedisServer::start().password(), None);
    /// ```
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// A [`redis::Client`] for [`RedisServer::authed_url`].
    ///
    /// ```no_run
    /// # async fn demo() {
    /// let server = cache_testkit::RedisServer::start();
    /// let mut conn = server.client().get_multiplexed_async_connection().await.unwrap();
    /// let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut conn).await.unwrap();
    /// # }
    /// ```
    pub fn client(&self) -> redis::Client {
        let Some(client_auth) = self.tls else {
            return redis::Client::open(self.authed_url()).expect("a loopback redis URL is valid");
        };
        // Never panics on a second install: one provider is then in already.
        // Deprecated in rustls 0.23.48 without a replacement for ring.
        #[allow(deprecated)]
        let ring = rustls::crypto::ring::default_provider();
        let _ = ring.install_default();
        let read = |name: &str| {
            fs::read(self.dir.join(name))
                .unwrap_or_else(|e| panic!("cache-testkit: cannot read {name}: {e}"))
        };
        let certificates = redis::TlsCertificates {
            client_tls: client_auth.then(|| redis::ClientTlsConfig {
                client_cert: read("client.crt"),
                client_key: read("client.key"),
            }),
            root_cert: Some(read("ca.crt")),
        };
        redis::Client::build_with_tls(self.authed_url(), certificates)
            .expect("the test kit's own certificates are valid")
    }
}
