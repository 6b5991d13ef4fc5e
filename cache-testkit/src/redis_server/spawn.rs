//! Starting a [`RedisServer`] process: a free port, a fresh directory, the
//! `redis-server` command line, and waiting until it answers `PING`.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{INSTALL_HINT, RedisServer};
use crate::ports::pick_port;
use crate::process::{Running, scratch_dir, tail};

/// How long a (re)started server gets to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports a first start tries when it loses a bind race.
const START_ATTEMPTS: usize = 8;

/// Why a spawn failed.
pub(super) enum SpawnError {
    /// The port (or the cluster bus port) was taken between the check and the bind.
    PortInUse(String),
    /// Anything else: the message explains it.
    Fatal(String),
}

impl RedisServer {
    /// Starts a server, retrying on a fresh port if it loses a bind race.
    /// `cluster_bus` also requires `port + 10000` to be free.
    pub(crate) fn launch(extra_args: Vec<String>, cluster_bus: bool) -> RedisServer {
        let password = extra_args
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| extra_args.get(i + 1))
            .cloned();
        RedisServer::launch_on_free_port(cluster_bus, |server| {
            server.extra_args = extra_args.clone();
            server.password = password.clone();
        })
    }

    /// Picks a free port and a fresh directory, lets `configure` fill in the
    /// server's TLS mode and arguments (and write files into its directory),
    /// and spawns it; retries on a new port if redis-server loses the race
    /// for the port.
    pub(super) fn launch_on_free_port(
        cluster_bus: bool,
        mut configure: impl FnMut(&mut RedisServer),
    ) -> RedisServer {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let (port, reservation) = pick_port(cluster_bus);
            let mut server = RedisServer {
                port,
                tls: None,
                dir: scratch_dir("redis", port),
                extra_args: Vec::new(),
                password: None,
                running: None,
                reservation,
            };
            configure(&mut server);
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
    pub(super) fn spawn(&mut self) -> Result<(), SpawnError> {
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
        self.running = Some(Running::new(child, &self.dir));
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
}
