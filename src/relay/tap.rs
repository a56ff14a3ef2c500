//! `Tap`: the frame scanners of the relay wrapped around a stream that weir terminates itself
//! (built-in objects), so those connections are metered exactly like relayed ones.
//!
//! Hot path (per read and write). Bytes read from the client are scanned as client frames,
//! bytes written to it as server frames; the payloads are not touched and nothing is copied
//! except the client's early bytes (read with the request head), served first. The observer
//! hears what each read and write that moved bytes counted and keeps the sums, as a relay's
//! does. `Tap::finish` turns the two scanners and those sums into the same `RelayReport` a relay
//! produces (through the same `Ending::report`), with the built-in object in the backend's place;
//! a protocol violation is reported like one on a relayed connection.

use super::close::Close;
use super::report::{Cause, Ending, Outcome, Party, RelayReport};
use super::scanner::{DirectionCounts, Feed, Scan, ScanLimits, ScanPolicy};
use super::{Direction, Observer};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A client stream `S` with both directions scanned, told about by observer `O`.
pub struct Tap<S, O> {
    io: S,
    early: Vec<u8>,
    early_at: usize,
    /// `[client → object, object → client]`.
    scanners: [Scan; 2],
    /// What both scanners enforce and count.
    limits: ScanLimits,
    observer: O,
    ending: Ending,
    /// The client's read ended: `Some(true)` on an error, `Some(false)` on EOF.
    read_ended: Option<bool>,
}

impl<S, O: Observer> Tap<S, O> {
    /// Wrap `io`; `early` are client bytes already read after its request head; `policies` are
    /// `[client, server]`, and `limits` what both enforce and count.
    pub fn new(io: S, early: Vec<u8>, policies: [ScanPolicy; 2], limits: ScanLimits, observer: O) -> Tap<S, O> {
        Tap {
            io,
            early,
            early_at: 0,
            scanners: policies.map(Scan::new),
            limits,
            observer,
            ending: Ending::default(),
            read_ended: None,
        }
    }

    /// Scan `bytes` moving in direction `d`; returns how many of them may be passed on (all,
    /// unless they break RFC 6455: then the valid prefix).
    fn scan(&mut self, d: Direction, bytes: &[u8]) -> usize {
        let s = &mut self.scanners[d.index()];
        let had_close = s.close().is_some();
        let mut fresh = DirectionCounts::default();
        let feed = s.feed(&self.limits, &mut fresh, bytes);
        // A close after weir's own (a protocol error's 1002) is a reply, not the start of the end.
        if !had_close && s.close().is_some() && self.ending.gateway_code.is_none() {
            self.ending.first_close.get_or_insert(Party::sender_of(d));
        }
        // A violation ends the client's stream at the last valid byte: the object never sees a
        // frame the scanner did not count (should tungstenite accept one the scanner refuses),
        // its next read fails, and it closes with `Close::ProtocolError`, as the relay would.
        let mut valid = bytes.len();
        if let Feed::Violation { violation, valid_up_to } = feed {
            valid = valid_up_to.min(bytes.len());
            tracing::debug!(
                direction = d.as_str(),
                violation = violation.as_str(),
                "built-in object: protocol violation"
            );
            if self.ending.violation.is_none() {
                self.ending.violation = Some((d, violation));
                if self.ending.first_close.is_none() {
                    self.ending.gateway_code = Some(Close::ProtocolError.code());
                }
            }
        }
        if fresh.wire_bytes != 0 {
            let none = DirectionCounts::default();
            let counts = match d {
                Direction::ClientToBackend => [&fresh, &none],
                Direction::BackendToClient => [&none, &fresh],
            };
            self.observer.progress(counts, std::time::Instant::now());
        }
        valid
    }

    /// The error a read returns once the client broke RFC 6455.
    fn refused(&self) -> Option<std::io::Error> {
        let (d, v) = self.ending.violation.filter(|(d, _)| *d == Direction::ClientToBackend)?;
        Some(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {}", d.as_str(), v.as_str())))
    }

    /// What the connection carried and how it ended; `cause` when the object closed it for a
    /// reason of its own (`Cause::Shutdown` when weir was stopping, `Cause::MessageTooBig`).
    /// Returns the observer with it.
    pub fn finish(self, cause: Option<Cause>) -> (RelayReport, O) {
        let [c, o] = &self.scanners;
        let closes = [c.close(), o.close()];
        let mut ending = self.ending;
        let shutdown = cause == Some(Cause::Shutdown);
        ending.shutdown = shutdown;
        if ending.violation.is_none() {
            ending.cause = cause;
        }
        ending.errored = self.read_ended == Some(true);
        // Without a completed close handshake: the object closed (e.g. a slow client) and the
        // client did not answer, or the client went away.
        ending.first_end = Some(if closes[1].is_some() { Party::Backend } else { Party::Client });
        let mut report = ending.report(self.observer.totals(), closes);
        if shutdown && report.violation.is_none() {
            // weir's own object closed it for shutdown: the client's answer to that close does
            // not make it a completed connection.
            report.outcome = Outcome::Shutdown;
        }
        (report, self.observer)
    }
}

impl<S: AsyncRead + Unpin, O: Observer + Unpin> AsyncRead for Tap<S, O> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(e) = this.refused() {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        if this.early_at < this.early.len() {
            let early = std::mem::take(&mut this.early);
            let start = this.early_at;
            let n = (early.len() - start).min(buf.remaining());
            let chunk = early.get(start..start + n).unwrap_or(&[]);
            buf.put_slice(chunk);
            this.early_at += n;
            if this.early_at < early.len() {
                this.early = early;
            }
        } else {
            match Pin::new(&mut this.io).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    this.read_ended = Some(true);
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        let got = buf.filled().len() - before;
        if got == 0 {
            this.read_ended.get_or_insert(false);
            return Poll::Ready(Ok(()));
        }
        let chunk = buf.filled().get(before..).unwrap_or(&[]);
        let valid = this.scan(Direction::ClientToBackend, chunk);
        if valid < got {
            // Pass on only the valid prefix; an empty read would look like EOF, so an error
            // instead when nothing of it is valid.
            buf.set_filled(before + valid);
            if valid == 0 {
                if let Some(e) = this.refused() {
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin, O: Observer + Unpin> AsyncWrite for Tap<S, O> {
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
