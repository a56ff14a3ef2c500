//! The backend half of the handshake: connect (a tokio `TcpStream`, then TLS for `tls` pools and
//! namespaces: rustls over the connected socket through Pingora's TLS client, a Pingora
//! `TlsStream`), forward the upgrade, read and check the answer.
//!
//! Plain TCP backends are connected with tokio directly, not Pingora's `TransportConnector`: the
//! relay wants a bare socket (`Io::Tcp`: splice, no wrapper held while idle), and taking one out
//! of Pingora's wrapper costs a dup(2), a second epoll registration, its removal and a second
//! close(2), and the wrapper's own `getsockopt` on drop. With Pingora's `getsockname` and
//! `IP_BIND_ADDRESS_NO_PORT`, that was 7 of the 41 system calls of a handshake cycle, and its
//! 8 KB connect future was copied into every upgrade's state (issue 14's profile). The socket
//! is set up as Pingora's connector set it: `TCP_NODELAY`, connect within the timeout.
//!
//! Warm path (once per connection). End-to-end headers (Sec-WebSocket-Protocol, -Extensions,
//! cookies, Authorization, Origin, Host) are forwarded as sent. Hop-by-hop headers are dropped per
//! RFC 9110 §7.6.1 (`Connection`, the headers it names, `Keep-Alive`, `Proxy-Connection`, `TE`,
//! `Transfer-Encoding`, `Upgrade`) and the upgrade is re-stated as `Connection: Upgrade` +
//! `Upgrade: websocket`; a header named in `Connection` is still forwarded when it is one of
//! `END_TO_END` (a client cannot make weir strip `Host` or the WebSocket headers). Headers a
//! client could forge are dropped (`forged`: `X-Weir-*`, `Forwarded`, `X-Forwarded-*`,
//! `X-Real-IP`, names with `_`) and weir sets `X-Forwarded-For` and `X-Real-IP` (the client's
//! address: there are no trusted proxies), `X-Forwarded-Proto` and `X-Weir-Connection-Id`.

use super::io::Io;
use crate::http1::head::{read_response_head, RequestHead, ResponseError, ResponseHead};
use crate::relay::timers::Deadline;
use crate::tls_client::ClientTls;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How connecting or handshaking with a backend failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// Connection refused, reset, or the backend closed before answering.
    Unreachable(String),
    /// Connect or answer took longer than its timeout.
    TimedOut(String),
    /// The answer is not a valid HTTP/1.1 response head.
    BadResponse(String),
    /// The TLS handshake failed (the text names the cause); never retried without TLS.
    Tls(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Unreachable(s) => write!(f, "backend unreachable: {s}"),
            UpstreamError::TimedOut(s) => write!(f, "backend timed out: {s}"),
            UpstreamError::BadResponse(s) => write!(f, "backend answered badly: {s}"),
            UpstreamError::Tls(s) => write!(f, "backend TLS: {s}"),
        }
    }
}

impl From<ResponseError> for UpstreamError {
    fn from(e: ResponseError) -> Self {
        match e {
            ResponseError::Unreachable(s) => UpstreamError::Unreachable(s),
            ResponseError::BadResponse(s) => UpstreamError::BadResponse(s),
        }
    }
}

/// Open a connection to `addr` within `timeout` (TCP, then the TLS handshake when `tls` is set,
/// both within `timeout`, kept by `deadline`): a plain socket is `Io::Tcp`, a TLS stream
/// `Io::Other`.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&ClientTls>,
    deadline: &mut Deadline,
) -> Result<Io, UpstreamError> {
    let (started, due) = Deadline::due_in(timeout);
    let tcp = match deadline.until(started, due, TcpStream::connect(addr)).await {
        Some(Ok(tcp)) => tcp,
        Some(Err(e)) => return Err(UpstreamError::Unreachable(format!("connecting to {addr}: {e}"))),
        None => return Err(UpstreamError::TimedOut(format!("no connection to {addr} within {timeout:?}"))),
    };
    tcp.set_nodelay(true).map_err(|e| UpstreamError::Unreachable(format!("connected to {addr}: {e}")))?;
    let Some(tls) = tls else { return Ok(Io::Tcp(tcp)) };
    // TLS goes over the socket as Pingora's own connector would put it: a Pingora L4 stream.
    let l4 = L4Stream::from(tcp);
    let name = match tls.server_name(addr) {
        rustls::pki_types::ServerName::DnsName(n) => n.as_ref().to_string(),
        rustls::pki_types::ServerName::IpAddress(ip) => std::net::IpAddr::from(ip).to_string(),
        other => format!("{other:?}"),
    };
    let connector = tls.connector();
    // Boxed: the handshake's state is 6.7 KB, and only TLS backends need it.
    let handshake = Box::pin(pingora_core::protocols::tls::client::handshake(&connector, &name, l4));
    match deadline.until(Deadline::now(), due, handshake).await {
        Some(Ok(s)) => Ok(Io::Other(Box::new(s))),
        Some(Err(e)) => {
            // Pingora nests its contexts; the rustls cause (and the SNI) come last.
            let text = e.to_string();
            let cause = text.rsplit_once("cause: ").map_or(text.as_str(), |(_, c)| c);
            Err(UpstreamError::Tls(crate::tls_client::explain(cause)))
        }
        None => Err(UpstreamError::TimedOut(format!("no TLS handshake within {timeout:?}"))),
    }
}

/// End-to-end headers of an upgrade that weir forwards even when the client names them in
/// `Connection` (naming them must not make weir strip them).
const END_TO_END: [&str; 8] = [
    "host",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "origin",
    "authorization",
    "cookie",
];

/// True for headers that describe one connection only (RFC 9110 §7.6.1): the fixed ones, and
/// those the client named in `Connection` unless they are `END_TO_END`.
fn hop_by_hop(name: &[u8], nominated: &[&[u8]]) -> bool {
    const FIXED: [&str; 6] = ["connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"];
    FIXED.iter().any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
        || (nominated.iter().any(|n| name.eq_ignore_ascii_case(n))
            && !END_TO_END.iter().any(|h| name.eq_ignore_ascii_case(h.as_bytes())))
}

/// True for request headers weir never forwards as the client sent them, on every route:
/// weir's own (`X-Weir-*`), forwarding headers (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`: weir
/// sets its own from what it knows; there are no trusted proxies) and any name containing `_`
/// (as NGINX does by default: CGI-style servers read `X_Forwarded_For` as `X-Forwarded-For`).
pub fn forged(name: &str) -> bool {
    forged_name(name.as_bytes())
}

/// `forged` on a name's bytes.
fn forged_name(name: &[u8]) -> bool {
    let starts = |prefix: &[u8]| name.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix));
    name.contains(&b'_')
        || starts(b"x-weir-")
        || starts(b"x-forwarded-")
        || name.eq_ignore_ascii_case(b"forwarded")
        || name.eq_ignore_ascii_case(b"x-real-ip")
}

/// What an object host is told about the object a connection is for.
#[derive(Debug, Clone, Copy)]
pub struct ObjectTarget<'a> {
    /// Namespace name, sent as `X-Weir-Object-Namespace`.
    pub namespace: &'a str,
    /// Object id, sent as `X-Weir-Object-Id`.
    pub id: &'a str,
    /// Path template (`{namespace}`, `{id}`) replacing the request path; `None` keeps it.
    pub forward_path: Option<&'a str>,
}

impl ObjectTarget<'_> {
    /// The request target sent to the host for a client request to `target`.
    fn rewrite(&self, target: &str) -> String {
        let Some(template) = self.forward_path else { return target.to_string() };
        let path = template
            .replace("{namespace}", &crate::objects::id::percent_encode(self.namespace))
            .replace("{id}", &crate::objects::id::percent_encode(self.id));
        match target.split_once('?') {
            Some((_, query)) => format!("{path}?{query}"),
            None => path,
        }
    }
}

/// The upgrade request weir sends to the backend for `head` (to an object host when `object`).
pub fn upgrade_request(
    head: &RequestHead,
    client_ip: Option<IpAddr>,
    tls: bool,
    connection_id: uuid::Uuid,
    tenant: Option<&str>,
    object: Option<ObjectTarget<'_>>,
) -> Vec<u8> {
    // The tokens the client named in `Connection`, borrowed from its head.
    let nominated: Vec<&[u8]> = head
        .headers
        .all("connection")
        .flat_map(|v| v.split(|&b| b == b',').map(<[u8]>::trim_ascii))
        .filter(|t| !t.is_empty())
        .collect();
    let mut out = Vec::with_capacity(head.head_len + 160);
    let target = object.map_or(std::borrow::Cow::Borrowed(head.target.as_str()), |o| o.rewrite(&head.target).into());
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in head.headers.iter_bytes() {
        if hop_by_hop(name, &nominated) || forged_name(name) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: websocket\r\n");
    if let Some(ip) = client_ip {
        out.extend_from_slice(b"X-Forwarded-For: ");
        let start = out.len();
        crate::text::push_ip(&mut out, ip);
        let end = out.len();
        out.extend_from_slice(b"\r\nX-Real-IP: ");
        out.extend_from_within(start..end);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if tls { b"X-Forwarded-Proto: https\r\n" } else { b"X-Forwarded-Proto: http\r\n" });
    out.extend_from_slice(b"X-Weir-Connection-Id: ");
    crate::text::push_uuid(&mut out, &connection_id);
    out.extend_from_slice(b"\r\n");
    if let Some(t) = tenant.filter(|t| t.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))) {
        out.extend_from_slice(b"X-Weir-Tenant: ");
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(o) = object {
        // Ids pass the namespace's `allowed` set (printable ASCII), so they are valid header values.
        for (name, value) in [(&b"X-Weir-Object-Namespace: "[..], o.namespace), (b"X-Weir-Object-Id: ", o.id)] {
            out.extend_from_slice(name);
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Send `request` and read the backend's response head, both within `timeout` (kept by
/// `deadline`).
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    backend: &mut S,
    request: &[u8],
    timeout: Duration,
    deadline: &mut Deadline,
) -> Result<ResponseHead, UpstreamError> {
    let io = async {
        backend
            .write_all(request)
            .await
            .map_err(|e| UpstreamError::Unreachable(format!("writing the upgrade: {e}")))?;
        backend.flush().await.map_err(|e| UpstreamError::Unreachable(format!("writing the upgrade: {e}")))?;
        read_response_head(backend).await.map_err(UpstreamError::from)
    };
    match deadline.within(timeout, io).await {
        Some(r) => r,
        None => Err(UpstreamError::TimedOut(format!("no answer to the upgrade within {timeout:?}"))),
    }
}

/// Copy a non-101 answer to the client unchanged: the head and its body (by Content-Length,
/// until EOF, or for chunked bodies until the final chunk), within `timeout`.
pub async fn pass_through<B: AsyncRead + Unpin, C: AsyncWrite + Unpin>(
    resp: ResponseHead,
    backend: &mut B,
    client: &mut C,
    timeout: Duration,
) -> std::io::Result<()> {
    let copy = async {
        client.write_all(&resp.buf).await?;
        let already = resp.buf.len() - resp.head_len;
        let chunked = resp.headers.has_token("transfer-encoding", "chunked");
        let length = resp.headers.get("content-length").and_then(|v| v.parse::<u64>().ok());
        let mut tail = resp.buf.get(resp.buf.len().saturating_sub(5)..).unwrap_or(&[]).to_vec();
        let mut remaining = length.map(|l| l.saturating_sub(already as u64));
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            if remaining == Some(0) || (chunked && tail.ends_with(b"0\r\n\r\n")) {
                break;
            }
            let want = remaining.map_or(chunk.len(), |r| r.min(chunk.len() as u64) as usize);
            let n = backend.read(&mut chunk[..want]).await?;
            if n == 0 {
                break;
            }
            client.write_all(&chunk[..n]).await?;
            remaining = remaining.map(|r| r - n as u64);
            tail.extend_from_slice(&chunk[..n]);
            let keep = tail.len().saturating_sub(5);
            tail.drain(..keep);
        }
        client.flush().await
    };
    tokio::time::timeout(timeout, copy).await.unwrap_or(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::Fields;
    use bytes::BytesMut;

    #[test]
    fn hop_by_hop_headers_are_replaced_and_forwarding_headers_added() {
        let raw = "GET /chat HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade, X-Secret\r\nUpgrade: websocket\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nCookie: s=1\r\nAuthorization: Bearer t\r\nSec-WebSocket-Protocol: chat\r\nX-Forwarded-For: 10.0.0.1\r\nX-Weir-Connection-Id: spoof\r\n\r\n";
        let head = head_of(raw);
        let out = String::from_utf8(upgrade_request(
            &head,
            Some("127.0.0.9".parse().unwrap()),
            false,
            uuid::Uuid::from_u128(1),
            None,
            None,
        ))
        .unwrap();
        assert!(out.starts_with("GET /chat HTTP/1.1\r\nHost: a\r\n"));
        assert!(!out.contains("X-Secret"), "{out}");
        assert!(!out.contains("Keep-Alive"), "{out}");
        assert!(!out.contains("spoof"), "{out}");
        assert!(out.contains("Cookie: s=1\r\n"));
        assert!(out.contains("Authorization: Bearer t\r\n"));
        assert!(out.contains("Sec-WebSocket-Protocol: chat\r\n"));
        assert!(out.contains("Connection: Upgrade\r\nUpgrade: websocket\r\n"));
        // No trusted proxies: the client's X-Forwarded-For is dropped, not appended to.
        assert!(out.contains("X-Forwarded-For: 127.0.0.9\r\n"), "{out}");
        assert!(!out.contains("10.0.0.1"), "{out}");
        assert!(out.contains("X-Real-IP: 127.0.0.9\r\n"), "{out}");
        assert!(out.contains("X-Forwarded-Proto: http\r\n"));
        assert!(out.ends_with("X-Weir-Connection-Id: 00000000-0000-0000-0000-000000000001\r\n\r\n"));
    }

    fn head_of(raw: &str) -> RequestHead {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(raw.as_bytes()).unwrap() {
            httparse::Status::Complete(l) => l,
            httparse::Status::Partial => panic!("partial"),
        };
        RequestHead {
            method: "GET".into(),
            target: "/chat".into(),
            minor_version: 1,
            headers: Fields::from_parsed(req.headers),
            buf: BytesMut::from(raw),
            head_len: len,
        }
    }

    #[test]
    fn end_to_end_headers_named_in_connection_are_kept() {
        let raw = "GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, Host, Sec-WebSocket-Key, Sec-WebSocket-Version, Sec-WebSocket-Protocol, Sec-WebSocket-Extensions, Origin, Authorization, Cookie, X-Secret\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate\r\nOrigin: o\r\nAuthorization: Bearer t\r\nCookie: s=1\r\nX-Secret: 1\r\n\r\n";
        let out =
            String::from_utf8(upgrade_request(&head_of(raw), None, false, uuid::Uuid::nil(), None, None)).unwrap();
        for kept in [
            "Host: a",
            "Sec-WebSocket-Key: k",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Protocol: chat",
            "Sec-WebSocket-Extensions: permessage-deflate",
            "Origin: o",
            "Authorization: Bearer t",
            "Cookie: s=1",
        ] {
            assert!(out.contains(&format!("\r\n{kept}\r\n")), "{kept} missing: {out}");
        }
        assert!(!out.contains("X-Secret"), "{out}");
    }

    #[test]
    fn forged_forwarding_and_weir_headers_are_dropped() {
        let raw = "GET /chat HTTP/1.1\r\nHost: a\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Port: 1\r\nX_Forwarded_For: 6.6.6.6\r\nMy_Header: x\r\nX-Weir-Object-Id: spoof\r\nX-Weir-Anything: spoof\r\nX-Kept: yes\r\n\r\n";
        let out = String::from_utf8(upgrade_request(
            &head_of(raw),
            Some("10.1.2.3".parse().unwrap()),
            true,
            uuid::Uuid::nil(),
            None,
            None,
        ))
        .unwrap();
        assert!(!out.contains("6.6.6.6") && !out.contains("evil") && !out.contains("spoof"), "{out}");
        assert!(!out.contains('_') && !out.contains("X-Forwarded-Port"), "{out}");
        assert!(out.contains("\r\nX-Kept: yes\r\n"), "{out}");
        assert!(
            out.contains("\r\nX-Forwarded-For: 10.1.2.3\r\nX-Real-IP: 10.1.2.3\r\nX-Forwarded-Proto: https\r\n"),
            "{out}"
        );
        assert!(forged("x-weir-connection-id") && forged("FORWARDED") && !forged("x-weirdo") && !forged("forwarded-x"));
    }
}
