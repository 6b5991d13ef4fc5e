//! Child processes of the fixtures: scratch directories, signals, a watchdog
//! that cleans up if the test process dies, and log tails for error messages.
//!
//! The workspace forbids `unsafe`, so signals are sent with `kill(1)` rather
//! than through libc.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

static DIRS: AtomicU64 = AtomicU64::new(0);

/// Creates an empty directory `cache-testkit-<kind>-<pid>-<n>-<port>` in the
/// temporary directory (removing a leftover of the same name first).
pub(crate) fn scratch_dir(kind: &str, port: u16) -> PathBuf {
    let n = DIRS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "cache-testkit-{kind}-{}-{n}-{port}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cache-testkit: cannot create {}: {e}", dir.display()));
    dir
}

/// The last `n` lines of a file, or a note saying it could not be read.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Panics with `install_hint` unless `program` can be executed.
pub(crate) fn require_program(program: &str, install_hint: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = found {
        if e.kind() == ErrorKind::NotFound {
            panic!("cache-testkit: `{program}` was not found on PATH; {install_hint}");
        }
        panic!("cache-testkit: cannot run `{program}`: {e}");
    }
}

/// Sends a signal with `/usr/bin/kill` (the workspace forbids `unsafe`, so no libc).
pub(crate) fn try_signal(pid: u32, sig: &str) -> Result<(), String> {
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
pub(crate) fn signal(pid: u32, sig: &str) {
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
pub(crate) fn wait_proc_state(pid: u32, stopped: bool) {
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

/// A live server child and its watchdog.
pub(crate) struct Running {
    pub(crate) child: Mutex<Child>,
    pub(crate) pid: u32,
    watchdog: Option<Child>,
    /// Stopped with SIGSTOP by the fixture.
    pub(crate) paused: bool,
}

impl Running {
    /// Takes over `child`, with a watchdog that kills it and removes `dir`
    /// should this test process die without running destructors.
    pub(crate) fn new(child: Child, dir: &Path) -> Running {
        let pid = child.id();
        Running {
            child: Mutex::new(child),
            pid,
            watchdog: spawn_watchdog(pid, dir),
            paused: false,
        }
    }

    /// Whether the process has not exited yet (a paused process is alive).
    pub(crate) fn is_alive(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        matches!(child.try_wait(), Ok(None))
    }

    /// Sends `sig` (e.g. `QUIT`, for a server that then takes its own child
    /// processes down), gives the process `grace` to exit, then
    /// [`terminate`](Running::terminate)s it.
    pub(crate) fn stop_with(mut self, sig: &str, grace: Duration) {
        if !self.paused && try_signal(self.pid, sig).is_ok() {
            let deadline = Instant::now() + grace;
            let child = self.child.get_mut().unwrap_or_else(PoisonError::into_inner);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
        }
        self.terminate();
    }

    /// SIGCONT if paused, SIGKILL, reap; then retire the watchdog.
    pub(crate) fn terminate(mut self) {
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
