//! Reading an HTTP/1.x request head from a client, and the parsed head.
//!
//! Warm path (once per request). weir reads the head itself (httparse, bounded in size and
//! time) so that it owns every byte the client sent: bytes after the head (frames a client
//! pipelined before the 101) are kept in `RequestHead::buf` and relayed first. Plain HTTP on
//! `http` routes is handed to Pingora's proxy with the same bytes as a pipelined prefix, so
//! nothing is lost either way.

use bytes::BytesMut;
use pingora_core::protocols::Stream;
use std::time::Duration;
use tokio::io::AsyncReadExt;

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

/// Header fields of a request or response head, in order, names as sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields(pub Vec<(String, Vec<u8>)>);

impl Fields {
    /// Copy the fields httparse found.
    pub fn from_parsed(parsed: &[httparse::Header<'_>]) -> Fields {
        Fields(parsed.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect())
    }

    /// Every field, in order.
    pub fn iter(&self) -> impl Iterator<Item = &(String, Vec<u8>)> {
        self.0.iter()
    }

    /// Values of every field named `name` (case-insensitive), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// The first field named `name`, as text (lossy), trimmed.
    pub fn get(&self, name: &str) -> Option<String> {
        self.all(name).next().map(|v| String::from_utf8_lossy(v).trim().to_string())
    }

    /// Whether any `name` field contains `token` in its comma-separated list (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name).any(|v| String::from_utf8_lossy(v).split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
}

impl RequestHead {
    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The `Host` header without its port, lower-cased.
    pub fn host(&self) -> Option<String> {
        self.headers.get("host").map(|h| host_without_port(&h))
    }

    /// Bytes the client sent after the head.
    pub fn early(&self) -> &[u8] {
        self.buf.get(self.head_len..).unwrap_or(&[])
    }
}

/// A `Host` value without its port, lower-cased (`[::1]:80` → `[::1]`, `A.com:8080` → `a.com`).
pub fn host_without_port(h: &str) -> String {
    let host = match h.strip_prefix('[') {
        Some(rest) => rest.split(']').next().map(|s| format!("[{s}]")).unwrap_or_else(|| h.to_string()),
        None => h.rsplit_once(':').map(|(a, _)| a.to_string()).unwrap_or_else(|| h.to_string()),
    };
    host.to_ascii_lowercase()
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
pub async fn read_head(stream: &mut Stream, timeout: Duration) -> Result<RequestHead, HeadError> {
    match tokio::time::timeout(timeout, read_head_inner(stream)).await {
        Ok(r) => r,
        Err(_) => Err(HeadError::TimedOut),
    }
}

async fn read_head_inner(stream: &mut Stream) -> Result<RequestHead, HeadError> {
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
