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
use std::borrow::Cow;
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
    /// Request method as sent (`GET`, every upgrade's, without an allocation).
    pub method: Cow<'static, str>,
    /// Request target in origin form (path and query): as sent, or the path and query of an
    /// absolute-form target (whose authority is then the `Host` field; see `origin_form`).
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

    /// The `Host` header without its port, lower-cased (bytes that are not UTF-8 as U+FFFD).
    pub fn host(&self) -> Option<std::borrow::Cow<'_, str>> {
        let h = self.headers.all("host").next()?;
        Some(match std::str::from_utf8(h) {
            Ok(text) => super::host_without_port(text.trim()),
            Err(_) => super::host_without_port(String::from_utf8_lossy(h).trim()).into_owned().into(),
        })
    }

    /// Bytes the client sent after the head.
    pub fn early(&self) -> &[u8] {
        self.buf.get(self.head_len..).unwrap_or(&[])
    }

    /// Where this request (head and body) ends in `bytes`, the bytes read from the client
    /// starting with this head (RFC 9112 §6.3): the bytes after it are the next pipelined
    /// request.
    pub fn message_end(&self, bytes: &[u8]) -> MessageEnd {
        let te = self.headers.all("transfer-encoding").next().is_some();
        let lengths: Vec<&[u8]> = self.headers.all("content-length").collect();
        if te {
            // Chunked must be the final coding; with a Content-Length too the framing is suspect.
            let codings: Vec<String> = self
                .headers
                .all("transfer-encoding")
                .flat_map(|v| {
                    String::from_utf8_lossy(v).split(',').map(|c| c.trim().to_ascii_lowercase()).collect::<Vec<_>>()
                })
                .collect();
            if !lengths.is_empty() || codings.last().map(String::as_str) != Some("chunked") {
                return MessageEnd::Unknown;
            }
            return chunked_end(bytes, self.head_len).map_or(MessageEnd::Unknown, MessageEnd::At);
        }
        let mut length: Option<u64> = None;
        for value in lengths.iter().flat_map(|v| v.split(|b| *b == b',')) {
            let digits = value.trim_ascii();
            let parsed =
                std::str::from_utf8(digits).ok().filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
            match (parsed.and_then(|d| d.parse::<u64>().ok()), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(prev)) if n == prev => {}
                _ => return MessageEnd::Unknown,
            }
        }
        let Some(end) = (self.head_len as u64).checked_add(length.unwrap_or(0)) else { return MessageEnd::Unknown };
        match end.checked_sub(bytes.len() as u64) {
            Some(0) | None => usize::try_from(end).map_or(MessageEnd::Unknown, MessageEnd::At),
            Some(more) => MessageEnd::After(more),
        }
    }
}

/// Where a request ends in the bytes read so far (`RequestHead::message_end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageEnd {
    /// At this offset: the bytes after it belong to the next request.
    At(usize),
    /// Its body goes on for this many bytes past those read (`Content-Length`).
    After(u64),
    /// Not known: a chunked body not complete yet, or framing that is invalid or ambiguous
    /// (both `Transfer-Encoding` and `Content-Length`, differing lengths, a final coding that
    /// is not chunked).
    Unknown,
}

/// The end of a complete chunked body starting at `pos` (chunks, the last chunk, trailers and
/// the final CRLF), or `None` when it is incomplete or invalid.
fn chunked_end(bytes: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        match httparse::parse_chunk_size(bytes.get(pos..)?) {
            Ok(httparse::Status::Complete((used, 0))) => {
                pos += used;
                break;
            }
            Ok(httparse::Status::Complete((used, size))) => {
                let data_end = (pos + used).checked_add(usize::try_from(size).ok()?)?;
                if bytes.get(data_end..data_end.checked_add(2)?)? != b"\r\n" {
                    return None;
                }
                pos = data_end + 2;
            }
            Ok(httparse::Status::Partial) | Err(_) => return None,
        }
    }
    let trailers = bytes.get(pos..)?;
    if trailers.starts_with(b"\r\n") {
        return Some(pos + 2);
    }
    trailers.windows(4).position(|w| w == b"\r\n\r\n").map(|i| pos + i + 4)
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
    match tokio::time::timeout(timeout, read_head_from(stream, &[])).await {
        Ok(r) => r,
        Err(_) => Err(HeadError::TimedOut),
    }
}

/// `read_head` without a timeout, of a stream of which `already` was read (after a PROXY
/// header, say): the caller bounds the wait (the gateway, with the connection's deadline).
pub async fn read_head_from<S: AsyncRead + Unpin>(stream: &mut S, already: &[u8]) -> Result<RequestHead, HeadError> {
    let mut buf = BytesMut::with_capacity(INITIAL_READ.max(already.len()));
    buf.extend_from_slice(already);
    if !buf.is_empty() {
        if let Some((method, target, minor_version, headers, head_len)) = parse(&buf)? {
            return Ok(RequestHead { method, target, minor_version, headers, buf, head_len });
        }
    }
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

type Parsed = (Cow<'static, str>, String, u8, Fields, usize);

fn parse(buf: &[u8]) -> Result<Option<Parsed>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => {
            let method = match req.method {
                Some("GET") => Cow::Borrowed("GET"),
                m => Cow::Owned(m.unwrap_or("").to_string()),
            };
            let mut headers = Fields::from_parsed_in(buf, req.headers);
            let target = origin_form(req.path.unwrap_or(""), &mut headers);
            let minor = req.version.unwrap_or(0);
            Ok(Some((method, target, minor, headers, len)))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// The origin form of a request target. An absolute-form target (`http://host:port/path?q`, also
/// `https`, `ws`, `wss`; RFC 9112 §3.2.2) becomes its path and query (`/` when it has no path),
/// and its authority replaces every `Host` field, since a server must then ignore `Host` and
/// use the target's: the request is routed, checked and forwarded as an origin-form request to
/// that host, which is what a client talking to the backend directly would get. Any other target
/// (origin form, `*`, an authority with userinfo, no authority) is kept as sent.
fn origin_form(target: &str, headers: &mut Fields) -> String {
    let rest = ["http://", "https://", "ws://", "wss://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme).then(|| &target[scheme.len()..])
    });
    let Some(rest) = rest else { return target.to_string() };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return target.to_string();
    }
    let name = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("host")).map_or("Host", |(n, _)| n).to_string();
    headers.retain(|n, _| !n.eq_ignore_ascii_case("host"));
    headers.push_first(&name, authority.as_bytes());
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
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
                let headers = Fields::from_parsed_in(&buf, resp.headers);
                return Ok(ResponseHead { status, headers, buf, head_len });
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

    fn head_of(raw: &[u8]) -> RequestHead {
        let (method, target, minor_version, headers, head_len) = parse(raw).unwrap().unwrap();
        RequestHead { method, target, minor_version, headers, buf: BytesMut::from(raw), head_len }
    }

    #[test]
    fn message_end_finds_the_next_pipelined_request() {
        let get = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        assert_eq!(head_of(get).message_end(get), MessageEnd::At(get.len() - 19));
        let post = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n";
        assert_eq!(head_of(post).message_end(post), MessageEnd::At(post.len() - 19));
        assert_eq!(head_of(post).message_end(&post[..42]), MessageEnd::After(2));
        let chunked =
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        assert_eq!(head_of(chunked).message_end(chunked), MessageEnd::At(chunked.len() - 19));
        let no_trailers = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX";
        assert_eq!(head_of(no_trailers).message_end(no_trailers), MessageEnd::At(no_trailers.len() - 1));
        assert_eq!(head_of(chunked).message_end(&chunked[..60]), MessageEnd::Unknown);
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        ] {
            assert_eq!(head_of(bad).message_end(bad), MessageEnd::Unknown, "{}", String::from_utf8_lossy(bad));
        }
        let same = b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nok";
        assert_eq!(head_of(same).message_end(same), MessageEnd::At(same.len()));
    }

    #[test]
    fn an_absolute_form_target_is_routed_by_its_path_and_its_authority_is_the_host() {
        let head = head_of(b"GET http://Chat.Example.com:8080/rooms/a?x=1 HTTP/1.1\r\nhost: other\r\nHost: again\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!((head.target.as_str(), head.path()), ("/rooms/a?x=1", "/rooms/a"));
        assert_eq!(head.host().as_deref(), Some("chat.example.com"));
        let hosts: Vec<&[u8]> = head.headers.all("host").collect();
        assert_eq!(hosts, [&b"Chat.Example.com:8080"[..]], "one Host, the target's, named as the client named it");
        assert_eq!(head.headers.iter().next().map(|(n, _)| n), Some("host"));
        for (target, origin) in [
            ("WSS://h?q", "/?q"),
            ("ws://h", "/"),
            ("https://[::1]:9/p", "/p"),
            ("/plain?x", "/plain?x"),
            ("http://user@h/p", "http://user@h/p"),
            ("http:///p", "http:///p"),
            ("*", "*"),
            ("ftp://h/p", "ftp://h/p"),
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(head_of(raw.as_bytes()).target, origin, "{target}");
        }
        assert_eq!(
            head_of(b"GET https://[::1]:9/p HTTP/1.1\r\n\r\n").host().as_deref(),
            Some("[::1]"),
            "no Host field: added"
        );
    }

    #[test]
    fn ipv6_host_keeps_brackets() {
        let raw = b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n";
        let (method, target, minor, headers, len) = parse(raw).unwrap().unwrap();
        let head = RequestHead { method, target, minor_version: minor, headers, buf: BytesMut::new(), head_len: len };
        assert_eq!(head.host().as_deref(), Some("[::1]"));
    }
}
