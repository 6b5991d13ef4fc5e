//! A minimal HTTP/1.1 client over one kept-alive `TcpStream`: enough for the
//! example's JSON API (`Content-Length` or chunked bodies), with bounded
//! head and body sizes, and nothing else.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body accepted.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// An answer: status and body.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

/// One connection, opened on first use and re-opened after any failure.
#[derive(Debug)]
pub(crate) struct Conn {
    addr: SocketAddr,
    host: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// Connections opened so far (1 for a connection that was never cut).
    pub(crate) connects: u64,
}

/// The parsed head of a response.
#[derive(Debug, PartialEq)]
pub(crate) struct Head {
    pub(crate) status: u16,
    /// Bytes of the head, including the blank line.
    pub(crate) len: usize,
    pub(crate) content_length: Option<usize>,
    pub(crate) chunked: bool,
    pub(crate) close: bool,
}

impl Conn {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Conn {
            addr,
            host: addr.to_string(),
            stream: None,
            buf: Vec::with_capacity(4096),
            connects: 0,
        }
    }

    /// Drops the connection; the next request opens a new one. Call this
    /// when a request was abandoned half-way (timeout).
    pub(crate) fn reset(&mut self) {
        self.stream = None;
        self.buf.clear();
    }

    /// Sends one request and reads its answer. A kept-alive connection that
    /// the server closed before answering is retried once on a new one.
    pub(crate) async fn request(
        &mut self,
        method: &str,
        path: &str,
        json_body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        let reused = self.stream.is_some();
        match self.try_request(method, path, json_body).await {
            Ok(r) => Ok(r),
            Err(e) if reused && e.downcast_ref::<ClosedBeforeAnswer>().is_some() => {
                self.reset();
                self.try_request(method, path, json_body).await
            }
            Err(e) => {
                self.reset();
                Err(e)
            }
        }
    }

    async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        json_body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect to {}", self.addr))?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
            self.buf.clear();
            self.connects += 1;
        }
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.host);
        if let Some(body) = json_body {
            req.push_str("content-type: application/json\r\n");
            req.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some(body) = json_body {
            bytes.extend_from_slice(body);
        }
        let Some(stream) = self.stream.as_mut() else {
            bail!("no connection");
        };
        stream
            .write_all(&bytes)
            .await
            .map_err(|_| ClosedBeforeAnswer)?;

        // The head.
        let head = loop {
            if let Some(head) = parse_head(&self.buf)? {
                break head;
            }
            if self.buf.len() > MAX_HEAD {
                bail!("response head larger than {MAX_HEAD} bytes");
            }
            let before = self.buf.len();
            let n = read_more(stream, &mut self.buf).await?;
            if n == 0 {
                if before == 0 {
                    return Err(ClosedBeforeAnswer.into());
                }
                bail!("connection closed inside a response head");
            }
        };
        self.buf.drain(..head.len);

        // The body.
        let body = if head.chunked {
            read_chunked(stream, &mut self.buf).await?
        } else if let Some(len) = head.content_length {
            if len > MAX_BODY {
                bail!("response body of {len} bytes is larger than {MAX_BODY}");
            }
            while self.buf.len() < len {
                if read_more(stream, &mut self.buf).await? == 0 {
                    bail!("connection closed inside a response body");
                }
            }
            self.buf.drain(..len).collect()
        } else if head.status == 204 || head.status == 304 || head.status < 200 {
            Vec::new()
        } else {
            // Delimited by the end of the connection.
            while read_more(stream, &mut self.buf).await? != 0 {
                if self.buf.len() > MAX_BODY {
                    bail!("response body larger than {MAX_BODY} bytes");
                }
            }
            self.stream = None;
            std::mem::take(&mut self.buf)
        };
        if head.close {
            self.reset();
        }
        Ok(Response {
            status: head.status,
            body,
        })
    }
}

/// The server closed a kept-alive connection before any byte of the answer.
#[derive(Debug)]
struct ClosedBeforeAnswer;

impl std::fmt::Display for ClosedBeforeAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed before the answer")
    }
}

impl std::error::Error for ClosedBeforeAnswer {}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await.context("read")?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a complete response head at the start of `buf`, or `None` if the
/// blank line has not arrived yet.
pub(crate) fn parse_head(buf: &[u8]) -> anyhow::Result<Option<Head>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x answer: `{status_line}`");
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..1000).contains(s))
        .with_context(|| format!("bad status line `{status_line}`"))?;
    let mut head = Head {
        status,
        len: end + 4,
        content_length: None,
        chunked: false,
        close: version == "HTTP/1.0",
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("bad header line `{line}`");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(value.parse().context("bad content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                head.close = true;
            } else if v.contains("keep-alive") {
                head.close = false;
            }
        }
    }
    Ok(Some(head))
}

async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            if buf.len() > 1024 {
                bail!("chunk size line too long");
            }
            if read_more(stream, buf).await? == 0 {
                bail!("connection closed inside a chunked body");
            }
        };
        let size_text = std::str::from_utf8(&buf[..line_end]).context("chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).context("bad chunk size")?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, up to the blank line.
            loop {
                if let Some(i) = find(buf, b"\r\n") {
                    buf.drain(..i + 2);
                    if i == 0 {
                        return Ok(body);
                    }
                    continue;
                }
                if buf.len() > MAX_HEAD {
                    bail!("trailers too large");
                }
                if read_more(stream, buf).await? == 0 {
                    bail!("connection closed inside trailers");
                }
            }
        }
        if body.len() + size > MAX_BODY {
            bail!("chunked body larger than {MAX_BODY} bytes");
        }
        while buf.len() < size + 2 {
            if read_more(stream, buf).await? == 0 {
                bail!("connection closed inside a chunk");
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let raw = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\nContent-Length: 12\r\n\r\n{\"error\":1}x";
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.status, 404);
        assert_eq!(head.content_length, Some(12));
        assert_eq!(&raw[head.len..], b"{\"error\":1}x");
        assert!(!head.close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 abc\r\n\r\n").is_err());
        let close = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(close.close);
    }
}
