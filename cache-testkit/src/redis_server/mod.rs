//! [`RedisServer`]: an ephemeral, real `redis-server` process for tests.
//!
//! - this file: the server's lifecycle (start, stop, restart, pause, drop);
//! - `spawn`: starting the process on a free port and waiting for `PING`;
//! - `connect`: how tests reach it (port, URLs, password, clients);
//! - `tls`: TLS-only servers and the certificates they use.
//!
//! Free ports come from the crate's `ports` module, child-process handling
//! (signals, watchdog, log tails) from its `process` module.

mod connect;
mod spawn;
mod tls;

use std::fmt;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use crate::ports;
use crate::process::{self, Running, signal, wait_proc_state};
use spawn::SpawnError;

pub(crate) use tls::make_certificates;

const INSTALL_HINT: &str =
    "install it with `apt-get install -y redis-server` (it provides redis-server and redis-cli)";

/// Panics with the `apt-get` hint unless `program` (`redis-server`,
/// `redis-cli`) can be executed.
pub(crate) fn require_program(program: &str) {
    process::require_program(program, INSTALL_HINT);
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
    /// [`Command::args`](std::process::Command::args)); they override the defaults.
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
        self.running.as_ref().is_some_and(Running::is_alive)
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
        ports::release(self.port);
    }
}
