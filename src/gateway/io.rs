//! `Io`: one side of a relayed connection as the relay gets it. A backend over plain TCP is
//! connected as a bare tokio `TcpStream` (`upstream::connect`); a client accepted by weir's own
//! plain-TCP listener (`listen::Accepted`) already is one and is unwrapped. The relay can then
//! splice between two of them (`relay::splice`), and an idle connection holds no wrapper and no
//! socket digest (README "Idle cost"). Anything else (TLS, a connection replayed after plain HTTP
//! requests) stays as Pingora made it and is never spliced. The choice is made by type, never by
//! descriptor.
//!
//! Warm path: `Io::new` once per client per connection, no system call. (Until issue 14's
//! eleventh part plain clients came through Pingora's listener and were taken out of its
//! wrapper here with a dup(2) and a second epoll registration.)

use pingora_core::protocols::Stream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// One side of a relayed connection.
#[derive(Debug)]
pub enum Io {
    /// A plain TCP socket (a backend weir connected, or a client weir's own listener accepted):
    /// payload may be spliced.
    Tcp(TcpStream),
    /// Anything else (TLS, a replayed HTTP connection), as Pingora made it.
    Other(Stream),
}

impl Io {
    /// A client's `stream` as the relay takes it: a socket weir's own plain-TCP listener
    /// accepted is unwrapped (a move out of its box); anything else (TLS, a replayed HTTP
    /// connection) stays as it is.
    pub fn new(stream: Stream) -> Io {
        match super::listen::Accepted::into_tcp(stream) {
            Ok(tcp) => Io::Tcp(tcp),
            Err(other) => Io::Other(other),
        }
    }
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
