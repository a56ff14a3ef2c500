//! `Relay` over in-memory pipes: each test holds the far ends of two `tokio::io::duplex` pairs
//! (the client's and the backend's) and drives them byte for byte, then checks what each side
//! received and the final `RelayReport`.
//!
//! Time is paused in every test (`start_paused`): the relay's timers (`LINGER`, the shutdown
//! grace) fire as soon as every task is idle, so nothing sleeps in real time, and a relay that
//! should end on its own is checked to have ended before `LINGER`. Reads are bounded with
//! `timeout`, never synchronised with sleeps.

use super::{Relay, LINGER, SCRATCH_SIZE};
use crate::relay::close::Close;
use crate::relay::frame::Violation;
use crate::relay::report::{Outcome, Party, RelayReport};
use crate::relay::scanner::tests::frame;
use crate::relay::scanner::{DirectionCounts, Role, ScanLimits, ScanPolicy};
use crate::relay::splice::tests::tcp_pair;
use crate::relay::{Direction, Observer};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const CLIENT_POLICY: ScanPolicy = ScanPolicy::new(Role::Client);
const SERVER_POLICY: ScanPolicy = ScanPolicy::new(Role::Server);
/// The client's masking key.
const KEY: [u8; 4] = [0x3A, 0x91, 0x5C, 0xE7];
/// Bound on every wait for the relay (virtual time: it only elapses while everything is idle).
const WAIT: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(5);

const TEXT: u8 = 0x81;
const BINARY: u8 = 0x82;
const CLOSE: u8 = 0x88;

// ---- frames ---------------------------------------------------------------------------------

/// A frame from the client (masked with `KEY`).
fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    frame(b0, Some(KEY), payload)
}

/// A frame from the backend (unmasked).
fn unmasked(b0: u8, payload: &[u8]) -> Vec<u8> {
    frame(b0, None, payload)
}

/// A close frame the client sends.
fn client_close(code: u16) -> Vec<u8> {
    masked(CLOSE, &code.to_be_bytes())
}

/// A close frame the backend sends.
fn backend_close(code: u16) -> Vec<u8> {
    unmasked(CLOSE, &code.to_be_bytes())
}

/// The close frame weir sends a client: unmasked, code only (the relay's closes carry no reason).
fn gateway_close_to_client(close: Close) -> Vec<u8> {
    assert_eq!(close.reason(), "");
    backend_close(close.code())
}

/// Checks that `bytes` is exactly one masked close frame with an empty reason (weir's own close
/// toward a backend, masked with a key of its choosing) and returns its code.
fn masked_close_code(bytes: &[u8]) -> u16 {
    assert_eq!(bytes.len(), 8, "a masked close frame with a bare code is 8 bytes: {bytes:02X?}");
    assert_eq!(bytes[0], 0x88, "FIN + close opcode: {bytes:02X?}");
    assert_eq!(bytes[1], 0x82, "mask bit + 2-byte payload: {bytes:02X?}");
    u16::from_be_bytes([bytes[6] ^ bytes[2], bytes[7] ^ bytes[3]])
}

/// The expected counts of one direction, from what its sender sent (the rest is derived).
#[derive(Default)]
struct Expect {
    text: u64,
    binary: u64,
    pings: u64,
    pongs: u64,
    closes: u64,
    /// Frames that are neither FIN data frames nor control frames (fragments without FIN).
    open_fragments: u64,
    payload: u64,
    wire: u64,
    largest: u64,
}

impl Expect {
    fn counts(&self) -> DirectionCounts {
        let data_frames = self.text + self.binary + self.open_fragments;
        DirectionCounts {
            frames: data_frames + self.pings + self.pongs + self.closes,
            messages: self.text + self.binary,
            text_messages: self.text,
            binary_messages: self.binary,
            data_frames,
            pings: self.pings,
            pongs: self.pongs,
            closes: self.closes,
            payload_bytes: self.payload,
            wire_bytes: self.wire,
            largest_message_bytes: self.largest,
            chunked: [0; 4],
        }
    }
}

// ---- the observer ---------------------------------------------------------------------------

/// The connection's counts after each `progress` (the sums of what the relay reported).
type Seen = Arc<Mutex<Vec<[DirectionCounts; 2]>>>;

/// Frames an operator pushed, waiting for the relay, and the relay's waker.
type Pushes = Arc<Mutex<(Vec<u8>, Option<std::task::Waker>)>>;

/// Push the encoded `frame` to the relay (as `Live::push` does) and wake it.
fn push(pushes: &Pushes, frame: &[u8]) {
    let mut p = pushes.lock().unwrap();
    p.0.extend_from_slice(frame);
    if let Some(w) = p.1.take() {
        w.wake();
    }
}

/// weir's shutdown as an observer tells it: begun, and the waker to wake when it begins.
type ShutdownFlag = Arc<Mutex<(bool, Option<std::task::Waker>)>>;

fn begin_shutdown(flag: &ShutdownFlag) {
    let mut f = flag.lock().unwrap();
    f.0 = true;
    if let Some(w) = f.1.take() {
        w.wake();
    }
}

/// Adds up what each `progress` reports and records the sums; hands the relay pushes and tells
/// it when shutdown began.
struct Probe {
    seen: Seen,
    pushes: Pushes,
    shutdown: ShutdownFlag,
}

impl Probe {
    /// A probe with no move signal, no pushes and no shutdown.
    fn new(seen: Seen) -> Probe {
        Probe { seen, pushes: Pushes::default(), shutdown: ShutdownFlag::default() }
    }
}

impl Observer for Probe {
    fn progress(&mut self, fresh: [&DirectionCounts; 2], _at: std::time::Instant) {
        assert!(fresh.iter().any(|c| c.wire_bytes != 0), "progress without bytes: {fresh:?}");
        let mut totals = self.totals();
        for (t, f) in totals.iter_mut().zip(fresh) {
            t.add(f);
        }
        self.seen.lock().unwrap().push(totals);
    }

    fn totals(&self) -> [DirectionCounts; 2] {
        self.seen.lock().unwrap().last().copied().unwrap_or_default()
    }

    fn poll_shutdown(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let mut f = self.shutdown.lock().unwrap();
        if f.0 {
            return std::task::Poll::Ready(());
        }
        f.1 = Some(cx.waker().clone());
        std::task::Poll::Pending
    }

    fn poll_push(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Vec<u8>> {
        let mut p = self.pushes.lock().unwrap();
        if p.0.is_empty() {
            p.1 = Some(cx.waker().clone());
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(std::mem::take(&mut p.0))
    }
}

// ---- the harness ----------------------------------------------------------------------------

/// How to build one relay.
struct Setup {
    /// Capacity of the client's and the backend's pipes, bytes.
    bufs: [usize; 2],
    /// `client_early`, `backend_early`.
    early: [Vec<u8>; 2],
    /// Bytes already waiting in the client's and the backend's pipe when the relay starts.
    preload: [Vec<u8>; 2],
    /// The move signal handed to `Relay::run` (`None`: a plain backend).
    moved: Option<watch::Receiver<bool>>,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup { bufs: [64 * 1024; 2], early: Default::default(), preload: Default::default(), moved: None }
    }
}

/// A running relay and the far ends of its pipes.
struct Harness {
    /// The client's end (what the client writes, the relay reads; and back).
    client: DuplexStream,
    /// The backend's end.
    backend: DuplexStream,
    shutdown: ShutdownFlag,
    seen: Seen,
    /// Operator pushes for the relay to take.
    pushes: Pushes,
    relay: JoinHandle<(RelayReport, Probe)>,
    started: Instant,
}

async fn start(setup: Setup) -> Harness {
    let (mut client, relay_client) = tokio::io::duplex(setup.bufs[0]);
    let (mut backend, relay_backend) = tokio::io::duplex(setup.bufs[1]);
    client.write_all(&setup.preload[0]).await.unwrap();
    backend.write_all(&setup.preload[1]).await.unwrap();
    let seen = Seen::default();
    let pushes = Pushes::default();
    let shutdown = ShutdownFlag::default();
    let probe = Probe { seen: seen.clone(), pushes: pushes.clone(), shutdown: shutdown.clone() };
    let [client_early, backend_early] = &setup.early;
    let relay = Relay::new(
        [relay_client, relay_backend],
        [CLIENT_POLICY, SERVER_POLICY],
        ScanLimits::NONE,
        [client_early, backend_early],
        probe,
    );
    let relay = tokio::spawn(relay.run(GRACE, setup.moved));
    Harness { client, backend, shutdown, seen, pushes, relay, started: Instant::now() }
}

impl Harness {
    /// Waits for the relay to end; checks that its report carries the observer's sums.
    async fn finish(self) -> (RelayReport, Probe, Duration) {
        let (report, probe) = timeout(WAIT, self.relay).await.expect("the relay did not end").unwrap();
        let took = self.started.elapsed();
        assert_eq!(probe.totals(), report.counts, "the report carries the observer's sums");
        (report, probe, took)
    }
}

/// The peer of `s` vanishes: its end is dropped (no close frame, no more reads or writes).
fn vanish(s: &mut DuplexStream) {
    drop(std::mem::replace(s, tokio::io::duplex(1).0));
}

/// Reads exactly `n` bytes.
async fn read_n(s: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    timeout(WAIT, s.read_exact(&mut buf)).await.expect("timed out reading").expect("read failed");
    buf
}

/// Reads until EOF and returns what came.
async fn read_to_eof(s: &mut DuplexStream) -> Vec<u8> {
    let mut buf = Vec::new();
    timeout(WAIT, s.read_to_end(&mut buf)).await.expect("timed out waiting for EOF").expect("read failed");
    buf
}

/// Asserts that the next read returns 0 (EOF), nothing more.
async fn expect_eof(s: &mut DuplexStream) {
    assert_eq!(read_to_eof(s).await, b"", "expected EOF and no more bytes");
}

/// The client sends close 1000, the backend answers with its own and ends its TCP connection;
/// the client gets the answer and then EOF. Returns the two close frames (client's, backend's).
async fn close_then_backend_ends(h: &mut Harness) -> (Vec<u8>, Vec<u8>) {
    let cc = client_close(1000);
    h.client.write_all(&cc).await.unwrap();
    assert_eq!(read_n(&mut h.backend, cc.len()).await, cc);
    let bc = backend_close(1000);
    h.backend.write_all(&bc).await.unwrap();
    h.backend.shutdown().await.unwrap();
    assert_eq!(read_to_eof(&mut h.client).await, bc);
    (cc, bc)
}

/// `elapsed` is `timer` (virtual time jumps straight to a timer's deadline, up to rounding).
fn near(elapsed: Duration, timer: Duration) -> bool {
    elapsed >= timer && elapsed < timer + Duration::from_millis(10)
}

/// The ending a report summarises, in one comparable value.
fn ending(r: &RelayReport) -> (Outcome, Party, Option<u16>, bool) {
    (r.outcome, r.initiator, r.close_code, r.clean)
}

// ---- tests ----------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn bytes_flow_both_ways_unchanged_and_a_close_handshake_completes() {
    let mut h = start(Setup::default()).await;
    let c1 = masked(TEXT, b"hello, backend");
    let c2 = masked(BINARY, &[0u8, 1, 2, 0xFF, 0x80]);
    let ping = masked(0x89, b"p");
    let b1 = unmasked(TEXT, b"hello, client");
    let b2 = unmasked(0x8A, b"p");
    let b3 = unmasked(BINARY, &[7u8; 300]);

    h.client.write_all(&[c1.clone(), c2.clone(), ping.clone()].concat()).await.unwrap();
    assert_eq!(read_n(&mut h.backend, c1.len() + c2.len() + ping.len()).await, [&c1[..], &c2, &ping].concat());
    h.backend.write_all(&[b1.clone(), b2.clone(), b3.clone()].concat()).await.unwrap();
    assert_eq!(read_n(&mut h.client, b1.len() + b2.len() + b3.len()).await, [&b1[..], &b2, &b3].concat());

    // The client starts the close, the backend answers and (as a server does) ends the TCP
    // connection first; the client then ends its own.
    let (cc, bc) = close_then_backend_ends(&mut h).await;
    h.client.shutdown().await.unwrap();
    expect_eof(&mut h.backend).await;

    let (report, _, took) = h.finish().await;
    assert!(took < LINGER, "the relay ended on its own, not by lingering: {took:?}");
    assert_eq!(ending(&report), (Outcome::Completed, Party::Client, Some(1000), true));
    assert_eq!(report.violation, None);
    let to_backend = Expect {
        text: 1,
        binary: 1,
        pings: 1,
        closes: 1,
        payload: 14 + 5 + 1 + 2,
        wire: (c1.len() + c2.len() + ping.len() + cc.len()) as u64,
        largest: 14,
        ..Default::default()
    };
    let to_client = Expect {
        text: 1,
        binary: 1,
        pongs: 1,
        closes: 1,
        payload: 13 + 1 + 300 + 2,
        wire: (b1.len() + b2.len() + b3.len() + bc.len()) as u64,
        largest: 300,
        ..Default::default()
    };
    assert_eq!(report.counts, [to_backend.counts(), to_client.counts()]);
}

/// After the closing handshake the backend ends its TCP connection, as a server does: the relay
/// ends both sides at once instead of waiting for the client's own end (which this client never
/// sends) until `LINGER`.
#[tokio::test(start_paused = true)]
async fn after_the_closing_handshake_the_backends_end_ends_both_sides_at_once() {
    let mut h = start(Setup::default()).await;
    close_then_backend_ends(&mut h).await;
    expect_eof(&mut h.backend).await;

    let (report, _, took) = h.finish().await;
    assert!(took < LINGER, "the relay waited for the client's end: {took:?}");
    assert_eq!(ending(&report), (Outcome::Completed, Party::Client, Some(1000), true));
}

/// A side that ends before the closing handshake is over still leaves the other side its time:
/// the backend answers the client's close and ends, and the client, whose close is only half
/// through, is read on until it has sent the rest.
#[tokio::test(start_paused = true)]
async fn a_close_frame_still_arriving_is_read_to_its_end() {
    let mut h = start(Setup::default()).await;
    let cc = masked(CLOSE, &[&1000u16.to_be_bytes()[..], b"bye now"].concat());
    let (head, tail) = cc.split_at(9);
    h.client.write_all(head).await.unwrap();
    assert_eq!(read_n(&mut h.backend, head.len()).await, head);
    let bc = backend_close(1000);
    h.backend.write_all(&bc).await.unwrap();
    h.backend.shutdown().await.unwrap();
    assert_eq!(read_to_eof(&mut h.client).await, bc);
    h.client.write_all(tail).await.unwrap();
    assert_eq!(read_n(&mut h.backend, tail.len()).await, tail);
    h.client.shutdown().await.unwrap();
    expect_eof(&mut h.backend).await;

    let (report, _, took) = h.finish().await;
    assert!(took < LINGER, "{took:?}");
    assert_eq!(ending(&report), (Outcome::Completed, Party::Client, Some(1000), true));
    assert_eq!(report.counts[0].wire_bytes, cc.len() as u64);
}

#[tokio::test(start_paused = true)]
async fn early_bytes_go_out_first_and_are_counted() {
    // The client's early bytes end in the middle of a frame's header: the rest of that frame is
    // already waiting in the pipe, so the relay must write the early bytes before anything it
    // reads, and keep scanning across the seam.
    let a = masked(TEXT, b"early one");
    let b = masked(BINARY, &[9u8; 200]);
    let c = masked(TEXT, b"later");
    let (b_head, b_tail) = b.split_at(3);
    let x = unmasked(TEXT, b"backend early");
    let y = unmasked(BINARY, b"backend later");
    let mut h = start(Setup {
        early: [[&a[..], b_head].concat(), x.clone()],
        preload: [[b_tail, &c[..]].concat(), y.clone()],
        ..Default::default()
    })
    .await;

    let to_backend = [&a[..], &b, &c].concat();
    assert_eq!(read_n(&mut h.backend, to_backend.len()).await, to_backend);
    let to_client = [&x[..], &y].concat();
    assert_eq!(read_n(&mut h.client, to_client.len()).await, to_client);

    let (cc, bc) = close_then_backend_ends(&mut h).await;
    h.client.shutdown().await.unwrap();
    expect_eof(&mut h.backend).await;

    let (report, _, took) = h.finish().await;
    assert!(took < LINGER, "{took:?}");
    assert_eq!(ending(&report), (Outcome::Completed, Party::Client, Some(1000), true));
    let to_backend = Expect {
        text: 2,
        binary: 1,
        closes: 1,
        payload: 9 + 200 + 5 + 2,
        wire: (to_backend.len() + cc.len()) as u64,
        largest: 200,
        ..Default::default()
    };
    let to_client = Expect {
        text: 1,
        binary: 1,
        closes: 1,
        payload: 13 + 13 + 2,
        wire: (to_client.len() + bc.len()) as u64,
        largest: 13,
        ..Default::default()
    };
    assert_eq!(report.counts, [to_backend.counts(), to_client.counts()]);
}

#[tokio::test(start_paused = true)]
async fn a_client_half_close_reaches_the_backend_as_eof_after_every_byte() {
    let mut h = start(Setup::default()).await;
    let data = masked(BINARY, &[0x5Au8; 1000]);
    let cc = client_close(1000);
    h.client.write_all(&[&data[..], &cc].concat()).await.unwrap();
    // The client is done sending; it keeps reading for the backend's close.
    h.client.shutdown().await.unwrap();

    assert_eq!(read_to_eof(&mut h.backend).await, [&data[..], &cc].concat(), "every byte, then EOF");
    let bc = backend_close(1000);
    h.backend.write_all(&bc).await.unwrap();
    assert_eq!(read_n(&mut h.client, bc.len()).await, bc, "the backend's close still reaches the client");
    h.backend.shutdown().await.unwrap();
    expect_eof(&mut h.client).await;

    let (report, _, took) = h.finish().await;
    assert!(took < LINGER, "{took:?}");
    assert_eq!(ending(&report), (Outcome::Completed, Party::Client, Some(1000), true));
    let to_backend = Expect {
        binary: 1,
        closes: 1,
        payload: 1000 + 2,
        wire: (data.len() + cc.len()) as u64,
        largest: 1000,
        ..Default::default()
    };
    let to_client = Expect { closes: 1, payload: 2, wire: bc.len() as u64, ..Default::default() };
    assert_eq!(report.counts, [to_backend.counts(), to_client.counts()]);
}

/// The backend sends a frame, then vanishes without a close frame; the client stays silent.
async fn backend_vanishes(moved: Option<watch::Receiver<bool>>, expected: Close) {
    let mut h = start(Setup { moved, ..Default::default() }).await;
    let c1 = masked(TEXT, b"are you there?");
    h.client.write_all(&c1).await.unwrap();
    assert_eq!(read_n(&mut h.backend, c1.len()).await, c1);
    let b1 = unmasked(TEXT, b"bye");
    h.backend.write_all(&b1).await.unwrap();
    vanish(&mut h.backend);

    // The client gets the backend's last frame, weir's close (unmasked), then EOF.
    let got = read_to_eof(&mut h.client).await;
    assert_eq!(got, [b1.clone(), gateway_close_to_client(expected)].concat());
    // The client never answers: the relay gives it `LINGER` from the backend's end.
    let (report, _, took) = h.finish().await;
    assert!(near(took, LINGER), "ended by the linger: {took:?}");
    assert_eq!(ending(&report), (Outcome::BackendGone, Party::Backend, Some(expected.code()), false));
    assert_eq!(report.violation, None);
    let to_backend = Expect { text: 1, payload: 14, wire: c1.len() as u64, largest: 14, ..Default::default() };
    // weir's close is not relayed traffic.
    let to_client = Expect { text: 1, payload: 3, wire: b1.len() as u64, largest: 3, ..Default::default() };
    assert_eq!(report.counts, [to_backend.counts(), to_client.counts()]);
}

#[tokio::test(start_paused = true)]
async fn a_vanished_backend_gets_its_client_1011() {
    assert_eq!(Close::BackendGone.code(), 1011);
    backend_vanishes(None, Close::BackendGone).await;
}

#[tokio::test(start_paused = true)]
async fn a_vanished_object_host_gets_its_client_1012() {
    assert_eq!(Close::ObjectMoved.code(), 1012);
    let (moved, moved_rx) = watch::channel(false);
    backend_vanishes(Some(moved_rx), Close::ObjectMoved).await;
    drop(moved);
}

#[tokio::test(start_paused = true)]
async fn a_vanished_client_gets_its_backend_a_masked_1001() {
    let mut h = start(Setup::default()).await;
    let c1 = masked(BINARY, &[1u8, 2, 3, 4]);
    h.client.write_all(&c1).await.unwrap();
    vanish(&mut h.client);

    let got = read_to_eof(&mut h.backend).await;
    assert_eq!(&got[..c1.len()], &c1[..], "the client's last frame first");
    assert_eq!(masked_close_code(&got[c1.len()..]), Close::ClientGone.code());
    assert_eq!(Close::ClientGone.code(), 1001);
    // The backend answers and ends; the answer has nowhere to go.
    let bc = backend_close(1001);
    h.backend.write_all(&bc).await.unwrap();
    h.backend.shutdown().await.unwrap();

    let (report, _, took) = h.finish().await;
    assert!(took < LINGER, "{took:?}");
    assert_eq!(ending(&report), (Outcome::ClientGone, Party::Client, Some(1001), false));
    // weir's close is not counted toward the backend; the backend's answer is what it sent.
    let to_backend = Expect { binary: 1, payload: 4, wire: c1.len() as u64, largest: 4, ..Default::default() };
    let to_client = Expect { closes: 1, payload: 2, wire: bc.len() as u64, ..Default::default() };
    assert_eq!(report.counts, [to_backend.counts(), to_client.counts()]);
}

#[tokio::test(start_paused = true)]
async fn a_protocol_violation_forwards_the_valid_prefix_then_closes_both_sides_with_1002() {
    let mut h = start(Setup::default()).await;
    let b1 = unmasked(TEXT, b"welcome");
    h.backend.write_all(&b1).await.unwrap();
    assert_eq!(read_n(&mut h.client, b1.len()).await, b1);

    let good = masked(TEXT, b"fine");
    let bad = unmasked(TEXT, b"not masked");
    let after = masked(TEXT, b"never forwarded");
    h.client.write_all(&[&good[..], &bad, &after].concat()).await.unwrap();

    let got = read_to_eof(&mut h.backend).await;
    assert_eq!(&got[..good.len()], &good[..], "the valid prefix is forwarded");
    assert_eq!(masked_close_code(&got[good.len()..]), 1002, "then a masked 1002, then EOF");
    // The backend never answers: after `LINGER` the client gets weir's 1002 too.
    assert_eq!(read_to_eof(&mut h.client).await, gateway_close_to_client(Close::ProtocolError));

    let (report, _, took) = h.finish().await;
    assert!(took >= LINGER && took < 2 * LINGER, "{took:?}");
    assert_eq!(ending(&report), (Outcome::ProtocolError, Party::Gateway, Some(1002), false));
    assert_eq!(report.violation, Some((Direction::ClientToBackend, Violation::UnmaskedClientFrame)));
    let to_backend = Expect { text: 1, payload: 4, wire: good.len() as u64, largest: 4, ..Default::default() };
    let to_client = Expect { text: 1, payload: 7, wire: b1.len() as u64, largest: 7, ..Default::default() };
    assert_eq!(report.counts, [to_backend.counts(), to_client.counts()]);
}

#[tokio::test(start_paused = true)]
async fn a_violation_in_a_header_split_across_reads_gets_no_close_inside_the_frame() {
    let mut h = start(Setup::default()).await;
    let good = unmasked(BINARY, &[3u8; 10]);
    // A masked server frame: its 6-byte header arrives in two reads, and the first 3 bytes are
    // forwarded before the relay can know it is bad.
    let bad = masked(BINARY, b"masked by a server");
    h.backend.write_all(&[&good[..], &bad[..3]].concat()).await.unwrap();
    assert_eq!(read_n(&mut h.client, good.len() + 3).await, [&good[..], &bad[..3]].concat());
    h.backend.write_all(&bad[3..6]).await.unwrap();

    // The client has seen part of a header: a close frame now would be read as the rest of it,
    // so it gets EOF only. The backend (at a boundary) gets a masked 1002 once the client had
    // `LINGER` to answer what the backend sent before.
    expect_eof(&mut h.client).await;
    assert_eq!(masked_close_code(&read_to_eof(&mut h.backend).await), 1002);
    let (report, _, took) = h.finish().await;
    assert!(took < 2 * LINGER, "{took:?}");
    assert_eq!(ending(&report), (Outcome::ProtocolError, Party::Gateway, Some(1002), false));
    assert_eq!(report.violation, Some((Direction::BackendToClient, Violation::MaskedServerFrame)));
    let to_client = Expect { binary: 1, payload: 10, wire: good.len() as u64 + 3, largest: 10, ..Default::default() };
    assert_eq!(report.counts, [DirectionCounts::default(), to_client.counts()]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_at_a_frame_boundary_closes_both_sides_with_1001_after_the_grace() {
    let mut h = start(Setup::default()).await;
    let c1 = masked(TEXT, b"before");
    h.client.write_all(&c1).await.unwrap();
    assert_eq!(read_n(&mut h.backend, c1.len()).await, c1);

    begin_shutdown(&h.shutdown);
    let asked = Instant::now();
    // During the grace the connection still works.
    let b1 = unmasked(TEXT, b"still here");
    h.backend.write_all(&b1).await.unwrap();
    assert_eq!(read_n(&mut h.client, b1.len()).await, b1);

    let shut = gateway_close_to_client(Close::Shutdown);
    assert_eq!(read_to_eof(&mut h.client).await, shut);
    assert!(near(asked.elapsed(), GRACE), "the close comes when the grace is over: {:?}", asked.elapsed());
    assert_eq!(masked_close_code(&read_to_eof(&mut h.backend).await), 1001);

    let (report, _, took) = h.finish().await;
    assert!(took < GRACE + LINGER, "{took:?}");
    assert_eq!(ending(&report), (Outcome::Shutdown, Party::Gateway, Some(1001), false));
    let to_backend = Expect { text: 1, payload: 6, wire: c1.len() as u64, largest: 6, ..Default::default() };
    let to_client = Expect { text: 1, payload: 10, wire: b1.len() as u64, largest: 10, ..Default::default() };
    assert_eq!(report.counts, [to_backend.counts(), to_client.counts()]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_never_puts_a_close_frame_inside_a_frame() {
    let mut h = start(Setup::default()).await;
    // A 10000-byte frame of which the client sends the header and 100 payload bytes.
    let big = masked(BINARY, &[0xC3u8; 10_000]);
    let sent = 8 + 100;
    h.client.write_all(&big[..sent]).await.unwrap();
    assert_eq!(read_n(&mut h.backend, sent).await, &big[..sent]);

    begin_shutdown(&h.shutdown);
    let asked = Instant::now();
    // The backend → client direction is at a boundary: the client gets 1001 when the grace is
    // over.
    assert_eq!(read_to_eof(&mut h.client).await, gateway_close_to_client(Close::Shutdown));
    assert!(near(asked.elapsed(), GRACE), "{:?}", asked.elapsed());
    // The client → backend direction is inside a frame: the backend gets no close (it would be
    // read as payload), only EOF.
    expect_eof(&mut h.backend).await;

    let (report, _, took) = h.finish().await;
    assert!(took < GRACE + LINGER, "{took:?}");
    assert_eq!(ending(&report), (Outcome::Shutdown, Party::Gateway, Some(1001), false));
    // The message is counted at its FIN header; its payload as it went by.
    let to_backend = Expect { binary: 1, payload: 100, wire: sent as u64, largest: 10_000, ..Default::default() };
    assert_eq!(report.counts, [to_backend.counts(), DirectionCounts::default()]);
}

#[tokio::test(start_paused = true)]
async fn a_relay_started_during_shutdown_closes_after_the_grace() {
    let (client, relay_client) = tokio::io::duplex(1024);
    let (backend, relay_backend) = tokio::io::duplex(1024);
    let seen = Seen::default();
    // weir is shutting down already when the relay starts.
    let shutdown = ShutdownFlag::new(Mutex::new((true, None)));
    let probe = Probe { seen: seen.clone(), pushes: Pushes::default(), shutdown: shutdown.clone() };
    let relay =
        Relay::new([relay_client, relay_backend], [CLIENT_POLICY, SERVER_POLICY], ScanLimits::NONE, [&[], &[]], probe);
    let started = Instant::now();
    let relay = tokio::spawn(relay.run(GRACE, None));
    let mut h = Harness { client, backend, shutdown, seen, pushes: Pushes::default(), relay, started };

    assert_eq!(read_to_eof(&mut h.client).await, gateway_close_to_client(Close::Shutdown));
    assert!(near(h.started.elapsed(), GRACE), "{:?}", h.started.elapsed());
    assert_eq!(masked_close_code(&read_to_eof(&mut h.backend).await), 1001);
    let (report, _, _) = h.finish().await;
    assert_eq!(ending(&report), (Outcome::Shutdown, Party::Gateway, Some(1001), false));
    assert_eq!(report.counts, [DirectionCounts::default(); 2]);
}

#[tokio::test(start_paused = true)]
async fn a_slow_backend_stops_the_relay_reading_the_client() {
    const CLIENT_BUF: usize = 8 * 1024;
    const BACKEND_BUF: usize = 1024;
    let mut h = start(Setup { bufs: [CLIENT_BUF, BACKEND_BUF], ..Default::default() }).await;
    let frames: Vec<Vec<u8>> =
        (0..40u32).map(|i| masked(BINARY, &(0..10_000u32).map(|j| (i * 31 + j) as u8).collect::<Vec<_>>())).collect();
    let wire = frames.concat();
    assert!(wire.len() > 400_000);

    // The backend reads nothing: the client can write only until the relay stops reading it.
    let mut off = 0;
    while let Ok(written) = timeout(Duration::from_secs(1), h.client.write(&wire[off..])).await {
        let n = written.unwrap();
        assert!(n > 0);
        off += n;
        assert!(off < wire.len(), "the relay took all {off} bytes without the backend reading any");
    }
    let read = h.seen.lock().unwrap().last().map(|[c, _]| c.wire_bytes).unwrap_or(0) as usize;
    assert!(read <= off, "the relay read {read} bytes of {off} written");
    assert!(off - read <= CLIENT_BUF, "what the relay did not read is in the client's pipe");
    assert!(read <= SCRATCH_SIZE + BACKEND_BUF, "the relay holds at most one read: read {read}");
    assert!(off <= CLIENT_BUF + SCRATCH_SIZE + BACKEND_BUF, "the client wrote {off} bytes");

    // The other direction is not held up by this one.
    let b1 = unmasked(TEXT, b"meanwhile");
    h.backend.write_all(&b1).await.unwrap();
    assert_eq!(read_n(&mut h.client, b1.len()).await, b1);

    // Now the backend reads: everything arrives, intact and in order.
    let (wrote, got) = timeout(WAIT, async {
        tokio::join!(h.client.write_all(&wire[off..]), async {
            let mut got = vec![0u8; wire.len()];
            h.backend.read_exact(&mut got).await.map(|_| got)
        })
    })
    .await
    .expect("the relay did not resume");
    wrote.unwrap();
    assert!(got.unwrap() == wire, "the backend received other bytes than the client sent");

    let (cc, bc) = close_then_backend_ends(&mut h).await;
    h.client.shutdown().await.unwrap();
    expect_eof(&mut h.backend).await;

    let (report, _, _) = h.finish().await;
    assert_eq!(ending(&report), (Outcome::Completed, Party::Client, Some(1000), true));
    let to_backend = Expect {
        binary: 40,
        closes: 1,
        payload: 400_000 + 2,
        wire: (wire.len() + cc.len()) as u64,
        largest: 10_000,
        ..Default::default()
    };
    let to_client = Expect {
        text: 1,
        closes: 1,
        payload: 9 + 2,
        wire: (b1.len() + bc.len()) as u64,
        largest: 9,
        ..Default::default()
    };
    assert_eq!(report.counts, [to_backend.counts(), to_client.counts()]);
}

#[tokio::test(start_paused = true)]
async fn a_moved_object_closes_both_sides_with_1012_and_waits_for_the_host() {
    let (moved, moved_rx) = watch::channel(false);
    let mut h = start(Setup { moved: Some(moved_rx), ..Default::default() }).await;
    let c1 = masked(TEXT, b"hi");
    h.client.write_all(&c1).await.unwrap();
    assert_eq!(read_n(&mut h.backend, c1.len()).await, c1);
    let b1 = unmasked(TEXT, b"yo");
    h.backend.write_all(&b1).await.unwrap();
    assert_eq!(read_n(&mut h.client, b1.len()).await, b1);

    moved.send(true).unwrap();
    let moved_at = Instant::now();
    let to_client = gateway_close_to_client(Close::ObjectMoved);
    assert_eq!(read_n(&mut h.client, to_client.len()).await, to_client);
    assert_eq!(masked_close_code(&read_to_eof(&mut h.backend).await), 1012, "the host gets a masked 1012, then EOF");

    // The host has not answered: the relay is still reading it, so the client's stream stays open.
    let mut byte = [0u8; 1];
    assert!(
        timeout(LINGER / 2, h.client.read(&mut byte)).await.is_err(),
        "the client got EOF before the host answered"
    );
    assert!(!h.relay.is_finished());

    let bc = backend_close(1012);
    h.backend.write_all(&bc).await.unwrap();
    expect_eof(&mut h.client).await;
    h.backend.shutdown().await.unwrap();

    let (report, _, _) = h.finish().await;
    assert!(moved_at.elapsed() < LINGER, "the relay ended when the host answered: {:?}", moved_at.elapsed());
    assert_eq!(ending(&report), (Outcome::Moved, Party::Gateway, Some(1012), false));
    assert_eq!(report.violation, None);
    let to_backend = Expect { text: 1, payload: 2, wire: c1.len() as u64, largest: 2, ..Default::default() };
    // The host's answer is read, not forwarded: it is not counted as relayed.
    let to_host = Expect { text: 1, payload: 2, wire: b1.len() as u64, largest: 2, ..Default::default() };
    assert_eq!(report.counts, [to_backend.counts(), to_host.counts()]);
}

/// Regression (fuzz/regressions/relay/moved-host-eof-1012-mid-frame): the object moves while the
/// host's frame to the client is half sent, so no 1012 can go to the client; the host's later
/// bytes are read and dropped, and when it ends weir must not put a close frame into the
/// client's unfinished frame: the client's stream just ends.
#[tokio::test(start_paused = true)]
async fn a_move_in_the_middle_of_a_frame_never_puts_a_close_inside_it() {
    let (moved, moved_rx) = watch::channel(false);
    let mut h = start(Setup { moved: Some(moved_rx), ..Default::default() }).await;
    let frame = unmasked(BINARY, b"0123456789");
    let (head, _rest) = frame.split_at(5);
    h.backend.write_all(head).await.unwrap();
    assert_eq!(read_n(&mut h.client, head.len()).await, head);
    moved.send(true).unwrap();
    assert_eq!(masked_close_code(&read_to_eof(&mut h.backend).await), 1012, "the host gets its 1012");
    // The host finishes its frame and goes away without answering.
    h.backend.write_all(&frame[5..]).await.unwrap();
    vanish(&mut h.backend);
    let after = read_to_eof(&mut h.client).await;
    assert!(after.is_empty(), "nothing after the half frame, no close inside it: {after:02x?}");
    let (report, _, _) = h.finish().await;
    assert_eq!(report.outcome, Outcome::Moved);
}

#[tokio::test(start_paused = true)]
async fn a_moved_host_is_read_but_nothing_more_is_forwarded() {
    let (moved, moved_rx) = watch::channel(false);
    let mut h = start(Setup { moved: Some(moved_rx), ..Default::default() }).await;
    moved.send(true).unwrap();
    let to_client = gateway_close_to_client(Close::ObjectMoved);
    assert_eq!(read_n(&mut h.client, to_client.len()).await, to_client);
    assert_eq!(masked_close_code(&read_to_eof(&mut h.backend).await), 1012);

    // The host still sends a message, then answers the close.
    let late = unmasked(TEXT, b"late message");
    h.backend.write_all(&[late, backend_close(1000)].concat()).await.unwrap();
    // The client gets neither: only EOF.
    expect_eof(&mut h.client).await;
    let (report, _, took) = h.finish().await;
    assert!(took < LINGER, "ended when the host answered: {took:?}");
    assert_eq!(ending(&report), (Outcome::Moved, Party::Gateway, Some(1012), false));
    assert_eq!(report.violation, None);
    assert_eq!(report.counts, [DirectionCounts::default(); 2], "nothing was relayed either way");
}

#[tokio::test(start_paused = true)]
async fn a_host_that_never_answers_a_move_is_given_up_after_the_linger() {
    let (moved, moved_rx) = watch::channel(false);
    let mut h = start(Setup { moved: Some(moved_rx), ..Default::default() }).await;
    moved.send(true).unwrap();
    let to_client = gateway_close_to_client(Close::ObjectMoved);
    assert_eq!(read_n(&mut h.client, to_client.len()).await, to_client);
    assert_eq!(masked_close_code(&read_to_eof(&mut h.backend).await), 1012);
    let (report, _, took) = h.finish().await;
    assert!(near(took, LINGER), "ended by the linger: {took:?}");
    assert_eq!(ending(&report), (Outcome::Moved, Party::Gateway, Some(1012), false));
}

// ---- suspected bugs -------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn data_after_a_close_is_dropped_and_the_peer_answers_the_close() {
    // Issue 10, transparency 1: a conformant endpoint ignores data after a close and answers the
    // close; through weir the sender gets that answer (1000), byte for byte, not weir's 1002.
    let mut h = start(Setup::default()).await;
    let cc = client_close(1000);
    let data = masked(TEXT, b"data after close");
    // One write, so the relay reads both frames in one chunk.
    h.client.write_all(&[&cc[..], &data].concat()).await.unwrap();
    assert_eq!(read_n(&mut h.backend, cc.len()).await, cc, "the close, and nothing after it");
    let bc = backend_close(1000);
    h.backend.write_all(&bc).await.unwrap();
    h.backend.shutdown().await.unwrap();
    assert_eq!(read_to_eof(&mut h.client).await, bc, "the backend's own answer");
    h.client.shutdown().await.unwrap();
    expect_eof(&mut h.backend).await;
    let (report, _, took) = h.finish().await;
    assert!(took < LINGER, "{took:?}");
    assert_eq!(report.violation, None, "data after a close is dropped, not a violation");
    assert_eq!(ending(&report), (Outcome::Completed, Party::Client, Some(1000), true));
}

#[tokio::test(start_paused = true)]
async fn a_close_between_fragments_then_the_last_fragment_is_answered_by_the_peer() {
    // Issue 10, transparency 2: a first fragment, a close (legal between fragments), then the
    // last fragment: the last fragment is dropped and the backend's answer reaches the client.
    let mut h = start(Setup::default()).await;
    let first = masked(0x01, b"half a ");
    let cc = client_close(1000);
    let last = masked(0x80, b"message");
    h.client.write_all(&[&first[..], &cc, &last].concat()).await.unwrap();
    assert_eq!(read_n(&mut h.backend, first.len() + cc.len()).await, [&first[..], &cc].concat());
    let bc = backend_close(1000);
    h.backend.write_all(&bc).await.unwrap();
    h.backend.shutdown().await.unwrap();
    assert_eq!(read_to_eof(&mut h.client).await, bc);
    h.client.shutdown().await.unwrap();
    expect_eof(&mut h.backend).await;
    let (report, _, _) = h.finish().await;
    assert_eq!((report.violation, report.outcome), (None, Outcome::Completed));
}

#[tokio::test(start_paused = true)]
async fn the_peers_answer_to_valid_frames_reaches_the_violator_before_any_close() {
    // Issue 10, transparency 3: a valid text, then a frame with RSV2 (no extension), then a ping.
    // Directly, the client would get the echo of its text, then the server's 1002; through weir
    // too: the backend gets the text and weir's 1002, what it sends back before its answer to
    // that close (the echo) reaches the client, and then weir's 1002 in place of the answer (which
    // answered weir, not the client: here 1000, as Autobahn's server answers any close).
    let mut h = start(Setup::default()).await;
    let good = masked(TEXT, b"echo me");
    let rsv2 = masked(TEXT | 0x20, b"bad bits");
    let ping = masked(0x89, b"p");
    h.client.write_all(&[&good[..], &rsv2, &ping].concat()).await.unwrap();
    let got = read_n(&mut h.backend, good.len() + 8).await;
    assert_eq!(&got[..good.len()], &good[..]);
    assert_eq!(masked_close_code(&got[good.len()..]), 1002, "the backend never sees the bad frame or the ping");
    // The backend is not shut down while it owes its answer (a peer that reads a FIN may drop
    // what it was about to send).
    let mut byte = [0u8; 1];
    let read = timeout(Duration::from_millis(100), h.backend.read(&mut byte)).await;
    assert!(read.is_err(), "no FIN toward the backend while it owes its answer: {read:?}");
    let echo = unmasked(TEXT, b"echo me");
    h.backend.write_all(&echo).await.unwrap();
    assert_eq!(read_n(&mut h.client, echo.len()).await, echo, "the echo first");
    let answer = backend_close(1000);
    h.backend.write_all(&answer).await.unwrap();
    expect_eof(&mut h.backend).await;
    h.backend.shutdown().await.unwrap();
    let protocol_error = gateway_close_to_client(Close::ProtocolError);
    assert_eq!(read_to_eof(&mut h.client).await, protocol_error, "then weir's 1002, not the backend's answer");
    let (report, _, took) = h.finish().await;
    assert!(took < LINGER, "{took:?}");
    assert_eq!(report.violation.map(|(d, _)| d), Some(Direction::ClientToBackend));
    assert_eq!(ending(&report), (Outcome::ProtocolError, Party::Gateway, Some(1002), false));
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_ends_instead_of_answering_weirs_close_gets_the_violator_weirs_1002() {
    // Some servers drop the connection on a close they did not expect: the client, which broke
    // the rule, gets weir's 1002 (what a server would send it directly), not the 1011 of a
    // backend gone.
    let mut h = start(Setup::default()).await;
    let bad = unmasked(TEXT, b"not masked");
    h.client.write_all(&bad).await.unwrap();
    assert_eq!(masked_close_code(&read_n(&mut h.backend, 8).await), 1002);
    vanish(&mut h.backend);
    assert_eq!(read_to_eof(&mut h.client).await, gateway_close_to_client(Close::ProtocolError));
    let (report, _, took) = h.finish().await;
    assert!(took < LINGER, "{took:?}");
    assert_eq!(ending(&report), (Outcome::ProtocolError, Party::Gateway, Some(1002), false));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_closed_first_gets_the_end_not_a_close_when_the_backend_vanishes() {
    // Directly, a server that drops the connection instead of answering a close leaves the
    // client its TCP end and no close frame (1006 to its application); through weir the same,
    // not a 1011 that would read as the server's answer.
    let mut h = start(Setup::default()).await;
    let cc = client_close(1000);
    h.client.write_all(&cc).await.unwrap();
    assert_eq!(read_n(&mut h.backend, cc.len()).await, cc);
    vanish(&mut h.backend);
    expect_eof(&mut h.client).await;
    h.client.shutdown().await.unwrap();
    let (report, _, took) = h.finish().await;
    assert!(took < LINGER, "{took:?}");
    assert_eq!(report.close_code, Some(1000), "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn dropped_host_bytes_are_not_counted_as_relayed() {
    let (moved, moved_rx) = watch::channel(false);
    let mut h = start(Setup { moved: Some(moved_rx), ..Default::default() }).await;
    moved.send(true).unwrap();
    let to_client = gateway_close_to_client(Close::ObjectMoved);
    assert_eq!(read_n(&mut h.client, to_client.len()).await, to_client);
    assert_eq!(masked_close_code(&read_to_eof(&mut h.backend).await), 1012);
    h.backend.write_all(&unmasked(BINARY, &[0u8; 5000])).await.unwrap();
    h.backend.write_all(&backend_close(1000)).await.unwrap();
    expect_eof(&mut h.client).await;
    let (report, _, _) = h.finish().await;
    assert_eq!(report.counts[1].binary_messages, 0, "the client never got the 5000-byte message");
    assert_eq!(report.counts[1].payload_bytes, 0, "nothing reached the client but weir's own close");
}

#[tokio::test(start_paused = true)]
async fn a_hosts_answer_to_a_move_is_not_the_first_close() {
    let (moved, moved_rx) = watch::channel(false);
    let mut h = start(Setup { moved: Some(moved_rx), ..Default::default() }).await;
    moved.send(true).unwrap();
    let to_client = gateway_close_to_client(Close::ObjectMoved);
    assert_eq!(read_n(&mut h.client, to_client.len()).await, to_client);
    assert_eq!(masked_close_code(&read_to_eof(&mut h.backend).await), 1012);
    h.backend.write_all(&backend_close(1000)).await.unwrap();
    expect_eof(&mut h.client).await;
    let (report, _, _) = h.finish().await;
    // As when the host never answers (`a_host_that_never_answers_a_move_is_given_up_after_the_linger`).
    assert_eq!(ending(&report), (Outcome::Moved, Party::Gateway, Some(1012), false));
}

// ---- operator pushes --------------------------------------------------------------------------

/// Nothing arrives on `s` for a while (virtual time: only while everything is idle).
async fn nothing_more(s: &mut DuplexStream) {
    let mut byte = [0u8; 1];
    assert!(timeout(Duration::from_secs(1), s.read(&mut byte)).await.is_err(), "unexpected bytes");
}

/// Ends a relay with a clean close handshake started by the client.
async fn close_cleanly(mut h: Harness) -> RelayReport {
    h.client.write_all(&client_close(1000)).await.unwrap();
    let _ = read_n(&mut h.backend, client_close(1000).len()).await;
    h.backend.write_all(&backend_close(1000)).await.unwrap();
    let _ = read_n(&mut h.client, backend_close(1000).len()).await;
    drop(h.client);
    drop(h.backend);
    let (report, _, _) = timeout(WAIT, h.relay).await.expect("the relay did not end").map(|(r, p)| (r, p, ())).unwrap();
    report
}

#[tokio::test(start_paused = true)]
async fn a_push_at_a_message_boundary_reaches_only_the_client_and_is_not_counted_as_relayed() {
    let mut h = start(Setup::default()).await;
    let hello = unmasked(TEXT, b"hello");
    h.backend.write_all(&hello).await.unwrap();
    assert_eq!(read_n(&mut h.client, hello.len()).await, hello);
    let pushed = crate::relay::frame::encode_data_frame(true, b"from weir");
    push(&h.pushes, &pushed);
    assert_eq!(read_n(&mut h.client, pushed.len()).await, pushed, "the push, as one unmasked frame");
    nothing_more(&mut h.backend).await;
    let report = close_cleanly(h).await;
    let b = report.counts[1];
    assert_eq!((b.messages, b.frames, b.wire_bytes), (1, 2, (hello.len() + backend_close(1000).len()) as u64));
}

#[tokio::test(start_paused = true)]
async fn a_push_waits_for_the_end_of_a_fragmented_message() {
    let mut h = start(Setup::default()).await;
    let first = unmasked(0x01, b"part one, ");
    h.backend.write_all(&first).await.unwrap();
    assert_eq!(read_n(&mut h.client, first.len()).await, first);
    let pushed = crate::relay::frame::encode_data_frame(false, &[1, 2, 3]);
    push(&h.pushes, &pushed);
    nothing_more(&mut h.client).await;
    // A control frame inside the message is a frame boundary, not a message boundary.
    let ping = unmasked(0x89, b"p");
    h.backend.write_all(&ping).await.unwrap();
    assert_eq!(read_n(&mut h.client, ping.len()).await, ping);
    nothing_more(&mut h.client).await;
    let last = unmasked(0x80, b"part two");
    h.backend.write_all(&last).await.unwrap();
    let mut expected = last.clone();
    expected.extend_from_slice(&pushed);
    assert_eq!(read_n(&mut h.client, expected.len()).await, expected, "the final fragment, then the push");
    close_cleanly(h).await;
}

#[tokio::test(start_paused = true)]
async fn a_push_never_lands_inside_a_frame_split_across_reads() {
    let mut h = start(Setup::default()).await;
    let big = unmasked(BINARY, &[7u8; 300]);
    h.backend.write_all(&big[..3]).await.unwrap();
    assert_eq!(read_n(&mut h.client, 3).await, &big[..3]);
    let pushed = crate::relay::frame::encode_data_frame(true, b"x");
    push(&h.pushes, &pushed);
    nothing_more(&mut h.client).await;
    h.backend.write_all(&big[3..]).await.unwrap();
    let mut expected = big[3..].to_vec();
    expected.extend_from_slice(&pushed);
    assert_eq!(read_n(&mut h.client, expected.len()).await, expected);
    close_cleanly(h).await;
}

#[tokio::test(start_paused = true)]
async fn no_push_follows_a_close_to_the_client() {
    let mut h = start(Setup::default()).await;
    h.backend.write_all(&backend_close(1000)).await.unwrap();
    assert_eq!(read_n(&mut h.client, backend_close(1000).len()).await, backend_close(1000));
    push(&h.pushes, &crate::relay::frame::encode_data_frame(true, b"late"));
    nothing_more(&mut h.client).await;
    h.client.write_all(&client_close(1000)).await.unwrap();
    let _ = read_n(&mut h.backend, client_close(1000).len()).await;
    drop(h.backend);
    expect_eof(&mut h.client).await;
}

// ---- splice over real sockets ---------------------------------------------------------------

/// A running relay between two real loopback connections, and their far ends.
struct TcpHarness {
    /// The client's end.
    client: tokio::net::TcpStream,
    /// The backend's end.
    backend: tokio::net::TcpStream,
    /// What the observer heard.
    seen: Seen,
    relay: JoinHandle<(RelayReport, Probe)>,
}

async fn start_tcp() -> TcpHarness {
    start_tcp_guarded(None).await
}

/// `start_tcp`, with guards when given.
async fn start_tcp_guarded(guards: Option<Arc<crate::relay::guard::Guards>>) -> TcpHarness {
    let ((client, relay_client), (relay_backend, backend)) = (tcp_pair().await, tcp_pair().await);
    let seen = Seen::default();
    let probe = Probe::new(seen.clone());
    let mut relay =
        Relay::new([relay_client, relay_backend], [CLIENT_POLICY, SERVER_POLICY], ScanLimits::NONE, [&[], &[]], probe);
    if let Some(guards) = &guards {
        relay = relay.with_guards(guards, 0.0);
    }
    let relay = tokio::spawn(relay.run(GRACE, None));
    TcpHarness { client, backend, seen, relay }
}

/// Payload bytes spliced in this process so far (other tests add to it: a lower bound only).
fn spliced() -> u64 {
    crate::relay::splice::STATS.as_ref().unwrap().bytes.get()
}

/// Between plain TCP sockets the rest of a large frame is spliced, in both directions: what
/// follows it (small frames, the close) arrives after it and in order, a reader that takes the
/// bytes in small pieces slows nothing into disorder, the counts are those of the bytes sent, and
/// the splice counter moved. (Real sockets: time is not paused here.)
#[tokio::test]
async fn spliced_frames_keep_their_order_and_every_byte_is_counted() {
    let TcpHarness { mut client, mut backend, seen, relay } = start_tcp().await;
    let before = spliced();

    let big: Vec<u8> = (0..(2u32 << 20)).map(|i| (i * 13 + i / 509) as u8).collect();
    let from_client =
        [masked(BINARY, &big), masked(TEXT, b"after"), masked(BINARY, &big[..300_000]), client_close(1000)].concat();
    let from_backend = [unmasked(BINARY, &big[7..]), unmasked(TEXT, b"then"), backend_close(1000)].concat();
    let to_send = from_client.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&to_send).await.unwrap();
        client
    });
    // The backend reads in 1000-byte pieces, yielding between them.
    let mut got = Vec::new();
    let mut piece = [0u8; 1000];
    while got.len() < from_client.len() {
        let n = timeout(WAIT, backend.read(&mut piece)).await.expect("backend read").unwrap();
        assert!(n > 0, "EOF after {} of {} bytes", got.len(), from_client.len());
        got.extend_from_slice(&piece[..n]);
        tokio::task::yield_now().await;
    }
    assert!(got == from_client, "the backend got other bytes than the client sent");
    let mut client = writer.await.unwrap();
    backend.write_all(&from_backend).await.unwrap();
    backend.shutdown().await.unwrap();
    let mut back = Vec::new();
    timeout(WAIT, client.read_to_end(&mut back)).await.expect("client read").unwrap();
    assert!(back == from_backend, "the client got other bytes than the backend sent");
    client.shutdown().await.unwrap();
    expect_tcp_eof(&mut backend).await;

    let (report, _) = timeout(WAIT, relay).await.expect("the relay did not end").unwrap();
    assert_eq!(ending(&report), (Outcome::Completed, Party::Client, Some(1000), true));
    let to_backend = Expect {
        binary: 2,
        text: 1,
        closes: 1,
        payload: (2 << 20) + 5 + 300_000 + 2,
        wire: from_client.len() as u64,
        largest: 2 << 20,
        ..Default::default()
    };
    let to_client = Expect {
        binary: 1,
        text: 1,
        closes: 1,
        payload: (2 << 20) - 7 + 4 + 2,
        wire: from_backend.len() as u64,
        largest: (2 << 20) - 7,
        ..Default::default()
    };
    assert_eq!(report.counts, [to_backend.counts(), to_client.counts()]);
    assert_eq!(seen.lock().unwrap().last(), Some(&report.counts), "the report carries the observer's sums");
    // Each big frame's rest after the first read (at most SCRATCH_SIZE) went through a pipe.
    let least = 2 * (2 << 20) as u64 - 7 + 300_000 - 3 * SCRATCH_SIZE as u64;
    assert!(spliced() - before >= least, "spliced {} bytes, expected at least {least}", spliced() - before);
}

/// Under a byte rate (`bandwidth`, throttle) a large frame is still spliced, a pipe's worth at
/// once while the bucket holds that much, and the rate holds: 2 MiB at 4 MB/s with a 512 KiB
/// burst take at least the time the bucket needs to refill what the burst did not cover (less
/// the one read the relay may go over by).
#[tokio::test]
async fn a_spliced_frame_keeps_to_its_byte_rate() {
    use crate::relay::guard::{Bucket, Guards, Rate, RateAction};
    let bytes = Bucket { per_second: 4e6, burst: 512.0 * 1024.0 };
    let rate = Rate { messages: None, bytes: Some(bytes), action: RateAction::Throttle };
    let guards = Arc::new(Guards { rates: [Some(rate), None], ..Guards::default() });
    let TcpHarness { mut client, mut backend, relay, .. } = start_tcp_guarded(Some(guards)).await;
    let before = spliced();
    let payload: Vec<u8> = (0..(2u32 << 20)).map(|i| (i * 11 + i / 131) as u8).collect();
    let sent = [masked(BINARY, &payload), client_close(1000)].concat();
    let started = Instant::now();
    let to_send = sent.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&to_send).await.unwrap();
        client
    });
    let mut got = vec![0u8; sent.len()];
    timeout(WAIT, backend.read_exact(&mut got)).await.expect("backend read").unwrap();
    let took = started.elapsed();
    assert!(got == sent, "the backend got other bytes than the client sent");
    let least = (sent.len() as f64 - bytes.burst - SCRATCH_SIZE as f64) / bytes.per_second;
    assert!(took.as_secs_f64() >= least, "2 MiB in {took:?}, under the rate's {least:.3} s");
    let least_spliced = (payload.len() - SCRATCH_SIZE) as u64;
    assert!(
        spliced() - before >= least_spliced,
        "spliced {} bytes, expected at least {least_spliced}",
        spliced() - before
    );
    drop(writer.await.unwrap());
    drop(backend);
    let (report, _) = timeout(WAIT, relay).await.expect("the relay did not end").unwrap();
    assert_eq!(report.counts[0].wire_bytes, sent.len() as u64);
}

/// The next read of `s` is EOF.
async fn expect_tcp_eof(s: &mut tokio::net::TcpStream) {
    let mut rest = Vec::new();
    timeout(WAIT, s.read_to_end(&mut rest)).await.expect("timed out waiting for EOF").unwrap();
    assert_eq!(rest, b"", "expected EOF and no more bytes");
}

/// The future a connection's task holds is the relay and a few words: what `run` waits on besides
/// the sockets is boxed, not inlined (an async fn around `select!` added 1.1 KB here).
#[tokio::test]
async fn the_run_future_is_the_relay_and_a_few_words() {
    let (_a, relay_client) = tokio::io::duplex(64);
    let (_b, relay_backend) = tokio::io::duplex(64);
    let probe = Probe::new(Seen::default());
    let relay =
        Relay::new([relay_client, relay_backend], [CLIENT_POLICY, SERVER_POLICY], ScanLimits::NONE, [&[], &[]], probe);
    let relay_size = std::mem::size_of_val(&relay);
    let run = relay.run(GRACE, None);
    let run_size = std::mem::size_of_val(&run);
    eprintln!("relay {relay_size} B, run future {run_size} B");
    assert!(run_size <= relay_size + 72, "run future {run_size} B for a {relay_size} B relay");
}

/// A client that ends its stream in the middle of a spliced frame: the backend gets every byte
/// the client sent, in order, then the end of the stream (no close frame can follow half a
/// frame); the relay ends as "client gone" and counts exactly the bytes that passed.
#[tokio::test]
async fn a_client_ending_mid_splice_passes_every_byte_and_ends_as_gone() {
    let TcpHarness { mut client, mut backend, relay, .. } = start_tcp().await;
    let before = spliced();

    let payload: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 + i / 263) as u8).collect();
    let whole = masked(BINARY, &payload);
    let sent = &whole[..whole.len() - 600_000];
    let to_send = sent.to_vec();
    let writer = tokio::spawn(async move {
        client.write_all(&to_send).await.unwrap();
        client.shutdown().await.unwrap();
        client
    });
    let mut got = Vec::new();
    timeout(WAIT, backend.read_to_end(&mut got)).await.expect("backend read").unwrap();
    assert!(got == sent, "the backend got {} bytes, other than the {} sent", got.len(), sent.len());
    drop(backend);
    let _client = writer.await.unwrap();

    let (report, _) = timeout(WAIT, relay).await.expect("the relay did not end").unwrap();
    assert_eq!((report.outcome, report.initiator), (Outcome::ClientGone, Party::Client));
    let c = report.counts[0];
    assert_eq!((c.wire_bytes, c.payload_bytes, c.frames), (sent.len() as u64, sent.len() as u64 - 14, 1));
    let least = (sent.len() - 14 - SCRATCH_SIZE) as u64;
    assert!(spliced() - before >= least, "spliced {} bytes, expected at least {least}", spliced() - before);
}

/// A backend that goes away while a frame toward it is being spliced: the pipe's bytes are
/// dropped with it, the client gets 1011 (the stream toward it is at a frame boundary), and the
/// relay ends as "backend gone" without waiting for the rest of the client's frame.
#[tokio::test]
async fn a_backend_gone_mid_splice_gets_the_client_1011() {
    let TcpHarness { client, mut backend, relay, .. } = start_tcp().await;

    let payload = vec![0x5Au8; 8 << 20];
    let frame = masked(BINARY, &payload);
    let (mut client_rx, mut client_tx) = client.into_split();
    // The client writes until the relay stops taking its bytes (an error once weir closes).
    let writer = tokio::spawn(async move {
        let _ = client_tx.write_all(&frame).await;
    });
    let mut first = vec![0u8; 200_000];
    timeout(WAIT, backend.read_exact(&mut first)).await.expect("backend read").unwrap();
    drop(backend);

    let mut back = Vec::new();
    let _ = timeout(WAIT, client_rx.read_to_end(&mut back)).await.expect("the client's stream did not end");
    assert_eq!(back, gateway_close_to_client(Close::BackendGone), "the client gets 1011 and the end");
    let (report, _) = timeout(WAIT, relay).await.expect("the relay did not end").unwrap();
    assert_eq!((report.outcome, report.initiator), (Outcome::BackendGone, Party::Backend));
    writer.abort();
}

// ---- rates are charged per read -------------------------------------------------------------

/// A stream that hands out one queued chunk per read, at once, as a socket does when another
/// thread's I/O driver marks it ready again while the relay is still polling it; it takes every
/// write.
struct Trickle {
    chunks: std::collections::VecDeque<Vec<u8>>,
    written: Arc<Mutex<Vec<u8>>>,
}

impl Trickle {
    fn new(chunks: impl IntoIterator<Item = Vec<u8>>) -> Trickle {
        Trickle { chunks: chunks.into_iter().collect(), written: Arc::default() }
    }
}

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.chunks.pop_front() {
            Some(chunk) => {
                buf.put_slice(&chunk);
                std::task::Poll::Ready(Ok(()))
            }
            None => std::task::Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for Trickle {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        bytes: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.written.lock().unwrap().extend_from_slice(bytes);
        std::task::Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl crate::relay::splice::Splice for Trickle {}

#[tokio::test]
async fn a_throttled_sender_is_charged_per_read_not_per_poll() {
    use crate::relay::guard::{Bucket, Guards, Rate, RateAction};
    // Ten messages, each its own read, all ready at once: one poll of the relay could read them
    // all. Burst 2 at 1 per second: the first two pass, the third is read (it is what goes over)
    // and pauses the client; the rest wait.
    let client = Trickle::new((0..10).map(|i| masked(TEXT, format!("m{i}").as_bytes())));
    let backend = Trickle::new([]);
    let forwarded = backend.written.clone();
    let probe = Probe::new(Seen::default());
    let rate =
        Rate { messages: Some(Bucket { per_second: 1.0, burst: 2.0 }), bytes: None, action: RateAction::Throttle };
    let guards = Arc::new(Guards { rates: [Some(rate), None], ..Guards::default() });
    let relay = Relay::new([client, backend], [CLIENT_POLICY, SERVER_POLICY], ScanLimits::NONE, [&[], &[]], probe)
        .with_guards(&guards, 0.0);
    let mut run = std::pin::pin!(relay.run(GRACE, None));
    assert!(futures_util::poll!(run.as_mut()).is_pending());
    let sent = forwarded.lock().unwrap().clone();
    let one = masked(TEXT, b"m0").len();
    assert_eq!(sent.len() / one, 3, "burst 2 and the read that went over: {sent:02X?}");
}

/// A half holds its backlog (one box for what waits for `dst` and the splice pipe) only while
/// something waits: made by the first queued bytes, kept while `dst` pushes back, freed once
/// everything is written, so an idle half holds one null pointer.
#[tokio::test]
async fn a_half_holds_its_backlog_only_while_something_waits() {
    use std::task::{Context, Poll};
    let mut h = super::Half::new(CLIENT_POLICY);
    assert!(h.backlog.is_none());
    h.keep(b"relayed");
    assert!(h.inject_ping(b"hi", false));
    assert!(h.backlog.is_some());
    // Room for 4 bytes: `dst` pushes back, and what is left stays.
    let (mut dst, mut peer) = tokio::io::duplex(4);
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut progress = false;
    assert_eq!(h.drain(&mut dst, &mut cx, &mut progress), Poll::Pending);
    assert!(progress && h.backlog.is_some());
    let mut got = Vec::new();
    while h.drain(&mut dst, &mut cx, &mut progress).is_pending() {
        let mut buf = [0u8; 4];
        let n = peer.read(&mut buf).await.unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert!(h.backlog.is_none(), "freed once all is written");
    drop(dst);
    peer.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, [&b"relayed"[..], &frame(0x89, None, b"hi")].concat());
}
