//! [`TcpProxy`]: a loopback TCP proxy that can cut its clients off from the
//! server behind it (partition tests).
//!
//! - this file: the handle tests use (start, `cut`, `blackhole`, `restore`);
//! - `relay`: the proxy's own thread: accepting, forwarding, resetting.

mod relay;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc as std_mpsc};
use std::thread;

use tokio::sync::mpsc;

use crate::ports::{self, loopback, pick_port};

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Forwards bytes both ways.
    Forward,
    /// Accepts connections, forwards nothing (bytes wait in the buffers).
    Blackhole,
    /// Resets every connection; the port refuses new ones.
    Cut,
}

/// A mode change sent to the proxy's thread; it answers on `done` once the
/// change took effect.
struct Control {
    mode: Mode,
    done: std_mpsc::SyncSender<Result<(), String>>,
}

/// A TCP proxy on `127.0.0.1` in front of one address (a Redis server, a
/// PostgreSQL, ...): point a client at [`TcpProxy::addr`] (or
/// [`TcpProxy::url_for`] the server's URL) instead of the server, and cut
/// that client off whenever the test wants, while the server itself and
/// every other client carry on.
///
/// - [`cut`](TcpProxy::cut): every open connection is reset (both the
///   client's and the server's side see a `RST`), and new connections are
///   refused, like a crashed host or a firewall that rejects.
/// - [`blackhole`](TcpProxy::blackhole): a silent partition. Connections
///   stay open and new ones are accepted, but no byte is forwarded either
///   way: requests time out instead of failing.
/// - [`restore`](TcpProxy::restore): forwarding again. New connections go
///   through; connections held by a blackhole deliver the bytes that waited
///   meanwhile (like a partition healed before TCP gave up); connections
///   reset by a cut stay gone, so clients reconnect.
///
/// The proxy runs on a thread of its own (with its own tokio runtime) and
/// every method is synchronous, so it works in plain `#[test]`s and in
/// `#[tokio::test]`s alike. Its port is picked like a [`RedisServer`](crate::RedisServer)'s
/// (below the kernel's ephemeral range) and kept across `cut`/`restore`.
/// Dropping the proxy closes every connection.
///
/// ```no_run
/// use std::time::Duration;
/// use cache_testkit::{RedisServer, TcpProxy};
///
/// let server = RedisServer::start();
/// let proxy = TcpProxy::start(server.addr());
/// let client = redis::Client::open(proxy.url_for(&server.url())).unwrap();
///
/// let mut conn = client.get_connection().unwrap();
/// let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut conn).unwrap();
///
/// proxy.cut(); // the connection is reset, new ones are refused
/// assert!(redis::cmd("GET").arg("k").query::<String>(&mut conn).is_err());
/// assert!(client.get_connection_with_timeout(Duration::from_secs(1)).is_err());
///
/// proxy.restore(); // a new connection goes through again
/// let mut conn = client.get_connection().unwrap();
/// let v: String = redis::cmd("GET").arg("k").query(&mut conn).unwrap();
/// assert_eq!(v, "v");
/// ```
pub struct TcpProxy {
    port: u16,
    target: SocketAddr,
    mode: Mutex<Mode>,
    open: Arc<AtomicUsize>,
    control: Option<mpsc::UnboundedSender<Control>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpProxy")
            .field("addr", &self.addr())
            .field("target", &self.target)
            .field(
                "mode",
                &*self.mode.lock().unwrap_or_else(PoisonError::into_inner),
            )
            .field("open_connections", &self.open_connections())
            .finish()
    }
}

impl TcpProxy {
    /// Starts a proxy on a free `127.0.0.1` port that forwards every
    /// connection to `target`. It listens before this returns; it connects
    /// to `target` only when a client connects (if `target` refuses, that
    /// client's connection is reset).
    ///
    /// ```no_run
    /// let server = cache_testkit::RedisServer::start();
    /// let proxy = cache_testkit::TcpProxy::start(server.addr());
    /// assert_ne!(proxy.addr(), server.addr());
    /// ```
    pub fn start(target: SocketAddr) -> TcpProxy {
        let (port, mut reservation) = pick_port(false);
        // The reservation is a bound listener on the port: it becomes the proxy's.
        let listener = reservation.remove(0);
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("cache-testkit: TcpProxy: cannot set up its listener: {e}"));
        let open = Arc::new(AtomicUsize::new(0));
        let (control, commands) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cache-testkit: TcpProxy: cannot build a runtime: {e}"));
        let counter = Arc::clone(&open);
        let thread = thread::Builder::new()
            .name(format!("tcp-proxy-{port}"))
            .spawn(move || {
                runtime.block_on(relay::serve(listener, port, target, commands, counter))
            })
            .unwrap_or_else(|e| panic!("cache-testkit: TcpProxy: cannot spawn its thread: {e}"));
        TcpProxy {
            port,
            target,
            mode: Mutex::new(Mode::Forward),
            open,
            control: Some(control),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:<port>` of the proxy: connect here instead of the target.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// The proxy's port (the same across [`cut`](TcpProxy::cut) and
    /// [`restore`](TcpProxy::restore)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// `url` with the target's address (`127.0.0.1:<port>` or
    /// `localhost:<port>`) replaced by the proxy's; scheme, credentials,
    /// path and query are kept.
    ///
    /// Panics if `url` does not contain the target's address.
    ///
    /// ```no_run
    /// use cache_testkit::{Postgres, RedisServer, TcpProxy};
    ///
    /// let redis = RedisServer::start_with(&["--requirepass", "secret"]);
    /// let proxy = TcpProxy::start(redis.addr());
    /// assert_eq!(
    ///     proxy.url_for(&redis.authed_url()),
    ///     format!("redis://:secret@127.0.0.1:{}", proxy.port())
    /// );
    ///
    /// let pg = Postgres::start();
    /// let pg_proxy = TcpProxy::start(pg.addr());
    /// let url = pg_proxy.url_for(&pg.url()); // postgres://postgres@127.0.0.1:<proxy port>/postgres
    /// # drop(url);
    /// ```
    pub fn url_for(&self, url: &str) -> String {
        let port = self.target.port();
        let candidates = [self.target.to_string(), format!("localhost:{port}")];
        for authority in &candidates {
            if let Some(at) = find_authority(url, authority) {
                return format!(
                    "{}{}{}",
                    &url[..at],
                    self.addr(),
                    &url[at + authority.len()..]
                );
            }
        }
        panic!(
            "cache-testkit: TcpProxy::url_for: {url:?} does not name the proxy's target {}",
            self.target
        );
    }

    /// Resets every open connection (`RST` to the client and to the
    /// server) and closes the port, so new connections are refused, until
    /// [`restore`](TcpProxy::restore). Returns once that is done.
    ///
    /// ```no_run
    /// let server = cache_testkit::RedisServer::start();
    /// let proxy = cache_testkit::TcpProxy::start(server.addr());
    /// proxy.cut();
    /// assert!(std::net::TcpStream::connect(proxy.addr()).is_err());
    /// ```
    pub fn cut(&self) {
        self.set_mode(Mode::Cut);
    }

    /// A silent partition: open connections stay open, new ones are
    /// accepted, but nothing is forwarded either way, so requests get no
    /// answer (a client sees timeouts, not errors). Bytes sent meanwhile
    /// wait in the socket buffers and are delivered after
    /// [`restore`](TcpProxy::restore). Returns once the mode is in effect.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let server = cache_testkit::RedisServer::start();
    /// let proxy = cache_testkit::TcpProxy::start(server.addr());
    /// let client = redis::Client::open(proxy.url_for(&server.url())).unwrap();
    /// let mut conn = client.get_connection().unwrap();
    /// conn.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    ///
    /// proxy.blackhole();
    /// assert!(redis::cmd("PING").query::<String>(&mut conn).is_err()); // no answer
    /// proxy.restore();
    /// ```
    pub fn blackhole(&self) {
        self.set_mode(Mode::Blackhole);
    }

    /// Forwards again after [`cut`](TcpProxy::cut) or
    /// [`blackhole`](TcpProxy::blackhole) (reopening the same port after a
    /// cut). A no-op if the proxy forwards already.
    ///
    /// Panics if the port was taken by another process while cut.
    pub fn restore(&self) {
        self.set_mode(Mode::Forward);
    }

    /// Client connections the proxy holds now (forwarding or held by a
    /// blackhole).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn set_mode(&self, mode: Mode) {
        let (done, answer) = std_mpsc::sync_channel(1);
        let control = self.control.as_ref().expect("set until drop");
        let sent = control.send(Control { mode, done });
        let outcome = match sent {
            Ok(()) => answer
                .recv()
                .unwrap_or_else(|_| Err("its thread has stopped".to_owned())),
            Err(_) => Err("its thread has stopped".to_owned()),
        };
        if let Err(e) = outcome {
            panic!("cache-testkit: TcpProxy on port {}: {e}", self.port);
        }
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // Closing the channel ends the proxy's loop; its connections close.
        self.control.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        ports::release(self.port);
    }
}

/// Where `authority` occurs in `url` as a whole `host:port` (not followed by
/// another digit of a longer port).
fn find_authority(url: &str, authority: &str) -> Option<usize> {
    url.match_indices(authority).map(|(at, _)| at).find(|&at| {
        !url[at + authority.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::find_authority;

    #[test]
    fn an_authority_is_found_only_as_a_whole_port() {
        assert_eq!(
            find_authority("redis://127.0.0.1:1234/0", "127.0.0.1:1234"),
            Some(8)
        );
        assert_eq!(
            find_authority("redis://127.0.0.1:12345", "127.0.0.1:1234"),
            None
        );
        assert_eq!(
            find_authority("x://127.0.0.1:12345,127.0.0.1:1234", "127.0.0.1:1234"),
            Some(20)
        );
    }
}
