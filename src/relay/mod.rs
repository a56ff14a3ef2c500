//! The relay: everything that happens to a WebSocket connection after the 101.
//!
//! - `frame.rs`: sans-io RFC 6455 frame-header parser and close-frame encoder (hot path).
//! - `scanner.rs`: `FrameScanner`, fed chunks split anywhere; counts and validates one direction
//!   without touching payload bytes (hot path).
//! - `tap.rs`: `Tap`, the scanners around a stream weir terminates itself (built-in objects;
//!   hot path).
//! - `pump.rs`: `Relay`, one state machine that drives both directions of a connection, forwards
//!   bytes from the buffer they were read into, applies backpressure, and injects close frames at
//!   frame boundaries (hot path per chunk; warm path at the ends).
//!
//! Nothing here may panic on bytes from the network: malformed input becomes a `Violation`, a
//! close frame, a metric and a log line.

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod frame;
pub mod pump;
pub mod scanner;
pub mod tap;

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

    /// 0 for client→backend, 1 for backend→client.
    pub fn index(self) -> usize {
        self as usize
    }
}
