//! Run with `chaos-proxy 127.0.0.1:6379`: a loopback TCP proxy in front of
//! that address (cache-testkit's `TcpProxy`), for scripts that need to
//! partition one process from a server while others keep reaching it.
//!
//! It prints the address it listens on (`127.0.0.1:<port>`, one line) and
//! then obeys signals:
//!
//! | signal | effect |
//! |---|---|
//! | `SIGUSR1` | cut: every open connection is reset, new ones are refused |
//! | `SIGHUP` | blackhole: connections stay open (and new ones are accepted), no byte is forwarded |
//! | `SIGUSR2` | restore: forwarding again |
//! | `SIGTERM`, `SIGINT` | exit (every connection is closed) |
//!
//! Each change is logged on standard error. Loopback targets only.

use std::net::SocketAddr;
use std::process::ExitCode;

use cache_testkit::TcpProxy;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let target = match std::env::args().nth(1).map(|a| a.parse::<SocketAddr>()) {
        Some(Ok(addr)) if addr.ip().is_loopback() => addr,
        Some(Ok(addr)) => {
            eprintln!("chaos-proxy: {addr} is not a loopback address");
            return ExitCode::from(2);
        }
        _ => {
            eprintln!("usage: chaos-proxy 127.0.0.1:<port>");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos-proxy: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(target)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(target: SocketAddr) -> std::io::Result<()> {
    // Signals first, so none sent right after the address is printed is lost.
    let mut cut = signal(SignalKind::user_defined1())?;
    let mut restore = signal(SignalKind::user_defined2())?;
    let mut blackhole = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let proxy = TcpProxy::start(target);
    println!("{}", proxy.addr());
    loop {
        tokio::select! {
            _ = cut.recv() => {
                proxy.cut();
                eprintln!("chaos-proxy {}: cut", proxy.addr());
            }
            _ = blackhole.recv() => {
                proxy.blackhole();
                eprintln!("chaos-proxy {}: blackhole", proxy.addr());
            }
            _ = restore.recv() => {
                proxy.restore();
                eprintln!("chaos-proxy {}: restored", proxy.addr());
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    Ok(())
}
