//! The relay: everything that happens to a WebSocket connection after the 101.
//!
//! - `frame.rs`: sans-io RFC 6455 frame-header parser and close-frame encoder (hot path).
//! - `scanner.rs`: `Scan`, fed chunks split anywhere; counts (into the counters it is given) and
//!   validates one direction without touching payload bytes (hot path); `FrameScanner` is a scan
//!   with counters of its own.
//! - `pump.rs`: `Relay`, one state machine that drives both directions of a connection, forwards
//!   bytes from the buffer they were read into, applies backpressure, and injects close frames at
//!   frame boundaries (hot path per chunk; warm path at the ends).
//! - `tap.rs`: `Tap`, the scanners around a stream weir terminates itself (built-in objects;
//!   hot path).
//! - `splice.rs`: `Pipe`, the bounded pipe pool, and the `Splice` trait: the rest of a large
//!   frame moves socket → pipe → socket between plain TCP streams (hot path per readiness).
//! - `report.rs`: `RelayReport` and the one function that decides how a connection ended (warm).
//! - `close.rs`: `Close`, every close frame weir sends itself (code, reason, label).
//! - `guard.rs`: `Guards` (idle, lifetime, close timeout, keepalive, rates) and `Watch`, one
//!   connection's deadlines, consulted once per wakeup (warm path).
//! - `timers.rs`: `Timers`, the process's one deadline facility (a `wheel.rs` hierarchical
//!   timing wheel driven by one thread); a connection holds at most one entry, its `Alarm`.
//! - `mono.rs`: instants in 8 bytes (nanoseconds after the process's one monotonic epoch), the
//!   time base of the timers, the guards and, above the relay, the live set and active clocks.
//!
//! The relay knows no one: it imports nothing from the rest of weir (std, tokio and the like
//! only). What it tells the outside goes through the `Observer` trait defined here and
//! implemented above it (metrics, the live set, object accounting); it runs over any
//! `AsyncRead + AsyncWrite` stream, so its state machine is tested over in-memory pipes.
//!
//! Nothing here may panic on bytes from the network: malformed input becomes a `Violation`, a
//! close frame, a metric and a log line.

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod close;
pub mod frame;
pub mod guard;
pub mod mono;
pub mod pump;
pub mod report;
pub mod scanner;
pub mod splice;
pub mod tap;
pub mod timers;
pub mod wheel;

use scanner::DirectionCounts;

/// An order to close one connection (an operator's kick, a drain): the close frame each side
/// gets and the cause recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// Close code and reason text to the client (a valid code; the reason at most 123 bytes).
    pub client: (u16, String),
    /// Close code and reason text to the backend.
    pub backend: (u16, String),
    /// Why, for the record and `weir_closes_total`.
    pub cause: report::Cause,
}

/// One direction of a relayed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Bytes the client sent, going to the backend.
    ClientToBackend,
    /// Bytes the backend sent, going to the client.
    BackendToClient,
}

impl Direction {
    /// Both directions, in index order.
    pub const BOTH: [Direction; 2] = [Direction::ClientToBackend, Direction::BackendToClient];

    /// Label value (`client_to_backend` / `backend_to_client`).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ClientToBackend => "client_to_backend",
            Direction::BackendToClient => "backend_to_client",
        }
    }

    /// The other direction.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::ClientToBackend => Direction::BackendToClient,
            Direction::BackendToClient => Direction::ClientToBackend,
        }
    }

    /// 0 for client→backend, 1 for backend→client.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What the relay (or a tap) tells the rest of weir about one connection while it runs.
///
/// Implemented above the relay, once per connection. `progress` is on the hot path: it runs once
/// per wakeup of the connection that moved bytes (not per chunk), with what the scanners counted
/// in that wakeup; the observer keeps the sums (the relay keeps no counters of its own).
pub trait Observer {
    /// What the scanners counted since the last call (`[client → backend, backend → client]`),
    /// after a wakeup that moved bytes: add it to the connection's counts (`DirectionCounts::add`).
    /// `at` is the wakeup's instant (the relay's one clock read for it): a clock an
    /// implementation keeps (active time) moves to it, with no clock read of its own.
    fn progress(&mut self, fresh: [&DirectionCounts; 2], at: std::time::Instant);

    /// The connection's counts: the sum of every `progress`. The relay's report carries them.
    fn totals(&self) -> [DirectionCounts; 2];

    /// An order to close the connection (a kick, a drain), once it is given: the relay then
    /// closes it as `Stop` says. Polled once per wakeup until the connection is ending: an
    /// implementation registers `cx`'s waker and wakes it when an order comes (cheap when none
    /// is pending).
    fn poll_stop(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Stop> {
        std::task::Poll::Pending
    }

    /// Ready once weir began to shut down: the relay then gives the connection its grace period
    /// and closes it with `Close::Shutdown`. Polled once per wakeup until then: an
    /// implementation registers `cx`'s waker and wakes it when shutdown begins (cheap before).
    fn poll_shutdown(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::task::Poll::Pending
    }

    /// Messages weir itself sends the client (an operator's push), as whole encoded frames
    /// back to back, once some are waiting. The relay asks only when the stream toward the
    /// client is at a message boundary (never inside a frame or a fragmented message) and it
    /// sends no close yet; an implementation registers `cx`'s waker and wakes it when a push
    /// comes (cheap when none is waiting). The relay counts none of it as relayed traffic.
    fn poll_push(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Vec<u8>> {
        std::task::Poll::Pending
    }

    /// weir's keepalive ping to `side` (client or backend) was answered after `rtt`.
    fn rtt(&mut self, _side: report::Party, _rtt: std::time::Duration) {}
}
