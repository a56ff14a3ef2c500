//! The gateway's plain-TCP listeners, served by weir's own accept loop (TLS listeners stay
//! Pingora's: its TLS stack runs the handshake).
//!
//! Why not Pingora's listener for plain TCP: it wraps every accepted socket in its L4 stream and
//! runs the connection in a task whose future is sized for its TLS handshake (about 8.7 KB,
//! copied at the spawn and written over twice by tokio), and the relay then had to take the
//! socket back out of the wrapper (a dup(2), a second epoll registration and the removal of the
//! first). Here a plain connection is one tokio `TcpStream` from accept(2) to close: registered
//! with epoll once, read through no wrapper, in a task that holds only the gateway's own state.
//! It reaches the gateway as `Accepted`, Pingora's stream trait over the bare socket, which
//! `Io::new` unwraps for the relay without a system call. The connection's one task (`Conn`)
//! runs its handshake (boxed) and then, in place, its relay: no second task is spawned at the
//! 101, and the handshake's state is freed before the relay starts.
//!
//! Binary upgrade: each listening socket is kept in Pingora's table of listening descriptors
//! under the key Pingora's own listener used (the address as `SocketAddr` prints it), so a
//! SIGQUIT hands it to the new process as before, and `weir run --upgrade` takes it from there
//! (README "Binary upgrade"); a busy port is retried as Pingora retried it (30 times, 1 s apart).
//!
//! Cold path: `start_service` binds. Warm path: one accept, one `set_nodelay` and one spawn per
//! connection, and `Conn`'s one move from handshake to relay. A failed accept backs off as the
//! other accept loops do (`crate::accept`), counted as
//! `weir_accept_errors_total{listener="gateway"}`.

use super::connection::Running;
use super::Gateway;
use crate::accept::AcceptErrors;
use async_trait::async_trait;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType,
};
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use prometheus::IntCounterVec;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The `listener` label of the gateway's accept errors.
pub const LISTENER: &str = "gateway";
/// Connections the kernel queues on a listening socket before weir accepts them (Pingora's).
pub const BACKLOG: u32 = 65_535;
/// Binds tried while a listener's port is in use (Pingora's count), `BIND_RETRY` apart.
pub const BIND_TRIES: u32 = 30;
/// Pause between two binds of a port in use.
pub const BIND_RETRY: Duration = Duration::from_secs(1);

/// One plain-TCP listener of the gateway.
#[derive(Debug, Clone, Copy)]
pub struct Plain {
    /// The address it listens on (`listeners[].address`).
    pub address: SocketAddr,
    /// Connections start with a PROXY header (`listeners[].proxy_protocol`).
    pub proxy_protocol: bool,
}

/// Pingora's service that runs the gateway's plain-TCP listeners.
pub struct PlainListeners {
    gateway: Arc<Gateway>,
    listeners: Vec<Plain>,
    accept_errors: IntCounterVec,
}

impl PlainListeners {
    /// A service serving `listeners` with `gateway`, its failed accepts counted in
    /// `accept_errors`.
    pub fn new(gateway: Arc<Gateway>, listeners: Vec<Plain>, accept_errors: IntCounterVec) -> PlainListeners {
        PlainListeners { gateway, listeners, accept_errors }
    }
}

#[async_trait]
impl Service for PlainListeners {
    async fn start_service(&mut self, fds: Option<ListenFds>, shutdown: ShutdownWatch, per_fd: usize) {
        let mut loops = Vec::new();
        for plain in &self.listeners {
            let listener = match listen(plain.address, fds.as_ref()).await {
                Ok(l) => Arc::new(l),
                Err(e) => {
                    // `weir run` checked the address before starting: another process took it
                    // since (`/readyz` reports the listener as not weir's: admin::owner).
                    tracing::error!(address = %plain.address, error = %e, "cannot listen: this listener serves nothing");
                    continue;
                }
            };
            for _ in 0..per_fd.max(1) {
                let (listener, gateway) = (listener.clone(), self.gateway.clone());
                let errors = AcceptErrors::new(LISTENER, "gateway", &self.accept_errors);
                loops.push(tokio::spawn(accept_loop(listener, *plain, gateway, shutdown.clone(), errors)));
            }
        }
        for l in loops {
            let _ = l.await;
        }
        self.gateway.cleanup().await;
    }

    fn name(&self) -> &str {
        "weir gateway"
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.listeners.iter().map(|l| l.address.to_string()).collect())
    }
}

/// The listening socket for `address`: the one in Pingora's table `fds` under its key (a binary
/// upgrade's), else a new one, added to the table so that the next upgrade hands it on.
async fn listen(address: SocketAddr, fds: Option<&ListenFds>) -> io::Result<TcpListener> {
    let key = address.to_string();
    let inherited = fds.and_then(|t| t.lock().get(&key).copied());
    if let Some(fd) = inherited {
        return from_table(fd);
    }
    let listener = bind(address).await?;
    if let Some(t) = fds {
        t.lock().add(key, listener.as_raw_fd());
    }
    Ok(listener)
}

/// The listening socket a binary upgrade's old process sent (descriptor `fd` in the table),
/// listening again with weir's backlog.
#[allow(unsafe_code)]
fn from_table(fd: RawFd) -> io::Result<TcpListener> {
    // SAFETY: Pingora received `fd` from the old process (SCM_RIGHTS) and keeps only its number
    // in the table, to send it on at the next upgrade; nothing else in this process owns it or
    // closes it, and the table has one entry per address, so it is taken here once. Pingora's
    // own listener takes its descriptors from the table in the same way.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(owned));
    // listen(2) on a listening socket only sets the backlog (Linux).
    socket.listen(BACKLOG)
}

/// A new listening socket on `address` (SO_REUSEADDR, as Pingora's), retrying while the port
/// is in use.
async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let mut tries = 0;
    loop {
        let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(address) {
            Ok(()) => return socket.listen(BACKLOG),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries + 1 < BIND_TRIES => {
                tries += 1;
                tracing::warn!(%address, tries, "address in use; trying again");
                tokio::time::sleep(BIND_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Accept on `listener` until shutdown: each connection is served by the gateway in a task of
/// its own.
async fn accept_loop(
    listener: Arc<TcpListener>,
    plain: Plain,
    gateway: Arc<Gateway>,
    mut shutdown: ShutdownWatch,
    mut errors: AcceptErrors,
) {
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            (tcp, peer) = errors.next(&listener) => {
                // As Pingora's listener does: the gateway writes whole heads and frames.
                let _ = tcp.set_nodelay(true);
                let stream: Stream = Box::new(Accepted { tcp, peer, proxy_protocol: plain.proxy_protocol });
                tokio::spawn(serve(gateway.clone(), stream, shutdown.clone()));
            }
        }
    }
    tracing::info!(address = %plain.address, "gateway listener closed (shutdown)");
}

/// A plain connection's task: the gateway serves it up to its 101 (or its end), then its relay
/// runs in the same task.
fn serve(
    gateway: Arc<Gateway>,
    stream: Stream,
    shutdown: ShutdownWatch,
) -> Conn<impl Future<Output = Option<Running>>> {
    Conn::Handshake(Box::pin(handshake(gateway, stream, shutdown)))
}

/// A plain connection up to its 101 (its relay comes back) or its end.
async fn handshake(gateway: Arc<Gateway>, stream: Stream, shutdown: ShutdownWatch) -> Option<Running> {
    gateway.process(stream, &shutdown).await
}

/// A plain connection's life in its one task: the handshake, then the relay. The handshake's
/// future is boxed: it is three to four times the relay's size (tests below), and a task holds its
/// future inline, so an idle relayed connection would otherwise carry the handshake's size for
/// its whole life (README "Idle cost"); the box is freed at the 101, before the relay starts.
/// (One task instead of a second one spawned at the 101: issue 14's handshake profile put a
/// spawn, its copies of the future and its scheduling at about 3 % of a handshake cycle.)
// The relay inline, deliberately: it is what the task holds for the connection's life, and a box
// would add an allocation and a pointer to every connection.
#[allow(clippy::large_enum_variant)]
enum Conn<H> {
    /// Reading the head, admission, connecting, the 101.
    Handshake(Pin<Box<H>>),
    /// Relaying, to the connection's end.
    Relay(Running),
    /// Ended.
    Done,
}

impl<H: Future<Output = Option<Running>>> Future for Conn<H> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this {
                Conn::Handshake(handshake) => match ready!(handshake.as_mut().poll(cx)) {
                    // Polled at once, as a new task would have been: its early bytes, its
                    // sockets' interest.
                    Some(running) => *this = Conn::Relay(running),
                    None => *this = Conn::Done,
                },
                Conn::Relay(running) => {
                    ready!(Pin::new(running).poll(cx));
                    *this = Conn::Done;
                }
                Conn::Done => return Poll::Ready(()),
            }
        }
    }
}

/// A client connection weir's listener accepted: the bare socket and what accept(2) said,
/// behind Pingora's stream trait for the parts of the gateway that take any stream (the head
/// reader, refusals, Pingora's HTTP proxy on `http` routes).
#[derive(Debug)]
pub struct Accepted {
    /// The socket.
    tcp: TcpStream,
    /// The client's address (as accept(2) gave it).
    peer: SocketAddr,
    /// Its listener expects a PROXY header.
    proxy_protocol: bool,
}

impl Accepted {
    /// The client's address and whether a PROXY header comes first, if `stream` is one.
    pub fn facts(stream: &Stream) -> Option<(SocketAddr, bool)> {
        stream.as_any().downcast_ref::<Accepted>().map(|a| (a.peer, a.proxy_protocol))
    }

    /// The socket of `stream` if it is one (else `stream` back).
    pub fn into_tcp(stream: Stream) -> Result<TcpStream, Stream> {
        if !stream.as_any().is::<Accepted>() {
            return Err(stream);
        }
        match stream.into_any().downcast::<Accepted>() {
            Ok(a) => Ok(a.tcp),
            // `Box<dyn Any>::downcast` succeeds for the type `is` just confirmed.
            Err(_) => unreachable!("an Accepted stream did not downcast to Accepted"),
        }
    }
}

impl AsyncRead for Accepted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Accepted {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(&mut self.tcp).await;
    }
}

impl UniqueID for Accepted {
    fn id(&self) -> UniqueIDType {
        self.tcp.as_raw_fd()
    }
}

impl Ssl for Accepted {}

impl GetTimingDigest for Accepted {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for Accepted {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for Accepted {
    /// Made when asked (Pingora's HTTP proxy asks on `http` routes); its addresses are read from
    /// the socket when first asked for.
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(Arc::new(SocketDigest::from_raw_fd(self.tcp.as_raw_fd())))
    }
}

#[async_trait]
impl Peek for Accepted {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns.
    fn future_size<A, B, C, F: Future>(_f: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A plain connection's handshake future (boxed in its task: allocated and copied once per
    /// connection, and what a connection still sending its head holds) was 14.6 KB in a release
    /// build when it was first written (a second `serve` for the keep-alive loop, admission's
    /// external HTTP exchange and the PROXY header's read buffer inline). Held to what it
    /// measured once those were boxed, so growth is a decision; printed with `--nocapture`.
    #[test]
    fn a_connection_s_handshake_stays_small() {
        let size = future_size(handshake);
        eprintln!("{size} B  a plain connection's handshake future (boxed)");
        assert!(size <= MOST_HANDSHAKE_BYTES, "{size} bytes, more than the {MOST_HANDSHAKE_BYTES} measured");
    }

    /// The measured size (1 440 bytes in both the test and the release profile since the
    /// handshake's three timeouts became one `relay::timers::Deadline`; 1 464 before, 1 640
    /// before the request stopped carrying a copy of its route's `limits:`), with a little room.
    const MOST_HANDSHAKE_BYTES: usize = 1500;

    /// The connection's task holds `Conn` for its whole life: no larger than the relay's
    /// `Running` (the boxed handshake is a pointer; the states' tag fits in `Running`'s spare
    /// bit patterns), so running the relay in the first task costs an idle connection nothing.
    #[test]
    fn a_connection_s_task_is_the_relay_s_size() {
        fn conn_size<A, B, C, H>(_f: fn(A, B, C) -> Conn<H>) -> usize {
            std::mem::size_of::<Conn<H>>()
        }
        let (conn, running) = (conn_size(serve), std::mem::size_of::<Running>());
        eprintln!("{conn} B  a plain connection's task future (Running: {running} B)");
        assert_eq!(conn, running, "Conn is {conn} bytes, Running {running}");
    }
}
