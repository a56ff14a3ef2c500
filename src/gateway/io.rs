//! `Io`: one side of a relayed connection as the relay gets it. A plain TCP stream leaves
//! Pingora's wrapper for a bare tokio `TcpStream`, so the relay can splice between two of them
//! (`relay::splice`) and no per-read bookkeeping of the wrapper runs on the hot path; anything
//! else (TLS, a connection replayed after plain HTTP requests) stays as Pingora made it and is
//! never spliced. The choice is made by type, never by descriptor.
//!
//! Warm path: `Io::new` once per side per connection (a dup(2), the wrapper's drop with its
//! epoll deregistration, and one epoll registration).

use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// One side of a relayed connection.
#[derive(Debug)]
pub enum Io {
    /// A plain TCP socket, out of Pingora's wrapper: payload may be spliced.
    Tcp(TcpStream),
    /// Anything else (TLS, a replayed HTTP connection), as Pingora made it.
    Other(Stream),
}

impl Io {
    /// `stream` as the relay takes it. Plain TCP (Pingora's L4 stream: weir's listeners and
    /// backends are TCP addresses, never Unix sockets) is taken over through a duplicate of its descriptor, and the wrapper is dropped (the socket
    /// stays open through the duplicate). weir's listeners and backend connections use no L4
    /// read buffer (`L4BufferSettings::unbuffered`; connector streams are unbuffered too), and a
    /// PROXY header's leftover that Pingora holds is read by the request head's first read (2 KiB
    /// or more, while the leftover is under 512 bytes), so the wrapper holds no unread byte here.
    /// If the takeover fails, the stream stays wrapped.
    pub fn new(stream: Stream) -> Io {
        let Some(l4) = stream.as_any().downcast_ref::<L4Stream>() else { return Io::Other(stream) };
        let tcp = rustix::io::fcntl_dupfd_cloexec(borrow_socket(l4), 0)
            .map_err(io::Error::from)
            .map(std::net::TcpStream::from)
            .and_then(TcpStream::from_std);
        match tcp {
            Ok(tcp) => {
                drop(stream);
                Io::Tcp(tcp)
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot take the socket out of Pingora's stream; relayed without splice");
                Io::Other(stream)
            }
        }
    }
}

/// The descriptor `l4` owns, borrowed for as long as `l4` is.
#[allow(unsafe_code)]
fn borrow_socket(l4: &L4Stream) -> BorrowedFd<'_> {
    // SAFETY: `l4` owns this descriptor and keeps it open while it lives; the returned borrow
    // cannot outlive `l4` (same lifetime), so the descriptor is open for the borrow's whole life.
    // Pingora exposes only `AsRawFd`, so this is the one way to hand it to a safe API (dup).
    unsafe { BorrowedFd::borrow_raw(l4.as_raw_fd()) }
}

impl crate::relay::splice::Splice for Io {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Io::Tcp(s) => Some(s),
            Io::Other(_) => None,
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Other(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Other(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Other(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Other(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
