//! Zero-copy payload: the rest of a large data frame moves socket → pipe → socket with
//! splice(2), never through user space. Only between two plain TCP sockets (the streams say so by
//! type, `Splice::tcp`); TLS streams are never spliced, because their bytes must be decrypted
//! and encrypted by weir.
//!
//! The relay still reads every frame header itself (through its scratch buffer) and hands the
//! frame scanner the spliced byte counts (`Scan::skip_payload`), so counts, limits and
//! rates see every byte.
//!
//! Pipes come from a bounded pool: at most `MAX_PIPES` exist in the process (two descriptors
//! each); an idle pipe waits in the pool of the thread that last used it (at most
//! `IDLE_PER_THREAD`). A connection holds one only while it is splicing a frame, so an idle
//! connection holds none. When none is free, the frame is copied as any other
//! (`weir_splice_fallbacks_total`).
//!
//! Warm path: `Pipe::take` once per large frame. Hot path: `Pipe::poll_fill` and
//! `Pipe::poll_drain` per readiness of a splicing connection.

use prometheus::{IntCounter, IntGauge};
use rustix::pipe::{fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::task::{ready, Context, Poll};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Least payload a frame must still have for the relay to splice it, bytes. Chosen, not tuned:
/// it is one scratch read, what the copy path moves per read and write; `weir-bench`'s `huge`
/// scenario (1 MiB messages) measures the gain and `bulk` (64 KiB messages, which this threshold
/// leaves to the copy path) that nothing got worse. Sizes in between were not measured.
pub const SPLICE_MIN: u64 = 64 * 1024;
/// Most pipes the process holds (each is two descriptors).
pub const MAX_PIPES: usize = 128;
/// Idle pipes kept per worker thread for the next large frame.
const IDLE_PER_THREAD: usize = 8;
/// Capacity asked of each pipe, bytes (the kernel's default is 64 KiB). 128 of them take 32 MiB,
/// within `fs.pipe-user-pages-soft` (64 MiB per user by default: past it the kernel gives new
/// pipes 2 pages); a refusal keeps what the kernel gave, which is read back.
const PIPE_CAPACITY: usize = 256 * 1024;

/// Process-wide splice statistics, registered by the metrics module.
pub struct SpliceStats {
    /// Payload bytes moved by splice(2) (also counted in the relayed byte counters).
    pub bytes: IntCounter,
    /// Large frames copied instead because no pipe was free (the pool was exhausted or pipe(2)
    /// failed).
    pub fallbacks: IntCounter,
    /// Pipes open (in use and idle in the pools).
    pub pipes: IntGauge,
}

/// The process's splice statistics (`None` only if the metric names were invalid, which they are
/// not: the metrics module registers them, and a test checks they are there).
pub static STATS: LazyLock<Option<SpliceStats>> = LazyLock::new(|| {
    Some(SpliceStats {
        bytes: IntCounter::new(
            "weir_splice_bytes_total",
            "Payload bytes relayed with splice(2), never copied to user space",
        )
        .ok()?,
        fallbacks: IntCounter::new(
            "weir_splice_fallbacks_total",
            "Large frames copied instead of spliced because no pipe was free",
        )
        .ok()?,
        pipes: IntGauge::new("weir_splice_pipes", "Pipes open for splice(2), in use or idle").ok()?,
    })
});

/// Run `f` on the statistics.
fn stats(f: impl FnOnce(&SpliceStats)) {
    if let Some(s) = STATS.as_ref() {
        f(s);
    }
}

/// Pipes in existence (idle or in use).
static OPEN: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Empty pipes waiting for this thread's next large frame.
    static IDLE: RefCell<Vec<Fds>> = const { RefCell::new(Vec::new()) };
}

/// What the relay asks of a stream to splice from or to it: its plain TCP socket. Decided by
/// the stream's type: TLS and in-memory streams answer `None` and are never spliced.
pub trait Splice {
    /// The plain TCP socket under this stream, when bytes may be spliced from or to it.
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl Splice for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Splice for tokio::io::DuplexStream {}

/// A pipe's two ends; closing them gives its slot back.
struct Fds {
    read: OwnedFd,
    write: OwnedFd,
    /// Its capacity, bytes.
    capacity: usize,
}

impl Drop for Fds {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
        stats(|s| s.pipes.dec());
    }
}

/// A pipe one direction of a connection splices through: taken for a large frame, given back
/// (when empty) once the frame is through.
pub struct Pipe {
    fds: Option<Fds>,
    /// Bytes in the pipe, not yet written to the destination.
    held: usize,
}

impl Pipe {
    /// An empty pipe from this thread's pool, or a new one while fewer than `MAX_PIPES` exist;
    /// `None` (counted as a fallback) otherwise.
    pub fn take() -> Option<Pipe> {
        let idle = IDLE.try_with(|pool| pool.borrow_mut().pop()).ok().flatten();
        let fds = idle.or_else(|| {
            if OPEN.fetch_add(1, Ordering::Relaxed) >= MAX_PIPES {
                OPEN.fetch_sub(1, Ordering::Relaxed);
                return None;
            }
            stats(|s| s.pipes.inc());
            match pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) {
                Ok((read, write)) => {
                    let capacity = fcntl_setpipe_size(&write, PIPE_CAPACITY)
                        .or_else(|_| fcntl_getpipe_size(&write))
                        .unwrap_or(4096);
                    Some(Fds { read, write, capacity })
                }
                Err(e) => {
                    OPEN.fetch_sub(1, Ordering::Relaxed);
                    stats(|s| s.pipes.dec());
                    tracing::debug!(error = %e, "pipe(2) failed; large frames are copied");
                    None
                }
            }
        });
        if fds.is_none() {
            stats(|s| s.fallbacks.inc());
        }
        fds.map(|fds| Pipe { fds: Some(fds), held: 0 })
    }

    /// Bytes in the pipe, not yet written out.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Most bytes the pipe takes at once.
    pub fn capacity(&self) -> usize {
        self.fds.as_ref().map_or(0, |f| f.capacity)
    }

    /// Move up to `max` bytes from `src` into the (empty) pipe once `src` is readable: the count
    /// moved, 0 at the end of `src`'s stream.
    pub fn poll_fill(&mut self, src: &TcpStream, max: usize, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(fds) = self.fds.as_ref() else { return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())) };
        let max = max.min(fds.capacity.saturating_sub(self.held));
        if max == 0 {
            return Poll::Ready(Ok(0));
        }
        loop {
            ready!(src.poll_read_ready(cx))?;
            let moved = src.try_io(Interest::READABLE, || {
                splice(src, None, &fds.write, None, max, SpliceFlags::NONBLOCK | SpliceFlags::MOVE)
                    .map_err(io::Error::from)
            });
            match moved {
                Ok(n) => {
                    self.held += n;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Write what the pipe holds to `dst`, as `dst` takes it; `Ready(Ok)` once the pipe is empty.
    pub fn poll_drain(&mut self, dst: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(fds) = self.fds.as_ref() else { return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())) };
        while self.held > 0 {
            ready!(dst.poll_write_ready(cx))?;
            let moved = dst.try_io(Interest::WRITABLE, || {
                splice(&fds.read, None, dst, None, self.held, SpliceFlags::NONBLOCK | SpliceFlags::MOVE)
                    .map_err(io::Error::from)
            });
            match moved {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.held = self.held.saturating_sub(n);
                    stats(|s| s.bytes.inc_by(n as u64));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Pipe {
    /// An empty pipe goes back to this thread's pool (while it has room); one still holding
    /// bytes (the connection ended mid-frame) is closed.
    fn drop(&mut self) {
        let Some(fds) = self.fds.take() else { return };
        if self.held == 0 {
            // Kept when the pool has room; otherwise (or during thread exit) `fds` is dropped
            // with the closure, which closes the pipe.
            let _ = IDLE.try_with(move |pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < IDLE_PER_THREAD {
                    pool.push(fds);
                }
            });
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected loopback TCP sockets.
    pub(crate) async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Bytes written to one socket come out of another, through a pipe, intact; an empty pipe
    /// goes back to the pool and is reused; a pipe dropped while holding bytes is closed.
    #[tokio::test]
    async fn bytes_cross_a_pipe_intact_and_pipes_are_reused() {
        let ((mut tx, src), (dst, mut rx)) = (tcp_pair().await, tcp_pair().await);
        let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let writer = tokio::spawn(async move {
            tx.write_all(&data).await.unwrap();
            data
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).await.unwrap();
            got
        });
        let spliced = || STATS.as_ref().unwrap().bytes.get();
        let before = spliced();
        let mut pipe = Pipe::take().expect("a pipe");
        let mut moved = 0;
        while moved < 3 * 1024 * 1024 {
            let n = poll_fn(|cx| pipe.poll_fill(&src, usize::MAX, cx)).await.unwrap();
            assert!(n > 0);
            moved += n;
            poll_fn(|cx| pipe.poll_drain(&dst, cx)).await.unwrap();
            assert_eq!(pipe.held(), 0);
        }
        drop(pipe);
        drop(dst);
        let sent = writer.await.unwrap();
        assert!(reader.await.unwrap() == sent, "the bytes changed on the way");
        assert!(spliced() - before >= 3 * 1024 * 1024);

        // The empty pipe waits in this thread's pool: taking one opens nothing new.
        let open = OPEN.load(Ordering::Relaxed);
        let again = Pipe::take().expect("the pooled pipe");
        assert_eq!(OPEN.load(Ordering::Relaxed), open);
        drop(again);
    }
}
