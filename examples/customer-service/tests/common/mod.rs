//! Helpers shared by the service's integration tests: a minimal HTTP/1.1
//! client over raw TCP (so slow, idle and malformed clients can be played
//! exactly) and the service binary on a free loopback port.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// A response: status, lower-cased headers, body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("status {}: not JSON ({e}): {}", self.status, self.text()))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the status and a JSON `{"error": "..."}` body.
    pub(crate) fn assert_error(&self, status: u16) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert!(
            self.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "status {status} without a JSON content type: {:?} {}",
            self.headers,
            self.text()
        );
        let error = self.json();
        assert!(
            error["error"].as_str().is_some_and(|m| !m.is_empty()),
            "no error message: {error}"
        );
    }
}

/// Reads one response within `limit`: its body sized by `content-length`,
/// or chunked (`transfer-encoding: chunked`); `None` when the connection
/// closes or nothing complete arrives in time.
pub(crate) async fn read_reply(stream: &mut TcpStream, limit: Duration) -> Option<Reply> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(reply) = complete_reply(&buf) {
            return Some(reply);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// The response at the start of `buf`, once all of it is there.
fn complete_reply(buf: &[u8]) -> Option<Reply> {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &buf[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        let length: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        rest.get(..length)?.to_vec()
    };
    Some(Reply {
        status,
        headers,
        body,
    })
}

/// The body of a chunked message, once its last (empty) chunk is there.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_line = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("0").trim(), 16)
            .expect("chunk size");
        if size == 0 {
            return Some(out);
        }
        let start = eol + 2;
        out.extend_from_slice(data.get(start..start + size)?);
        data = data.get(start + size + 2..)?;
    }
}

/// Whether the server closed `stream` within `limit` (EOF or reset).
pub(crate) async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// One request on a fresh connection (`connection: close`).
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    // The server may answer (413) and close before reading a large body.
    let _ = stream.write_all(&raw).await;
    read_reply(&mut stream, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no reply to {method} {path}"))
}

pub(crate) async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], b"").await
}

pub(crate) async fn send_json(addr: SocketAddr, method: &str, path: &str, body: &Value) -> Reply {
    request(
        addr,
        method,
        path,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
}

/// Sends raw bytes on a fresh connection and reads one reply.
pub(crate) async fn raw(addr: SocketAddr, bytes: &[u8]) -> Option<Reply> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(bytes).await;
    read_reply(&mut stream, Duration::from_secs(5)).await
}

/// Variables the tests control; removed from the child's environment unless
/// a test sets them, so the developer's shell can't change the outcome.
pub(crate) const CONTROLLED: [&str; 16] = [
    "PORT",
    "DATABASE_URL",
    "REDIS_URL",
    "ADMIN_TOKEN",
    "CACHE_NAMESPACE",
    "CACHE_ENABLED",
    "CACHE_OUTBOX",
    "CACHE_OUTBOX_RELAY_MS",
    "CACHE_NEAR_CAPACITY",
    "HTTP_HEADER_TIMEOUT_MS",
    "HTTP_BODY_TIMEOUT_MS",
    "HTTP_IDLE_TIMEOUT_MS",
    "HTTP_WRITE_TIMEOUT_MS",
    "HTTP_MAX_CONNECTIONS",
    "HTTP_MAX_HEADER_BYTES",
    "RUST_LOG",
];

/// The service binary with a free port, an in-memory database and
/// `RUST_LOG=info`, then `env` (later entries win).
pub(crate) fn command(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_customer-service"));
    for var in CONTROLLED {
        cmd.env_remove(var);
    }
    cmd.env("PORT", "0")
        .env("DATABASE_URL", "sqlite::memory:")
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A running `customer-service` process, killed on drop.
pub(crate) struct Service {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    output: Arc<Mutex<String>>,
}

impl Service {
    /// Starts the [`command`] for `env` and waits until it says where it
    /// listens; its output is collected meanwhile.
    pub(crate) async fn start(env: &[(&str, &str)]) -> Service {
        let mut child = command(env).spawn().expect("spawn customer-service");
        let output = Arc::new(Mutex::new(String::new()));
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let stderr = child.stderr.take().expect("stderr");
        {
            let output = Arc::clone(&output);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    output.lock().unwrap().push_str(&format!("{line}\n"));
                }
            });
        }
        let addr = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = stdout.next_line().await {
                output.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    return Some(addr.parse::<SocketAddr>().expect("listening address"));
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("service did not start: {}", output.lock().unwrap()));
        // Keep draining stdout so the service never blocks on a full pipe.
        {
            let output = Arc::clone(&output);
            tokio::spawn(async move {
                while let Ok(Some(line)) = stdout.next_line().await {
                    output.lock().unwrap().push_str(&format!("{line}\n"));
                }
            });
        }
        Service {
            child,
            addr,
            output,
        }
    }

    /// Everything the process printed so far (stdout and stderr).
    pub(crate) fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
}

/// Serves the router for `state` in this process, on a free loopback port.
pub(crate) async fn serve(state: customer_service::AppState) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = customer_service::app(state).await;
    tokio::spawn(customer_service::serve(
        listener,
        router,
        customer_service::ServerConfig::default(),
        std::future::pending(),
    ));
    addr
}
