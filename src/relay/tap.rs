//! `Tap`: the frame scanners of the relay wrapped around a stream that weir terminates itself
//! (built-in objects), so those connections are metered exactly like relayed ones.
//!
//! Hot path (per read and write). Bytes read from the client are scanned as client frames,
//! bytes written to it as server frames; the payloads are not touched and nothing is copied
//! except the client's early bytes (read with the request head), served first. Metric deltas
//! are pushed after every read and write. `Tap::report` turns the two scanners into the same
//! `RelayReport` a relay produces, with the built-in object in the backend's place.

use super::pump::{Outcome, Party, RelayReport};
use super::scanner::{Feed, FrameScanner, ScanPolicy};
use super::Direction;
use crate::metrics::ConnMetrics;
use pingora_core::protocols::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A client stream with both directions scanned.
pub struct Tap {
    io: Stream,
    early: Vec<u8>,
    early_at: usize,
    /// `[client → object, object → client]`.
    scanners: [FrameScanner; 2],
    metrics: ConnMetrics,
    live: std::sync::Arc<crate::metering::live::Live>,
    first_close: Option<Party>,
    read_ended: Option<bool>,
}

impl Tap {
    /// Wrap `io`; `early` are client bytes already read after its request head.
    pub fn new(
        io: Stream,
        early: Vec<u8>,
        client: ScanPolicy,
        server: ScanPolicy,
        metrics: ConnMetrics,
        live: std::sync::Arc<crate::metering::live::Live>,
    ) -> Tap {
        Tap {
            io,
            early,
            early_at: 0,
            scanners: [FrameScanner::new(client), FrameScanner::new(server)],
            metrics,
            live,
            first_close: None,
            read_ended: None,
        }
    }

    fn scan(&mut self, d: Direction, bytes: &[u8]) {
        let s = &mut self.scanners[d.index()];
        let had_close = s.close().is_some();
        // A violation stops counting in that direction; tungstenite closes the connection itself.
        if let Feed::Violation { violation, .. } = s.feed(bytes) {
            tracing::debug!(
                direction = d.as_str(),
                violation = violation.as_str(),
                "built-in object: protocol violation"
            );
        }
        if !had_close && s.close().is_some() {
            let party = if d == Direction::ClientToBackend { Party::Client } else { Party::Backend };
            self.first_close.get_or_insert(party);
        }
        self.metrics.update(d, s.counts());
        self.live.observe([self.scanners[0].counts(), self.scanners[1].counts()]);
    }

    /// What the connection carried and how it ended; `shutdown` when weir closed it because it
    /// was stopping.
    pub fn report(&self, shutdown: bool) -> RelayReport {
        let counts = [*self.scanners[0].counts(), *self.scanners[1].counts()];
        let closes = [self.scanners[0].close(), self.scanners[1].close()];
        let both = closes.iter().all(Option::is_some);
        let close_code = match self.first_close {
            Some(Party::Client) => closes[0].and_then(|c| c.code),
            Some(_) => closes[1].and_then(|c| c.code),
            None => None,
        };
        let errored = self.read_ended == Some(true);
        let outcome = if shutdown {
            Outcome::Shutdown
        } else if both {
            Outcome::Completed
        } else if closes[1].is_some() {
            // The object closed (e.g. a slow client) and the client did not answer.
            Outcome::BackendGone
        } else {
            Outcome::ClientGone
        };
        RelayReport {
            counts,
            close_code,
            initiator: self.first_close.unwrap_or(Party::Client),
            clean: both && !errored,
            outcome,
            violation: None,
        }
    }
}

impl AsyncRead for Tap {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.early_at < this.early.len() {
            let early = std::mem::take(&mut this.early);
            let start = this.early_at;
            let n = (early.len() - start).min(buf.remaining());
            let chunk = early.get(start..start + n).unwrap_or(&[]);
            buf.put_slice(chunk);
            this.scan(Direction::ClientToBackend, chunk);
            this.early_at += n;
            if this.early_at < early.len() {
                this.early = early;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        match &poll {
            Poll::Ready(Ok(())) => {
                let chunk = buf.filled().get(before..).unwrap_or(&[]);
                if chunk.is_empty() {
                    this.read_ended.get_or_insert(false);
                } else {
                    this.scan(Direction::ClientToBackend, chunk);
                }
            }
            Poll::Ready(Err(_)) => {
                this.read_ended = Some(true);
            }
            Poll::Pending => {}
        }
        poll
    }
}

impl AsyncWrite for Tap {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            let n = *n;
            self.scan(Direction::BackendToClient, buf.get(..n).unwrap_or(&[]));
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
