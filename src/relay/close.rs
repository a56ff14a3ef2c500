//! `Close`: every close frame weir sends on its own, with its code, reason text and label, the
//! way `gateway::reject::RejectReason` lists every HTTP refusal. Pure (cold to read, used on the
//! warm path when a connection ends).
//!
//! The relay's own closes toward a side whose peer went away, on shutdown, on a protocol
//! violation or when an object moves carry no reason text: what a client sees through weir stays
//! what it saw before this table existed. The guards' closes (idle, lifetime, keepalive, rate
//! and size limits) say why in their reason text. Built-in objects (echo, rooms) and the health probe
//! send the texts below.

/// A close frame weir sends itself (never a relayed one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// To the client when the backend ended without a close frame: 1011 "Internal Error". Not
    /// 1014 "Bad Gateway": common client libraries (tungstenite among them) reject 1014 as an
    /// invalid code and report a protocol error instead.
    BackendGone,
    /// To the backend when the client ended without a close frame: 1001 "Going Away".
    ClientGone,
    /// To both sides of a relay when weir shuts down and the grace period is over: 1001.
    Shutdown,
    /// To a built-in object's client when weir shuts down: 1001 with a reason text.
    ObjectShutdown,
    /// To both sides when one breaks RFC 6455: 1002 "Protocol Error".
    ProtocolError,
    /// To an object's clients when the object moves to another host, and instead of
    /// `BackendGone` when an object host goes away: 1012 "Service Restart" (reconnect and land
    /// on the new owner).
    ObjectMoved,
    /// To a room member whose send queue overflowed: 1013 "Try Again Later".
    TooSlow,
    /// To a room member that sent a JSON object with a top-level `"weir"` key (reserved for
    /// weir's events): 1008 "Policy Violation".
    Reserved,
    /// To a built-in object's client whose message is over the object's limit: 1009 "Message
    /// Too Big".
    TooBig,
    /// To a room member when the room's history cannot be opened: 1011.
    RoomUnavailable,
    /// Sent by a handshake health probe after its upgrade was answered: 1001.
    Probe,
    /// To both sides when no data frame passed for `limits.idle_timeout`: 1001 "idle timeout".
    IdleTimeout,
    /// To both sides when the connection reached its `limits.max_lifetime`: 1001 "max lifetime".
    Lifetime,
    /// As `Lifetime`, with `limits.lifetime_close: restart`: 1012 "max lifetime" (reconnect now).
    LifetimeRestart,
    /// To the other side when a peer did not answer weir's keepalive ping in time: 1011 "peer
    /// not responding".
    PeerNotResponding,
    /// To both sides when a sender went over `limits.message_rate` or `limits.bandwidth` with
    /// `action: close`: 1008 "rate limit".
    RateLimited,
    /// To both sides when a frame or message is over `limits.max_frame` / `limits.max_message`:
    /// 1009 "message too big".
    LimitTooBig,
    /// To both sides when the connection's tenant is over a quota: 1008 "quota exceeded".
    QuotaExceeded,
}

impl Close {
    /// Every close weir sends, for tests and docs.
    pub const ALL: [Close; 18] = [
        Close::BackendGone,
        Close::ClientGone,
        Close::Shutdown,
        Close::ObjectShutdown,
        Close::ProtocolError,
        Close::ObjectMoved,
        Close::TooSlow,
        Close::Reserved,
        Close::TooBig,
        Close::RoomUnavailable,
        Close::Probe,
        Close::IdleTimeout,
        Close::Lifetime,
        Close::LifetimeRestart,
        Close::PeerNotResponding,
        Close::RateLimited,
        Close::LimitTooBig,
        Close::QuotaExceeded,
    ];

    /// The close code sent.
    pub const fn code(self) -> u16 {
        match self {
            Close::ClientGone | Close::Shutdown | Close::ObjectShutdown | Close::Probe => 1001,
            Close::IdleTimeout | Close::Lifetime => 1001,
            Close::ProtocolError => 1002,
            Close::Reserved | Close::RateLimited | Close::QuotaExceeded => 1008,
            Close::TooBig | Close::LimitTooBig => 1009,
            Close::BackendGone | Close::RoomUnavailable | Close::PeerNotResponding => 1011,
            Close::ObjectMoved | Close::LifetimeRestart => 1012,
            Close::TooSlow => 1013,
        }
    }

    /// The reason text sent after the code (UTF-8, at most 123 bytes); empty for the relay's own
    /// closes.
    pub const fn reason(self) -> &'static str {
        match self {
            Close::BackendGone | Close::ClientGone | Close::Shutdown | Close::ProtocolError | Close::ObjectMoved => "",
            Close::Probe => "",
            Close::ObjectShutdown => "going away",
            Close::TooSlow => "too slow",
            Close::Reserved => "the \"weir\" key is reserved",
            Close::TooBig => "message too big",
            Close::RoomUnavailable => "room unavailable",
            Close::IdleTimeout => "idle timeout",
            Close::Lifetime | Close::LifetimeRestart => "max lifetime",
            Close::PeerNotResponding => "peer not responding",
            Close::RateLimited => "rate limit",
            Close::LimitTooBig => "message too big",
            Close::QuotaExceeded => "quota exceeded",
        }
    }

    /// Label value for logs and metrics (snake case, unique).
    pub const fn as_str(self) -> &'static str {
        match self {
            Close::BackendGone => "backend_gone",
            Close::ClientGone => "client_gone",
            Close::Shutdown => "shutdown",
            Close::ObjectShutdown => "object_shutdown",
            Close::ProtocolError => "protocol_error",
            Close::ObjectMoved => "object_moved",
            Close::TooSlow => "too_slow",
            Close::Reserved => "reserved",
            Close::TooBig => "too_big",
            Close::RoomUnavailable => "room_unavailable",
            Close::Probe => "probe",
            Close::IdleTimeout => "idle_timeout",
            Close::Lifetime => "lifetime",
            Close::LifetimeRestart => "lifetime_restart",
            Close::PeerNotResponding => "peer_not_responding",
            Close::RateLimited => "rate_limited",
            Close::LimitTooBig => "limit_too_big",
            Close::QuotaExceeded => "quota_exceeded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::{close_code_is_valid, MAX_CLOSE_REASON_LEN};
    use super::*;

    #[test]
    fn codes_are_valid_reasons_fit_and_labels_are_unique() {
        let mut labels = std::collections::HashSet::new();
        for c in Close::ALL {
            assert!(close_code_is_valid(c.code()), "{c:?}");
            assert!(c.reason().len() <= MAX_CLOSE_REASON_LEN, "{c:?}");
            assert!(labels.insert(c.as_str()), "duplicate label {}", c.as_str());
            assert!(c.as_str().chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'));
        }
    }
}
