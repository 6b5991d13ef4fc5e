//! The proxy's thread: accepts connections, applies mode changes, and
//! copies bytes between each client and the target.

use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::{Control, Mode};
use crate::ports::loopback;

/// The proxy's loop: accepts connections, applies mode changes, and ends
/// when the [`TcpProxy`] is dropped (its connection tasks are aborted then).
pub(super) async fn serve(
    listener: StdTcpListener,
    port: u16,
    target: SocketAddr,
    mut commands: mpsc::UnboundedReceiver<Control>,
    open: Arc<AtomicUsize>,
) {
    let mut listener = Some(TcpListener::from_std(listener).expect("a bound loopback listener"));
    let (mode, _) = watch::channel(Mode::Forward);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(Control { mode: wanted, done }) = command else { break };
                mode.send_replace(wanted);
                let outcome = if wanted == Mode::Cut {
                    listener = None; // refuses new connections (and resets queued ones)
                    // Every connection task resets its sockets when it sees the cut.
                    while connections.join_next().await.is_some() {}
                    Ok(())
                } else if listener.is_none() {
                    rebind(port).map(|l| listener = Some(l)).map_err(|e| {
                        format!("cannot listen on its port again (taken meanwhile?): {e}")
                    })
                } else {
                    Ok(())
                };
                let _ = done.send(outcome);
            }
            accepted = accept(listener.as_ref()) => {
                if let Ok((client, _)) = accepted {
                    let counter = Arc::clone(&open);
                    connections.spawn(relay(client, target, mode.subscribe(), counter));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

fn rebind(port: u16) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(loopback(port))?;
    socket.listen(1024)
}

/// Counts a client connection while it is alive.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(counter: Arc<AtomicUsize>) -> Counted {
        counter.fetch_add(1, Ordering::SeqCst);
        Counted(counter)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits until the mode is `Forward` (`true`) or `Cut` (`false`); `false`
/// too if the proxy is shutting down.
async fn until_forward_or_cut(mode: &mut watch::Receiver<Mode>) -> bool {
    match mode.wait_for(|m| *m != Mode::Blackhole).await {
        Ok(m) => *m == Mode::Forward,
        Err(_) => false,
    }
}

/// Resolves when the proxy is cut (or shutting down).
async fn until_cut(mut mode: watch::Receiver<Mode>) {
    let _ = mode.wait_for(|m| *m == Mode::Cut).await;
}

/// Closes `stream` with a `RST` rather than a `FIN`.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// One client connection: connects to the target once forwarding is on,
/// then copies bytes both ways until either side closes or the proxy is cut.
async fn relay(
    client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    open: Arc<AtomicUsize>,
) {
    let _counted = Counted::new(open);
    let _ = client.set_nodelay(true);
    // A connection accepted during a blackhole waits here.
    if !until_forward_or_cut(&mut mode).await {
        return reset(client);
    }
    let server = tokio::select! {
        server = TcpStream::connect(target) => server,
        () = until_cut(mode.clone()) => return reset(client),
    };
    let Ok(mut server) = server else {
        return reset(client);
    };
    let _ = server.set_nodelay(true);
    let mut client = client;
    let cut = tokio::select! {
        () = pump(&mut client, &mut server, &mode) => false,
        () = until_cut(mode.clone()) => true,
    };
    if cut {
        reset(client);
        reset(server);
    }
}

async fn pump(client: &mut TcpStream, server: &mut TcpStream, mode: &watch::Receiver<Mode>) {
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    tokio::join!(
        one_way(client_read, server_write, mode.clone()),
        one_way(server_read, client_write, mode.clone()),
    );
}

/// Copies `from` to `to` while the mode is `Forward`; on end of stream (or an
/// error) shuts `to` down for writing, passing the close on.
async fn one_way(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !until_forward_or_cut(&mut mode).await {
            // Cut: the caller resets both sockets.
            return std::future::pending().await;
        }
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            // Re-check the mode: a blackhole stops reading.
            _ = mode.changed() => continue,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}
