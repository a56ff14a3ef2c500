//! `Io`: one side of a relayed connection as the relay gets it. A backend over plain TCP is
//! connected as a bare tokio `TcpStream` (`upstream::connect`); a client accepted by weir's own
//! plain-TCP listener (`listen::Accepted`) already is one and is unwrapped; a plain TCP stream
//! that came through Pingora's listener leaves Pingora's wrapper for one when the relay starts.
//! The relay can then splice between two of them (`relay::splice`), and an idle connection holds
//! no wrapper and no socket digest (README "Idle cost"). Anything else (TLS, a connection
//! replayed after plain HTTP requests) stays as Pingora made it and is never spliced. The choice
//! is made by type, never by descriptor.
//!
//! Warm path: `Io::new` once per client per connection: a move out of a box for weir's own
//! listener's sockets; for one out of Pingora's wrapper a dup(2) and one epoll registration (the
//! wrapper's drop deregisters and closes the original descriptor, as it would have at the
//! connection's end).

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
    /// A plain TCP socket (a backend weir connected, or a client's out of Pingora's wrapper):
    /// payload may be spliced.
    Tcp(TcpStream),
    /// Anything else (TLS, a replayed HTTP connection), or a socket that could not be taken out
    /// of its wrapper, as Pingora made it.
    Other(Stream),
}

impl Io {
    /// A client's `stream` as the relay takes it: a socket weir's own listener accepted is
    /// unwrapped; Pingora's L4 stream (over TCP: weir's listeners are TCP addresses, never Unix
    /// sockets) becomes a tokio `TcpStream` through a duplicate of its descriptor.
    pub fn new(stream: Stream) -> Io {
        // Accepted by weir's own listener: the socket is already a bare tokio `TcpStream`.
        let stream = match super::listen::Accepted::into_tcp(stream) {
            Ok(tcp) => return Io::Tcp(tcp),
            Err(other) => other,
        };
        if !stream.as_any().is::<L4Stream>() {
            return Io::Other(stream);
        }
        match take_socket(&stream) {
            Ok(tcp) => {
                // The wrapper goes; the socket lives on in `tcp`.
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

/// The socket of `stream` (a Pingora L4 stream) as a tokio `TcpStream` of its own, through a
/// duplicate of its descriptor; the caller then drops the wrapper (the socket stays open through
/// the duplicate). The wrapper holds no unread byte: weir's listeners use no L4 read buffer
/// (`L4BufferSettings::unbuffered`), its rewind buffer is used only for a PROXY header read
/// before TLS (and TLS streams are never taken over: a plain listener's PROXY leftover is weir's
/// own, handed to the head reader), and its write buffer has capacity 0.
fn take_socket(stream: &Stream) -> io::Result<TcpStream> {
    let l4 = stream.as_any().downcast_ref::<L4Stream>().ok_or(io::ErrorKind::Unsupported)?;
    let fd = rustix::io::fcntl_dupfd_cloexec(borrow_socket(l4), 0)?;
    TcpStream::from_std(std::net::TcpStream::from(fd))
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
