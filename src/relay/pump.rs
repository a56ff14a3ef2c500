//! `Relay`: one state machine per connection that drives both directions after the 101.
//!
//! Hot path (per chunk): read from one side into a per-thread scratch buffer, feed the frame
//! scanner, write the same bytes to the other side straight from that buffer. The scanners count
//! into the wakeup's counters on the stack (`Fresh`), which the `Observer` gets once per wakeup,
//! before the relay parks: the relay keeps no counters (the observer keeps the sums). Only when
//! the other side cannot take everything at once are the leftover bytes copied into a
//! per-connection buffer, and the side they came from is not read again until they are written:
//! that is the backpressure, and it bounds memory per connection to one read (64 KiB) per
//! direction. An idle connection holds no buffer, no timer and no task wakeup: the future is
//! parked on the two sockets' readiness.
//!
//! Warm path (the ends): EOF, errors, protocol violations and shutdown. When one side goes away
//! without a close frame, the other side gets one (`Close::BackendGone` toward the client,
//! `Close::ClientGone` toward the backend) if its stream is at a frame boundary, its write half
//! is shut down, and the connection ends when both sides have finished or `LINGER` after the
//! first end, whichever comes first. A side that ends after the closing handshake (both close
//! frames through) ends the other side with it: neither may send anything more, so both sockets
//! are closed once what is queued is written, with no shutdown(2) and no wait for the other end
//! (`after_closing_handshake`). Gateway frames are never counted as relayed traffic.
//!
//! A relay to an object host gets its object's move signal (`Relay::run`'s `moved`):
//! when it turns true, both sides get `Close::ObjectMoved` (1012) and the host is still read (its
//! bytes dropped) until it answers the close or ends, so the object is never live on two hosts;
//! a host that goes away gets its clients a 1012 too.

use super::close::Close;
use super::frame::{encode_close_frame, encode_ping_frame, Violation, MAX_CLOSE_FRAME_LEN};
use super::guard::{find_pong, Charge, Due, Guards, Watch};
use super::report::{Cause, Ending, Party, RelayReport};
use super::scanner::{DirectionCounts, Feed, Scan, ScanLimits, ScanPolicy};
use super::splice::{Pipe, Splice, SPLICE_MIN};
use super::timers::Timers;
use super::{Direction, Observer, Stop};
use std::cell::RefCell;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{sleep, Sleep};

/// Size of the per-thread read buffer, bytes: the largest chunk read from a socket at once.
pub const SCRATCH_SIZE: usize = 64 * 1024;
/// The first read of a direction right after it spliced a frame to its end (or copied one that
/// would have been spliced but found no pipe free), bytes: the next
/// frame's header and a little of its payload, so that when it is large too, its rest is spliced
/// from there instead of after a whole scratch buffer of it was copied (reads stay this short
/// until that header is complete). A stream of small frames after a large one pays one short
/// read.
pub const AFTER_SPLICE_READ: usize = 1024;
/// Longest time a connection stays open after its first side ended (EOF, error or a gateway
/// close): the other side has this long to finish its close.
pub const LINGER: Duration = Duration::from_secs(1);
/// Iterations of the relay loop per poll before yielding to other tasks.
const MAX_ROUNDS_PER_POLL: usize = 32;

thread_local! {
    /// The read buffer shared by every connection polled on this thread. A connection borrows it
    /// only inside one synchronous poll, never across an await.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_SIZE].into_boxed_slice());
}

const CLIENT: usize = 0;
/// Guard passes per wakeup: a guard that queued a frame gets the writes driven, then is asked again.
const MAX_GUARD_PASSES: usize = 4;

/// A whole frame weir writes on its own (a close), queued after the relayed bytes.
struct Injected {
    buf: [u8; MAX_CLOSE_FRAME_LEN],
    len: usize,
    sent: usize,
}

/// Something waiting in a half to be written to `dst`: its bytes and how many are written.
trait Outgoing {
    fn parts(&mut self) -> (&[u8], &mut usize);
}

impl Outgoing for Injected {
    fn parts(&mut self) -> (&[u8], &mut usize) {
        (self.buf.get(..self.len).unwrap_or(&[]), &mut self.sent)
    }
}

impl Outgoing for Queued {
    fn parts(&mut self) -> (&[u8], &mut usize) {
        (&self.bytes, &mut self.sent)
    }
}

/// Bytes on their way to `dst` that it did not take at once: relayed bytes it pushed back, or
/// weir's own messages (an operator's push, whole frames back to back).
struct Queued {
    bytes: Vec<u8>,
    /// How much of `bytes` is written.
    sent: usize,
}

/// What the scanners counted in the current wakeup, per direction (`[client → backend, backend →
/// client]`): kept on the stack and handed to the observer at the end of the wakeup. The relay
/// keeps no counters of its own (the observer keeps the sums), so an idle connection's task holds
/// none.
///
/// It also holds the wakeup's one clock read (`Fresh::now`): the rate charges of its reads, its
/// guard pass and the observer's active-time clock all take the same instant, one
/// `clock_gettime` per wakeup instead of one for each of them (issue 14).
#[derive(Default)]
struct Fresh {
    /// Per direction (`Direction::index`).
    counts: [DirectionCounts; 2],
    /// Per direction: its source's read was `Pending` in this wakeup, so its waker is registered
    /// and later rounds of the wakeup skip the read: nothing in it can make the source readable
    /// again (readiness moves only when an I/O driver runs, and when another thread's does, it
    /// wakes the task again). Saves a read attempt (about 200 instructions) per wakeup that
    /// relayed something (issue 14, sixteenth part).
    blocked: [bool; 2],
    /// The wakeup's instant and the same as `mono::nanos`, read when first needed.
    at: Option<(Instant, u64)>,
}

impl Fresh {
    /// The wakeup's instant (read from the clock the first time it is asked for).
    fn now(&mut self) -> Instant {
        self.clock().0
    }

    /// The wakeup's instant as `mono::nanos`, converted once per wakeup (the rate buckets and
    /// the timers' ticks take it: converting at each use cost a handshake cycle about 1 000
    /// instructions).
    fn nanos(&mut self) -> u64 {
        self.clock().1
    }

    fn clock(&mut self) -> (Instant, u64) {
        *self.at.get_or_insert_with(|| {
            let at = Instant::now();
            (at, super::mono::nanos(at))
        })
    }
}

impl std::ops::Index<usize> for Fresh {
    type Output = DirectionCounts;
    fn index(&self, d: usize) -> &DirectionCounts {
        &self.counts[d]
    }
}

impl std::ops::IndexMut<usize> for Fresh {
    fn index_mut(&mut self, d: usize) -> &mut DirectionCounts {
        &mut self.counts[d]
    }
}

/// One direction: bytes read from `src` and written to `dst`.
struct Half {
    scanner: Scan,
    /// What waits for `dst` and the splice pipe, boxed as one and only while any is present:
    /// an idle half holds one pointer (`tidy` frees it once all are gone).
    backlog: Option<Box<Backlog>>,
    /// `src` is not read until a rate guard resumes it (throttling).
    paused: bool,
    /// `dst` needs a flush (bytes went into its write path since the last flush).
    need_flush: bool,
    /// `src` is finished: EOF, error, or weir stopped reading it.
    src_done: bool,
    /// A write to `dst` failed: drop whatever is still meant for it.
    dst_dead: bool,
    /// `dst`'s write half is shut down.
    dst_shut: bool,
    /// `dst` has been sent a close frame (relayed or injected): inject no other.
    dst_has_close: bool,
    /// Read `src` only to see its close frame (or end); forward nothing more. Used when an
    /// object moves: the host must have answered weir's 1012 before the object lives elsewhere.
    discard: bool,
    /// The frame (by `Scan::frame`) for which no pipe was free: it is copied.
    pipeless_frame: u32,
    /// The frame (by `Scan::frame`) being spliced, to its end (`u32::MAX` before any: no frame
    /// has that ordinal until four billion have passed).
    spliced_frame: u32,
}

/// What a half holds only now and then, in write order: boxed as one in `Half::backlog`.
#[derive(Default)]
struct Backlog {
    /// The pipe the rest of a large frame is spliced through, while one is. Its bytes come
    /// before anything else queued for `dst`.
    pipe: Option<Pipe>,
    /// Bytes read but not yet written to `dst` (while `dst` pushes back).
    pending: Option<Queued>,
    /// weir's keepalive ping, written once `pending` is empty.
    ping: Option<Injected>,
    /// weir's own data messages (an operator's push, `Observer::poll_push`), whole frames back
    /// to back, written once `pending` and `ping` are; taken only at a message boundary of
    /// this direction, so they never land inside a frame or a fragmented message.
    push: Option<Queued>,
    /// A gateway frame (a close) to write once `pending`, `ping` and `push` are written.
    inject: Option<Injected>,
}

impl Backlog {
    /// Nothing waits in the four queues (the pipe aside).
    fn queues_empty(&self) -> bool {
        self.pending.is_none() && self.ping.is_none() && self.push.is_none() && self.inject.is_none()
    }

    /// Nothing waits and no pipe is held.
    fn is_empty(&self) -> bool {
        self.queues_empty() && self.pipe.is_none()
    }
}

impl Half {
    fn new(policy: ScanPolicy) -> Half {
        Half {
            scanner: Scan::new(policy),
            backlog: None,
            paused: false,
            need_flush: false,
            src_done: false,
            dst_dead: false,
            dst_shut: false,
            dst_has_close: false,
            discard: false,
            pipeless_frame: 0,
            spliced_frame: u32::MAX,
        }
    }

    /// Its backlog, made now if it has none.
    fn backlog(&mut self) -> &mut Backlog {
        self.backlog.get_or_insert_with(Box::default)
    }

    /// Frees the backlog once nothing is left in it.
    fn tidy(&mut self) {
        if self.backlog.as_ref().is_some_and(|b| b.is_empty()) {
            self.backlog = None;
        }
    }

    /// The splice pipe, while one is held.
    fn pipe(&mut self) -> Option<&mut Pipe> {
        self.backlog.as_mut().and_then(|b| b.pipe.as_mut())
    }

    /// Gives the splice pipe back (to its pool, or closed with what it holds).
    fn drop_pipe(&mut self) {
        if let Some(b) = self.backlog.as_mut() {
            b.pipe = None;
        }
        self.tidy();
    }

    /// Queue `bytes` for `dst` after what is already queued.
    fn keep(&mut self, bytes: &[u8]) {
        let b = self.backlog();
        match b.pending.as_mut() {
            Some(p) => p.bytes.extend_from_slice(bytes),
            None => b.pending = Some(Queued { bytes: bytes.to_vec(), sent: 0 }),
        }
    }

    /// Its source is done and nothing is left to write to `dst`.
    fn quiet(&self) -> bool {
        self.src_done
            && self.backlog.as_ref().is_none_or(|b| b.queues_empty() && b.pipe.as_ref().is_none_or(|p| p.held() == 0))
    }

    fn finished(&self) -> bool {
        self.quiet() && (self.dst_shut || self.dst_dead)
    }

    /// Queue weir's ping with `payload` for `dst` if its stream is at a frame boundary and it
    /// is not closing; returns whether it did.
    fn inject_ping(&mut self, payload: &[u8], to_backend: bool) -> bool {
        if !self.can_inject_ping() {
            return false;
        }
        let mut buf = [0u8; MAX_CLOSE_FRAME_LEN];
        let len = encode_ping_frame(payload, to_backend.then(mask_key), &mut buf);
        self.backlog().ping = Some(Injected { buf, len, sent: 0 });
        true
    }

    /// True when a ping may be queued now: `dst`'s stream at a frame boundary, no ping waiting,
    /// no close sent.
    fn can_inject_ping(&self) -> bool {
        self.backlog.as_ref().is_none_or(|b| b.ping.is_none())
            && !self.dst_has_close
            && !self.dst_dead
            && self.scanner.at_frame_boundary()
    }

    /// Queue a close frame for `dst` if its stream is at a frame boundary and it has none yet;
    /// returns whether it did.
    fn inject_close(&mut self, close: Close, to_backend: bool) -> bool {
        self.inject_close_with(close.code(), close.reason().as_bytes(), to_backend)
    }

    /// `inject_close` with any code and reason (an operator's kick).
    fn inject_close_with(&mut self, code: u16, reason: &[u8], to_backend: bool) -> bool {
        if self.dst_has_close || self.dst_dead || !self.scanner.at_frame_boundary() {
            return false;
        }
        let mut buf = [0u8; MAX_CLOSE_FRAME_LEN];
        let mask = to_backend.then(mask_key);
        let len = encode_close_frame(code, reason, mask, &mut buf);
        self.backlog().inject = Some(Injected { buf, len, sent: 0 });
        self.dst_has_close = true;
        true
    }

    /// Note the result of a `write_from` to `dst`: progress, a needed flush, a dead `dst`.
    /// `Pending` while `dst` is blocked.
    fn settle(&mut self, (wrote, poll): (bool, Poll<Result<(), ()>>), progress: &mut bool) -> Poll<()> {
        if wrote {
            self.need_flush = true;
            *progress = true;
        }
        match poll {
            Poll::Ready(result) => {
                self.dst_dead |= result.is_err();
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Write the rest of what waits in the backlog's slot `slot` picks (`pending`, `ping`,
    /// `push` or `inject`) to `dst`; once it is all written, or `dst` is dead, the slot is
    /// emptied (and the backlog freed when nothing else is in it: an idle half holds none).
    /// `Pending` while `dst` is blocked.
    #[inline]
    fn send<T: Outgoing, S: AsyncWrite + Unpin>(
        &mut self,
        slot: fn(&mut Backlog) -> &mut Option<T>,
        dst: &mut S,
        cx: &mut Context<'_>,
        progress: &mut bool,
    ) -> Poll<()> {
        let Some(b) = self.backlog.as_deref_mut() else { return Poll::Ready(()) };
        let Some(out) = slot(b) else { return Poll::Ready(()) };
        if !self.dst_dead {
            let (bytes, sent) = out.parts();
            let written = write_from(dst, cx, bytes, sent);
            if self.settle(written, progress).is_pending() {
                return Poll::Pending;
            }
        }
        if let Some(b) = self.backlog.as_deref_mut() {
            *slot(b) = None;
        }
        self.tidy();
        Poll::Ready(())
    }

    /// True when weir may queue a message of its own for `dst` now: the stream is at a message
    /// boundary (no partial frame, no open fragmented message), no push is still being
    /// written, `dst` is alive and has no close frame, and `src` is relayed normally.
    fn can_push(&self) -> bool {
        self.backlog.as_ref().is_none_or(|b| b.push.is_none())
            && !self.dst_has_close
            && !self.dst_dead
            && !self.discard
            && self.scanner.at_frame_boundary()
            && !self.scanner.in_message()
    }

    /// Write `pending`, then weir's ping, then weir's pushed messages, then any other injected
    /// frame, then flush. `Ready` when all is written.
    fn drain<S: AsyncWrite + Unpin>(&mut self, dst: &mut S, cx: &mut Context<'_>, progress: &mut bool) -> Poll<()> {
        ready!(self.send(|b| &mut b.pending, dst, cx, progress));
        ready!(self.send(|b| &mut b.ping, dst, cx, progress));
        ready!(self.send(|b| &mut b.push, dst, cx, progress));
        ready!(self.send(|b| &mut b.inject, dst, cx, progress));
        if self.need_flush && !self.dst_dead {
            match Pin::new(&mut *dst).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.need_flush = false,
                Poll::Ready(Err(_)) => self.dst_dead = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(())
    }
}

/// Write `buf[*sent..]` to `dst` until all of it is written or `dst` blocks or fails; `*sent`
/// advances by what was written. Returns whether any byte went out, and `Ready(Err(()))` when
/// `dst` failed, `Pending` when it blocked.
fn write_from<S: AsyncWrite + Unpin>(
    dst: &mut S,
    cx: &mut Context<'_>,
    buf: &[u8],
    sent: &mut usize,
) -> (bool, Poll<Result<(), ()>>) {
    let before = *sent;
    while let Some(rest) = buf.get(*sent..).filter(|r| !r.is_empty()) {
        match Pin::new(&mut *dst).poll_write(cx, rest) {
            Poll::Ready(Ok(n)) if n > 0 => *sent += n,
            Poll::Ready(_) => return (*sent > before, Poll::Ready(Err(()))),
            Poll::Pending => return (*sent > before, Poll::Pending),
        }
    }
    (*sent > before, Poll::Ready(Ok(())))
}

/// A random masking key for frames weir sends to a backend (RFC 6455 §5.3: unpredictable).
fn mask_key() -> [u8; 4] {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    (h.finish() as u32).to_ne_bytes()
}

/// The relay of one upgraded connection over streams `S`, told about by observer `O`. Build it
/// with `Relay::new`, run it with `run`.
pub struct Relay<S, O> {
    /// `[client, backend]`.
    io: [S; 2],
    /// Indexed by `Direction::index`.
    halves: [Half; 2],
    /// What both halves' scanners enforce and count (the same both ways: held once).
    limits: ScanLimits,
    observer: O,
    /// What happened at the end so far (turned into the report by `Ending::report`).
    ending: Ending,
    linger: Option<Pin<Box<Sleep>>>,
    /// The backend is an object host: a host that goes away gets its client 1012.
    object: bool,
    /// After a protocol violation or a limit: the half (by direction) whose destination, the
    /// sender, gets this close when the linger ends.
    /// With it, whether the other side of that sender owes its answer to weir's close (it got
    /// the close and had sent none of its own): it is not shut down, and its close is withheld,
    /// until it answers or ends; both go with the close when it is taken.
    close_on_linger: Option<(Direction, Close, bool)>,
    /// The guards' state, when any guard is on (boxed: a few hundred bytes, not every relay).
    watch: Option<Box<Watch>>,
    /// Both sockets are to be dropped now (an unanswered close frame timed out).
    abort: bool,
    /// Both streams are plain TCP: the rest of a large frame may be spliced (`splice.rs`).
    splice: bool,
    /// weir discards the backend's bytes since its object moved: read, not relayed, so not
    /// counted.
    host_uncounted: bool,
}

/// An object's move signal as an owned future: `true` once the signal is true (at once when it
/// already is), `false` when its sender is gone first. Boxed: it waits for the whole life of an
/// idle connection, and held inline it would grow every connection's task (see `Run`).
type Moved = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Where `Run` holds the move signal: boxed once more, so that the task holds a thin pointer (8
/// bytes) instead of the future's fat one (16), which keeps every connection's task cell in
/// jemalloc's 512-byte class. Costs relays to object hosts one 16-byte block each.
type MovedSlot = Option<Box<Moved>>;

fn move_signal(mut rx: watch::Receiver<bool>) -> Moved {
    Box::pin(async move {
        loop {
            if *rx.borrow_and_update() {
                return true;
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    })
}

/// `Relay::run`'s future: the relay, and what it waits on besides its sockets (an object's move
/// signal, the drain's grace; that shutdown began, the observer says). Written by hand rather
/// than as an async fn around `tokio::select!`: that state machine added 1.1 KB to every
/// connection's task, this one adds a few words inline. Shutdown is the observer's to tell (the
/// live set tells every open connection at once), so an idle connection holds no watch of it.
pub struct Run<S, O> {
    /// Taken when the relay ends.
    relay: Option<Relay<S, O>>,
    /// The object's move signal (relays to object hosts), until it fires or its sender is gone.
    moved: MovedSlot,
    /// The end of the drain's grace, once shutdown began.
    drain_at: Option<Pin<Box<Sleep>>>,
    /// The drain's grace, milliseconds (saturated at `u32::MAX`, 49 days: a `Duration` would
    /// take 16 bytes of every connection's task for it).
    grace_ms: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Splice, O: Observer + Unpin> Future for Run<S, O> {
    type Output = (RelayReport, O);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(RelayReport, O)> {
        let this = self.get_mut();
        let Some(relay) = this.relay.as_mut() else { return Poll::Pending };
        // In this order, each a source of wakeups: the relay, the move signal, the start of a
        // shutdown, the drain's grace; after any of the last three acts, the relay goes first
        // again.
        loop {
            if relay.poll_relay(cx).is_ready() {
                return match this.relay.take() {
                    Some(relay) => Poll::Ready(relay.finish()),
                    None => Poll::Pending,
                };
            }
            if let Some(m) = this.moved.as_mut() {
                if let Poll::Ready(now) = m.as_mut().as_mut().poll(cx) {
                    this.moved = None;
                    if now {
                        relay.object_moved();
                    }
                    continue;
                }
            }
            if this.drain_at.is_none() && relay.observer.poll_shutdown(cx).is_ready() {
                this.drain_at = Some(Box::pin(sleep(Duration::from_millis(u64::from(this.grace_ms)))));
                continue;
            }
            if let Some(t) = this.drain_at.as_mut().filter(|_| !relay.ending.shutdown) {
                if t.as_mut().poll(cx).is_ready() {
                    relay.begin_drain();
                    continue;
                }
            }
            return Poll::Pending;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Splice, O: Observer> Relay<S, O> {
    /// A relay between `client` and `backend`, each direction scanned under its policy and
    /// both under `limits`. `client_early` and `backend_early` are bytes each side sent after
    /// its handshake head that were already read; they are scanned and forwarded first.
    pub fn new(
        [client, backend]: [S; 2],
        [client_policy, backend_policy]: [ScanPolicy; 2],
        limits: ScanLimits,
        [client_early, backend_early]: [&[u8]; 2],
        observer: O,
    ) -> Relay<S, O> {
        let splice = client.tcp().is_some() && backend.tcp().is_some();
        let mut relay = Relay {
            io: [client, backend],
            halves: [Half::new(client_policy), Half::new(backend_policy)],
            limits,
            observer,
            ending: Ending::default(),
            linger: None,
            object: false,
            close_on_linger: None,
            watch: None,
            abort: false,
            splice,
            host_uncounted: false,
        };
        let mut fresh = Fresh::default();
        for (d, early) in [(Direction::ClientToBackend, client_early), (Direction::BackendToClient, backend_early)] {
            if !early.is_empty() {
                let n = relay.ingest(d, early, &mut fresh);
                relay.halves[d.index()].keep(early.get(..n).unwrap_or(early));
            }
        }
        relay.report(&mut fresh);
        relay
    }

    /// Enforce `guards` (its route's, shared) on this connection, which gets `share` (in
    /// [0, 1)) of the lifetime jitter; from now: idle, lifetime and keepalive count from this
    /// call.
    pub fn with_guards(mut self, guards: &std::sync::Arc<Guards>, share: f64) -> Relay<S, O> {
        if !guards.is_off() {
            let at = Instant::now();
            let at_nanos = super::mono::nanos(at);
            let (now, rated) = (Timers::ticks_of(at_nanos), guards.rates.iter().any(Option::is_some));
            self.watch = Some(Box::new(Watch::new(guards.clone(), share, now, at)));
            if rated {
                // What came with the handshakes (counted in `new`) is charged like any read.
                let mut early = Fresh { counts: self.observer.totals(), at: Some((at, at_nanos)), blocked: [false; 2] };
                for d in Direction::BOTH {
                    self.read_done(d, &mut early);
                }
            }
        }
        self
    }

    /// Relay until both sides are finished; resolves to the report and the observer. Once the
    /// observer says shutdown began (`Observer::poll_shutdown`), the connection gets `grace` more
    /// time and is then closed with `Close::Shutdown` on both sides. `moved` is the object's move
    /// signal on a relay to an object host (`None` for a plain backend): when it turns true, both
    /// sides get `Close::ObjectMoved` (1012), and a host that goes away gets its client 1012
    /// instead of 1011.
    pub fn run(mut self, grace: Duration, moved: Option<watch::Receiver<bool>>) -> Run<S, O> {
        let grace_ms = u32::try_from(grace.as_millis()).unwrap_or(u32::MAX);
        self.object = moved.is_some();
        Run { relay: Some(self), moved: moved.map(|rx| Box::new(move_signal(rx))), drain_at: None, grace_ms }
    }

    /// The report and the observer, once the relay has ended (not inlined into `run`'s future).
    fn finish(self) -> (RelayReport, O) {
        let counts = self.observer.totals();
        let report = self.ending.report(counts, [self.halves[0].scanner.close(), self.halves[1].scanner.close()]);
        (report, self.observer)
    }

    /// Hand what the scanners counted (`fresh`, emptied) to the observer, if any bytes moved;
    /// the backend's bytes read after its object moved are not relayed, so not counted.
    fn report(&mut self, fresh: &mut Fresh) {
        if self.host_uncounted {
            fresh[Direction::BackendToClient.index()] = DirectionCounts::default();
        }
        if fresh.counts.iter().any(|c| c.wire_bytes != 0) {
            let at = fresh.now();
            let [c, b] = &fresh.counts;
            self.observer.progress([c, b], at);
            fresh.counts = Default::default();
        }
    }

    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // What this wakeup counts, handed to the observer at its end.
        let mut fresh = Fresh::default();
        if let Some(w) = self.watch.as_mut() {
            w.begin_wakeup();
        }
        // An order from outside (a kick, a drain), until the connection is ending anyway.
        if self.linger.is_none() {
            if let Poll::Ready(stop) = self.observer.poll_stop(cx) {
                self.stop(stop);
            }
        }
        let asked = self.take_push(cx);
        let mut poll = self.poll_rounds(cx, &mut fresh);
        for _ in 0..MAX_GUARD_PASSES {
            if poll.is_ready() || !self.guard(cx, &mut fresh) {
                break;
            }
            poll = self.poll_rounds(cx, &mut fresh);
        }
        // The backend may have finished its message in these rounds: a push waiting for that
        // boundary goes out now, not at the next wakeup. Not asked again when the first ask
        // found none: its waker is registered, and a push arriving since wakes the task.
        if poll.is_pending() && asked != Some(false) && self.take_push(cx) == Some(true) {
            poll = self.poll_rounds(cx, &mut fresh);
        }
        // The observer hears once per wakeup, before the relay parks (or ends): counters still
        // move while the connection is open, at a fraction of the per-chunk cost.
        self.report(&mut fresh);
        poll
    }

    /// Take weir's pushed messages for the client from the observer if the stream toward the
    /// client is at a message boundary (see `Half::can_push`) and the connection is not ending;
    /// returns whether it took any, `None` when it did not ask. Mid-message nothing is asked: the
    /// backend's next bytes wake the relay, and the push is taken at the boundary they reach.
    fn take_push(&mut self, cx: &mut Context<'_>) -> Option<bool> {
        let h = &self.halves[Direction::BackendToClient.index()];
        if self.linger.is_some() || h.src_done || !h.can_push() {
            return None;
        }
        match self.observer.poll_push(cx) {
            Poll::Ready(frames) if !frames.is_empty() => {
                let h = &mut self.halves[Direction::BackendToClient.index()];
                h.backlog().push = Some(Queued { bytes: frames, sent: 0 });
                Some(true)
            }
            _ => Some(false),
        }
    }

    fn poll_rounds(&mut self, cx: &mut Context<'_>, fresh: &mut Fresh) -> Poll<()> {
        for _ in 0..MAX_ROUNDS_PER_POLL {
            if self.abort {
                return Poll::Ready(());
            }
            let mut progress = false;
            for d in Direction::BOTH {
                self.poll_half(d, cx, &mut progress, fresh);
            }
            if self.halves.iter().all(Half::finished) {
                return Poll::Ready(());
            }
            if !progress {
                return match self.poll_linger(cx) {
                    Poll::Ready(true) => continue,
                    Poll::Ready(false) => Poll::Ready(()),
                    Poll::Pending => Poll::Pending,
                };
            }
        }
        // The round budget is spent with bytes still moving: the linger still bounds the end (a
        // peer that keeps sending cannot outlast it), then the task yields.
        if self.poll_linger(cx) == Poll::Ready(false) {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Polls the linger, if one runs: only when the relay would wait (no progress) or yields, so
    /// a connection whose ends finish while bytes still move (a closing handshake answered at
    /// once) never registers it with tokio's timer, whose registration of a deadline earlier
    /// than its next wakeup costs a `write(2)` to wake its driver (issue 14: 1.5 such writes per
    /// handshake, most of them this one). `Ready(true)`: it ran out and the sender that broke a
    /// rule got its close, with one more `LINGER` to write it; `Ready(false)`: it ran out, the
    /// connection ends; `Pending`: it runs on, or there is none.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let Some(linger) = self.linger.as_mut() else { return Poll::Pending };
        ready!(linger.as_mut().poll(cx));
        let Some((t, close, _)) = self.close_on_linger.take() else { return Poll::Ready(false) };
        let h = &mut self.halves[t.index()];
        h.inject_close(close, t == Direction::ClientToBackend);
        h.src_done = true;
        self.linger = Some(Box::pin(sleep(LINGER)));
        Poll::Ready(true)
    }

    fn poll_half(&mut self, d: Direction, cx: &mut Context<'_>, progress: &mut bool, fresh: &mut Fresh) {
        let (s, t) = (d.index(), 1 - d.index());
        if self.halves[s].pipe().is_some() && self.drain_pipe(d, cx, progress).is_pending() {
            return;
        }
        let h = &mut self.halves[s];
        let was_dead = h.dst_dead;
        let drained = h.drain(&mut self.io[t], cx, progress);
        if h.dst_dead && !was_dead {
            self.side_ended(t, true);
        }
        if drained.is_pending() {
            return;
        }
        let h = &mut self.halves[s];
        if h.paused && !h.src_done {
            return;
        }
        if h.src_done {
            // Not while the destination still owes its answer to the close weir sent it for the
            // other side's broken rule: a peer that reads a FIN may drop what it was about to
            // send (Twisted does), and what it sends is the rule breaker's to see.
            let awaited = self.close_on_linger.is_some_and(|(a, _, owed)| owed && a.index() == t);
            if !h.dst_shut && !h.dst_dead && !awaited {
                // The connection's last act on a plain TCP socket whose peer already ended its
                // side (the other half has nothing more to read or write): the close(2) right
                // after sends the same FIN, so the shutdown(2) is skipped. TLS streams always shut
                // down (close_notify).
                let last = self.halves[t].quiet() && self.io[t].tcp().is_some();
                if last || Pin::new(&mut self.io[t]).poll_shutdown(cx).is_ready() {
                    self.halves[s].dst_shut = true;
                    *progress = true;
                }
            }
            return;
        }
        if self.splice && self.splice_in(d, cx, progress, fresh) {
            return;
        }
        if fresh.blocked[s] {
            return;
        }
        let h = &self.halves[s];
        // Spliced to its end, and the next header not complete yet (`None` while part of it is
        // buffered; the frame ordinal moves on once it is).
        let after_splice = h.spliced_frame == h.scanner.frame() && h.scanner.frame_remaining().unwrap_or(0) == 0;
        let len = if after_splice { AFTER_SPLICE_READ } else { SCRATCH_SIZE };
        let read = SCRATCH.with(|cell| {
            let Ok(mut buf) = cell.try_borrow_mut() else { return None };
            let mut rb = ReadBuf::new(buf.get_mut(..len).unwrap_or_default());
            match Pin::new(&mut self.io[s]).poll_read(cx, &mut rb) {
                Poll::Pending => None,
                Poll::Ready(Err(_)) => Some(Err(())),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        return Some(Ok(0));
                    }
                    let chunk = buf.get(..n).unwrap_or_default();
                    match self.weirs_pong(d, chunk) {
                        Some((a, b)) => {
                            self.relay_chunk(d, chunk.get(..a).unwrap_or_default(), cx, fresh);
                            self.ponged(d);
                            self.relay_chunk(d, chunk.get(b..).unwrap_or_default(), cx, fresh);
                        }
                        None => self.relay_chunk(d, chunk, cx, fresh),
                    }
                    Some(Ok(n))
                }
            }
        });
        match read {
            None => fresh.blocked[s] = true,
            Some(Ok(0)) => {
                *progress = true;
                self.src_ended(d, false);
            }
            Some(Ok(_)) => {
                *progress = true;
                self.read_done(d, fresh);
            }
            Some(Err(())) => {
                *progress = true;
                self.src_ended(d, true);
            }
        }
    }

    /// A read (or a splice fill) of direction `d` brought bytes: with a rate on `d`, they are
    /// charged now, before the source is read again. The guard charges once per wakeup too, but
    /// one poll can relay several round trips (another thread's I/O driver marks the sockets
    /// ready again mid-poll), and each must meet the pause its predecessor earned: charged only
    /// per wakeup, a throttled client got 30 messages through in 0.5 s instead of 1.25 under
    /// load. A pause set here is armed by the guard at the end of the wakeup.
    fn read_done(&mut self, d: Direction, fresh: &mut Fresh) {
        let Some(w) = self.watch.as_mut().filter(|w| w.rated(d.index())) else { return };
        let at = fresh.nanos();
        let charge = w.charge(d.index(), &fresh[d.index()], at, Timers::ticks_of(at));
        self.charged(d, charge);
    }

    /// Act on a charge of direction `d` (at a read, or the guard's once per wakeup): a pause
    /// stops reading its source; over the limit with `action: close`, the connection is closed
    /// with 1008. Returns whether it closed.
    fn charged(&mut self, d: Direction, charge: Charge) -> bool {
        match charge {
            Charge::Ok => false,
            Charge::PauseUntil(_) => {
                self.halves[d.index()].paused = true;
                false
            }
            Charge::Close => {
                tracing::debug!(direction = d.as_str(), "over the rate limit; closing with 1008");
                self.limit_close(d, Close::RateLimited, Cause::RateLimited);
                true
            }
        }
    }

    /// Write what the pipe of direction `d` holds to its destination; once it is empty and the
    /// frame it served is through, give the pipe back. `Pending` while the destination is blocked.
    fn drain_pipe(&mut self, d: Direction, cx: &mut Context<'_>, progress: &mut bool) -> Poll<()> {
        let (s, t) = (d.index(), 1 - d.index());
        let h = &mut self.halves[s];
        let dst_dead = h.dst_dead;
        let Some(pipe) = h.pipe() else { return Poll::Ready(()) };
        if pipe.held() > 0 && !dst_dead {
            let Some(dst) = self.io[t].tcp() else { return Poll::Ready(()) };
            let before = pipe.held();
            let drained = pipe.poll_drain(dst, cx);
            if pipe.held() < before {
                *progress = true;
            }
            match drained {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => {
                    h.dst_dead = true;
                    h.drop_pipe();
                    self.side_ended(t, true);
                    return Poll::Ready(());
                }
            }
        }
        // The pipe is empty now, or its destination is dead: given back once the frame it served
        // is through (a dead destination's pipe is closed with what it holds).
        if h.dst_dead || h.scanner.frame_remaining().is_none_or(|r| r == 0) {
            h.drop_pipe();
        }
        Poll::Ready(())
    }

    /// Splice the rest of the current frame of direction `d` when it is a large data frame and
    /// both streams are plain TCP: move up to a pipe's worth from the source into the pipe and
    /// on to the destination. Returns whether this took the turn (the caller reads nothing).
    fn splice_in(&mut self, d: Direction, cx: &mut Context<'_>, progress: &mut bool, fresh: &mut Fresh) -> bool {
        let s = d.index();
        let h = &mut self.halves[s];
        let Some(rest) = h.scanner.frame_remaining().filter(|&r| r > 0) else { return false };
        // A frame is spliced from the read where its rest is at least `SPLICE_MIN` to its end
        // (also after its sender stalled and the empty pipe went back to the pool).
        let frame = h.scanner.frame();
        let has_pipe = h.pipe().is_some();
        if h.discard || h.dst_dead || (!has_pipe && rest < SPLICE_MIN && h.spliced_frame != frame) {
            return false;
        }
        if !has_pipe && h.pipeless_frame != frame {
            match Pipe::take() {
                Some(pipe) => h.backlog().pipe = Some(pipe),
                // None free: this frame is copied, and the pool is not asked again for it.
                None => h.pipeless_frame = frame,
            }
        }
        h.spliced_frame = frame;
        let (Some(pipe), Some(src)) = (h.pipe(), self.io[s].tcp()) else { return false };
        let mut max = usize::try_from(rest).unwrap_or(usize::MAX);
        if let Some(allowed) = self.watch.as_ref().and_then(|w| w.byte_allowance(s)) {
            // A byte rate is charged after each fill: no more at once than its bucket holds, or
            // one copied read's worth, which is what the copy path may go over it by.
            max = max.min(usize::try_from(allowed).unwrap_or(usize::MAX).max(SCRATCH_SIZE));
        }
        match pipe.poll_fill(src, max, cx) {
            Poll::Pending => {
                // A sender that stalls mid-frame holds no pipe: an empty one goes back to the
                // pool until its next bytes arrive.
                if pipe.held() == 0 {
                    h.drop_pipe();
                }
            }
            Poll::Ready(Ok(0)) => {
                *progress = true;
                self.src_ended(d, false);
            }
            Poll::Ready(Ok(n)) => {
                *progress = true;
                h.scanner.skip_payload(&mut fresh[s], n as u64);
                self.read_done(d, fresh);
                // Straight on, as the copy path writes at once; what the destination does not
                // take now waits in the pipe for the next round.
                let _ = self.drain_pipe(d, cx, progress);
            }
            Poll::Ready(Err(_)) => {
                *progress = true;
                self.src_ended(d, true);
            }
        }
        true
    }

    /// Scan a chunk read in direction `d` and forward what may be forwarded.
    fn relay_chunk(&mut self, d: Direction, chunk: &[u8], cx: &mut Context<'_>, fresh: &mut Fresh) {
        if chunk.is_empty() {
            return;
        }
        let fwd = self.ingest(d, chunk, fresh);
        if !self.halves[d.index()].discard {
            self.forward(d, chunk.get(..fwd).unwrap_or_default(), cx);
        }
    }

    /// Where weir's pong is in `chunk`, read in direction `d`, while a ping of weir's to that
    /// direction's sender is outstanding.
    fn weirs_pong(&self, d: Direction, chunk: &[u8]) -> Option<(usize, usize)> {
        let expected = self.watch.as_ref()?.expected_pong(d.index())?;
        let scanner = &self.halves[d.index()].scanner;
        find_pong(scanner.frame_remaining(), chunk, &expected, d == Direction::ClientToBackend)
    }

    /// weir's pong came back from the sender of `d`: swallowed (never forwarded, never counted);
    /// the observer hears the round-trip time.
    fn ponged(&mut self, d: Direction) {
        if let Some(rtt) = self.watch.as_mut().and_then(|w| w.ponged(d.index(), Instant::now())) {
            self.observer.rtt(Party::sender_of(d), rtt);
        }
    }

    /// Scan a chunk read in direction `d`, counting it into `fresh`; returns how many of its
    /// bytes may be forwarded.
    fn ingest(&mut self, d: Direction, chunk: &[u8], fresh: &mut Fresh) -> usize {
        let h = &mut self.halves[d.index()];
        let had_close = h.scanner.close().is_some();
        let feed = h.scanner.feed(&self.limits, &mut fresh[d.index()], chunk);
        if h.discard && h.scanner.close().is_some() {
            h.src_done = true;
        }
        // A close frame in this chunk comes before any violation in it (the scanner stops at a
        // violation), so it is noted first: weir must not send a close after it.
        if !had_close && h.scanner.close().is_some() {
            h.dst_has_close = true;
            // A close read after a side already ended, or after weir sent its own close, is a
            // reply to weir's close frame, not the start of the end.
            if self.ending.first_end.is_none() && self.ending.gateway_code.is_none() {
                self.ending.first_close.get_or_insert(Party::sender_of(d));
            }
        }
        match feed {
            Feed::Ok => chunk.len(),
            Feed::CloseWithheld { valid_up_to } => {
                // The answer to the close weir sent when the sender of the other direction broke
                // a rule (`close_sender`): that sender gets weir's close (the same code) instead,
                // after everything before this close; this side is read no more.
                h.src_done = true;
                if let Some((t, close, _)) = self.close_on_linger.take() {
                    self.halves[t.index()].inject_close(close, t == Direction::ClientToBackend);
                }
                valid_up_to.min(chunk.len())
            }
            Feed::Violation { valid_up_to, violation: Violation::DataAfterClose } => {
                // Data after the sender's own close: a conformant endpoint ignores it and answers
                // the close, so weir drops it and everything after it (the poisoned scanner
                // passes nothing more); the close handshake goes on. Not counted as a violation.
                tracing::debug!(direction = d.as_str(), "data after the sender's close frame; dropped");
                valid_up_to.min(chunk.len())
            }
            Feed::Violation { valid_up_to, violation } if violation.is_limit() => {
                tracing::debug!(
                    direction = d.as_str(),
                    limit = violation.as_str(),
                    "over a size limit; closing with 1009"
                );
                self.limit_close(d, Close::LimitTooBig, Cause::MessageTooBig);
                valid_up_to.min(chunk.len())
            }
            Feed::Violation { valid_up_to, violation } => {
                // The scanner now reports whether everything forwarded (earlier chunks plus
                // `chunk[..valid_up_to]`) ends on a frame boundary; `inject_close` relies on it.
                self.on_violation(d, violation);
                valid_up_to.min(chunk.len())
            }
        }
    }

    /// Write freshly read bytes straight from the read buffer; keep what `dst` did not take.
    fn forward(&mut self, d: Direction, bytes: &[u8], cx: &mut Context<'_>) {
        let t = 1 - d.index();
        let h = &mut self.halves[d.index()];
        if h.dst_dead || bytes.is_empty() {
            return;
        }
        let mut off = 0;
        let written = write_from(&mut self.io[t], cx, bytes, &mut off);
        // The caller already counts this round as progress.
        let _ = h.settle(written, &mut false);
        if h.dst_dead {
            self.side_ended(t, true);
        } else if off < bytes.len() {
            h.keep(bytes.get(off..).unwrap_or_default());
        } else if h.need_flush {
            if let Poll::Ready(Ok(())) = Pin::new(&mut self.io[t]).poll_flush(cx) {
                h.need_flush = false;
            }
        }
    }

    /// `src` of direction `d` ended (EOF or error).
    fn src_ended(&mut self, d: Direction, error: bool) {
        // The receiver sent its own close already and waits for the answer or the end: it gets
        // the end, as it would directly (a close of weir's would be read as the answer).
        let receiver_closed = self.halves[d.reverse().index()].scanner.close().is_some();
        let h = &mut self.halves[d.index()];
        h.src_done = true;
        if h.scanner.close().is_none() {
            if let Some((_, close, _)) = self.close_on_linger.take_if(|(a, _, _)| *a == d) {
                // It ended instead of answering the close weir sent it for the other side's
                // broken rule: the rule breaker gets weir's close now.
                h.inject_close(close, d == Direction::ClientToBackend);
            } else {
                let close = match d {
                    Direction::BackendToClient if self.object => Close::ObjectMoved,
                    Direction::BackendToClient => Close::BackendGone,
                    Direction::ClientToBackend => Close::ClientGone,
                };
                if !receiver_closed && h.inject_close(close, d == Direction::ClientToBackend) {
                    self.ending.injected_code.get_or_insert(close.code());
                }
            }
        } else if !error {
            self.after_closing_handshake(d);
        }
        self.side_ended(d.index(), error);
    }

    /// The sender of `d` ended its stream after its close frame. If the other sender's close
    /// frame is through as well, the closing handshake is over: nothing either may still send
    /// is for anyone (RFC 6455 §5.5.1), so the other sender is read no more either, and both
    /// sockets are closed once what is queued for them is written. This is what a direct peer
    /// does after the handshake (the server closes its TCP connection, §7.1.1), without the
    /// shutdown(2) of the other side and the wait for its end that relaying the end alone takes.
    fn after_closing_handshake(&mut self, d: Direction) {
        let other = &mut self.halves[1 - d.index()];
        if !other.src_done && other.scanner.close().is_some() && other.scanner.at_frame_boundary() {
            other.src_done = true;
        }
    }

    /// Note that `side` ended (its read ended or a write to it failed) and start the linger.
    fn side_ended(&mut self, side: usize, error: bool) {
        self.ending.errored |= error;
        let party = if side == CLIENT { Party::Client } else { Party::Backend };
        self.ending.first_end.get_or_insert(party);
        self.start_linger();
    }

    fn start_linger(&mut self) {
        if self.linger.is_none() {
            self.linger = Some(Box::pin(sleep(LINGER)));
        }
        // From here the linger bounds the connection's end; no guard is needed any more.
        self.watch = None;
    }

    /// Direction `d` broke RFC 6455. Its sender is read no more, and the other side gets 1002 at
    /// once (it never sees the bad frame). What the other side sends before its answer to that
    /// close still reaches the sender, as it would without weir; its answer is withheld (it
    /// answers weir), and the sender gets weir's 1002 in its place, or when the other side ends
    /// or `LINGER` passes (see `close_sender`).
    fn on_violation(&mut self, d: Direction, v: Violation) {
        tracing::debug!(direction = d.as_str(), violation = v.as_str(), "protocol violation; closing with 1002");
        self.ending.violation = Some((d, v));
        self.close_sender(d, Close::ProtocolError);
    }

    /// The sender of `d` went over a limit (size or rate): closed as a violation is (see
    /// `on_violation`), with `close` to both sides, and `cause`.
    fn limit_close(&mut self, d: Direction, close: Close, cause: Cause) {
        self.ending.cause.get_or_insert(cause);
        self.close_sender(d, close);
    }

    /// The sender of `d` is read no more; the other side gets `close` at once, the sender when
    /// the other side answers it (its answer withheld), ends, or `LINGER` passes.
    fn close_sender(&mut self, d: Direction, close: Close) {
        if self.ending.first_close.is_none() && self.ending.gateway_code.is_none() {
            self.ending.gateway_code = Some(close.code());
        }
        let h = &mut self.halves[d.index()];
        let sent = h.inject_close(close, d == Direction::ClientToBackend);
        h.src_done = true;
        h.paused = false;
        // The other side's close, when it comes, answers weir's: the sender gets weir's own
        // close in its place (`ingest`), as it would get the other side's own close for the
        // frame it broke if it talked to that side directly. Not when weir's close could not go
        // out (mid-frame) or the other side had closed first: its close is its own then.
        let other = &mut self.halves[d.reverse().index()];
        let owed = sent && other.scanner.close().is_none();
        if owed {
            other.scanner.withhold_close();
        }
        self.close_on_linger = Some((d.reverse(), close, owed));
        self.start_linger();
    }

    /// Consult the guards after a wakeup: note activity, charge the rate buckets, act on what is
    /// due and arm the alarm for the next deadline. Returns whether it queued or changed
    /// anything the relay must drive.
    fn guard(&mut self, cx: &mut Context<'_>, fresh: &mut Fresh) -> bool {
        let Some(mut w) = self.watch.take() else { return false };
        // The wakeup's one clock read: the tick is derived from the same instant.
        let (at, at_nanos) = (fresh.now(), fresh.nanos());
        let now = Timers::ticks_of(at_nanos);
        w.alarm.fired(now);
        let closes = [0, 1].map(|i| self.halves[i].scanner.close().is_some());
        w.observe(now, [&fresh[0], &fresh[1]], closes);
        let mut acted = false;
        for d in Direction::BOTH {
            let charge = w.charge(d.index(), &fresh[d.index()], at_nanos, now);
            if self.charged(d, charge) {
                return true;
            }
        }
        for (h, resume) in self.halves.iter_mut().zip(w.resume(now)) {
            if resume && h.paused {
                h.paused = false;
                acted = true;
            }
        }
        match w.due(now) {
            None => {}
            Some(Due::Ping(side)) => {
                // Toward `side` runs the half that reads the other side.
                let toward = &mut self.halves[1 - side];
                if toward.can_inject_ping() {
                    let payload = w.pinged(side, now, at);
                    toward.inject_ping(&payload, side != CLIENT);
                    acted = true;
                } else {
                    // Mid-frame: try again at the next tick.
                    w.alarm.arm(now + 1, cx.waker());
                    self.watch = Some(w);
                    return acted;
                }
            }
            Some(Due::Idle) => {
                self.ending.cause.get_or_insert(Cause::IdleTimeout);
                self.gateway_close(Close::IdleTimeout);
                return true;
            }
            Some(Due::Lifetime) => {
                self.ending.cause.get_or_insert(Cause::MaxLifetime);
                self.gateway_close(if w.restart() { Close::LifetimeRestart } else { Close::Lifetime });
                return true;
            }
            Some(Due::Dead(side)) => {
                self.peer_dead(side);
                return true;
            }
            Some(Due::CloseTimeout) => {
                // The side that did not answer is the one that ended the connection.
                let party = if closes[CLIENT] { Party::Backend } else { Party::Client };
                self.ending.first_end.get_or_insert(party);
                self.ending.cause.get_or_insert(Cause::CloseTimeout);
                self.ending.errored = true;
                self.abort = true;
                return true;
            }
        }
        if let Some(next) = w.next() {
            w.alarm.arm(next, cx.waker());
        }
        self.watch = Some(w);
        acted
    }

    /// `side` did not answer weir's ping in time: it is dropped (nothing more is written to or
    /// read from it), and the other side gets `Close::PeerNotResponding` and `LINGER` to answer.
    fn peer_dead(&mut self, side: usize) {
        tracing::debug!(
            side = if side == CLIENT { "client" } else { "backend" },
            "peer not responding to pings; closing"
        );
        self.ending.cause.get_or_insert(Cause::DeadPeer);
        let from_dead = &mut self.halves[side];
        from_dead.src_done = true;
        if from_dead.inject_close(Close::PeerNotResponding, side == CLIENT) {
            self.ending.injected_code.get_or_insert(Close::PeerNotResponding.code());
        }
        let to_dead = &mut self.halves[1 - side];
        to_dead.dst_dead = true;
        to_dead.discard = true;
        to_dead.paused = false;
        self.side_ended(side, true);
    }

    /// weir ends the connection itself: queue `close` to each side whose stream is at a frame
    /// boundary, stop reading, and let the writes drain.
    fn gateway_close(&mut self, close: Close) {
        if self.ending.first_close.is_none() && self.ending.gateway_code.is_none() {
            self.ending.gateway_code = Some(close.code());
        }
        for d in Direction::BOTH {
            let h = &mut self.halves[d.index()];
            h.inject_close(close, d == Direction::ClientToBackend);
            h.src_done = true;
        }
        self.start_linger();
    }

    fn object_moved(&mut self) {
        tracing::debug!("object moved; closing with 1012");
        self.ending.moved = true;
        let backend = Direction::BackendToClient.index();
        let host_open = !self.halves[backend].src_done && self.halves[backend].scanner.close().is_none();
        self.gateway_close(Close::ObjectMoved);
        if host_open {
            // Keep reading the host until it answers the close or ends (at most `LINGER`): the
            // relay, and with it the object's lease, ends only once the host let go.
            let h = &mut self.halves[backend];
            h.src_done = false;
            h.discard = true;
            // From here the scanner walks bytes the client never gets: its frame boundaries are
            // not the client's, so no close may be injected toward the client any more (if the
            // 1012 above could not go out mid-frame, the client's stream is just closed). Found
            // by the relay fuzz target (fuzz/regressions/relay/).
            h.dst_has_close = true;
            self.host_uncounted = true;
        }
    }

    /// An order from outside (kick, drain): each side gets its close, then the linger.
    fn stop(&mut self, stop: Stop) {
        tracing::debug!(cause = stop.cause.as_str(), code = stop.client.0, "closing on an operator's order");
        self.ending.cause.get_or_insert(stop.cause);
        if self.ending.first_close.is_none() && self.ending.gateway_code.is_none() {
            self.ending.gateway_code = Some(stop.client.0);
        }
        for d in Direction::BOTH {
            // Toward the client runs the half that reads the backend, and the other way round.
            let (code, reason) = if d == Direction::BackendToClient { &stop.client } else { &stop.backend };
            let h = &mut self.halves[d.index()];
            h.inject_close_with(*code, reason.as_bytes(), d == Direction::ClientToBackend);
            h.src_done = true;
        }
        self.start_linger();
    }

    fn begin_drain(&mut self) {
        self.ending.shutdown = true;
        tracing::debug!("shutdown grace over; closing with 1001");
        self.gateway_close(Close::Shutdown);
    }
}

#[cfg(test)]
mod tests;
