//! Plain HTTP on `http` routes, through Pingora's `ProxyHttp` pipeline (a socket.io app needs
//! its long-polling requests and its upgrade on the same route).
//!
//! Warm path (once per request). The gateway has already read the head; `proxy` hands Pingora
//! exactly that request (head and body) as a pipelined prefix, so Pingora parses it again here;
//! this module only picks the peer and sets the forwarding headers. Upgrades never come here:
//! the gateway relays them itself.
//!
//! Pipelining (RFC 9112 §9.3.2): bytes read past the request (the next requests a client sent
//! without waiting) go back in front of the stream (`Replay`) when Pingora hands the connection
//! back, so the gateway reads the next head from them and every complete request is answered,
//! in order. Pingora's own copy of what it read past a request lives in private state; the
//! `Replay` records those bytes as they pass instead.

use super::upstream::forged;
use crate::http1::head::{MessageEnd, RequestHead};
use crate::http1::host_without_port;
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora_core::apps::{HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::{HttpProxy, ProxyHttp, Session};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes kept from what Pingora reads past a request (one of its body reads, or its 1-byte
/// idle probe); more and the connection is closed after the answer instead of replayed.
const MAX_CARRY: usize = 256 * 1024;

/// Serve one plain HTTP request (its head already read by the gateway) through Pingora's proxy.
/// Returns the connection for the next request, with the bytes read past this one in front of
/// it; `None` closes it.
pub async fn proxy(
    app: &Arc<HttpProxy<HttpRoutes>>,
    stream: Stream,
    head: RequestHead,
    shutdown: &ShutdownWatch,
) -> Option<ReusedHttpStream> {
    let mut head = head;
    let (inner, mut read, client_closed) = Replay::unwrap(stream, std::mem::take(&mut head.buf))?;
    let (prefix, carry, tape) = match head.message_end(&read) {
        MessageEnd::At(end) => {
            let carry = read.split_off(end);
            // Pingora must not see the client's end of stream while requests wait behind this one.
            let hide_eof = !carry.is_empty();
            (read, carry, Some(Tape { skip: 0, hide_eof, ..Tape::default() }))
        }
        MessageEnd::After(body_left) => (read, BytesMut::new(), Some(Tape { skip: body_left, ..Tape::default() })),
        // Framing weir cannot follow: Pingora's own rules (it closes the connection after the
        // answer if it read past the request).
        MessageEnd::Unknown => (read, BytesMut::new(), None),
    };
    let pipelining = tape.is_some();
    let mut session = ServerSession::new_http1(Box::new(Replay { inner, pre: BytesMut::new(), tape, client_closed }));
    session.set_pipelined_prefix(prefix);
    session.set_pipelining_enabled(pipelining);
    session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
    if client_closed && carry.is_empty() {
        // The client half-closed after pipelining: answer this last request, then close.
        if let ServerSession::H1(h1) = &mut session {
            h1.set_abort_on_close(false);
        }
    }
    let reused = app.process_new_http(session, shutdown).await?;
    // The settings hold Pingora's copy of the bytes it read past the request: the tape has them.
    let (stream, _settings) = reused.consume();
    let replay = stream.into_any().downcast::<Replay>().ok()?;
    let Replay { inner, tape, client_closed, .. } = *replay;
    let mut next = carry;
    let mut closed = client_closed;
    if let Some(tape) = tape {
        if tape.overflow {
            tracing::debug!("more than {MAX_CARRY} bytes read past a request; closing after its answer");
            return None;
        }
        next.extend_from_slice(&tape.bytes);
        closed |= tape.eof;
    }
    match (next.is_empty(), closed) {
        (true, false) => return Some(ReusedHttpStream::new(inner, None)),
        // Every request the client sent before closing is answered.
        (true, true) => return None,
        (false, _) => {}
    }
    Some(ReusedHttpStream::new(Box::new(Replay { inner, pre: next, tape: None, client_closed: closed }), None))
}

/// The stream to read the next head from: a `Replay` with nothing left to replay is unwrapped,
/// so a WebSocket relayed on a reused connection reads its socket directly. `None` only if the
/// unwrapping fails (it cannot: the type is checked first).
pub fn settle(stream: Stream) -> Option<Stream> {
    let drained = stream.as_any().downcast_ref::<Replay>().is_some_and(|r| r.pre.is_empty() && !r.client_closed);
    if !drained {
        return Some(stream);
    }
    stream.into_any().downcast::<Replay>().ok().map(|r| r.inner)
}

/// A client stream with bytes already read from it in front (`pre`), served before the socket
/// is read again; while Pingora serves a request, what it reads past that request is recorded
/// (`tape`) to be replayed the same way.
#[derive(Debug)]
pub struct Replay {
    inner: Stream,
    /// Bytes to hand out before `inner` is read again.
    pre: BytesMut,
    /// Recording while Pingora serves one request.
    tape: Option<Tape>,
    /// The client half-closed (seen while Pingora served an earlier request, hidden from it).
    client_closed: bool,
}

/// What Pingora read from the socket past the request it serves.
#[derive(Debug, Default)]
struct Tape {
    /// Body bytes still to pass before recording starts.
    skip: u64,
    /// Bytes read past the request.
    bytes: BytesMut,
    /// More than `MAX_CARRY` bytes: they cannot be replayed.
    overflow: bool,
    /// Answer "pending" instead of end of stream (requests are waiting behind this one).
    hide_eof: bool,
    /// The end of stream was read (and hidden).
    eof: bool,
}

impl Tape {
    fn record(&mut self, bytes: &[u8]) {
        let skip = usize::try_from(self.skip).unwrap_or(usize::MAX).min(bytes.len());
        self.skip -= skip as u64;
        let rest = bytes.get(skip..).unwrap_or(&[]);
        if self.bytes.len() + rest.len() > MAX_CARRY {
            self.overflow = true;
        } else {
            self.bytes.extend_from_slice(rest);
        }
    }
}

impl Replay {
    /// The socket, the bytes already read (`read`, then any not replayed yet) and whether the
    /// client half-closed. `None` only if unwrapping fails (it cannot: the type is checked).
    fn unwrap(stream: Stream, mut read: BytesMut) -> Option<(Stream, BytesMut, bool)> {
        if !stream.as_any().is::<Replay>() {
            return Some((stream, read, false));
        }
        let r = stream.into_any().downcast::<Replay>().ok()?;
        read.extend_from_slice(&r.pre);
        Some((r.inner, read, r.client_closed))
    }
}

impl AsyncRead for Replay {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(this.pre.get(..n).unwrap_or(&[]));
            this.pre.advance(n);
            if this.pre.is_empty() {
                this.pre = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let got = buf.filled().get(before..).unwrap_or(&[]);
        if let Some(tape) = this.tape.as_mut() {
            if got.is_empty() && buf.remaining() > 0 {
                tape.eof = true;
                if tape.hide_eof {
                    // Pending for good: Pingora ends the request on its other branches.
                    return Poll::Pending;
                }
            }
            tape.record(got);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Replay {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Replay {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Replay {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Replay {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Replay {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Replay {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Replay {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.pre.is_empty() {
            return self.inner.try_peek(buf).await;
        }
        let n = self.pre.len().min(buf.len());
        buf[..n].copy_from_slice(&self.pre[..n]);
        Ok(true)
    }
}

/// The `ProxyHttp` implementation for `http` routes.
pub struct HttpRoutes {
    /// The config snapshot in force (each request routes with the one current when it comes).
    current: super::snapshot::Current,
}

impl HttpRoutes {
    /// Proxy with the routes and pools of the snapshot in force.
    pub fn new(current: super::snapshot::Current) -> HttpRoutes {
        HttpRoutes { current }
    }
}

fn host_of(session: &Session) -> Option<String> {
    let req = session.req_header();
    let host = req.headers.get("host").and_then(|h| h.to_str().ok()).or_else(|| req.uri.host())?;
    Some(host_without_port(host).into_owned())
}

#[async_trait]
impl ProxyHttp for HttpRoutes {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    /// Runs in Pingora's `upstream_peer` phase: route again (cheap) and pick a healthy backend.
    async fn upstream_peer(&self, session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let host = host_of(session);
        let path = session.req_header().uri.path().to_string();
        let snap = self.current.load();
        let route = snap
            .routes
            .resolve(host.as_deref(), &path)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(404), "no route"))?;
        let crate::config::Target::Pool(pool) = route.target else {
            return Err(Error::explain(ErrorType::HTTPStatus(400), "object routes carry WebSockets only"));
        };
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let addr = snap
            .pools
            .select(pool, client, &[])
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "no healthy backend"))?;
        let mut peer = HttpPeer::new(addr, false, String::new());
        let timeouts = snap.config.timeouts;
        peer.options.connection_timeout = Some(timeouts.backend_connect);
        peer.options.total_connection_timeout = Some(timeouts.backend_connect);
        peer.options.read_timeout = Some(timeouts.backend_handshake);
        Ok(Box::new(peer))
    }

    /// Runs in Pingora's `upstream_request_filter` phase: the same rules as upgrades
    /// (`upstream::forged`): drop weir's own headers (`X-Weir-*`), forwarding headers and names
    /// with `_` as the client sent them, then set `X-Forwarded-For` and `X-Real-IP` (the
    /// client's address) and `X-Forwarded-Proto`.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        let dropped: Vec<_> = req.headers.keys().filter(|name| forged(name.as_str())).cloned().collect();
        for name in &dropped {
            req.remove_header(name);
        }
        if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
            req.insert_header("X-Forwarded-For", ip.to_string())?;
            req.insert_header("X-Real-IP", ip.to_string())?;
        }
        let tls = session.digest().and_then(|d| d.ssl_digest.as_ref()).is_some();
        req.insert_header("X-Forwarded-Proto", if tls { "https" } else { "http" })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::io::Cursor;
    use tokio::io::AsyncReadExt;

    fn replay(pre: &[u8], socket: &[u8], tape: Option<Tape>) -> Replay {
        Replay { inner: Box::new(Cursor::new(socket.to_vec())), pre: BytesMut::from(pre), tape, client_closed: false }
    }

    #[tokio::test]
    async fn replay_serves_its_bytes_first_and_records_past_the_body() {
        let mut r = replay(b"GET /", b"bodyGET /next", Some(Tape { skip: 4, ..Tape::default() }));
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"GET /bodyGET /next");
        let tape = r.tape.take().unwrap();
        assert_eq!((&tape.bytes[..], tape.eof, tape.overflow), (&b"GET /next"[..], true, false));
        assert!(r.pre.is_empty() && r.pre.capacity() == 0, "nothing kept once replayed");
    }

    #[tokio::test]
    async fn end_of_stream_is_hidden_while_requests_wait_and_too_much_overflows() {
        let mut r = replay(b"", b"G", Some(Tape { hide_eof: true, ..Tape::default() }));
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).await.unwrap(), 1);
        assert!(r.read(&mut buf).now_or_never().is_none(), "end of stream must stay pending");
        assert!(r.tape.as_ref().is_some_and(|t| t.eof && &t.bytes[..] == b"G"));
        let mut tape = Tape::default();
        tape.record(&vec![b'x'; MAX_CARRY + 1]);
        assert!(tape.overflow && tape.bytes.is_empty());
    }

    #[test]
    fn settle_unwraps_only_a_replay_with_nothing_left() {
        let stream: Stream = Box::new(replay(b"", b"", None));
        assert!(!settle(stream).unwrap().as_any().is::<Replay>());
        let stream: Stream = Box::new(replay(b"x", b"", None));
        assert!(settle(stream).unwrap().as_any().is::<Replay>());
    }
}
