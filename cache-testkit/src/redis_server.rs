//! [`RedisServer`]: an ephemeral, real `redis-server` process for tests.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// How long a (re)started server gets to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Ports are picked from this range: below the Linux ephemeral range
/// (32768..=60999), so outgoing connections never grab a stopped server's port,
/// and `port + CLUSTER_BUS_OFFSET` stays below it too.
const PORT_RANGE: std::ops::Range<u16> = 12_000..22_000;
/// Redis Cluster listens on its cluster bus at `port + 10000`.
pub(crate) const CLUSTER_BUS_OFFSET: u16 = 10_000;
/// How many fresh ports a first start tries when it loses a bind race.
const START_ATTEMPTS: usize = 8;

const INSTALL_HINT: &str =
    "install it with `apt-get install -y redis-server` (it provides redis-server and redis-cli)";

/// Ports handed out by this process and not yet released: a stopped server keeps
/// its port, and no other fixture of this process gets it.
static PORTS_IN_USE: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn ports_in_use() -> MutexGuard<'static, BTreeSet<u16>> {
    PORTS_IN_USE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Binds listeners on `port` (and its cluster bus port): proves they are free
/// and holds them until redis-server is spawned.
fn reserve(port: u16, cluster_bus: bool) -> Option<Vec<TcpListener>> {
    let mut held = vec![TcpListener::bind(loopback(port)).ok()?];
    if cluster_bus {
        held.push(TcpListener::bind(loopback(port + CLUSTER_BUS_OFFSET)).ok()?);
    }
    Some(held)
}

/// Picks a port that nobody listens on (nor on `port + 10000` if `cluster_bus`),
/// marks it used in this process, and returns it with the listeners holding it.
fn pick_port(cluster_bus: bool) -> (u16, Vec<TcpListener>) {
    let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
    for _ in 0..10_000 {
        let seed = COUNTER.fetch_add(1, Ordering::Relaxed);
        let offset = RandomState::new().hash_one(seed) % span;
        let port = PORT_RANGE.start + u16::try_from(offset).expect("offset < span fits in u16");
        let mut used = ports_in_use();
        if used.contains(&port) {
            continue;
        }
        if let Some(held) = reserve(port, cluster_bus) {
            used.insert(port);
            return (port, held);
        }
    }
    panic!("cache-testkit: found no free loopback port in {PORT_RANGE:?}");
}

/// The last `n` lines of a file, or a note saying it could not be read.
fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Sends a signal with `/usr/bin/kill` (the workspace forbids `unsafe`, so no libc).
fn try_signal(pid: u32, sig: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run `kill -s {sig} {pid}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`kill -s {sig} {pid}` failed: {status}"))
    }
}

/// [`try_signal`], panicking on failure.
fn signal(pid: u32, sig: &str) {
    if let Err(e) = try_signal(pid, sig) {
        panic!("cache-testkit: {e}");
    }
}

/// Whether `/proc` says the process is stopped (state `T`). `None` without `/proc`.
fn proc_stopped(pid: u32) -> Option<bool> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
    Some(state == 'T' || state == 't')
}

/// Waits (bounded) until the kernel reports the wanted stopped/running state.
fn wait_proc_state(pid: u32, stopped: bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match proc_stopped(pid) {
            Some(s) if s != stopped => thread::sleep(Duration::from_millis(2)),
            _ => return,
        }
    }
}

/// A child that SIGKILLs `pid` and removes `dir` when its stdin reaches EOF,
/// i.e. when this test process dies without running destructors (SIGKILL,
/// abort, harness timeout). Pipes made by `Command` are close-on-exec, so no
/// other child inherits the write end.
fn spawn_watchdog(pid: u32, dir: &Path) -> Option<Child> {
    Command::new("sh")
        .args([
            "-c",
            "read _line; kill -KILL \"$0\" 2>/dev/null; sleep 0.2; rm -rf \"$1\"",
            &pid.to_string(),
        ])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// A live `redis-server` child and its watchdog.
struct Running {
    child: Mutex<Child>,
    pid: u32,
    watchdog: Option<Child>,
    paused: bool,
}

impl Running {
    /// SIGCONT if paused, SIGKILL, reap; then retire the watchdog.
    fn terminate(mut self) {
        let child = self.child.get_mut().unwrap_or_else(PoisonError::into_inner);
        if self.paused && matches!(child.try_wait(), Ok(None)) {
            // Not strictly needed (SIGKILL ends a stopped process too); never panic here (Drop).
            let _ = try_signal(self.pid, "CONT");
        }
        let _ = child.kill();
        let _ = child.wait();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

enum SpawnError {
    /// The port (or the cluster bus port) was taken between the check and the bind.
    PortInUse(String),
    /// Anything else: the message explains it.
    Fatal(String),
}

/// An ephemeral, real `redis-server` listening on `127.0.0.1` only.
///
/// It runs without persistence (`--save '' --appendonly no`), in its own
/// temporary directory (also holding `redis.log`), on a free port from
/// 12000..22000 (below the kernel's ephemeral range, so a stopped server's
/// port is not taken by outgoing connections). It is killed, and its directory
/// removed, when the value is dropped — even while paused. If the test process
/// itself is killed, a small watchdog process kills the server.
///
/// All methods are synchronous and block the calling thread (at most ~10 s,
/// usually a few tens of milliseconds), so they work in plain `#[test]`s and
/// in `#[tokio::test]`s alike.
///
/// `redis-server` must be on `PATH`; if it is not, [`RedisServer::start`]
/// panics telling you to run `apt-get install -y redis-server`.
///
/// ```no_run
/// use cache_testkit::RedisServer;
///
/// let mut server = RedisServer::start();
/// let mut conn = server.client().get_connection().unwrap();
/// let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
/// assert_eq!(pong, "PONG");
///
/// server.stop();                 // the port stays reserved
/// assert!(!server.is_running());
/// server.restart();              // same port, empty data set
/// assert!(server.is_running());
/// ```
pub struct RedisServer {
    port: u16,
    /// A TLS-only server ([`RedisServer::start_tls`]): whether it requires
    /// client certificates.
    tls: Option<bool>,
    dir: PathBuf,
    extra_args: Vec<String>,
    password: Option<String>,
    running: Option<Running>,
    /// Listeners holding the freshly picked port until redis-server is spawned.
    reservation: Vec<TcpListener>,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field(
                "tls",
                &self.tls.map(|auth| if auth { "client-auth" } else { "on" }),
            )
            .field("dir", &self.dir)
            .field("pid", &self.pid())
            .field("paused", &self.is_paused())
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RedisServer {
    /// Starts a fresh server on a free loopback port and waits (up to ~10 s)
    /// until it answers `PING`.
    ///
    /// Panics with a clear message if `redis-server` is not installed, or with
    /// the tail of its log if it does not come up.
    ///
    /// ```no_run
    /// let server = cache_testkit::RedisServer::start();
    /// println!("redis at {}", server.url());
    /// ```
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Like [`RedisServer::start`], with extra `redis-server` command-line
    /// arguments appended (one token per element, as with
    /// [`Command::args`]); they override the defaults.
    ///
    /// If the arguments contain `--requirepass <password>`, the readiness
    /// check, [`RedisServer::authed_url`] and [`RedisServer::client`] use it.
    ///
    /// ```no_run
    /// use cache_testkit::RedisServer;
    ///
    /// let secured = RedisServer::start_with(&["--requirepass", "secret"]);
    /// assert_eq!(secured.password(), Some("secret"));
    /// let tiny = RedisServer::start_with(&["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]);
    /// # drop((secured, tiny));
    /// ```
    pub fn start_with(args: &[&str]) -> RedisServer {
        RedisServer::launch(args.iter().map(|a| (*a).to_owned()).collect(), false)
    }

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
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let (port, reservation) = pick_port(cluster_bus);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "cache-testkit-redis-{}-{n}-{port}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("cache-testkit: cannot create {}: {e}", dir.display()));
            match certificates {
                Some(from) => {
                    for name in CERTIFICATE_FILES {
                        fs::copy(from.join(name), dir.join(name))
                            .unwrap_or_else(|e| panic!("cache-testkit: cannot copy {name}: {e}"));
                    }
                }
                None => make_certificates(&dir),
            }
            let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
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
            let mut server = RedisServer {
                port,
                tls: Some(client_auth),
                dir,
                extra_args,
                password: None,
                running: None,
                reservation,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(SpawnError::PortInUse(log)) => last = log,
                Err(SpawnError::Fatal(msg)) => panic!("{msg}"),
            }
        }
        panic!(
            "cache-testkit: redis-server lost the port race {START_ATTEMPTS} times; last log:\n{last}"
        );
    }

    /// Starts a server, retrying on a fresh port if it loses a bind race.
    /// `cluster_bus` also requires `port + 10000` to be free.
    pub(crate) fn launch(extra_args: Vec<String>, cluster_bus: bool) -> RedisServer {
        let password = extra_args
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| extra_args.get(i + 1))
            .cloned();
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let (port, reservation) = pick_port(cluster_bus);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "cache-testkit-redis-{}-{n}-{port}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("cache-testkit: cannot create {}: {e}", dir.display()));
            let mut server = RedisServer {
                port,
                tls: None,
                dir,
                extra_args: extra_args.clone(),
                password: password.clone(),
                running: None,
                reservation,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(SpawnError::PortInUse(log)) => last = log, // drop: release, retry
                Err(SpawnError::Fatal(msg)) => panic!("{msg}"),
            }
        }
        panic!(
            "cache-testkit: redis-server lost the port race {START_ATTEMPTS} times; last log:\n{last}"
        );
    }

    /// Spawns `redis-server` on `self.port` and waits for `PING`.
    fn spawn(&mut self) -> Result<(), SpawnError> {
        let log = self.log_path();
        let stderr_path = self.dir.join("stderr.log");
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let mut cmd = Command::new("redis-server");
        match self.tls {
            // TLS only: no plain port at all.
            Some(_) => cmd.args(["--port", "0", "--tls-port"]),
            None => cmd.arg("--port"),
        };
        cmd.arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);

        // Release the reservation at the last moment so redis-server can bind.
        self.reservation.clear();
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                panic!("cache-testkit: `redis-server` was not found on PATH; {INSTALL_HINT}")
            }
            Err(e) => panic!("cache-testkit: cannot spawn redis-server: {e}"),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let logs = self.log_tail();
                return Err(if logs.contains("Address already in use") {
                    SpawnError::PortInUse(logs)
                } else {
                    SpawnError::Fatal(format!(
                        "cache-testkit: redis-server on port {} exited during startup ({status}); log tail:\n{logs}",
                        self.port
                    ))
                });
            }
            if self.ping_blocking() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SpawnError::Fatal(format!(
                    "cache-testkit: redis-server on port {} did not answer PING within {READY_TIMEOUT:?}; log tail:\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            thread::sleep(Duration::from_millis(15));
        }
        let pid = child.id();
        self.running = Some(Running {
            child: Mutex::new(child),
            pid,
            watchdog: spawn_watchdog(pid, &self.dir),
            paused: false,
        });
        Ok(())
    }

    /// One synchronous `PING` (short timeouts). A `NOAUTH` reply counts as alive.
    fn ping_blocking(&self) -> bool {
        let client = self.client();
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(300)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
        match redis::cmd("PING").query::<String>(&mut conn) {
            Ok(pong) => pong == "PONG",
            Err(e) => e.to_string().contains("NOAUTH"),
        }
    }

    /// The last lines of `redis.log` and anything redis-server wrote to stderr.
    pub(crate) fn log_tail(&self) -> String {
        let mut out = tail(&self.log_path(), 30);
        let stderr = tail(&self.dir.join("stderr.log"), 30);
        if !stderr.trim().is_empty() && !stderr.starts_with("<cannot read") {
            out.push_str("\n--- stderr ---\n");
            out.push_str(&stderr);
        }
        out
    }

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
        // Deprecated in rustls 0.23.48 without a replacement for ring.
        #[allow(deprecated)]
        let ring = rustls::crypto::ring::default_provider();
        // Never panics on a second install: one provider is then in already.
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

    /// The server's working directory (holds `redis.log`, and `nodes.conf` for
    /// cluster nodes). Removed on drop.
    ///
    /// ```no_run
    /// let server = cache_testkit::RedisServer::start();
    /// assert!(server.dir().join("redis.log").exists());
    /// ```
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the server's log file (inside [`RedisServer::dir`]).
    ///
    /// ```no_run
    /// let server = cache_testkit::RedisServer::start();
    /// let log = std::fs::read_to_string(server.log_path()).unwrap();
    /// assert!(log.contains("Ready to accept connections"));
    /// ```
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The process id of the running `redis-server`, `None` after [`stop`](RedisServer::stop).
    ///
    /// ```no_run
    /// let server = cache_testkit::RedisServer::start();
    /// assert!(server.pid().is_some());
    /// ```
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.pid)
    }

    /// Whether the server process is alive (a paused server is alive).
    /// `false` after [`stop`](RedisServer::stop) or if the process died.
    ///
    /// ```no_run
    /// let mut server = cache_testkit::RedisServer::start();
    /// assert!(server.is_running());
    /// server.stop();
    /// assert!(!server.is_running());
    /// ```
    pub fn is_running(&self) -> bool {
        self.running.as_ref().is_some_and(|r| {
            let mut child = r.child.lock().unwrap_or_else(PoisonError::into_inner);
            matches!(child.try_wait(), Ok(None))
        })
    }

    /// Whether the server is currently paused by [`pause`](RedisServer::pause).
    ///
    /// ```no_run
    /// let mut server = cache_testkit::RedisServer::start();
    /// server.pause();
    /// assert!(server.is_paused());
    /// ```
    pub fn is_paused(&self) -> bool {
        self.running.as_ref().is_some_and(|r| r.paused)
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to exit, so
    /// connections are refused from now on. The port number is kept for
    /// [`restart`](RedisServer::restart): no other fixture of this process is
    /// given it, and it lies outside the kernel's ephemeral range, so outgoing
    /// connections don't take it either. Data is lost (no persistence).
    /// A no-op if already stopped.
    ///
    /// ```no_run
    /// let mut server = cache_testkit::RedisServer::start();
    /// server.stop();
    /// assert!(std::net::TcpStream::connect(server.addr()).is_err());
    /// ```
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.terminate();
        }
    }

    /// Starts the server again on the same port with the same arguments and
    /// directory, and waits (up to ~10 s) until it answers `PING`. If it is
    /// still running, it is stopped first. The data set starts empty; a cluster
    /// node keeps its identity (`nodes.conf` survives in its directory).
    ///
    /// Panics if the port was taken by another process in the meantime, or if
    /// the server does not come up (with its log tail).
    ///
    /// ```no_run
    /// let mut server = cache_testkit::RedisServer::start();
    /// let port = server.port();
    /// server.stop();
    /// server.restart();
    /// assert_eq!(server.port(), port);
    /// ```
    pub fn restart(&mut self) {
        self.stop();
        match self.spawn() {
            Ok(()) => {}
            Err(SpawnError::PortInUse(log)) => panic!(
                "cache-testkit: cannot restart redis-server: port {} was taken while it was stopped; log tail:\n{log}",
                self.port
            ),
            Err(SpawnError::Fatal(msg)) => panic!("{msg}"),
        }
    }

    /// Freezes the server with SIGSTOP: connections stay open but nothing is
    /// answered (simulates a hung or partitioned Redis). Undo with
    /// [`resume`](RedisServer::resume); dropping a paused server still kills it.
    ///
    /// Panics if the server is not running.
    ///
    /// ```no_run
    /// let mut server = cache_testkit::RedisServer::start();
    /// server.pause();
    /// // ... requests now time out ...
    /// server.resume();
    /// ```
    pub fn pause(&mut self) {
        let running = self
            .running
            .as_mut()
            .expect("cache-testkit: pause() on a stopped RedisServer");
        if !running.paused {
            signal(running.pid, "STOP");
            wait_proc_state(running.pid, true);
            running.paused = true;
        }
    }

    /// Continues a server paused by [`pause`](RedisServer::pause) (SIGCONT).
    /// Requests queued meanwhile are then answered. A no-op if not paused.
    ///
    /// ```no_run
    /// let mut server = cache_testkit::RedisServer::start();
    /// server.pause();
    /// server.resume();
    /// assert!(!server.is_paused());
    /// ```
    pub fn resume(&mut self) {
        if let Some(running) = self.running.as_mut().filter(|r| r.paused) {
            signal(running.pid, "CONT");
            wait_proc_state(running.pid, false);
            running.paused = false;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.terminate();
        }
        self.reservation.clear();
        let _ = fs::remove_dir_all(&self.dir);
        ports_in_use().remove(&self.port);
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

/// Panics with the install hint unless `program` can be executed.
pub(crate) fn require_program(program: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = found {
        if e.kind() == ErrorKind::NotFound {
            panic!("cache-testkit: `{program}` was not found on PATH; {INSTALL_HINT}");
        }
        panic!("cache-testkit: cannot run `{program}`: {e}");
    }
}
