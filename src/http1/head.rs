//! Reading HTTP/1.x heads, bounded in size and time: a client's request head (the gateway) and
//! a server's response head (backends' upgrade answers, health probes, the HTTP sink).
//!
//! Warm path (once per request). weir reads the head itself (httparse, bounded in size and
//! time) so that it owns every byte the client sent: bytes after the head (frames a client
//! pipelined before the 101) are kept in `RequestHead::buf` and relayed first. Plain HTTP on
//! `http` routes is handed to Pingora's proxy with the same bytes as a pipelined prefix, so
//! nothing is lost either way.

use super::Fields;
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest request head accepted, bytes (request line and headers). Larger heads get 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields accepted in one head.
pub const MAX_HEADERS: usize = 128;
/// First read buffer size, bytes; grows up to `MAX_HEAD_BYTES`.
const INITIAL_READ: usize = 2048;

/// A parsed request head plus the bytes read after it.
#[derive(Debug)]
pub struct RequestHead {
    /// Request method as sent.
    pub method: String,
    /// Request target as sent (path and query).
    pub target: String,
    /// HTTP minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub minor_version: u8,
    /// Header fields in order, names as sent.
    pub headers: Fields,
    /// Everything read so far: the head, then any early bytes.
    pub buf: BytesMut,
    /// Length of the head inside `buf`, bytes.
    pub head_len: usize,
}

impl RequestHead {
    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The `Host` header without its port, lower-cased.
    pub fn host(&self) -> Option<String> {
        self.headers.get("host").map(|h| super::host_without_port(&h))
    }

    /// Bytes the client sent after the head.
    pub fn early(&self) -> &[u8] {
        self.buf.get(self.head_len..).unwrap_or(&[])
    }
}

/// Why no head could be read.
#[derive(Debug)]
pub enum HeadError {
    /// The client closed (or was idle until shutdown) before sending a byte: not an error.
    Closed,
    /// The head did not arrive within the request-head timeout.
    TimedOut,
    /// The head is larger than `MAX_HEAD_BYTES` or has more than `MAX_HEADERS` fields.
    TooLarge,
    /// The bytes are not an HTTP/1.x request head.
    Malformed(String),
    /// The connection failed while reading.
    Io(std::io::Error),
}

/// Read and parse one request head, within `timeout`.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, timeout: Duration) -> Result<RequestHead, HeadError> {
    match tokio::time::timeout(timeout, read_head_inner(stream)).await {
        Ok(r) => r,
        Err(_) => Err(HeadError::TimedOut),
    }
}

async fn read_head_inner<S: AsyncRead + Unpin>(stream: &mut S) -> Result<RequestHead, HeadError> {
    let mut buf = BytesMut::with_capacity(INITIAL_READ);
    loop {
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        buf.reserve(INITIAL_READ.min(MAX_HEAD_BYTES - buf.len()));
        let n = stream.read_buf(&mut buf).await.map_err(HeadError::Io)?;
        if n == 0 {
            return if buf.is_empty() {
                Err(HeadError::Closed)
            } else {
                Err(HeadError::Malformed("connection closed inside the request head".into()))
            };
        }
        if let Some(head) = parse(&buf)? {
            let (method, target, minor_version, headers, head_len) = head;
            return Ok(RequestHead { method, target, minor_version, headers, buf, head_len });
        }
    }
}

type Parsed = (String, String, u8, Fields, usize);

fn parse(buf: &[u8]) -> Result<Option<Parsed>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => {
            let method = req.method.unwrap_or("").to_string();
            let target = req.path.unwrap_or("").to_string();
            let minor = req.version.unwrap_or(0);
            Ok(Some((method, target, minor, Fields::from_parsed(req.headers), len)))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// A server's response head plus the bytes read after it.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Header fields in order, names as sent.
    pub headers: Fields,
    /// Everything read: the head, then early bytes (frames sent right after a 101, or the start
    /// of a body).
    pub buf: BytesMut,
    /// Length of the head inside `buf`, bytes.
    pub head_len: usize,
}

impl ResponseHead {
    /// Bytes after the head.
    pub fn early(&self) -> &[u8] {
        self.buf.get(self.head_len..).unwrap_or(&[])
    }

    /// The head itself.
    pub fn head(&self) -> &[u8] {
        self.buf.get(..self.head_len).unwrap_or(&[])
    }
}

/// Why no response head could be read.
#[derive(Debug)]
pub enum ResponseError {
    /// The connection failed or closed before a whole head arrived.
    Unreachable(String),
    /// The bytes are not an HTTP/1.x response head, or it is larger than `MAX_HEAD_BYTES`.
    BadResponse(String),
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseError::Unreachable(s) => write!(f, "no answer: {s}"),
            ResponseError::BadResponse(s) => write!(f, "bad answer: {s}"),
        }
    }
}

/// Read one HTTP/1.x response head (at most `MAX_HEAD_BYTES`) from `io`, keeping what follows
/// it.
pub async fn read_response_head<S: AsyncRead + Unpin>(io: &mut S) -> Result<ResponseHead, ResponseError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(ResponseError::BadResponse(format!("response head larger than {MAX_HEAD_BYTES} bytes")));
        }
        buf.reserve(1024);
        let n =
            io.read_buf(&mut buf).await.map_err(|e| ResponseError::Unreachable(format!("reading the answer: {e}")))?;
        if n == 0 {
            return Err(ResponseError::Unreachable("closed before answering".into()));
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(head_len)) => {
                let status = resp.code.unwrap_or(0);
                return Ok(ResponseHead { status, headers: Fields::from_parsed(resp.headers), buf, head_len });
            }
            Err(e) => return Err(ResponseError::BadResponse(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_head_and_keeps_early_bytes() {
        let raw = b"GET /chat?x=1 HTTP/1.1\r\nHost: Example.com:8080\r\nUpgrade: websocket\r\n\r\n\x81\x80abcd";
        let (method, target, minor, headers, len) = parse(raw).unwrap().unwrap();
        let head =
            RequestHead { method, target, minor_version: minor, headers, buf: BytesMut::from(&raw[..]), head_len: len };
        assert_eq!(head.method, "GET");
        assert_eq!(head.path(), "/chat");
        assert_eq!(head.host().as_deref(), Some("example.com"));
        assert!(head.headers.has_token("upgrade", "WebSocket"));
        assert_eq!(head.early(), b"\x81\x80abcd");
    }

    #[test]
    fn partial_and_malformed_heads() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a").unwrap().is_none());
        assert!(matches!(parse(b"\x16\x03\x01 hello\r\n\r\n"), Err(HeadError::Malformed(_))));
    }

    #[test]
    fn ipv6_host_keeps_brackets() {
        let raw = b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n";
        let (method, target, minor, headers, len) = parse(raw).unwrap().unwrap();
        let head = RequestHead { method, target, minor_version: minor, headers, buf: BytesMut::new(), head_len: len };
        assert_eq!(head.host().as_deref(), Some("[::1]"));
    }
}
