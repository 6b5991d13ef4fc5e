//! The HTTP/1.1 server: an accept loop over hyper with the limits a service
//! on an open port needs, which `axum::serve` does not set.
//!
//! | variable | default | limit |
//! |---|---|---|
//! | `HTTP_HEADER_TIMEOUT_MS` | `10000` | time to receive a request's line and headers: from accept for the first request, from its first byte for later ones on a kept-alive connection; then the connection is closed |
//! | `HTTP_BODY_TIMEOUT_MS` | `30000` | time to receive a request body, from the end of the headers; then 408 and the connection is closed |
//! | `HTTP_IDLE_TIMEOUT_MS` | `60000` | time a kept-alive connection may wait for its next request |
//! | `HTTP_WRITE_TIMEOUT_MS` | `30000` | time a response write may make no progress (a client that stopped reading); then the connection is closed |
//! | `HTTP_MAX_CONNECTIONS` | `512` | open connections; further clients wait in the listen backlog (no descriptor is taken for them) until one closes |
//! | `HTTP_MAX_HEADER_BYTES` | `16384` | request line and headers (431); at most 100 header fields |
//!
//! The parse errors hyper answers by itself (400 for a malformed request,
//! 414, 431) get the same `{"error": "..."}` JSON body as every other error.
//! hyper writes those answers before any service runs and offers no hook for
//! them, so the socket wrapper recognises them on the way out (an exact bare
//! head: that status, `content-length: 0`, no content type, which no route
//! of this service produces) and sends the JSON answer instead. The
//! service's tests send such requests, so a hyper upgrade that changes
//! these heads fails them rather than going unnoticed.
//!
//! Metrics: `http_open_connections` (gauge),
//! `http_connections_closed_total{reason}` (`header_timeout`, `idle_timeout`,
//! `write_timeout`) and `http_parse_errors_total{status}` (`400`, `414`, `431`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower_service::Service as _;

/// How long in-flight connections get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Header fields a request may carry (hyper's default); more is a 431.
const MAX_HEADER_FIELDS: usize = 100;

/// Smallest accepted `HTTP_MAX_HEADER_BYTES`: a request line and a few headers.
const MIN_HEADER_BYTES: usize = 1024;

/// Largest accepted `HTTP_MAX_HEADER_BYTES` (1 MiB).
const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// hyper's smallest read buffer.
const MIN_READ_BUFFER: usize = 8192;

/// The server's limits; see the module docs for the variables.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Time to receive a request line and headers.
    pub header_timeout: Duration,
    /// Time to receive a request body, from the end of the headers.
    pub body_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Time a response write may make no progress.
    pub write_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Bytes of request line plus headers.
    pub max_header_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_connections: 512,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// A server setting that is not usable; names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {problem}, got `{value}`")]
pub struct ServerConfigError {
    variable: &'static str,
    value: String,
    problem: String,
}

impl ServerConfigError {
    /// The environment variable at fault.
    pub fn variable(&self) -> &'static str {
        self.variable
    }
}

fn parse_number(
    variable: &'static str,
    raw: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ServerConfigError> {
    let error = || ServerConfigError {
        variable,
        value: raw.chars().take(64).collect(),
        problem: format!(
            "expected a whole number from {} to {}",
            range.start(),
            range.end()
        ),
    };
    let value: u64 = raw.trim().parse().map_err(|_| error())?;
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(error())
    }
}

impl ServerConfig {
    /// Reads the `HTTP_*` variables of the process environment; unset or
    /// empty ones keep their defaults.
    pub fn from_env() -> Result<Self, ServerConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (a variable name to its value).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ServerConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut config = ServerConfig::default();
        let millis = 1..=24 * 3600 * 1000;
        if let Some(v) = get("HTTP_HEADER_TIMEOUT_MS") {
            config.header_timeout =
                Duration::from_millis(parse_number("HTTP_HEADER_TIMEOUT_MS", &v, millis.clone())?);
        }
        if let Some(v) = get("HTTP_BODY_TIMEOUT_MS") {
            config.body_timeout =
                Duration::from_millis(parse_number("HTTP_BODY_TIMEOUT_MS", &v, millis.clone())?);
        }
        if let Some(v) = get("HTTP_IDLE_TIMEOUT_MS") {
            config.idle_timeout =
                Duration::from_millis(parse_number("HTTP_IDLE_TIMEOUT_MS", &v, millis.clone())?);
        }
        if let Some(v) = get("HTTP_WRITE_TIMEOUT_MS") {
            config.write_timeout =
                Duration::from_millis(parse_number("HTTP_WRITE_TIMEOUT_MS", &v, millis)?);
        }
        if let Some(v) = get("HTTP_MAX_CONNECTIONS") {
            config.max_connections =
                parse_number("HTTP_MAX_CONNECTIONS", &v, 1..=1_000_000)? as usize;
        }
        if let Some(v) = get("HTTP_MAX_HEADER_BYTES") {
            config.max_header_bytes = parse_number(
                "HTTP_MAX_HEADER_BYTES",
                &v,
                MIN_HEADER_BYTES as u64..=MAX_HEADER_BYTES as u64,
            )? as usize;
        }
        Ok(config)
    }

    /// Sets [`header_timeout`](Self::header_timeout).
    pub fn with_header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Sets [`body_timeout`](Self::body_timeout).
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Sets [`idle_timeout`](Self::idle_timeout).
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets [`write_timeout`](Self::write_timeout).
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Sets [`max_connections`](Self::max_connections) (at least 1).
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.clamp(1, 1_000_000);
        self
    }

    /// Sets [`max_header_bytes`](Self::max_header_bytes) (1 KiB to 1 MiB).
    pub fn with_max_header_bytes(mut self, max: usize) -> Self {
        self.max_header_bytes = max.clamp(MIN_HEADER_BYTES, MAX_HEADER_BYTES);
        self
    }
}

/// Serves `router` on `listener` with the limits of `config` until
/// `shutdown` resolves; then stops accepting and gives open connections
/// up to 10 s to finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let (stop, stopped) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    let mut saturated = false;
    loop {
        let full = slots.available_permits() == 0;
        if full && !saturated {
            tracing::warn!(
                max = config.max_connections,
                "connection limit reached (HTTP_MAX_CONNECTIONS); new clients wait"
            );
        }
        saturated = full;
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tokio::spawn(connection(
            stream,
            router.clone(),
            Arc::clone(&config),
            permit,
            stopped.clone(),
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
}

/// Accept errors: per-connection ones are skipped; running out of
/// descriptors or memory pauses accepting briefly instead of spinning.
async fn accept_error(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Where a connection is, and when it is closed if nothing changes.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head { deadline: Instant },
    /// Between requests on a kept-alive connection.
    Idle { deadline: Instant },
    /// This many requests are being handled or answered.
    Busy(usize),
}

/// The timers of one connection, moved by its IO (bytes arriving) and its
/// service (requests starting, responses finishing).
#[derive(Debug)]
struct Clock {
    phase: Mutex<Phase>,
    changed: Notify,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Clock {
    fn new(config: &ServerConfig) -> Self {
        Clock {
            phase: Mutex::new(Phase::Head {
                deadline: Instant::now() + config.header_timeout,
            }),
            changed: Notify::new(),
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
        }
    }

    fn update(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        *phase = f(*phase);
        drop(phase);
        self.changed.notify_one();
    }

    /// Bytes arrived: an idle connection starts a request head.
    fn on_bytes(&self) {
        let idle = matches!(
            *self.phase.lock().unwrap_or_else(PoisonError::into_inner),
            Phase::Idle { .. }
        );
        if idle {
            let deadline = Instant::now() + self.header_timeout;
            self.update(|phase| match phase {
                Phase::Idle { .. } => Phase::Head { deadline },
                other => other,
            });
        }
    }

    /// A request head was parsed; the guard marks the end of its response.
    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.update(|phase| match phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        });
        RequestGuard(Arc::clone(self))
    }

    /// Which timeout has passed, if one has.
    fn expired(&self) -> Option<&'static str> {
        let now = Instant::now();
        match *self.phase.lock().unwrap_or_else(PoisonError::into_inner) {
            Phase::Head { deadline } if deadline <= now => Some("header_timeout"),
            Phase::Idle { deadline } if deadline <= now => Some("idle_timeout"),
            _ => None,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match *self.phase.lock().unwrap_or_else(PoisonError::into_inner) {
            Phase::Head { deadline } | Phase::Idle { deadline } => Some(deadline),
            Phase::Busy(_) => None,
        }
    }
}

/// Dropped when a response has been sent (or abandoned).
#[derive(Debug)]
struct RequestGuard(Arc<Clock>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let deadline = Instant::now() + self.0.idle_timeout;
        self.0.update(|phase| match phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle { deadline },
        });
    }
}

async fn connection(
    stream: TcpStream,
    router: Router,
    config: Arc<ServerConfig>,
    _slot: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    metrics::gauge!("http_open_connections").increment(1.0);
    let _open = OpenConnection;
    let clock = Arc::new(Clock::new(&config));
    let io = TokioIo::new(GuardedIo::new(stream, Arc::clone(&clock), &config));
    let body_timeout = config.body_timeout;
    let service = {
        let clock = Arc::clone(&clock);
        service_fn(move |request: Request<Incoming>| {
            let guard = clock.begin();
            let mut router = router.clone();
            let request = request.map(|body| Body::new(TimedBody::new(body, body_timeout)));
            async move {
                let response = router.call(request).await?;
                Ok::<_, Infallible>(response.map(|body| TrackedBody {
                    inner: body,
                    _guard: guard,
                }))
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The clock above times heads (from their first byte) and idleness.
        .header_read_timeout(None)
        .keep_alive(true)
        .max_headers(MAX_HEADER_FIELDS)
        .max_header_size(config.max_header_bytes)
        .max_buf_size(config.max_header_bytes.max(MIN_READ_BUFFER));
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut stopping = false;
    loop {
        let deadline = clock.deadline();
        let changed = clock.changed.notified();
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = sleep_until(deadline) => {
                if let Some(reason) = clock.expired() {
                    tracing::debug!(reason, "closing a connection");
                    metrics::counter!("http_connections_closed_total", "reason" => reason)
                        .increment(1);
                    return;
                }
            }
            () = changed => {}
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Counts an open connection in `http_open_connections` while alive.
struct OpenConnection;

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("http_open_connections").decrement(1.0);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The request body failed to arrive within `HTTP_BODY_TIMEOUT_MS`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} ms (HTTP_BODY_TIMEOUT_MS)", .0.as_millis())]
pub(crate) struct BodyTimedOut(Duration);

/// A request body that fails with [`BodyTimedOut`] once its deadline passes.
struct TimedBody {
    inner: Incoming,
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl TimedBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        TimedBody {
            inner,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyTimedOut(self.timeout).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that tells the connection's clock when it is done.
struct TrackedBody {
    inner: Body,
    _guard: RequestGuard,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket as hyper sees it: reads move the connection's clock, a write
/// that makes no progress for `write_timeout` fails, and the bare error
/// responses hyper writes for requests it cannot parse are replaced by JSON
/// ones.
struct GuardedIo {
    inner: TcpStream,
    clock: Arc<Clock>,
    max_header_bytes: usize,
    write_timeout: Duration,
    /// Armed while a write waits for the client to read.
    stalled: Option<Pin<Box<Sleep>>>,
    /// A replacement response still to be written, and how much of it is.
    pending: Vec<u8>,
    written: usize,
}

impl GuardedIo {
    fn new(inner: TcpStream, clock: Arc<Clock>, config: &ServerConfig) -> Self {
        GuardedIo {
            inner,
            clock,
            max_header_bytes: config.max_header_bytes,
            write_timeout: config.write_timeout,
            stalled: None,
            pending: Vec::new(),
            written: 0,
        }
    }

    /// Writes to the socket; fails once no progress was made for `write_timeout`.
    fn poll_write_inner(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => {
                let timeout = self.write_timeout;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stalled.as_mut().poll(cx).is_ready() {
                    metrics::counter!("http_connections_closed_total", "reason" => "write_timeout")
                        .increment(1);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading (HTTP_WRITE_TIMEOUT_MS)",
                    )));
                }
                Poll::Pending
            }
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let pending = std::mem::take(&mut self.pending);
            let result = self.poll_write_inner(cx, &pending[self.written..]);
            self.pending = pending;
            let n = ready!(result)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

/// If `buf` is exactly one of hyper's automatic parse-error responses (a
/// 400, 414 or 431 head with an empty body and no content type), its status
/// and the JSON response to send instead.
fn json_parse_error(buf: &[u8], max_header_bytes: usize) -> Option<(&'static str, Vec<u8>)> {
    let status = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?
        .get(..4)?;
    let (code, status, message) = match status {
        b"400 " => (
            "400",
            "400 Bad Request",
            "malformed HTTP request".to_owned(),
        ),
        b"414 " => (
            "414",
            "414 URI Too Long",
            "the request target is too long".to_owned(),
        ),
        b"431 " => (
            "431",
            "431 Request Header Fields Too Large",
            format!(
                "request line and headers exceed {max_header_bytes} bytes (HTTP_MAX_HEADER_BYTES) or {MAX_HEADER_FIELDS} fields"
            ),
        ),
        _ => return None,
    };
    if !buf.ends_with(b"\r\n\r\n") || buf.windows(4).filter(|w| w == b"\r\n\r\n").count() != 1 {
        return None;
    }
    let head = std::str::from_utf8(buf).ok()?.to_ascii_lowercase();
    let bare = head.contains("\r\ncontent-length: 0\r\n") && !head.contains("\r\ncontent-type:");
    if !bare {
        return None;
    }
    let body = serde_json::json!({ "error": message }).to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    Some((code, response.into_bytes()))
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.clock.on_bytes();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some((status, replacement)) = json_parse_error(buf, this.max_header_bytes) {
            metrics::counter!("http_parse_errors_total", "status" => status).increment(1);
            this.pending = replacement;
            // hyper flushes next, which writes the rest.
            if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        this.poll_write_inner(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_the_environment() {
        let none = ServerConfig::from_lookup(|_| None).unwrap();
        assert_eq!(none, ServerConfig::default());
        assert_eq!(none.max_header_bytes, 16 * 1024);
        let set = ServerConfig::from_lookup(|name| {
            Some(
                match name {
                    "HTTP_HEADER_TIMEOUT_MS" => "250",
                    "HTTP_MAX_CONNECTIONS" => " 7 ",
                    "HTTP_IDLE_TIMEOUT_MS" => "",
                    _ => return None,
                }
                .into(),
            )
        })
        .unwrap();
        assert_eq!(set.header_timeout, Duration::from_millis(250));
        assert_eq!(set.max_connections, 7);
        assert_eq!(set.idle_timeout, ServerConfig::default().idle_timeout);
        for (name, value) in [
            ("HTTP_MAX_CONNECTIONS", "0"),
            ("HTTP_BODY_TIMEOUT_MS", "-1"),
            ("HTTP_BODY_TIMEOUT_MS", "0"),
            ("HTTP_MAX_HEADER_BYTES", "100"),
            ("HTTP_MAX_HEADER_BYTES", "99999999999999999999999"),
        ] {
            let err = ServerConfig::from_lookup(|n| (n == name).then(|| value.into())).unwrap_err();
            assert_eq!(err.variable(), name);
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn only_bare_parse_error_heads_are_replaced() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 15:00:00 GMT\r\n\r\n";
        let (status, json) = json_parse_error(bare, 16384).unwrap();
        assert_eq!(status, "431");
        let json = String::from_utf8(json).unwrap();
        assert!(json.starts_with("HTTP/1.1 431 "), "{json}");
        assert!(json.contains("content-type: application/json"), "{json}");
        assert!(json.ends_with('}'), "{json}");
        // Our own JSON errors, other statuses and body bytes pass through.
        for untouched in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            b"{\"error\": \"x\"}",
            b"",
        ] {
            assert!(json_parse_error(untouched, 16384).is_none());
        }
    }
}
