//! The record contract: `UsageRecord` (a connection's start, interim and stop records) and
//! `ObjectRecord` (an object's occupancy), one JSON object per line in the spool and the usage
//! file.
//!
//! Warm path (serialised once per record). The README's "Usage records" section documents
//! every field; change both together.

use crate::relay::scanner::DirectionCounts;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// The kind of a usage record: its `record` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// A connection record written at the 101.
    Start,
    /// A connection record written every `usage.interim_interval` while it is open.
    Interim,
    /// A connection record written at its end (the only record of a failed handshake).
    Stop,
    /// An object's occupancy, written when its last connection ends.
    Object,
    /// A summary of one client address's rejections over a window, beyond its
    /// `usage.rejections_per_client` records.
    Rejections,
}

impl RecordKind {
    /// The `record` field value.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Start => "start",
            RecordKind::Interim => "interim",
            RecordKind::Stop => "stop",
            RecordKind::Object => "object",
            RecordKind::Rejections => "rejections",
        }
    }
}

/// A name from the config (a tenant, route or pool), shared by every connection that carries
/// it: a connection holds a reference, not a copy.
pub type Name = Arc<str>;

/// Who a connection is: fixed once it is routed and connected, shared by all of its records
/// (held behind an `Arc`, never copied per record). An open connection holds it for its whole
/// life, so it keeps values, not text: the id, addresses and start time are formatted only when
/// a record is written, and the names are the config's own (README "Idle cost").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Sortable unique id (UUIDv7; in JSON its hyphenated text), also sent to the backend as
    /// `X-Weir-Connection-Id`.
    pub connection_id: uuid::Uuid,
    /// Tenant the route bills to (`routes[].tenant`, else `usage.default_tenant`).
    pub tenant: Option<Name>,
    /// Route name, when the request matched a route.
    pub route: Option<Name>,
    /// Pool name, when the request matched a pool route.
    pub pool: Option<Name>,
    /// The object the connection addressed, on object routes (boxed: pool routes have none).
    pub object: Option<Box<ObjectRef>>,
    /// Backend address (in JSON `ip:port`), when one was picked.
    pub backend: Option<SocketAddr>,
    /// Client address (in JSON `ip:port`).
    pub client_addr: Option<SocketAddr>,
    /// When the request head started arriving (in JSON RFC 3339 UTC, milliseconds).
    #[serde(with = "rfc3339_millis")]
    pub started_at: WallTime,
}

impl Identity {
    /// A connection that started at `started_at` from `client`, with nothing else known yet.
    pub fn new(connection_id: uuid::Uuid, client_addr: Option<SocketAddr>, started_at: SystemTime) -> Identity {
        let started_at = WallTime::from(started_at);
        Identity {
            connection_id,
            tenant: None,
            route: None,
            pool: None,
            object: None,
            backend: None,
            client_addr,
            started_at,
        }
    }
}

/// A wall-clock time in nanoseconds since the UNIX epoch (until the year 2554; earlier times
/// are the epoch): 8 bytes where a `SystemTime` takes 16, which keeps a connection's shared
/// identity in jemalloc's 160-byte class (README "Idle cost").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallTime(u64);

impl WallTime {
    /// This time as a `SystemTime`.
    pub fn system_time(self) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(self.0)
    }
}

impl From<SystemTime> for WallTime {
    fn from(t: SystemTime) -> WallTime {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        WallTime(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// A `WallTime` as RFC 3339 UTC text with milliseconds, the form of every record timestamp.
mod rfc3339_millis {
    use super::{rfc3339_ms, WallTime};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &WallTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&rfc3339_ms(t.system_time()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<WallTime, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        humantime::parse_rfc3339(&text).map(WallTime::from).map_err(serde::de::Error::custom)
    }
}

/// One connection's usage so far: `start`, `interim` or `stop` (cumulative counts each time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Record type: `start`, `interim` or `stop`.
    pub record: RecordKind,
    /// `<connection_id>:<seq>`: unique per record, for sinks that drop duplicates.
    pub idempotency_key: ConnectionKey,
    /// 0 for `start` (and for the `stop` of a failed handshake), then 1, 2, … in order.
    pub seq: u64,
    /// When this record was made (RFC 3339 UTC, milliseconds).
    pub at: Stamp,
    /// Who the connection is (its fields appear at this level of the JSON object).
    #[serde(flatten)]
    pub identity: Arc<Identity>,
    /// When the connection ended (RFC 3339 UTC, milliseconds); null until `stop`.
    pub ended_at: Option<Stamp>,
    /// Wall-clock lifetime so far, milliseconds (monotonic clock).
    pub duration_ms: u64,
    /// Time with relayed traffic so far, milliseconds: the union of `usage.idle_threshold` after
    /// each relayed data frame (frames weir sends itself never count).
    pub active_ms: u64,
    /// `duration_ms - active_ms`.
    pub idle_ms: u64,
    /// HTTP requests on the connection: 1 (the upgrade).
    pub requests: u64,
    /// HTTP status weir answered the upgrade with (101, or the rejection status).
    pub status: u16,
    /// Subprotocol the backend selected (`Sec-WebSocket-Protocol`), if any.
    pub subprotocol: Option<String>,
    /// Traffic from the client to the backend.
    pub client_to_backend: DirectionUsage,
    /// Traffic from the backend to the client.
    pub backend_to_client: DirectionUsage,
    /// Messages weir itself sent the client (operator pushes, `POST
    /// /api/connections/{id}/messages`): in neither direction's counts. Zero without pushes.
    #[serde(default)]
    pub gateway: DirectionUsage,
    /// How the WebSocket closed; absent when the handshake failed.
    pub close: Option<CloseUsage>,
    /// `open` until `stop`; then how the connection ended: completed, client_gone,
    /// backend_gone, protocol_error, shutdown, moved, or for failed handshakes rejected,
    /// backend_unreachable, backend_timeout, no_healthy_backend, backend_refused,
    /// backend_bad_handshake, object_moving, spool_unavailable. (Borrowed when weir makes the
    /// record: every value is a fixed name; owned when a record is read back.)
    pub outcome: Cow<'static, str>,
    /// Detail for failures: the reject reason or the protocol violation.
    pub reason: Option<String>,
    /// Billable units so far (`billing.units`), by unit name.
    #[serde(default)]
    pub units: std::collections::BTreeMap<String, f64>,
}

/// The object a connection addressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Namespace name.
    pub namespace: String,
    /// Object id (after percent-decoding).
    pub id: String,
}

/// One object's usage over one occupancy (first connection to empty), written when it becomes
/// empty. Durable Objects-style: wall time with at least one connection, and active time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// Record type: always `object`.
    pub record: RecordKind,
    /// `object:<namespace>:<id>:<started_at>`: unique per occupancy.
    pub idempotency_key: String,
    /// When this record was made (= `ended_at`).
    pub at: String,
    /// Tenant of the route that placed the object.
    pub tenant: Option<String>,
    /// Namespace name.
    pub namespace: String,
    /// Object id.
    pub object_id: String,
    /// Owner that served it: `host:port` as configured, or `builtin:<kind>`.
    pub host: String,
    /// When its first connection was placed (RFC 3339 UTC, milliseconds).
    pub started_at: String,
    /// When it became empty (RFC 3339 UTC, milliseconds).
    pub ended_at: String,
    /// Time with at least one connection, milliseconds.
    pub connected_ms: u64,
    /// Time in which it processed a message (union of `idle_window` after each message, on any
    /// socket), milliseconds.
    pub active_ms: u64,
    /// The namespace's idle window, milliseconds.
    pub idle_window_ms: u64,
    /// Connections established during the occupancy.
    pub connections: u64,
    /// Most connections open at once.
    pub peak_connections: u64,
    /// Data messages from clients to the object.
    pub messages_in: u64,
    /// Data messages from the object to clients.
    pub messages_out: u64,
    /// Payload bytes from clients to the object.
    pub payload_bytes_in: u64,
    /// Payload bytes from the object to clients.
    pub payload_bytes_out: u64,
    /// The occupancy ended because its host failed (clients were closed with 1012).
    pub moved: bool,
}

/// The rejections of one client address in one window that did not get a record each (over
/// `usage.rejections_per_client`): counted here instead, so the counts still add up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionSummary {
    /// Record type: always `rejections`.
    pub record: RecordKind,
    /// `rejections:<client_ip or *>:<window start, ms since the epoch>`: unique per window.
    pub idempotency_key: String,
    /// When this record was made (the window's end, RFC 3339 UTC, milliseconds).
    pub at: String,
    /// The client address (IP, no port); null for the catch-all of addresses beyond the tracked
    /// maximum.
    pub client_ip: Option<String>,
    /// Start of the window (RFC 3339 UTC, milliseconds).
    pub started_at: String,
    /// End of the window (RFC 3339 UTC, milliseconds).
    pub ended_at: String,
    /// Rejections in the window that got a record of their own.
    pub recorded: u64,
    /// Rejections in the window counted only here.
    pub summarised: u64,
    /// `summarised` by HTTP status weir answered with.
    pub by_status: std::collections::BTreeMap<u16, u64>,
}

/// Traffic in one direction (relayed bytes only; frames weir sends itself are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionUsage {
    /// Frames (data and control).
    pub frames: u64,
    /// Complete data messages.
    pub messages: u64,
    /// Frame payload bytes (compressed size when permessage-deflate is on).
    pub payload_bytes: u64,
    /// Bytes on the wire, frame headers included.
    pub wire_bytes: u64,
    /// Ping frames.
    pub pings: u64,
    /// Pong frames.
    pub pongs: u64,
    /// Payload bytes of the largest complete message.
    pub largest_message_bytes: u64,
}

impl From<&DirectionCounts> for DirectionUsage {
    fn from(c: &DirectionCounts) -> Self {
        DirectionUsage {
            frames: c.frames,
            messages: c.messages,
            payload_bytes: c.payload_bytes,
            wire_bytes: c.wire_bytes,
            pings: c.pings,
            pongs: c.pongs,
            largest_message_bytes: c.largest_message_bytes,
        }
    }
}

impl UsageRecord {
    /// The `kind` label this record is counted under in `weir_usage_records_total`: its record
    /// kind, or `rejection` for the stop record of a failed handshake (a stop without a close).
    pub fn label(&self) -> &'static str {
        match (self.record, &self.close) {
            (RecordKind::Stop, None) => "rejection",
            (kind, _) => kind.as_str(),
        }
    }
}

/// How a relayed WebSocket closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseUsage {
    /// Code of the first close frame; when weir closed first or a side went away, the code weir
    /// sent; null if none.
    pub code: Option<u16>,
    /// Who started the close: client, backend or gateway.
    pub initiator: Cow<'static, str>,
    /// Both sides sent close frames and neither connection failed.
    pub clean: bool,
    /// Why the connection ended: client_close, backend_close, client_gone, backend_gone,
    /// protocol_error, message_too_big, shutdown, object_moved, idle_timeout, max_lifetime,
    /// close_timeout, dead_peer or rate_limited.
    #[serde(default)]
    pub cause: Cow<'static, str>,
}

/// A connection record's time (`at`, `ended_at`), to the millisecond: in JSON its RFC 3339 UTC
/// text with milliseconds. A record keeps the number, not the text, so that making one costs no
/// string per timestamp; the text is written straight into the record's line (issue 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp(WallTime);

impl Stamp {
    /// `t`, to the millisecond (the text's precision: a stamp read back from its text is equal).
    pub fn new(t: SystemTime) -> Stamp {
        let WallTime(ns) = WallTime::from(t);
        Stamp(WallTime(ns - ns % 1_000_000))
    }

    /// This time as a `SystemTime`.
    pub fn system_time(self) -> SystemTime {
        self.0.system_time()
    }

    /// Append its text (`rfc3339_ms`) to `out`, from its milliseconds (no `SystemTime` between).
    pub fn write(self, out: &mut Vec<u8>) {
        write_ms_since_epoch(out, (self.0).0 / 1_000_000);
    }
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&rfc3339_ms(self.system_time()))
    }
}

/// In JSON as `started_at` is (`rfc3339_millis`).
impl Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        rfc3339_millis::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Stamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Stamp, D::Error> {
        rfc3339_millis::deserialize(d).map(|t| Stamp::new(t.system_time()))
    }
}

/// A connection record's idempotency key, `<connection_id>:<seq>` in JSON: kept as its two
/// parts, so that making a record costs no string for it (issue 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionKey {
    /// The connection's id.
    pub connection_id: uuid::Uuid,
    /// The record's sequence number.
    pub seq: u64,
}

impl ConnectionKey {
    /// Append its text (the hyphenated lower-case id, a colon, the number) to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        crate::text::push_uuid(out, &self.connection_id);
        out.push(b':');
        out.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
    }
}

impl std::fmt::Display for ConnectionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.connection_id.hyphenated(), self.seq)
    }
}

impl Serialize for ConnectionKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConnectionKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ConnectionKey, D::Error> {
        let text = Cow::<str>::deserialize(d)?;
        let parsed = text.rsplit_once(':').and_then(|(id, seq)| {
            Some(ConnectionKey { connection_id: uuid::Uuid::parse_str(id).ok()?, seq: seq.parse().ok()? })
        });
        parsed.ok_or_else(|| serde::de::Error::custom(format!("not a `<connection_id>:<seq>` key: {text:?}")))
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-22T14:05:06.123Z`.
pub fn rfc3339_ms(t: SystemTime) -> String {
    let mut text = Vec::with_capacity(RFC3339_MS_LEN);
    write_rfc3339_ms(&mut text, t);
    // ASCII digits and punctuation only.
    String::from_utf8(text).unwrap_or_default()
}

/// Length of `rfc3339_ms`'s text, bytes (years 0000–9999).
const RFC3339_MS_LEN: usize = "2026-11-22T14:05:06.123Z".len();

/// Append `rfc3339_ms(t)` to `out` (no allocation beyond `out`'s growth). Written digit by digit
/// (30 % fewer instructions than `humantime`'s `Display` through the formatter: 1 921 → 1 359
/// per handshake cycle's five timestamps, callgrind); times outside 1970–9999 are written as the
/// nearest end of that range (`humantime` panicked before 1970 and wrote nothing after 9999).
/// The date and time of day of the second last written on this thread are kept
/// (`LAST_SECOND`): a connection's records are written within a second of each other, and of
/// the other connections' on the same worker, so most timestamps only add their milliseconds.
pub fn write_rfc3339_ms(out: &mut Vec<u8>, t: SystemTime) {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        // Seconds and milliseconds apart: `as_millis` divides a u128 (a library call).
        .map_or(0, |d| d.as_secs().saturating_mul(1000).saturating_add(u64::from(d.subsec_millis())));
    write_ms_since_epoch(out, ms);
}

/// `write_rfc3339_ms` of the time `ms` milliseconds after the epoch.
fn write_ms_since_epoch(out: &mut Vec<u8>, ms: u64) {
    /// 9999-12-31T23:59:59.999Z, milliseconds since the epoch.
    const LAST_MS: u64 = 253_402_300_799_999;
    let ms = ms.min(LAST_MS);
    let (secs, millis) = (ms / 1000, (ms % 1000) as u32);
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let (cached, prefix) = LAST_SECOND.get();
    let prefix = if cached == secs {
        prefix
    } else {
        let prefix = second_text(secs);
        LAST_SECOND.set((secs, prefix));
        prefix
    };
    text[..SECOND_LEN].copy_from_slice(&prefix);
    text[20] = b'0' + (millis / 100) as u8;
    text[21] = b'0' + (millis / 10 % 10) as u8;
    text[22] = b'0' + (millis % 10) as u8;
    out.extend_from_slice(&text);
}

/// Length of `YYYY-MM-DDTHH:MM:SS`, bytes.
const SECOND_LEN: usize = 19;

thread_local! {
    /// The second (since the epoch) `write_rfc3339_ms` last wrote on this thread and its
    /// `YYYY-MM-DDTHH:MM:SS` text; `u64::MAX` (nothing written yet) is past every second that
    /// is written (they end in 9999).
    static LAST_SECOND: std::cell::Cell<(u64, [u8; SECOND_LEN])> = const { std::cell::Cell::new((u64::MAX, [0; SECOND_LEN])) };
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` since the epoch (at most 9999-12-31T23:59:59).
fn second_text(secs: u64) -> [u8; SECOND_LEN] {
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let second_of_day = (secs % 86_400) as u32;
    let mut text = *b"0000-00-00T00:00:00";
    // Two digits at a time (`n` < 100).
    let mut two = |at: usize, n: u32| {
        if let Some(pair) = text.get_mut(at..at + 2) {
            pair.copy_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
        }
    };
    let year = year as u32;
    two(0, year / 100);
    two(2, year % 100);
    two(5, month);
    two(8, day);
    two(11, second_of_day / 3600);
    two(14, second_of_day / 60 % 60);
    two(17, second_of_day % 60);
    text
}

/// (year, month, day) of the day `days` after 1970-01-01 in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`): record timestamps, quota periods (`metering::quota`),
/// weir-bench's report.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key's text is the hyphenated id, a colon and the number, written or displayed, and it
    /// reads back; a stamp keeps milliseconds only, and its text reads back equal.
    #[test]
    fn keys_and_stamps_are_their_text_and_read_back() {
        let id = uuid::Uuid::from_u128(0x0192_8e3a_0000_7000_8000_0000_0000_00ab);
        for seq in [0, 7, 10, 99, 100, u64::MAX] {
            let key = ConnectionKey { connection_id: id, seq };
            let mut written = b"x".to_vec();
            key.write(&mut written);
            assert_eq!(written, format!("x{id}:{seq}").into_bytes());
            assert_eq!(key.to_string(), format!("{id}:{seq}"));
            let json = serde_json::to_string(&key).unwrap();
            assert_eq!(json, format!("\"{id}:{seq}\""));
            assert_eq!(serde_json::from_str::<ConnectionKey>(&json).unwrap(), key);
        }
        for bad in ["\"x:1\"", "\"0192\"", "\"0192:1:2\""] {
            assert!(serde_json::from_str::<ConnectionKey>(bad).is_err(), "{bad}");
        }
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(1_764_000_000_123_456_789);
        let stamp = Stamp::new(t);
        assert_eq!(stamp.system_time(), SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_000_000_123));
        assert_eq!(stamp.to_string(), rfc3339_ms(t));
        let mut written = Vec::new();
        stamp.write(&mut written);
        assert_eq!(written, rfc3339_ms(t).into_bytes());
        let json = serde_json::to_string(&stamp).unwrap();
        assert_eq!(serde_json::from_str::<Stamp>(&json).unwrap(), stamp);
    }

    /// The digit-by-digit text is `humantime`'s (the text records had before) at 200 000 times
    /// spread over the range `humantime` writes, the last millisecond of every seventh day in it
    /// and its ends, and the range's ends outside it.
    #[test]
    fn timestamps_are_humantime_s_text_and_clamped_outside_1970_to_9999() {
        use std::time::Duration;
        let last = 253_402_300_799_999u64;
        let mut samples: Vec<u64> =
            (0..200_000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % (last + 1)).collect();
        // Around 2000-02-29 and 2100-03-01 (a leap day of a century year, a century year without).
        samples.extend([
            0,
            999,
            1000,
            86_399_999,
            86_400_000,
            951_782_400_000,
            951_868_799_999,
            4_107_542_400_000,
            last,
        ]);
        samples.extend((0..2_932_897u64).step_by(7).map(|day| day * 86_400_000 + 86_399_999));
        for ms in samples {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(rfc3339_ms(t), humantime::format_rfc3339_millis(t).to_string(), "{ms} ms");
        }
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339_ms(before), "1970-01-01T00:00:00.000Z");
        let after = SystemTime::UNIX_EPOCH + Duration::from_millis(last + 86_400_000);
        assert_eq!(rfc3339_ms(after), "9999-12-31T23:59:59.999Z");
    }

    /// The second kept per thread is reused only within its second: runs of consecutive
    /// milliseconds across second, minute, day, leap-day and year ends, written in order and
    /// then alternating between two seconds (every write a change), and a clamped time after
    /// the last second written in range, are all `humantime`'s text.
    #[test]
    fn the_kept_second_is_reused_only_within_it() {
        use std::time::Duration;
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let expected = |ms: u64| humantime::format_rfc3339_millis(at(ms)).to_string();
        // 23:59:58.990 on 2000-02-28, 2000-02-29 (leap day), 2026-12-31 and 1970-01-01.
        for base in [951_782_398_990u64, 951_868_798_990, 1_798_761_598_990, 0] {
            for ms in base..base + 2_030 {
                assert_eq!(rfc3339_ms(at(ms)), expected(ms), "{ms} ms in order");
            }
            for i in 0..40 {
                let ms = if i % 2 == 0 { base + i } else { base + 1_000 + i };
                assert_eq!(rfc3339_ms(at(ms)), expected(ms), "{ms} ms alternating");
            }
        }
        assert_eq!(rfc3339_ms(at(253_402_300_799_000)), "9999-12-31T23:59:59.000Z", "the last second, kept");
        assert_eq!(rfc3339_ms(at(253_402_300_799_999 + 5_000)), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(at(1_000)), "1970-01-01T00:00:01.000Z");
    }

    /// An identity holds values; its JSON is the record contract's text, and reads back equal.
    #[test]
    fn an_identity_is_written_as_the_contract_s_text_and_read_back() {
        let started_at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_795_000_000_123);
        let mut id = Identity::new(
            uuid::Uuid::from_u128(0x0192_8e3a_0000_7000_8000_0000_0000_00ab),
            Some("[::1]:4242".parse().unwrap()),
            started_at,
        );
        id.tenant = Some(Name::from("acme"));
        id.route = Some(Name::from("chat"));
        id.backend = Some("127.0.0.1:9001".parse().unwrap());
        let json = serde_json::to_value(&id).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "connection_id": "01928e3a-0000-7000-8000-0000000000ab",
                "tenant": "acme", "route": "chat", "pool": null, "object": null,
                "backend": "127.0.0.1:9001", "client_addr": "[::1]:4242",
                "started_at": rfc3339_ms(started_at),
            })
        );
        assert!(json["started_at"].as_str().unwrap().ends_with(".123Z"), "{json}");
        assert_eq!(serde_json::from_value::<Identity>(json).unwrap(), id);
    }

    /// The start time keeps its nanoseconds (only the JSON text is in milliseconds), so the
    /// `ended_at` computed from it is what it was with a `SystemTime`; before the epoch is the
    /// epoch.
    #[test]
    fn a_wall_time_keeps_the_nanoseconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_795_000_000, 123_456_789);
        assert_eq!(WallTime::from(t).system_time(), t);
        let before = SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(1);
        assert_eq!(WallTime::from(before).system_time(), SystemTime::UNIX_EPOCH);
        assert_eq!(std::mem::size_of::<WallTime>(), 8);
    }
}
