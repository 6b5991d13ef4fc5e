//! [`Postgres`]: a throwaway PostgreSQL cluster for tests.

use std::fmt;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::ports::{self, loopback, pick_port};
use crate::process::{Running, scratch_dir, tail};

/// How long a started server gets to report itself ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many ports a start tries when the server loses a bind race.
const START_ATTEMPTS: usize = 8;
/// The superuser made by `initdb`, and the database the URL names.
const USER: &str = "postgres";
const DATABASE: &str = "postgres";

const INSTALL_HINT: &str = "install it with `apt-get install -y postgresql`";

/// A throwaway PostgreSQL cluster on a free `127.0.0.1` port: `initdb` in a
/// fresh temporary directory, then `postgres` listening on loopback only
/// (no Unix socket), with `trust` authentication for the superuser
/// `postgres` and without `fsync` (nothing here needs to survive a crash).
/// It starts in about a second. On drop the server is shut down
/// (immediate mode, then `SIGKILL`) and its directory removed; if the test
/// process itself is killed, a small watchdog process kills the server.
///
/// The binaries are taken from the newest `/usr/lib/postgresql/<version>/bin`
/// (Debian's `postgresql` package) or else from `PATH`. `initdb` refuses to
/// run as root, so when the tests run as root `initdb` and `postgres` run as
/// the `postgres` user (created by the Debian package) or, without one, as
/// `nobody`, through `setpriv` (util-linux), in a directory owned by that
/// user.
///
/// Methods are synchronous, so the fixture works in `#[test]` and
/// `#[tokio::test]` alike.
///
/// ```no_run
/// use cache_testkit::Postgres;
///
/// let pg = Postgres::start();
/// // postgres://postgres@127.0.0.1:<port>/postgres, for sqlx, tokio-postgres, psql ...
/// let out = std::process::Command::new("psql")
///     .args([pg.url().as_str(), "-Atc", "select 1"])
///     .output()
///     .unwrap();
/// assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
/// ```
pub struct Postgres {
    port: u16,
    dir: PathBuf,
    running: Option<Running>,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &self.url())
            .field("dir", &self.dir)
            .field("pid", &self.pid())
            .finish()
    }
}

/// The unprivileged account `initdb` and `postgres` run as when we are root.
struct RunAs {
    user: String,
    uid: u32,
    gid: u32,
}

impl RunAs {
    /// `None` unless this process runs as root; then `postgres`, or `nobody`.
    fn pick() -> Option<RunAs> {
        if id(&["-u"])? != 0 {
            return None;
        }
        let user = ["postgres", "nobody"]
            .into_iter()
            .find(|user| id(&["-u", user]).is_some())
            .unwrap_or_else(|| {
                panic!(
                    "cache-testkit: Postgres runs as root, and neither a `postgres` nor a `nobody` user exists to run initdb as"
                )
            });
        Some(RunAs {
            user: user.to_owned(),
            uid: id(&["-u", user]).expect("just found"),
            gid: id(&["-g", user]).expect("the user exists"),
        })
    }

    /// `program` run as this user (`setpriv` execs it: same process id).
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args(["--clear-groups", "--"])
            .arg(program);
        cmd
    }
}

/// The number `id <args>` prints, `None` if it fails.
fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The directory holding `initdb` and `postgres`: the newest
/// `/usr/lib/postgresql/<version>/bin`, or the first `PATH` entry with both.
fn bin_dir() -> PathBuf {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_both(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| has_both(dir)))
        .unwrap_or_else(|| {
            panic!(
                "cache-testkit: PostgreSQL's `initdb` and `postgres` were found neither in /usr/lib/postgresql/*/bin nor on PATH; {INSTALL_HINT}"
            )
        })
}

/// `program` from `bin`, as `run_as` if given, with messages in English.
fn command(bin: &Path, program: &str, run_as: Option<&RunAs>) -> Command {
    let path = bin.join(program);
    let mut cmd = match run_as {
        Some(run_as) => run_as.command(&path),
        None => Command::new(&path),
    };
    cmd.env("LC_ALL", "C").stdin(Stdio::null());
    cmd
}

impl Postgres {
    /// Creates a cluster with `initdb` and starts `postgres` on a free
    /// loopback port; returns once it accepts connections (about a second).
    ///
    /// Panics with a clear message if PostgreSQL is not installed (telling
    /// you to run `apt-get install -y postgresql`), or with the tail of its
    /// log if it does not come up.
    ///
    /// ```no_run
    /// let pg = cache_testkit::Postgres::start();
    /// println!("postgres at {}", pg.url());
    /// ```
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let run_as = RunAs::pick();
        let (port, reservation) = pick_port(false);
        let mut pg = Postgres {
            port,
            dir: scratch_dir("postgres", port),
            running: None,
        };
        if let Some(run_as) = &run_as {
            std::os::unix::fs::chown(&pg.dir, Some(run_as.uid), Some(run_as.gid)).unwrap_or_else(
                |e| {
                    panic!(
                        "cache-testkit: cannot hand {} to the `{}` user: {e}",
                        pg.dir.display(),
                        run_as.user
                    )
                },
            );
        }
        pg.initdb(&bin, run_as.as_ref());
        let mut reservation = Some(reservation);
        for _ in 0..START_ATTEMPTS {
            let held = reservation.take().unwrap_or_else(|| {
                // Lost a bind race: give the port back and take another.
                ports::release(pg.port);
                let (port, held) = pick_port(false);
                pg.port = port;
                held
            });
            match pg.spawn(&bin, run_as.as_ref(), held) {
                Ok(()) => return pg,
                Err(Lost::PortRace) => {}
                Err(Lost::Fatal(msg)) => panic!("{msg}"),
            }
        }
        panic!(
            "cache-testkit: postgres lost the port race {START_ATTEMPTS} times; log tail:\n{}",
            pg.log_tail()
        );
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn initdb(&self, bin: &Path, run_as: Option<&RunAs>) {
        let out = command(bin, "initdb", run_as)
            .arg("--pgdata")
            .arg(self.data_dir())
            .args(["--username", USER, "--auth", "trust"])
            .args(["--encoding", "UTF8", "--locale", "C"])
            .args(["--no-sync", "--no-instructions"])
            .output();
        let out = match out {
            Ok(out) => out,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "cache-testkit: cannot run initdb from {} (as root it runs through `setpriv`, from util-linux): {e}; {INSTALL_HINT}",
                bin.display()
            ),
            Err(e) => panic!("cache-testkit: cannot run initdb: {e}"),
        };
        assert!(
            out.status.success(),
            "cache-testkit: initdb failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `postgres` on `self.port` and waits until `postmaster.pid`
    /// says it is ready. `held` keeps the port until the last moment.
    fn spawn(
        &mut self,
        bin: &Path,
        run_as: Option<&RunAs>,
        held: Vec<TcpListener>,
    ) -> Result<(), Lost> {
        let log = File::create(self.log_path())
            .map_err(|e| Lost::Fatal(format!("cache-testkit: cannot create postgres.log: {e}")))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Lost::Fatal(format!("cache-testkit: cannot share postgres.log: {e}")))?;
        let mut cmd = command(bin, "postgres", run_as);
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "synchronous_commit=off"])
            .stdout(log)
            .stderr(log_err);
        drop(held);
        let mut child = cmd
            .spawn()
            .map_err(|e| Lost::Fatal(format!("cache-testkit: cannot spawn postgres: {e}")))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let logs = self.log_tail();
                return Err(if logs.contains("Address already in use") {
                    Lost::PortRace
                } else {
                    Lost::Fatal(format!(
                        "cache-testkit: postgres on port {} exited during startup ({status}); log tail:\n{logs}",
                        self.port
                    ))
                });
            }
            if self.reports_ready() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Lost::Fatal(format!(
                    "cache-testkit: postgres on port {} was not ready within {READY_TIMEOUT:?}; log tail:\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.running = Some(Running::new(child, &self.dir));
        Ok(())
    }

    /// Whether line 8 of `postmaster.pid` (the server's status) says `ready`.
    fn reports_ready(&self) -> bool {
        fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .is_ok_and(|pid_file| pid_file.lines().nth(7).is_some_and(|l| l.trim() == "ready"))
    }

    fn log_tail(&self) -> String {
        tail(&self.log_path(), 30)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`: the superuser,
    /// no password needed (`trust` on loopback), the default database.
    ///
    /// ```no_run
    /// let pg = cache_testkit::Postgres::start();
    /// assert_eq!(pg.url(), format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port()));
    /// ```
    pub fn url(&self) -> String {
        format!("postgres://{USER}@{}/{DATABASE}", self.addr())
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// The superuser's name in [`Postgres::url`]: `postgres`.
    pub fn user(&self) -> &str {
        USER
    }

    /// The database [`Postgres::url`] names: `postgres`.
    pub fn database(&self) -> &str {
        DATABASE
    }

    /// The cluster's directory (the data directory `data/` and
    /// `postgres.log`). Removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's log (inside [`Postgres::dir`]).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The process id of the `postgres` server process.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.pid)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            // SIGQUIT: immediate shutdown, the server ends its own children.
            running.stop_with("QUIT", Duration::from_secs(2));
        }
        let _ = fs::remove_dir_all(&self.dir);
        ports::release(self.port);
    }
}

/// Why a start attempt failed.
enum Lost {
    /// Another process took the port between the check and the bind.
    PortRace,
    /// Anything else: the message explains it.
    Fatal(String),
}
