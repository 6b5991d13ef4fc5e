//! TLS-only [`RedisServer`]s and the certificates they and their clients use.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{RedisServer, require_program};

impl RedisServer {
    /// Starts a TLS-only server (`--port 0 --tls-port <port>`: no plain
    /// port) with certificates made for it alone by `openssl` (a private CA,
    /// a server certificate for `127.0.0.1` and `localhost`, a client
    /// certificate; see [`RedisServer::tls_ca_file`]). Clients need not
    /// present a certificate (`--tls-auth-clients no`); see
    /// [`RedisServer::start_tls_client_auth`].
    ///
    /// [`RedisServer::url`] is then `rediss://127.0.0.1:<port>`, and
    /// [`RedisServer::client`] trusts the private CA (and presents the
    /// client certificate when the server requires one).
    ///
    /// Panics if `openssl` is not installed or redis-server lacks TLS support.
    ///
    /// ```no_run
    /// let server = cache_testkit::RedisServer::start_tls();
    /// assert!(server.tls_url().starts_with("rediss://127.0.0.1:"));
    /// assert!(server.tls_ca_file().exists());
    /// ```
    pub fn start_tls() -> RedisServer {
        RedisServer::launch_tls(false, None, Vec::new(), false)
    }

    /// Like [`RedisServer::start_tls`], but the server refuses TLS clients
    /// that present no certificate signed by its CA (`--tls-auth-clients yes`):
    /// use [`RedisServer::tls_client_cert_file`] and
    /// [`RedisServer::tls_client_key_file`].
    ///
    /// ```no_run
    /// let server = cache_testkit::RedisServer::start_tls_client_auth();
    /// assert!(server.tls_client_cert_file().exists());
    /// assert!(server.tls_client_key_file().exists());
    /// ```
    pub fn start_tls_client_auth() -> RedisServer {
        RedisServer::launch_tls(true, None, Vec::new(), false)
    }

    /// Starts a TLS-only server. Its certificates are copied from
    /// `certificates` (a directory filled by [`make_certificates`], shared
    /// by the nodes of a cluster) or made for it alone.
    pub(crate) fn launch_tls(
        client_auth: bool,
        certificates: Option<&Path>,
        more_args: Vec<String>,
        cluster_bus: bool,
    ) -> RedisServer {
        require_program("redis-server");
        let status = Command::new("openssl")
            .arg("version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if status.is_err() {
            panic!(
                "cache-testkit: `openssl` was not found on PATH; install it with `apt-get install -y openssl`"
            );
        }
        RedisServer::launch_on_free_port(cluster_bus, |server| {
            match certificates {
                Some(from) => {
                    for name in CERTIFICATE_FILES {
                        fs::copy(from.join(name), server.dir.join(name))
                            .unwrap_or_else(|e| panic!("cache-testkit: cannot copy {name}: {e}"));
                    }
                }
                None => make_certificates(&server.dir),
            }
            let file = |name: &str| server.dir.join(name).to_string_lossy().into_owned();
            let mut extra_args = vec![
                "--tls-cert-file".to_owned(),
                file("server.crt"),
                "--tls-key-file".to_owned(),
                file("server.key"),
                "--tls-ca-cert-file".to_owned(),
                file("ca.crt"),
                "--tls-auth-clients".to_owned(),
                if client_auth { "yes" } else { "no" }.to_owned(),
            ];
            extra_args.extend(more_args.iter().cloned());
            server.password = more_args
                .iter()
                .position(|a| a == "--requirepass")
                .and_then(|i| more_args.get(i + 1))
                .cloned();
            server.tls = Some(client_auth);
            server.extra_args = extra_args;
        })
    }

    /// `rediss://127.0.0.1:<port>` of a server started by
    /// [`RedisServer::start_tls`] or [`RedisServer::start_tls_client_auth`]
    /// (the same as [`RedisServer::url`] for such a server).
    ///
    /// Panics if the server was started without TLS.
    ///
    /// ```no_run
    /// let server = cache_testkit::RedisServer::start_tls();
    /// assert_eq!(server.tls_url(), server.url());
    /// ```
    pub fn tls_url(&self) -> String {
        self.require_tls();
        self.url()
    }

    fn require_tls(&self) -> bool {
        self.tls
            .expect("cache-testkit: this RedisServer was not started with start_tls()")
    }

    /// PEM file of the private CA that signed the server and client
    /// certificates of a TLS server. Panics without TLS.
    pub fn tls_ca_file(&self) -> PathBuf {
        self.tls_file("ca.crt")
    }

    /// PEM client certificate (signed by [`RedisServer::tls_ca_file`]'s CA)
    /// of a TLS server. Panics without TLS.
    pub fn tls_client_cert_file(&self) -> PathBuf {
        self.tls_file("client.crt")
    }

    /// PEM private key of [`RedisServer::tls_client_cert_file`]. Panics without TLS.
    pub fn tls_client_key_file(&self) -> PathBuf {
        self.tls_file("client.key")
    }

    /// PEM certificate of another CA, one that signed nothing this server
    /// uses: trusting it alone must fail the TLS handshake. Panics without TLS.
    pub fn tls_untrusted_ca_file(&self) -> PathBuf {
        self.tls_file("other-ca.crt")
    }

    fn tls_file(&self, name: &str) -> PathBuf {
        self.require_tls();
        self.dir.join(name)
    }
}

/// The files [`make_certificates`] writes that servers and clients use.
const CERTIFICATE_FILES: [&str; 6] = [
    "ca.crt",
    "server.crt",
    "server.key",
    "client.crt",
    "client.key",
    "other-ca.crt",
];

/// Writes a private CA (`ca.crt`), a server certificate for `127.0.0.1` and
/// `localhost` (`server.crt`/`server.key`), a client certificate
/// (`client.crt`/`client.key`) and an unrelated CA (`other-ca.crt`) into `dir`.
pub(crate) fn make_certificates(dir: &Path) {
    let script = r#"
set -e
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -sha256 -days 2 -subj /CN=cache-testkit-ca -out ca.crt
key other-ca.key
openssl req -x509 -new -key other-ca.key -sha256 -days 2 -subj /CN=cache-testkit-other-ca -out other-ca.crt
key server.key
openssl req -new -key server.key -subj /CN=localhost -out server.csr
printf 'basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
' > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 2 -extfile server.ext -out server.crt 2>/dev/null
key client.key
openssl req -new -key client.key -subj /CN=cache-testkit-client -out client.csr
printf 'basicConstraints=CA:FALSE
keyUsage=digitalSignature
extendedKeyUsage=clientAuth
' > client.ext
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 2 -extfile client.ext -out client.crt 2>/dev/null
"#;
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cache-testkit: cannot run openssl: {e}"));
    assert!(
        out.status.success(),
        "cache-testkit: openssl could not make the test certificates: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
