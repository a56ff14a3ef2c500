//! A connection record's JSON text written straight into its spool line: byte for byte what
//! `serde_json::to_writer` makes of a `UsageRecord` (same keys, order, escapes and number
//! forms), without the generic serializer's per-field machinery (`#[serde(flatten)]` turns the
//! record into a map whose every key is escaped at run time).
//!
//! Warm path (twice per connection: its start and stop records; issue 14 measured serde's
//! encoding at 2.3 µs per record). The derived `Serialize` stays the contract's definition: a
//! test compares the two on arbitrary records, so a field added to `UsageRecord` and not here
//! fails it.

use super::record::{CloseUsage, DirectionUsage, Identity, UsageRecord};
#[cfg(test)]
use super::record::{ConnectionKey, Stamp};
use std::net::SocketAddr;

/// Append `record`'s JSON (no newline) to `out`.
pub fn write_usage(out: &mut Vec<u8>, record: &UsageRecord) {
    out.extend_from_slice(b"{\"record\":\"");
    out.extend_from_slice(record.record.as_str().as_bytes());
    // The key and the timestamps are digits, letters and punctuation: nothing to escape.
    out.extend_from_slice(b"\",\"idempotency_key\":\"");
    record.idempotency_key.write(out);
    out.push(b'"');
    key_u64(out, b",\"seq\":", record.seq);
    out.extend_from_slice(b",\"at\":\"");
    record.at.write(out);
    out.push(b'"');
    identity(out, &record.identity);
    out.extend_from_slice(b",\"ended_at\":");
    match record.ended_at {
        Some(t) => {
            out.push(b'"');
            t.write(out);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    key_u64(out, b",\"duration_ms\":", record.duration_ms);
    key_u64(out, b",\"active_ms\":", record.active_ms);
    key_u64(out, b",\"idle_ms\":", record.idle_ms);
    key_u64(out, b",\"requests\":", record.requests);
    key_u64(out, b",\"status\":", u64::from(record.status));
    out.extend_from_slice(b",\"subprotocol\":");
    opt_string(out, record.subprotocol.as_deref());
    out.extend_from_slice(b",\"client_to_backend\":");
    direction(out, &record.client_to_backend);
    out.extend_from_slice(b",\"backend_to_client\":");
    direction(out, &record.backend_to_client);
    out.extend_from_slice(b",\"gateway\":");
    direction(out, &record.gateway);
    out.extend_from_slice(b",\"close\":");
    match &record.close {
        Some(c) => close(out, c),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"outcome\":");
    string(out, &record.outcome);
    out.extend_from_slice(b",\"reason\":");
    opt_string(out, record.reason.as_deref());
    out.extend_from_slice(b",\"units\":{");
    for (i, (name, value)) in record.units.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, name);
        out.push(b':');
        f64_value(out, *value);
    }
    out.extend_from_slice(b"}}");
}

/// The identity's fields, each preceded by a comma (they sit inside the record's object).
fn identity(out: &mut Vec<u8>, id: &Identity) {
    out.extend_from_slice(b",\"connection_id\":\"");
    crate::text::push_uuid(out, &id.connection_id);
    out.extend_from_slice(b"\",\"tenant\":");
    opt_string(out, id.tenant.as_deref());
    out.extend_from_slice(b",\"route\":");
    opt_string(out, id.route.as_deref());
    out.extend_from_slice(b",\"pool\":");
    opt_string(out, id.pool.as_deref());
    out.extend_from_slice(b",\"object\":");
    match &id.object {
        Some(o) => {
            out.extend_from_slice(b"{\"namespace\":");
            string(out, &o.namespace);
            out.extend_from_slice(b",\"id\":");
            string(out, &o.id);
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"backend\":");
    opt_addr(out, id.backend.as_ref());
    out.extend_from_slice(b",\"client_addr\":");
    opt_addr(out, id.client_addr.as_ref());
    out.extend_from_slice(b",\"started_at\":\"");
    super::record::write_rfc3339_ms(out, id.started_at.system_time());
    out.push(b'"');
}

fn direction(out: &mut Vec<u8>, d: &DirectionUsage) {
    // Four of a connection's six directions are empty (a start record's two, and the gateway's
    // in both records without pushes): one copy of their text, not seven numbers.
    if *d == DirectionUsage::default() {
        out.extend_from_slice(
            b"{\"frames\":0,\"messages\":0,\"payload_bytes\":0,\"wire_bytes\":0,\"pings\":0,\"pongs\":0,\"largest_message_bytes\":0}",
        );
        return;
    }
    key_u64(out, b"{\"frames\":", d.frames);
    key_u64(out, b",\"messages\":", d.messages);
    key_u64(out, b",\"payload_bytes\":", d.payload_bytes);
    key_u64(out, b",\"wire_bytes\":", d.wire_bytes);
    key_u64(out, b",\"pings\":", d.pings);
    key_u64(out, b",\"pongs\":", d.pongs);
    key_u64(out, b",\"largest_message_bytes\":", d.largest_message_bytes);
    out.push(b'}');
}

fn close(out: &mut Vec<u8>, c: &CloseUsage) {
    out.extend_from_slice(b"{\"code\":");
    match c.code {
        Some(code) => out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"initiator\":");
    string(out, &c.initiator);
    out.extend_from_slice(if c.clean { b",\"clean\":true" } else { b",\"clean\":false" });
    out.extend_from_slice(b",\"cause\":");
    string(out, &c.cause);
    out.push(b'}');
}

/// `key` and `n` in decimal. Inlined, so that each key is a copy of known length (no `memcpy`
/// call); counters below 100, most of a short connection's, are pushed digit by digit.
#[inline(always)]
fn key_u64(out: &mut Vec<u8>, key: &[u8], n: u64) {
    out.extend_from_slice(key);
    match n {
        0..=9 => out.push(b'0' + n as u8),
        10..=99 => out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]),
        _ => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
    }
}

/// serde_json's form of an `f64`: the shortest text that reads back exactly, `null` when not
/// finite.
fn f64_value(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(v).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A socket address as serde writes it (`collect_str`): its `Display` text, which never needs
/// escaping (digits, dots, colons, brackets, a `%` scope id).
fn opt_addr(out: &mut Vec<u8>, addr: Option<&SocketAddr>) {
    match addr {
        Some(a) => {
            out.push(b'"');
            crate::text::push_socket_addr(out, a);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// `s` as a JSON string, escaped as serde_json escapes: `"` and `\` with a backslash, the
/// control characters below 0x20 as `\b \t \n \f \r` or `\u00XX`; everything else (DEL and
/// non-ASCII included) as is. Record strings rarely hold anything to escape: such a string is
/// checked eight bytes at a time and copied at once.
fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if !any_escape(bytes) {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
            if !needs_escape(word) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0x00..=0x1f => &[],
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.extend_from_slice(escape);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether any byte of `bytes` needs escaping (`needs_escape`, eight at a time). A partial last
/// word is checked as the string's last eight bytes (overlapping the word before it), or, in a
/// string shorter than eight, as its bytes padded with bytes that need no escape.
fn any_escape(bytes: &[u8]) -> bool {
    let (words, tail) = bytes.as_chunks::<8>();
    let last = bytes.last_chunk::<8>().copied().unwrap_or_else(|| {
        let mut padded = [b'a'; 8];
        padded[..tail.len()].copy_from_slice(tail);
        padded
    });
    words.iter().chain((!tail.is_empty()).then_some(&last)).any(|w| needs_escape(u64::from_le_bytes(*w)))
}

/// Whether any of the eight bytes in `word` is below 0x20, `"` or `\` (exact: the "has a zero
/// byte" and "has a byte less than n" bit tricks report no false positives for the word as a
/// whole).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    (below_space | has_zero(word ^ (ONES * u64::from(b'"'))) | has_zero(word ^ (ONES * u64::from(b'\\')))) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::record::{Name, ObjectRef, RecordKind};
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    /// Any counts, or none at all (the empty direction's text is a constant).
    fn direction_usage() -> impl Strategy<Value = DirectionUsage> {
        prop_oneof![Just(DirectionUsage::default()), any_direction_usage()]
    }

    fn any_direction_usage() -> impl Strategy<Value = DirectionUsage> {
        (any::<[u64; 7]>()).prop_map(|n| DirectionUsage {
            frames: n[0],
            messages: n[1],
            payload_bytes: n[2],
            wire_bytes: n[3],
            pings: n[4],
            pongs: n[5],
            largest_message_bytes: n[6],
        })
    }

    /// Any text, weighted toward what needs escaping.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[\\x00-\\x20\"\\\\\\x7f/a-zé€😀]{0,12}", Just(String::new())]
    }

    fn addr() -> impl Strategy<Value = Option<std::net::SocketAddr>> {
        prop_oneof![
            Just(None),
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| Some((ip, port).into())),
            (any::<[u16; 8]>(), any::<u16>(), any::<u32>()).prop_map(|(ip, port, scope)| {
                Some(std::net::SocketAddr::V6(std::net::SocketAddrV6::new(ip.into(), port, 0, scope)))
            }),
        ]
    }

    fn float() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(0.0),
            Just(-0.0),
            Just(1e21),
            Just(1e-7),
            (0u32..1_000_000).prop_map(|n| f64::from(n) / 1000.0)
        ]
    }

    fn identity() -> impl Strategy<Value = Identity> {
        (
            any::<u128>(),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of((text(), text())),
            addr(),
            addr(),
            0u64..20_000_000_000_000,
        )
            .prop_map(|(id, tenant, route, pool, object, backend, client, ms)| {
                let started = SystemTime::UNIX_EPOCH + Duration::from_micros(ms * 1000 + ms % 997);
                let mut identity = Identity::new(uuid::Uuid::from_u128(id), client, started);
                identity.tenant = tenant.map(Name::from);
                identity.route = route.map(Name::from);
                identity.pool = pool.map(Name::from);
                identity.object = object.map(|(namespace, id)| Box::new(ObjectRef { namespace, id }));
                identity.backend = backend;
                identity
            })
    }

    /// Record times from 1970 to about 2600 (the text's range ends in 9999), to the nanosecond.
    fn stamp() -> impl Strategy<Value = Stamp> {
        (0u64..20_000_000_000_000_000).prop_map(|ns| {
            Stamp::new(SystemTime::UNIX_EPOCH + Duration::from_micros(ns / 1000) + Duration::from_nanos(ns % 1000))
        })
    }

    fn record() -> impl Strategy<Value = UsageRecord> {
        let kind = prop_oneof![
            Just(RecordKind::Start),
            Just(RecordKind::Interim),
            Just(RecordKind::Stop),
            Just(RecordKind::Object),
            Just(RecordKind::Rejections)
        ];
        let close =
            proptest::option::of((proptest::option::of(any::<u16>()), text(), any::<bool>(), text())).prop_map(|c| {
                c.map(|(code, initiator, clean, cause)| CloseUsage {
                    code,
                    initiator: initiator.into(),
                    clean,
                    cause: cause.into(),
                })
            });
        (
            (kind, any::<u128>(), any::<u64>(), stamp(), identity(), proptest::option::of(stamp())),
            (any::<[u64; 4]>(), any::<u16>(), proptest::option::of(text())),
            (direction_usage(), direction_usage(), direction_usage(), close),
            (text(), proptest::option::of(text()), proptest::collection::btree_map(text(), float(), 0..4)),
        )
            .prop_map(|(head, numbers, directions, tail)| {
                let (record, key_id, seq, at, identity, ended_at) = head;
                let idempotency_key = ConnectionKey { connection_id: uuid::Uuid::from_u128(key_id), seq };
                let ([duration_ms, active_ms, idle_ms, requests], status, subprotocol) = numbers;
                let (client_to_backend, backend_to_client, gateway, close) = directions;
                let (outcome, reason, units) = tail;
                UsageRecord {
                    record,
                    idempotency_key,
                    seq,
                    at,
                    identity: Arc::new(identity),
                    ended_at,
                    duration_ms,
                    active_ms,
                    idle_ms,
                    requests,
                    status,
                    subprotocol,
                    client_to_backend,
                    backend_to_client,
                    gateway,
                    close,
                    outcome: outcome.into(),
                    reason,
                    units,
                }
            })
    }

    fn direct(record: &UsageRecord) -> Vec<u8> {
        let mut out = b"prefix".to_vec();
        write_usage(&mut out, record);
        out.split_off(6)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The direct encoder writes exactly serde_json's bytes for any record.
        #[test]
        fn the_direct_encoding_is_serde_json_s(record in record()) {
            let serde = serde_json::to_vec(&record).unwrap();
            let ours = direct(&record);
            prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&serde));
        }
    }

    /// The word check is exact for every byte at every position, between neighbours that
    /// stress the bit tricks' borrows (0x00, 0x20, 0x80, 0xff and plain letters).
    #[test]
    fn the_word_check_finds_exactly_the_bytes_to_escape() {
        let escaped = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
        for fill in [b'a', 0x20, 0x21, 0x80, 0xff, 0x7f] {
            for at in 0..8 {
                for b in 0..=255u8 {
                    let mut word = [fill; 8];
                    word[at] = b;
                    let want = escaped(b) || escaped(fill);
                    assert_eq!(needs_escape(u64::from_le_bytes(word)), want, "{word:?}");
                }
            }
        }
    }

    /// The fast path's check reads eight-byte words and then the last eight bytes again
    /// (overlapping) or, below eight, padded: a byte to escape at every position of every
    /// length around those boundaries is found, and a string without one is copied as is.
    #[test]
    fn a_byte_to_escape_is_found_at_every_position_of_every_length() {
        for len in 0..=25 {
            let clean = "a".repeat(len);
            let mut out = Vec::new();
            string(&mut out, &clean);
            assert_eq!(out, serde_json::to_vec(&clean).unwrap(), "{clean:?}");
            for at in 0..len {
                for escape in ['"', '\\', '\n', '\u{0}', '\u{1f}'] {
                    let mut s = clean.clone();
                    s.replace_range(at..=at, &escape.to_string());
                    assert!(any_escape(s.as_bytes()), "{s:?}");
                    let mut out = Vec::new();
                    string(&mut out, &s);
                    assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{s:?}");
                }
            }
        }
    }

    /// Every control character, the two that need a backslash, DEL and non-ASCII text, one by
    /// one and together.
    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let all: String = (0u8..0x80).map(char::from).chain("é€😀".chars()).collect();
        for s in all.chars().map(String::from).chain([all.clone(), String::new()]) {
            let mut out = Vec::new();
            string(&mut out, &s);
            assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{s:?}");
        }
    }
}
