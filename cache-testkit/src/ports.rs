//! Free loopback ports for the fixtures' server processes.
//!
//! Ports are picked at random from a range below the Linux ephemeral range,
//! and remembered while a fixture owns them: a stopped server keeps its port
//! for a restart, and no other fixture of this process is given it.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Ports are picked from this range: below the Linux ephemeral range
/// (32768..=60999), so outgoing connections never grab a stopped server's port,
/// and `port + CLUSTER_BUS_OFFSET` stays below it too.
const PORT_RANGE: std::ops::Range<u16> = 12_000..22_000;
/// Redis Cluster listens on its cluster bus at `port + 10000`.
const CLUSTER_BUS_OFFSET: u16 = 10_000;

/// Ports handed out by this process and not yet released: a stopped server keeps
/// its port, and no other fixture of this process gets it.
static PORTS_IN_USE: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
static SEED: AtomicU64 = AtomicU64::new(0);

fn ports_in_use() -> MutexGuard<'static, BTreeSet<u16>> {
    PORTS_IN_USE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `127.0.0.1:<port>`.
pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Binds listeners on `port` (and its cluster bus port): proves they are free
/// and holds them until the server is spawned.
fn reserve(port: u16, cluster_bus: bool) -> Option<Vec<TcpListener>> {
    let mut held = vec![TcpListener::bind(loopback(port)).ok()?];
    if cluster_bus {
        held.push(TcpListener::bind(loopback(port + CLUSTER_BUS_OFFSET)).ok()?);
    }
    Some(held)
}

/// Picks a port that nobody listens on (nor on `port + 10000` if `cluster_bus`),
/// marks it used in this process, and returns it with the listeners holding it.
/// Drop the listeners right before the server binds the port, and give the
/// port back with [`release`] when the fixture is dropped.
pub(crate) fn pick_port(cluster_bus: bool) -> (u16, Vec<TcpListener>) {
    let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
    for _ in 0..10_000 {
        let seed = SEED.fetch_add(1, Ordering::Relaxed);
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

/// Gives a port from [`pick_port`] back: other fixtures of this process may
/// be given it again.
pub(crate) fn release(port: u16) {
    ports_in_use().remove(&port);
}
