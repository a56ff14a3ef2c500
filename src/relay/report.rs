//! What a finished connection reports: `RelayReport`, and the one function that turns what
//! happened at its end into an outcome, an initiator and a close code, shared by the relay
//! (`pump.rs`) and the tap around built-in objects (`tap.rs`). Warm path (once per connection),
//! pure.

use super::frame::Violation;
use super::scanner::{CloseInfo, DirectionCounts};
use super::Direction;

/// Who started the end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// The client sent the first close frame, or went away first.
    Client,
    /// The backend (or built-in object) sent the first close frame, or went away first.
    Backend,
    /// weir closed the connection (protocol violation, shutdown, object moved).
    Gateway,
}

impl Party {
    /// Its place in `ALL` (metric handles resolved per route are kept in that order).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every party, for metrics set up at startup.
    pub const ALL: [Party; 3] = [Party::Client, Party::Backend, Party::Gateway];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Party::Client => "client",
            Party::Backend => "backend",
            Party::Gateway => "gateway",
        }
    }

    /// The party whose bytes travel in direction `d`.
    pub fn sender_of(d: Direction) -> Party {
        match d {
            Direction::ClientToBackend => Party::Client,
            Direction::BackendToClient => Party::Backend,
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides sent close frames.
    Completed,
    /// The client went away without completing the close handshake.
    ClientGone,
    /// The backend went away without completing the close handshake.
    BackendGone,
    /// A side broke RFC 6455 and weir closed the connection.
    ProtocolError,
    /// weir closed the connection because it was shutting down.
    Shutdown,
    /// weir closed the connection with 1012 because its object moved to another host.
    Moved,
    /// weir closed it on its own: a guard (idle, lifetime, keepalive, close timeout, rate), a
    /// quota or an operator's kick; the `cause` says which.
    GatewayClosed,
}

impl Outcome {
    /// Its place in `ALL` (metric handles resolved per route are kept in that order).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every outcome, for metrics set up at startup.
    pub const ALL: [Outcome; 7] = [
        Outcome::Completed,
        Outcome::ClientGone,
        Outcome::BackendGone,
        Outcome::ProtocolError,
        Outcome::Shutdown,
        Outcome::Moved,
        Outcome::GatewayClosed,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::ClientGone => "client_gone",
            Outcome::BackendGone => "backend_gone",
            Outcome::ProtocolError => "protocol_error",
            Outcome::Shutdown => "shutdown",
            Outcome::Moved => "moved",
            Outcome::GatewayClosed => "gateway_closed",
        }
    }
}

/// Why a connection ended: the one `cause` every record and `weir_closes_total` carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The client sent the first close frame.
    ClientClose,
    /// The backend (or built-in object) sent the first close frame.
    BackendClose,
    /// The client went away without a close frame.
    ClientGone,
    /// The backend went away without a close frame.
    BackendGone,
    /// A side broke RFC 6455 and weir closed the connection.
    ProtocolError,
    /// A frame or message over the limit (`limits.max_frame`/`max_message`, or a built-in
    /// object's own; `1009`).
    MessageTooBig,
    /// weir shut down and the grace period was over.
    Shutdown,
    /// The connection's object moved to another host (`1012`).
    ObjectMoved,
    /// No data frame in either direction for `limits.idle_timeout`.
    IdleTimeout,
    /// The connection reached its `limits.max_lifetime`.
    MaxLifetime,
    /// A close frame was not answered within `limits.close_timeout`.
    CloseTimeout,
    /// A peer did not answer weir's keepalive ping within `limits.keepalive.timeout`.
    DeadPeer,
    /// A sender went over `limits.message_rate` or `limits.bandwidth` (`action: close`).
    RateLimited,
    /// The connection's tenant went over a quota.
    Quota,
    /// An operator closed it (`DELETE /api/connections/{id}`).
    Kicked,
    /// A drain closed it (`POST /api/drain`, or a shutdown's drain window).
    Drained,
}

impl Cause {
    /// The causes of a close weir decides on its own (guards, quotas, kicks).
    pub fn by_gateway(self) -> bool {
        matches!(
            self,
            Cause::IdleTimeout
                | Cause::MaxLifetime
                | Cause::CloseTimeout
                | Cause::DeadPeer
                | Cause::RateLimited
                | Cause::Quota
                | Cause::Kicked
        )
    }

    /// Its place in `ALL` (metric handles resolved per route are kept in that order).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every cause, for metrics set up at startup.
    pub const ALL: [Cause; 16] = [
        Cause::ClientClose,
        Cause::BackendClose,
        Cause::ClientGone,
        Cause::BackendGone,
        Cause::ProtocolError,
        Cause::MessageTooBig,
        Cause::Shutdown,
        Cause::ObjectMoved,
        Cause::IdleTimeout,
        Cause::MaxLifetime,
        Cause::CloseTimeout,
        Cause::DeadPeer,
        Cause::RateLimited,
        Cause::Quota,
        Cause::Kicked,
        Cause::Drained,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::ClientClose => "client_close",
            Cause::BackendClose => "backend_close",
            Cause::ClientGone => "client_gone",
            Cause::BackendGone => "backend_gone",
            Cause::ProtocolError => "protocol_error",
            Cause::MessageTooBig => "message_too_big",
            Cause::Shutdown => "shutdown",
            Cause::ObjectMoved => "object_moved",
            Cause::IdleTimeout => "idle_timeout",
            Cause::MaxLifetime => "max_lifetime",
            Cause::CloseTimeout => "close_timeout",
            Cause::DeadPeer => "dead_peer",
            Cause::RateLimited => "rate_limited",
            Cause::Quota => "quota",
            Cause::Kicked => "kicked",
            Cause::Drained => "drained",
        }
    }
}

/// What a finished connection reports for metering.
#[derive(Debug, Clone)]
pub struct RelayReport {
    /// Relayed traffic per direction, indexed by `Direction::index`.
    pub counts: [DirectionCounts; 2],
    /// Code of the first close frame (from either side, or weir's own when it initiated).
    pub close_code: Option<u16>,
    /// Who started the end.
    pub initiator: Party,
    /// Both sides sent close frames and neither connection failed.
    pub clean: bool,
    /// How the connection ended.
    pub outcome: Outcome,
    /// Why it ended.
    pub cause: Cause,
    /// The RFC 6455 violation that closed the connection, if any, and its direction.
    pub violation: Option<(Direction, Violation)>,
}

impl RelayReport {
    /// The report of a connection whose own end was lost (its task ended without a report):
    /// the counts last seen, and an end weir cannot say more about, so its stop record is still
    /// written and it leaves the live set.
    pub fn lost(counts: [DirectionCounts; 2]) -> RelayReport {
        RelayReport {
            counts,
            close_code: None,
            initiator: Party::Gateway,
            clean: false,
            outcome: Outcome::BackendGone,
            cause: Cause::BackendGone,
            violation: None,
        }
    }
}

/// What happened at a connection's end, as the relay or tap saw it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ending {
    /// Who sent the first close frame (before any side ended).
    pub first_close: Option<Party>,
    /// Which side ended (EOF, error, failed write) first.
    pub first_end: Option<Party>,
    /// Close code weir sent when it started the end itself.
    pub gateway_code: Option<u16>,
    /// Close code weir sent to the surviving side when the other side went away.
    pub injected_code: Option<u16>,
    /// A read or write failed (as opposed to a clean EOF).
    pub errored: bool,
    /// weir closed the connection because it was shutting down.
    pub shutdown: bool,
    /// weir closed the connection because its object moved.
    pub moved: bool,
    /// The RFC 6455 violation that ended the connection, and its direction.
    pub violation: Option<(Direction, Violation)>,
    /// A cause the end's owner knows better than the frames tell (a built-in object's 1009).
    pub cause: Option<Cause>,
}

impl Ending {
    /// The report of a connection that carried `counts` and whose directions sent the close
    /// frames `closes` (`[client, backend]`): the one place outcome, initiator, close code and
    /// cleanliness are decided.
    pub fn report(&self, counts: [DirectionCounts; 2], closes: [Option<CloseInfo>; 2]) -> RelayReport {
        let [client_close, backend_close] = closes;
        let both_closed = client_close.is_some() && backend_close.is_some();
        let first_close_code = match self.first_close {
            Some(Party::Client) => client_close.and_then(|c| c.code),
            Some(Party::Backend) => backend_close.and_then(|c| c.code),
            _ => None,
        };
        let initiator =
            self.first_close.or(self.gateway_code.map(|_| Party::Gateway)).or(self.first_end).unwrap_or(Party::Gateway);
        let outcome = if self.violation.is_some() {
            Outcome::ProtocolError
        } else if self.moved {
            Outcome::Moved
        } else if self.cause == Some(Cause::Drained) {
            // A drain (SIGTERM, `POST /api/drain`, a backend drained or failing its health
            // check) is a shutdown of that connection's instance or backend.
            Outcome::Shutdown
        } else if self.cause.is_some_and(Cause::by_gateway) {
            Outcome::GatewayClosed
        } else if self.shutdown && !both_closed {
            Outcome::Shutdown
        } else if both_closed {
            Outcome::Completed
        } else if self.first_end == Some(Party::Client) {
            Outcome::ClientGone
        } else {
            Outcome::BackendGone
        };
        let cause = self.cause.unwrap_or(match outcome {
            Outcome::ProtocolError => Cause::ProtocolError,
            Outcome::Moved => Cause::ObjectMoved,
            Outcome::Shutdown => Cause::Shutdown,
            _ => match (self.first_close, self.first_end) {
                (Some(Party::Client), _) => Cause::ClientClose,
                (Some(_), _) => Cause::BackendClose,
                (None, Some(Party::Client)) => Cause::ClientGone,
                (None, _) => Cause::BackendGone,
            },
        });
        RelayReport {
            counts,
            cause,
            close_code: if self.first_close.is_some() {
                first_close_code
            } else {
                self.gateway_code.or(self.injected_code)
            },
            initiator,
            clean: both_closed && !self.errored && self.violation.is_none() && self.gateway_code.is_none(),
            outcome,
            violation: self.violation,
        }
    }
}

/// Every value of the `code_class` label.
pub const CODE_CLASSES: [&str; 6] = ["none", "normal", "going_away", "error", "app", "other"];

/// Class of a close code for the `code_class` label.
pub fn code_class(code: Option<u16>) -> &'static str {
    CODE_CLASSES[code_class_index(code)]
}

/// `code_class`'s place in `CODE_CLASSES`.
pub fn code_class_index(code: Option<u16>) -> usize {
    match code {
        None => 0,
        Some(1000) => 1,
        Some(1001) => 2,
        Some(1002..=1015) => 3,
        Some(3000..=4999) => 4,
        Some(_) => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(code: u16) -> Option<CloseInfo> {
        Some(CloseInfo { code: Some(code), reason_len: 0 })
    }

    #[test]
    fn a_completed_close_handshake_is_clean_and_names_its_initiator() {
        let e = Ending { first_close: Some(Party::Backend), ..Default::default() };
        let r = e.report(Default::default(), [close(1000), close(4001)]);
        assert_eq!(
            (r.outcome, r.initiator, r.close_code, r.clean),
            (Outcome::Completed, Party::Backend, Some(4001), true)
        );
    }

    #[test]
    fn a_side_that_vanishes_gets_weirs_code() {
        let e = Ending { first_end: Some(Party::Client), injected_code: Some(1001), ..Default::default() };
        let r = e.report(Default::default(), [None, None]);
        assert_eq!(
            (r.outcome, r.initiator, r.close_code, r.clean),
            (Outcome::ClientGone, Party::Client, Some(1001), false)
        );
    }

    #[test]
    fn violations_win_over_everything_and_weir_initiates() {
        let v = Some((Direction::ClientToBackend, Violation::UnmaskedClientFrame));
        let e = Ending { gateway_code: Some(1002), violation: v, shutdown: true, moved: true, ..Default::default() };
        let r = e.report(Default::default(), [None, close(1002)]);
        assert_eq!(
            (r.outcome, r.initiator, r.close_code, r.clean),
            (Outcome::ProtocolError, Party::Gateway, Some(1002), false)
        );
    }

    #[test]
    fn shutdown_only_when_the_close_handshake_did_not_complete() {
        let e = Ending { shutdown: true, gateway_code: Some(1001), ..Default::default() };
        assert_eq!(e.report(Default::default(), [None, None]).outcome, Outcome::Shutdown);
        assert_eq!(e.report(Default::default(), [close(1001), close(1001)]).outcome, Outcome::Completed);
    }

    #[test]
    fn each_label_value_knows_its_place_in_all() {
        assert!(Party::ALL.iter().enumerate().all(|(i, p)| p.index() == i));
        assert!(Outcome::ALL.iter().enumerate().all(|(i, o)| o.index() == i));
        assert!(Cause::ALL.iter().enumerate().all(|(i, c)| c.index() == i));
    }

    #[test]
    fn code_classes() {
        let got: Vec<_> = [None, Some(1000), Some(1001), Some(1011), Some(4000), Some(2000)].map(code_class).to_vec();
        assert_eq!(got, ["none", "normal", "going_away", "error", "app", "other"]);
    }
}
