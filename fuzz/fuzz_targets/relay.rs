//! Fuzz target `relay`: the relay state machine `weir::relay::pump::Relay` between a scripted
//! client and a scripted backend over in-memory pipes (`tokio::io::duplex`), on a current-thread
//! runtime whose time is paused (virtual: it jumps to the next timer whenever every task waits).
//!
//! The relay is built and started in one place, [`spawn_relay`]; the rest of this file only
//! talks to it through the pipes, the shutdown and move signals, and the report.
//!
//! Input layout (every byte string is a valid input; a missing argument ends the script):
//! - byte 0, flags: bit 0 the backend is an object host (the relay is handed a move
//!   signal); bits 1 and 2 `allowed_rsv` `0b100` for the client's and the backend's direction;
//!   bit 3 chunk sizes set (both directions); bits 4 and 5 how the client and the backend stop
//!   at the end (0: shut down their write half and read until EOF; 1: vanish); bit 6 the
//!   shutdown signal is already true when the relay starts; bit 7 the object has already moved;
//! - byte 1: the pipes' capacities, `CAPS[b & 7]` for the client's, `CAPS[(b >> 3) & 7]` for
//!   the backend's; bits 6-7 one of four size-limit presets for both directions (`LIMITS`);
//! - byte 2: the shutdown grace, in 50 ms;
//! - bytes 3 and 4: the lengths of the client's and the backend's early bytes (bytes read with
//!   the handshake heads, handed to `Relay::new`), which follow;
//! - then operations, one byte each (low nibble the kind, high nibble a small argument), some
//!   followed by arguments (see `Op`): raw writes, well-formed frames (masked for the client,
//!   unmasked for the backend, of any opcode, FIN and RSV bits, and of lengths that take every
//!   length encoding), reads, half-closes, vanishing, time passing, the shutdown and move
//!   signals, yields. A peer's writes go through an outbox: what the pipe does not take now
//!   goes out later, in order, so frames stay whole; a half-close waits for the outbox.
//!
//! With `WEIR_FUZZ_DEBUG` set, the target prints the script as it runs and the report (to
//! replay a finding: `WEIR_FUZZ_DEBUG=1 cargo +nightly fuzz run relay <file>`).
//!
//! At the end both peers stop as the flags say, and then:
//! - the relay ends within `END_BOUND` of virtual time (two `LINGER`s: the first end, then
//!   the 1002 to a protocol violation's sender);
//! - per direction, `wire_bytes` is at most what the sender wrote, and the report's counts are
//!   exactly a fresh `FrameScanner`'s counts of the first `wire_bytes` bytes the sender wrote;
//! - what each peer received is a prefix of: the first `wire_bytes` bytes the other peer wrote,
//!   byte for byte, then at most one close frame of weir's own (only where the relayed bytes end
//!   on a frame boundary; masked toward the backend; one of the relay's `Close`s, code and
//!   reason); a peer that read until EOF received the relayed bytes but for at most one read
//!   (64 KiB) left in weir's buffer when the linger ran out; what a peer received has no protocol
//!   violation (weir never forwards a bad frame); so memory stays bounded too: weir never writes
//!   more than it read plus one close frame;
//! - a reported violation is the first one in what its sender wrote; a connection closed for a
//!   size limit had a sender whose first violation is that limit;
//! - every progress moved bytes, the report carries the observer's sums; `clean` implies
//!   `Completed`, a violation means `ProtocolError`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weir::relay::close::Close;
use weir::relay::frame::{Violation, MAX_CLOSE_FRAME_LEN};
use weir::relay::pump::{Relay, LINGER, SCRATCH_SIZE};
use weir::relay::report::{Cause, Outcome, RelayReport};
use weir::relay::scanner::{Chunks, DirectionCounts, FrameScanner, Role, ScanLimits, ScanPolicy};
use weir::relay::Observer;

/// Pipe capacities to pick from, bytes (1: every write blocks after a byte).
const CAPS: [usize; 8] = [1, 3, 17, 131, 1024, 8192, 65_536, 200_000];
/// The longest the relay may take to end after both peers stopped: `LINGER` after the first end,
/// one more `LINGER` to deliver the 1002 a protocol violation's sender gets, and 10 ms of timer
/// granularity.
const END_BOUND: Duration = Duration::from_millis(2 * LINGER.as_millis() as u64 + 10);
/// Payload bytes one peer's big scripted frames may carry in all (past it they are empty);
/// `SMALL_PIPE_BUDGET` when a pipe is under `SMALL_PIPE` bytes, where every byte costs a round
/// of the relay and 64 KiB would take seconds.
const FRAME_BUDGET: usize = 256 * 1024;
const SMALL_PIPE_BUDGET: usize = 1024;
const SMALL_PIPE: usize = 1024;
/// Size-limit presets, `(max_frame, max_message)` (0: no limit).
const LIMITS: [(u64, u64); 4] = [(0, 0), (125, 0), (0, 1000), (70_000, 100_000)];
/// The closes the relay sends on its own when no guard is on (`ObjectMoved` only to an object
/// host's connection).
const RELAY_CLOSES: [Close; 6] = [
    Close::BackendGone,
    Close::ClientGone,
    Close::Shutdown,
    Close::ProtocolError,
    Close::LimitTooBig,
    Close::ObjectMoved,
];

thread_local! {
    /// One runtime for every input: current-thread, time paused.
    static RT: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
}

// ---- the relay under test -------------------------------------------------------------------

/// Builds the relay between the relay's ends of the two pipes (`[client, backend]`) and starts
/// it as a task: the one place that knows `Relay`'s API.
fn spawn_relay(
    io: [DuplexStream; 2],
    policies: [ScanPolicy; 2],
    limits: ScanLimits,
    early: [&[u8]; 2],
    probe: Probe,
    grace: Duration,
    moved: Option<watch::Receiver<bool>>,
) -> JoinHandle<(RelayReport, Probe)> {
    let relay = Relay::new(io, policies, limits, early, probe);
    tokio::spawn(relay.run(grace, moved))
}

/// weir's shutdown as the observer tells the relay (as the live set does): begun, and the
/// waker to wake when it begins.
#[derive(Clone, Default)]
struct ShutdownSignal(std::sync::Arc<std::sync::Mutex<(bool, Option<std::task::Waker>)>>);

impl ShutdownSignal {
    fn new(begun: bool) -> ShutdownSignal {
        ShutdownSignal(std::sync::Arc::new(std::sync::Mutex::new((begun, None))))
    }

    fn send(&self) {
        let mut s = self.0.lock().unwrap();
        s.0 = true;
        if let Some(w) = s.1.take() {
            w.wake();
        }
    }
}

/// The observer: adds up what the relay reports (checking each report moved bytes); tells the
/// relay when shutdown began.
struct Probe {
    totals: [DirectionCounts; 2],
    shutdown: ShutdownSignal,
}

impl Observer for Probe {
    fn progress(&mut self, fresh: [&DirectionCounts; 2], _at: std::time::Instant) {
        assert!(fresh.iter().any(|c| c.wire_bytes != 0), "progress without bytes: {fresh:?}");
        for (t, f) in self.totals.iter_mut().zip(fresh) {
            t.add(f);
        }
    }

    fn totals(&self) -> [DirectionCounts; 2] {
        self.totals
    }

    fn poll_shutdown(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let mut s = self.shutdown.0.lock().unwrap();
        if s.0 {
            return std::task::Poll::Ready(());
        }
        s.1 = Some(cx.waker().clone());
        std::task::Poll::Pending
    }
}

// ---- the scripted peers ---------------------------------------------------------------------

/// One side's far end of its pipe, and what went through it.
struct Peer {
    /// `None` once the peer vanished.
    io: Option<DuplexStream>,
    /// Bytes written by the script and not yet taken by the pipe.
    outbox: Vec<u8>,
    /// Every byte this peer sent, in order: its early bytes, then what the pipe took.
    sent: Vec<u8>,
    /// Every byte it read.
    received: Vec<u8>,
    /// A read returned EOF (or failed).
    eof: bool,
    /// A write failed: the relay's end is gone.
    broken: bool,
    /// The script half-closed it: shut down once the outbox is empty.
    shut_wanted: bool,
    shut: bool,
}

impl Peer {
    fn new(io: DuplexStream, early: &[u8]) -> Peer {
        Peer {
            io: Some(io),
            outbox: Vec::new(),
            sent: early.to_vec(),
            received: Vec::new(),
            eof: false,
            broken: false,
            shut_wanted: false,
            shut: false,
        }
    }

    /// Queue bytes (ignored after a half-close or once gone) and write what the pipe takes now.
    fn send(&mut self, bytes: &[u8], cx: &mut Context<'_>) {
        if self.io.is_some() && !self.shut_wanted && !self.broken {
            self.outbox.extend_from_slice(bytes);
        }
        self.pump(cx);
    }

    /// Write from the outbox until the pipe pushes back; then the half-close, if wanted.
    fn pump(&mut self, cx: &mut Context<'_>) {
        let Some(io) = self.io.as_mut() else { return };
        while !self.outbox.is_empty() && !self.broken {
            match Pin::new(&mut *io).poll_write(cx, &self.outbox) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    self.sent.extend_from_slice(&self.outbox[..n]);
                    self.outbox.drain(..n);
                }
                Poll::Ready(_) => self.broken = true,
                Poll::Pending => break,
            }
        }
        if self.broken {
            self.outbox.clear();
        }
        if self.shut_wanted && !self.shut && self.outbox.is_empty() && !self.broken {
            match Pin::new(&mut *io).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => self.shut = true,
                Poll::Ready(Err(_)) => self.broken = true,
                Poll::Pending => {}
            }
        }
    }

    /// Read what is there now, at most `max` bytes (0: no limit).
    fn read(&mut self, max: usize, cx: &mut Context<'_>) {
        let Some(io) = self.io.as_mut() else { return };
        let mut buf = [0u8; 4096];
        let mut got = 0;
        while !self.eof && (max == 0 || got < max) {
            let want = if max == 0 { buf.len() } else { (max - got).min(buf.len()) };
            let mut rb = ReadBuf::new(&mut buf[..want]);
            match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => self.eof = true,
                Poll::Ready(Ok(())) => {
                    got += rb.filled().len();
                    self.received.extend_from_slice(rb.filled());
                }
                Poll::Ready(Err(_)) => self.eof = true,
                Poll::Pending => break,
            }
        }
    }

    /// Drop the far end: no close frame, no more reads or writes.
    fn vanish(&mut self) {
        self.io = None;
        self.outbox.clear();
    }

    /// Done stopping: EOF seen, and everything queued written (or the relay's end gone).
    fn stopped(&self) -> bool {
        self.io.is_none() || (self.eof && (self.shut || self.broken))
    }
}

/// Runs `f` once with the task's context, now.
async fn now<T>(mut f: impl FnMut(&mut Context<'_>) -> T) -> T {
    poll_fn(|cx| Poll::Ready(f(cx))).await
}

// ---- the script -----------------------------------------------------------------------------

struct Script<'a> {
    data: &'a [u8],
}

impl<'a> Script<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
}

/// One scripted step; each is followed by both peers writing what they can and a yield.
enum Op {
    /// `n`, then `n` bytes: raw bytes from a peer.
    Raw { backend: bool, bytes: Vec<u8> },
    /// `h` (FIN bit 7, RSV bits 4-6, opcode the low nibble, a reserved one replaced by
    /// `OPCODES[h & 7]`), `l` (payload length: `l < 0xE0`
    /// the next `l` bytes; `0xE0..0xF0` 126 + 4000 * (l - 0xE0) bytes and `0xF0..` 65536 + l
    /// bytes of a pattern), the payload: one well-formed frame (masked from the client with a key
    /// from the op's high nibble), whatever the protocol says of its sequence.
    Frame { backend: bool, b0: u8, payload: Vec<u8>, key: [u8; 4] },
    /// Read what is there, at most 64 * high nibble bytes (0: all).
    Read { backend: bool, max: usize },
    /// Half-close the peer's write side (once its outbox is written).
    Shutdown { backend: bool },
    /// The peer vanishes.
    Vanish { backend: bool },
    /// `t`: let `t * 10` ms of virtual time pass.
    Sleep(Duration),
    /// weir begins to shut down.
    ShutdownSignal,
    /// The object moves (a no-op for a plain backend).
    MoveSignal,
    /// Yield high nibble + 1 times.
    Yield(u8),
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |backend: &bool| if *backend { "backend" } else { "client" };
        match self {
            Op::Raw { backend, bytes } => write!(f, "{} writes {:02X?}", side(backend), bytes),
            Op::Frame { backend, b0, payload, .. } if payload.len() > 16 => {
                write!(f, "{} frame {b0:#04X}, {} payload bytes", side(backend), payload.len())
            }
            Op::Frame { backend, b0, payload, .. } => write!(f, "{} frame {b0:#04X} {payload:02X?}", side(backend)),
            Op::Read { backend, max } => write!(f, "{} reads (max {max})", side(backend)),
            Op::Shutdown { backend } => write!(f, "{} half-closes", side(backend)),
            Op::Vanish { backend } => write!(f, "{} vanishes", side(backend)),
            Op::Sleep(d) => write!(f, "sleep {d:?}"),
            Op::ShutdownSignal => write!(f, "shutdown signal"),
            Op::MoveSignal => write!(f, "move signal"),
            Op::Yield(n) => write!(f, "yield x{}", u32::from(*n) + 1),
        }
    }
}

const OPCODES: [u8; 8] = [0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x1, 0x2];

fn next_op(s: &mut Script<'_>, budgets: &mut [usize; 2]) -> Option<Op> {
    let op = s.byte()?;
    let arg = op >> 4;
    Some(match op & 0x0F {
        k @ (0 | 1) => {
            let n = usize::from(s.byte()?);
            Op::Raw { backend: k == 1, bytes: s.take(n).to_vec() }
        }
        k @ (2 | 3 | 14 | 15) => {
            let backend = k % 2 == 1;
            let h = s.byte()?;
            let l = s.byte()?;
            let budget = &mut budgets[usize::from(backend)];
            let big = match l {
                0..=0xDF => None,
                0xE0..=0xEF => Some(126 + 4000 * usize::from(l - 0xE0)),
                _ => Some(65_536 + usize::from(l)),
            };
            let payload = match big {
                Some(n) if n <= *budget => {
                    *budget -= n;
                    (0..n).map(|i| (i % 251) as u8).collect()
                }
                Some(_) => Vec::new(),
                None => s.take(usize::from(l)).to_vec(),
            };
            let opcode = match h & 0x0F {
                o @ (0x0..=0x2 | 0x8..=0xA) => o,
                reserved => OPCODES[usize::from(reserved & 7)],
            };
            let b0 = (h & 0xF0) | opcode;
            let key = [0x3A ^ arg, 0x91, 0x5C ^ (arg << 4), 0xE7];
            Op::Frame { backend, b0, payload, key }
        }
        k @ (4 | 5) => Op::Read { backend: k == 5, max: 64 * usize::from(arg) },
        k @ (6 | 7) => Op::Shutdown { backend: k == 7 },
        k @ (8 | 9) => Op::Vanish { backend: k == 9 },
        10 => Op::Sleep(Duration::from_millis(10 * u64::from(s.byte()?))),
        11 => Op::ShutdownSignal,
        12 => Op::MoveSignal,
        _ => Op::Yield(arg),
    })
}

/// A frame as a WebSocket peer writes it: `b0`, the shortest length encoding, the mask key if
/// any, the payload (masked with it).
fn frame(b0: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![b0];
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xFFFF {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    let key = mask.unwrap_or([0; 4]);
    out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    out
}

// ---- the run --------------------------------------------------------------------------------

fuzz_target!(|data: &[u8]| {
    let mut s = Script { data };
    let (Some(flags), Some(caps), Some(grace)) = (s.byte(), s.byte(), s.byte()) else { return };
    let (Some(ce), Some(be)) = (s.byte(), s.byte()) else { return };
    let early = [s.take(usize::from(ce)).to_vec(), s.take(usize::from(be)).to_vec()];
    let chunks = if flags & 8 != 0 { Chunks([1, 125, 0, 4096]) } else { Chunks([0; 4]) };
    let (max_frame, max_message) = LIMITS[usize::from(caps >> 6)];
    let policy =
        |sender, rsv_flag: u8| ScanPolicy { sender, allowed_rsv: if flags & rsv_flag != 0 { 0b100 } else { 0 } };
    let policies = [policy(Role::Client, 2), policy(Role::Server, 4)];
    let setup = Setup {
        object: flags & 1 != 0,
        vanish_at_end: [flags & 0x10 != 0, flags & 0x20 != 0],
        shutdown_at_start: flags & 0x40 != 0,
        moved_at_start: flags & 0x80 != 0,
        caps: [CAPS[usize::from(caps & 7)], CAPS[usize::from((caps >> 3) & 7)]],
        grace: Duration::from_millis(50 * u64::from(grace)),
        policies,
        limits: ScanLimits { chunks, max_frame, max_message },
        early,
    };
    RT.with(|rt| rt.block_on(run(setup, s)));
});

struct Setup {
    object: bool,
    vanish_at_end: [bool; 2],
    shutdown_at_start: bool,
    moved_at_start: bool,
    caps: [usize; 2],
    grace: Duration,
    policies: [ScanPolicy; 2],
    limits: ScanLimits,
    early: [Vec<u8>; 2],
}

async fn run(setup: Setup, mut script: Script<'_>) {
    let (client_end, relay_client) = tokio::io::duplex(setup.caps[0]);
    let (backend_end, relay_backend) = tokio::io::duplex(setup.caps[1]);
    let shutdown = ShutdownSignal::new(setup.shutdown_at_start);
    let (moved_tx, moved_rx) = watch::channel(setup.moved_at_start);
    let probe = Probe { totals: Default::default(), shutdown: shutdown.clone() };
    let started = Instant::now();
    let relay = spawn_relay(
        [relay_client, relay_backend],
        setup.policies,
        setup.limits,
        [&setup.early[0], &setup.early[1]],
        probe,
        setup.grace,
        setup.object.then_some(moved_rx),
    );
    let mut peers = [Peer::new(client_end, &setup.early[0]), Peer::new(backend_end, &setup.early[1])];
    let budget = if setup.caps.iter().any(|&c| c < SMALL_PIPE) { SMALL_PIPE_BUDGET } else { FRAME_BUDGET };
    let mut budgets = [budget; 2];
    let mut vanished = [false; 2];

    let debug = std::env::var_os("WEIR_FUZZ_DEBUG").is_some();
    if debug {
        eprintln!(
            "caps {:?}, policies {:?}, limits {:?}, early {:02X?}",
            setup.caps, setup.policies, setup.limits, setup.early
        );
    }
    while let Some(op) = next_op(&mut script, &mut budgets) {
        if debug {
            eprintln!("{:>8?} {op:?}", tokio::time::Instant::now() - started);
        }
        match op {
            Op::Raw { backend, bytes } => now(|cx| peers[usize::from(backend)].send(&bytes, cx)).await,
            Op::Frame { backend, b0, payload, key } => {
                let bytes = frame(b0, (!backend).then_some(key), &payload);
                now(|cx| peers[usize::from(backend)].send(&bytes, cx)).await
            }
            Op::Read { backend, max } => now(|cx| peers[usize::from(backend)].read(max, cx)).await,
            Op::Shutdown { backend } => peers[usize::from(backend)].shut_wanted = true,
            Op::Vanish { backend } => {
                peers[usize::from(backend)].vanish();
                vanished[usize::from(backend)] = true;
            }
            Op::Sleep(d) => tokio::time::sleep(d).await,
            Op::ShutdownSignal => {
                shutdown.send();
            }
            Op::MoveSignal => {
                let _ = moved_tx.send(true);
            }
            Op::Yield(n) => {
                for _ in 0..=n {
                    tokio::task::yield_now().await;
                }
            }
        }
        now(|cx| peers.iter_mut().for_each(|p| p.pump(cx))).await;
        tokio::task::yield_now().await;
    }

    // Both peers stop: each vanishes, or half-closes (once its outbox is written) and reads until
    // EOF. The relay must then end within `END_BOUND`.
    for (peer, (vanish, gone)) in peers.iter_mut().zip(setup.vanish_at_end.iter().zip(&mut vanished)) {
        if *vanish {
            peer.vanish();
            *gone = true;
        } else {
            peer.shut_wanted = true;
        }
    }
    let stopped_at = Instant::now();
    let stop = poll_fn(|cx| {
        for p in &mut peers {
            p.pump(cx);
            p.read(0, cx);
        }
        if peers.iter().all(Peer::stopped) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    let (relay_result, ()) = match tokio::time::timeout(END_BOUND, async { tokio::join!(relay, stop) }).await {
        Ok(done) => done,
        Err(_) => panic!("the relay did not end within {END_BOUND:?} after both peers stopped"),
    };
    let (report, probe) = match relay_result {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let took = stopped_at.elapsed();
    if debug {
        eprintln!("{:>8?} ended {took:?} after both peers stopped: {report:?}", Instant::now() - started);
        for (name, p) in ["client", "backend"].iter().zip(&peers) {
            eprintln!("{name} sent {:02X?}, received {:02X?}", trim(&p.sent), trim(&p.received));
        }
    }
    assert!(took <= END_BOUND, "the relay took {took:?} after both peers stopped");

    check(&report, &probe, &peers, &vanished, &setup);
    drop(moved_tx);
}

/// At most the first 64 bytes, for the debug output.
fn trim(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.len().min(64)]
}

/// A fresh scanner's view of `bytes`, fed at once.
fn scan(policy: ScanPolicy, limits: ScanLimits, bytes: &[u8]) -> FrameScanner {
    let mut s = FrameScanner::new(policy, limits);
    let _ = s.feed(bytes);
    s
}

fn check(report: &RelayReport, probe: &Probe, peers: &[Peer; 2], vanished: &[bool; 2], setup: &Setup) {
    assert_eq!(probe.totals, report.counts, "the report carries the observer's sums");
    assert_eq!(report.violation.is_some(), report.outcome == Outcome::ProtocolError, "{report:?}");
    if report.clean {
        assert_eq!(report.outcome, Outcome::Completed, "{report:?}");
    }
    if report.cause == Cause::MessageTooBig {
        let limited = (0..2).any(|d| {
            scan(setup.policies[d], setup.limits, &peers[d].sent).violation().is_some_and(Violation::is_limit)
        });
        assert!(limited, "closed for a size limit no sender went over: {report:?}");
    }
    // d = 0: client → backend; d = 1: backend → client.
    for d in 0..2 {
        let (from, to) = (&peers[d], &peers[1 - d]);
        let counts = &report.counts[d];
        let w = usize::try_from(counts.wire_bytes).unwrap();
        assert!(w <= from.sent.len(), "direction {d}: {w} bytes counted, {} sent", from.sent.len());
        let relayed = &from.sent[..w];
        assert_eq!(
            counts,
            scan(setup.policies[d], setup.limits, relayed).counts(),
            "direction {d}: the counts of what was relayed"
        );

        // What the receiver got: the relayed bytes, then at most one close frame of weir's own.
        let got = &to.received;
        let n = got.len().min(w);
        assert!(got[..n] == relayed[..n], "direction {d}: the receiver got bytes the sender did not send");
        let tail = &got[n..];
        if !tail.is_empty() {
            let relayed_scan = scan(setup.policies[d], setup.limits, relayed);
            assert!(
                relayed_scan.at_frame_boundary(),
                "direction {d}: weir's close frame {tail:02X?} went out mid-frame, after {:02X?}",
                trim(relayed)
            );
            check_injected(tail, d == 0, setup.object);
        }
        // A peer that read until EOF got the relayed bytes, but for what was still in weir's
        // buffer when the relay gave up on a side that did not read (the linger ran out): at most
        // one read, or the early bytes.
        if !vanished[1 - d] {
            let undelivered = w.saturating_sub(got.len());
            let bound = SCRATCH_SIZE.max(setup.early[d].len());
            assert!(undelivered <= bound, "direction {d}: {w} bytes counted as relayed, {} delivered", got.len());
        }
        let seen = scan(setup.policies[d], setup.limits, got);
        assert_eq!(seen.violation(), None, "direction {d}: weir forwarded a bad stream: {got:02X?}");

        // A violation weir reports is the first one in what its sender sent.
        if let Some((dir, v)) = report.violation {
            if dir.index() == d {
                assert_ne!(v, Violation::DataAfterClose, "data after a close is dropped, not a violation");
                assert_eq!(
                    scan(setup.policies[d], setup.limits, &from.sent).violation(),
                    Some(v),
                    "direction {d}: {report:?}"
                );
            }
        }
    }
}

/// `tail`, what a peer received past the relayed bytes, is (a prefix of) one close frame of the
/// relay's own: masked toward the backend, unmasked toward the client, and one of
/// `RELAY_CLOSES` in code and reason.
fn check_injected(tail: &[u8], to_backend: bool, object: bool) {
    assert!(tail.len() <= MAX_CLOSE_FRAME_LEN, "{} bytes past the relayed ones", tail.len());
    assert_eq!(tail[0], 0x88, "past the relayed bytes, not a close frame: {tail:02X?}");
    let Some(&b1) = tail.get(1) else { return };
    assert_eq!(b1 & 0x80 != 0, to_backend, "weir's close is masked toward the backend only: {tail:02X?}");
    let len = usize::from(b1 & 0x7F);
    assert!((2..=125).contains(&len), "weir's close has a {len}-byte payload");
    let key_len = if to_backend { 4 } else { 0 };
    let total = 2 + key_len + len;
    assert!(tail.len() <= total, "{} bytes after weir's close frame", tail.len() - total);
    if tail.len() < total {
        return;
    }
    let key: [u8; 4] = if to_backend { tail[2..6].try_into().unwrap() } else { [0; 4] };
    let payload: Vec<u8> = tail[2 + key_len..].iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k).collect();
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let reason = &payload[2..];
    let known = RELAY_CLOSES
        .iter()
        .filter(|c| object || **c != Close::ObjectMoved)
        .any(|c| c.code() == code && c.reason().as_bytes() == reason);
    assert!(known, "weir closed with {code} {:?}", String::from_utf8_lossy(reason));
}
