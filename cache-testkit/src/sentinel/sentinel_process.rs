//! One `redis-sentinel` process: its config file, start-up, and the
//! commands the fixture sends it.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use redis::FromRedisValue;

use super::builder::Options;
use super::{RedisSentinel, SENTINELS};
use crate::ports::{self, loopback, pick_port};
use crate::process::{Running, scratch_dir, tail};

/// How many sentinels must agree that the primary is down.
const QUORUM: usize = 2;
/// `down-after-milliseconds`: a primary silent this long is down.
const DOWN_AFTER_MS: u64 = 1_000;
/// `failover-timeout`: also the pause before a failed failover is retried.
const FAILOVER_TIMEOUT_MS: u64 = 5_000;
/// Sentinel's internal periods, shortened for tests with `SENTINEL DEBUG`
/// (Redis 7.0+): `INFO` every 100 ms instead of 10 s, hello messages every
/// 500 ms instead of 2 s (so a demoted primary is turned into a replica
/// after 2 s rather than 8 s), and TILT mode only after a 10 s stall of
/// the sentinel's timer (the default, 2 s, is within reach of a busy test
/// machine).
///
/// Four hello periods is also how long a sentinel that has not heard of a
/// failover yet waits before it turns the promoted replica back into a
/// replica of the old primary; the leader's news takes about an `INFO`
/// period, a timer tick and a hello period to arrive. With 200 ms hello
/// periods (0.8 s) a busy 2-core machine lost that race now and then, and
/// the sentinels failed over twice.
const DEBUG_PERIODS: [&str; 6] = [
    "info-period",
    "100",
    "publish-period",
    "500",
    "tilt-trigger",
    "10000",
];
/// How long a sentinel process gets to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many ports a start tries when the sentinel loses a bind race.
const START_ATTEMPTS: usize = 8;

/// Panics with the install hint unless `redis-sentinel` can be executed.
pub(super) fn require_sentinel() {
    let found = Command::new("redis-sentinel")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = found {
        if e.kind() == ErrorKind::NotFound {
            panic!(
                "cache-testkit: `redis-sentinel` was not found on PATH; install it with `apt-get install -y redis-sentinel`"
            );
        }
        panic!("cache-testkit: cannot run `redis-sentinel`: {e}");
    }
}

/// One command on a fresh connection with short timeouts.
pub(super) fn query<T: FromRedisValue>(
    client: &redis::Client,
    cmd: &redis::Cmd,
) -> Result<T, String> {
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .map_err(|e| e.to_string())?;
    let timeout = Some(Duration::from_secs(1));
    conn.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    conn.set_write_timeout(timeout).map_err(|e| e.to_string())?;
    cmd.query(&mut conn).map_err(|e| e.to_string())
}

/// One `redis-sentinel` process with its directory (config file and log).
pub(super) struct SentinelProcess {
    port: u16,
    dir: PathBuf,
    running: Option<Running>,
    /// How the fixture reaches it (password, TLS).
    client: Option<redis::Client>,
}

/// The certificate files a TLS sentinel uses (copied from a data server's
/// directory).
const TLS_FILES: [&str; 3] = ["ca.crt", "server.crt", "server.key"];

impl SentinelProcess {
    /// Starts a sentinel monitoring `primary` as `master_name` on a free
    /// port (retrying on another if it loses the race for one), waits for
    /// `PING` and shortens its periods. With TLS, `certificates` is the
    /// directory holding the CA and the server certificate.
    pub(super) fn start(
        master_name: &str,
        primary: SocketAddr,
        options: &Options,
        certificates: Option<&Path>,
    ) -> SentinelProcess {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let (port, held) = pick_port(false);
            let mut sentinel = SentinelProcess {
                port,
                dir: scratch_dir("sentinel", port),
                running: None,
                client: None,
            };
            if let Some(from) = certificates {
                for name in TLS_FILES {
                    fs::copy(from.join(name), sentinel.dir.join(name))
                        .unwrap_or_else(|e| panic!("cache-testkit: cannot copy {name}: {e}"));
                }
            }
            sentinel.client = Some(sentinel.make_client(options));
            match sentinel.spawn(master_name, primary, options, held) {
                Ok(()) => return sentinel,
                Err(Some(log)) => last = log, // lost the port: drop, retry
                Err(None) => panic!(
                    "cache-testkit: redis-sentinel on port {port} did not start; log tail:\n{}",
                    tail(&sentinel.log_path(), 30)
                ),
            }
        }
        panic!(
            "cache-testkit: redis-sentinel lost the port race {START_ATTEMPTS} times; last log:\n{last}"
        );
    }

    /// The client the fixture queries this sentinel with.
    fn make_client(&self, options: &Options) -> redis::Client {
        let url = options.sentinel_url(self.addr());
        if !options.tls {
            return redis::Client::open(url).expect("a loopback sentinel URL is valid");
        }
        // Never panics on a second install: one provider is then in already.
        // Deprecated in rustls 0.23.48 without a replacement for ring.
        #[allow(deprecated)]
        let ring = rustls::crypto::ring::default_provider();
        let _ = ring.install_default();
        let ca = fs::read(self.dir.join("ca.crt"))
            .unwrap_or_else(|e| panic!("cache-testkit: cannot read ca.crt: {e}"));
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca),
        };
        redis::Client::build_with_tls(url, certificates)
            .expect("the test kit's own certificates are valid")
    }

    /// The lines of the config file for passwords and TLS.
    fn secure_config(&self, master_name: &str, options: &Options) -> String {
        let mut lines = String::new();
        if let Some(password) = &options.password {
            lines.push_str(&format!("sentinel auth-pass {master_name} {password}\n"));
        }
        if let Some(password) = &options.sentinel_password {
            lines.push_str(&format!(
                "requirepass {password}\nsentinel sentinel-pass {password}\n"
            ));
        }
        if options.tls {
            let file = |name: &str| self.dir.join(name).display().to_string();
            lines.push_str(&format!(
                "tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                 tls-auth-clients no\ntls-replication yes\n",
                file("server.crt"),
                file("server.key"),
                file("ca.crt"),
            ));
        }
        lines
    }

    /// `Err(Some(log))`: the port was taken; `Err(None)`: anything else.
    fn spawn(
        &mut self,
        master_name: &str,
        primary: SocketAddr,
        options: &Options,
        held: Vec<TcpListener>,
    ) -> Result<(), Option<String>> {
        let config = self.dir.join("sentinel.conf");
        let ports = if options.tls {
            format!("port 0\ntls-port {}\n", self.port)
        } else {
            format!("port {}\n", self.port)
        };
        let contents = format!(
            "{ports}\
             bind 127.0.0.1\n\
             protected-mode no\n\
             daemonize no\n\
             dir {dir}\n\
             logfile {log}\n\
             sentinel monitor {master_name} {ip} {primary_port} {QUORUM}\n\
             sentinel down-after-milliseconds {master_name} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {master_name} {FAILOVER_TIMEOUT_MS}\n\
             sentinel parallel-syncs {master_name} 1\n\
             {secure}",
            secure = self.secure_config(master_name, options),
            dir = self.dir.display(),
            log = self.log_path().display(),
            ip = primary.ip(),
            primary_port = primary.port(),
        );
        fs::write(&config, contents)
            .unwrap_or_else(|e| panic!("cache-testkit: cannot write {}: {e}", config.display()));
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stderr.log"))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        drop(held);
        let mut child = Command::new("redis-sentinel")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cache-testkit: cannot spawn redis-sentinel: {e}"));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                let log = tail(&self.log_path(), 30);
                return Err(log.contains("Address already in use").then_some(log));
            }
            if self.query::<String>(&redis::cmd("PING")).as_deref() == Ok("PONG") {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(None);
            }
            thread::sleep(Duration::from_millis(15));
        }
        self.running = Some(Running::new(child, &self.dir));
        let mut debug = redis::cmd("SENTINEL");
        debug.arg("DEBUG").arg(&DEBUG_PERIODS[..]);
        // Older sentinels lack SENTINEL DEBUG: they work, just slower.
        let _ = self.query::<String>(&debug);
        Ok(())
    }

    pub(super) fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    pub(super) fn log_path(&self) -> PathBuf {
        self.dir.join("sentinel.log")
    }

    pub(super) fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, String> {
        let client = self.client.as_ref().ok_or("no client yet")?;
        query(client, cmd)
    }

    pub(super) fn primary_addr(&self, master_name: &str) -> Result<SocketAddr, String> {
        let reply: Option<(String, u16)> = self.query(
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(master_name),
        )?;
        let (ip, port) = reply.ok_or_else(|| format!("unknown master {master_name:?}"))?;
        let ip = ip.parse().map_err(|e| format!("bad address {ip:?}: {e}"))?;
        Ok(SocketAddr::new(ip, port))
    }

    /// `Ok` once this sentinel sees the replica up and both other sentinels.
    pub(super) fn knows_everyone(&self, fixture: &RedisSentinel) -> Result<(), String> {
        let name = &fixture.master_name;
        let replicas: Vec<HashMap<String, String>> =
            self.query(redis::cmd("SENTINEL").arg("REPLICAS").arg(name))?;
        let replica = fixture.servers[1].addr();
        let sees_replica = replicas.iter().any(|r| {
            r.get("port") == Some(&replica.port().to_string())
                && r.get("flags").map(String::as_str) == Some("slave")
                && r.get("master-link-status").map(String::as_str) == Some("ok")
        });
        if !sees_replica {
            return Err(format!("{} sees replicas {replicas:?}", self.addr()));
        }
        let peers: Vec<HashMap<String, String>> =
            self.query(redis::cmd("SENTINEL").arg("SENTINELS").arg(name))?;
        if peers.len() < SENTINELS - 1 {
            return Err(format!(
                "{} knows {} other sentinels",
                self.addr(),
                peers.len()
            ));
        }
        Ok(())
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.terminate();
        }
        let _ = fs::remove_dir_all(&self.dir);
        ports::release(self.port);
    }
}
