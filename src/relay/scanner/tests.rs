use super::*;
use proptest::prelude::*;

const SERVER: ScanPolicy = ScanPolicy { sender: Role::Server, allowed_rsv: 0 };
const CLIENT: ScanPolicy = ScanPolicy { sender: Role::Client, allowed_rsv: 0 };
const DEFLATE_SERVER: ScanPolicy = ScanPolicy { sender: Role::Server, allowed_rsv: 0b100 };
const NONE: ScanLimits = ScanLimits::NONE;
const KEY: [u8; 4] = [0x9C, 0x41, 0xE7, 0x0D];

/// Test-only encoder, independent of the code under test: `b0` is the first header byte
/// (FIN, RSV, opcode); the length takes its minimal form; the payload is masked with `mask`.
pub(crate) fn frame(b0: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
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

fn key_for(policy: ScanPolicy) -> Option<[u8; 4]> {
    (policy.sender == Role::Client).then_some(KEY)
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    [&code.to_be_bytes()[..], reason].concat()
}

// ---- the scripted stream -------------------------------------------------------------

/// Where one frame of the script sits in the byte stream.
struct Span {
    start: usize,
    header_end: usize,
    end: usize,
}

struct Script {
    bytes: Vec<u8>,
    frames: Vec<Span>,
}

/// text, binary, fragmented text in 3 frames with a ping between fragments 1 and 2, pong,
/// a 70000-byte binary frame, close 4001 "bye". Client frames get a different key each.
fn script(sender: Role) -> Script {
    let parts: [(u8, Vec<u8>); 9] = [
        (0x81, b"hello".to_vec()),
        (0x82, vec![1, 2, 3]),
        (0x01, b"frag".to_vec()),
        (0x89, b"p1".to_vec()),
        (0x00, b"men".to_vec()),
        (0x80, b"ted".to_vec()),
        (0x8A, b"pong".to_vec()),
        (0x82, vec![0xAB; 70_000]),
        (0x88, close_payload(4001, b"bye")),
    ];
    let mut bytes = Vec::new();
    let mut frames = Vec::new();
    for (i, (b0, payload)) in parts.iter().enumerate() {
        let i = i as u8;
        let mask = (sender == Role::Client).then_some([0xA0 ^ i, 0x5B, 0xC3 ^ i, 0x1D]);
        let encoded = frame(*b0, mask, payload);
        let start = bytes.len();
        let end = start + encoded.len();
        frames.push(Span { start, header_end: end - payload.len(), end });
        bytes.extend_from_slice(&encoded);
    }
    Script { bytes, frames }
}

/// Hand-computed counts for the whole script.
fn script_truth(sender: Role) -> DirectionCounts {
    let wire_bytes = match sender {
        // 8 two-byte headers + one 10-byte header + 70029 payload bytes.
        Role::Server => 70_055,
        // The same plus a 4-byte key on each of the 9 frames.
        Role::Client => 70_091,
    };
    DirectionCounts {
        frames: 9,
        messages: 4,
        text_messages: 2,
        binary_messages: 2,
        data_frames: 6,
        pings: 1,
        pongs: 1,
        closes: 1,
        payload_bytes: 5 + 3 + 4 + 2 + 3 + 3 + 4 + 70_000 + 5,
        wire_bytes,
        largest_message_bytes: 70_000,
        chunked: [0; 4],
    }
}

const SCRIPT_CLOSE: CloseInfo = CloseInfo { code: Some(4001), reason_len: 3 };

/// The state after exactly the first `i` bytes of the script, from the frame layout.
fn assert_state_after(script: &Script, s: &FrameScanner, i: usize) {
    let c = s.counts();
    let f = &script.frames;
    let headers_seen = |idx: &[usize]| idx.iter().filter(|&&k| f[k].header_end <= i).count() as u64;
    assert_eq!(c.wire_bytes, i as u64, "wire at {i}");
    assert_eq!(c.frames, headers_seen(&[0, 1, 2, 3, 4, 5, 6, 7, 8]), "frames at {i}");
    assert_eq!(c.messages, headers_seen(&[0, 1, 5, 7]), "messages at {i}");
    assert_eq!(c.data_frames, headers_seen(&[0, 1, 2, 4, 5, 7]), "data frames at {i}");
    let payload: usize = f.iter().map(|sp| i.clamp(sp.header_end, sp.end) - sp.header_end).sum();
    assert_eq!(c.payload_bytes, payload as u64, "payload at {i}");
    let boundary = i == 0 || f.iter().any(|sp| sp.end == i);
    assert_eq!(s.at_frame_boundary(), boundary, "boundary at {i}");
    assert_eq!(s.in_message(), f[2].header_end <= i && i < f[5].header_end, "in_message at {i}");
    let close_known = i >= f[8].header_end + 2;
    assert_eq!(s.close(), close_known.then_some(SCRIPT_CLOSE), "close at {i}");
    assert_eq!(s.violation(), None);
}

fn assert_finished(s: &FrameScanner, sender: Role) {
    assert_eq!(*s.counts(), script_truth(sender));
    assert_eq!(s.close(), Some(SCRIPT_CLOSE));
    assert!(s.at_frame_boundary());
    assert!(!s.in_message());
    assert_eq!(s.violation(), None);
}

#[test]
fn script_layout_is_as_computed() {
    for (sender, policy) in [(Role::Server, SERVER), (Role::Client, CLIENT)] {
        let script = script(sender);
        assert_eq!(script.bytes.len() as u64, script_truth(sender).wire_bytes);
        assert_eq!(script.frames[0].start, 0);
        assert_eq!(script.frames[7].header_end - script.frames[7].start, if sender == Role::Client { 14 } else { 10 });
        let mut s = FrameScanner::new(policy, NONE);
        assert_eq!(s.feed(&script.bytes), Feed::Ok);
        assert_finished(&s, sender);
        assert_eq!(s.policy(), policy);
    }
}

#[test]
fn script_split_at_every_point() {
    for (sender, policy) in [(Role::Server, SERVER), (Role::Client, CLIENT)] {
        let script = script(sender);
        let b = &script.bytes;
        for i in 0..=b.len() {
            let mut s = FrameScanner::new(policy, NONE);
            assert_eq!(s.feed(&b[..i]), Feed::Ok, "split {i}");
            assert_state_after(&script, &s, i);
            assert_eq!(s.feed(&b[i..]), Feed::Ok, "split {i}");
            assert_finished(&s, sender);
            // The relay feeds each wakeup's chunks into counters of their own and adds them up
            // above it: the sum must be what one scanner with its own counters counts.
            let mut scan = Scan::new(policy);
            let (mut first, mut second) = (DirectionCounts::default(), DirectionCounts::default());
            assert_eq!(scan.feed(&NONE, &mut first, &b[..i]), Feed::Ok, "split {i}");
            assert_eq!(scan.feed(&NONE, &mut second, &b[i..]), Feed::Ok, "split {i}");
            first.add(&second);
            assert_eq!(first, script_truth(sender), "counters fed in pieces, split {i}");
        }
    }
}

#[test]
fn script_one_byte_at_a_time() {
    for (sender, policy) in [(Role::Server, SERVER), (Role::Client, CLIENT)] {
        let script = script(sender);
        let mut s = FrameScanner::new(policy, NONE);
        for (i, byte) in script.bytes.iter().enumerate() {
            assert_eq!(s.feed(std::slice::from_ref(byte)), Feed::Ok, "byte {i}");
            assert_state_after(&script, &s, i + 1);
        }
        assert_finished(&s, sender);
    }
}

#[test]
fn script_in_three_chunks_around_every_header() {
    // Cut each header at every inner offset while the rest of the stream goes in big chunks.
    for (sender, policy) in [(Role::Server, SERVER), (Role::Client, CLIENT)] {
        let script = script(sender);
        let b = &script.bytes;
        for sp in &script.frames {
            for a in sp.start..=sp.header_end {
                for z in a..=(sp.header_end + 2).min(b.len()) {
                    let mut s = FrameScanner::new(policy, NONE);
                    for chunk in [&b[..a], &b[a..z], &b[z..]] {
                        assert_eq!(s.feed(chunk), Feed::Ok);
                    }
                    assert_finished(&s, sender);
                }
            }
        }
    }
}

#[test]
fn empty_chunks_change_nothing() {
    let mut s = FrameScanner::new(SERVER, NONE);
    assert_eq!(s.feed(&[]), Feed::Ok);
    assert!(s.at_frame_boundary());
    assert_eq!(s.feed(&[0x81]), Feed::Ok);
    assert_eq!(s.feed(&[]), Feed::Ok);
    assert!(!s.at_frame_boundary());
    assert_eq!(s.counts().wire_bytes, 1);
    assert_eq!(s.counts().frames, 0);
}

// ---- violations ----------------------------------------------------------------------

/// Feeds `bytes` whole and split at every point. The offending frame starts at `start`, and
/// the violation can be seen once `detect` bytes are in (its header end, plus 2 for a close code).
fn assert_violation(policy: ScanPolicy, bytes: &[u8], start: usize, detect: usize, want: Violation) {
    let poisoned = |s: &mut FrameScanner| {
        assert_eq!(s.violation(), Some(want));
        let wire = s.counts().wire_bytes;
        let boundary = s.at_frame_boundary();
        assert_eq!(s.feed(b"\x81\x00more"), Feed::Violation { valid_up_to: 0, violation: want });
        assert_eq!(s.feed(&[]), Feed::Violation { valid_up_to: 0, violation: want });
        assert_eq!(s.counts().wire_bytes, wire, "poisoned scanner counts nothing");
        assert_eq!(s.at_frame_boundary(), boundary);
    };
    let mut s = FrameScanner::new(policy, NONE);
    assert_eq!(s.feed(bytes), Feed::Violation { valid_up_to: start, violation: want }, "whole");
    assert!(s.at_frame_boundary());
    assert_eq!(s.counts().wire_bytes, start as u64);
    let whole = *s.counts();
    poisoned(&mut s);
    for i in 0..=bytes.len() {
        let mut s = FrameScanner::new(policy, NONE);
        let first = s.feed(&bytes[..i]);
        if i >= detect {
            assert_eq!(first, Feed::Violation { valid_up_to: start, violation: want }, "split {i}");
            assert!(s.at_frame_boundary());
            assert_eq!(*s.counts(), whole, "split {i}");
        } else {
            assert_eq!(first, Feed::Ok, "split {i}");
            let second = s.feed(&bytes[i..]);
            if i <= start {
                assert_eq!(second, Feed::Violation { valid_up_to: start - i, violation: want }, "split {i}");
                assert!(s.at_frame_boundary(), "split {i}");
                assert_eq!(*s.counts(), whole, "split {i}");
            } else {
                // The offending frame began in the first chunk, which was already forwarded.
                assert_eq!(second, Feed::Violation { valid_up_to: 0, violation: want }, "split {i}");
                assert!(!s.at_frame_boundary(), "split {i}");
                assert_eq!(s.counts().wire_bytes, i as u64, "split {i}");
            }
        }
        poisoned(&mut s);
    }
}

/// A valid prefix (text "ok", empty ping), then `bad`, then a valid trailing frame;
/// returns (bytes, start of `bad`).
fn after_prefix(policy: ScanPolicy, bad: &[u8]) -> (Vec<u8>, usize) {
    let mut bytes = frame(0x81, key_for(policy), b"ok");
    bytes.extend_from_slice(&frame(0x89, key_for(policy), b""));
    let start = bytes.len();
    bytes.extend_from_slice(bad);
    bytes.extend_from_slice(&frame(0x82, key_for(policy), b"trailing frame"));
    (bytes, start)
}

fn check_header_violation(policy: ScanPolicy, bad: &[u8], header_len: usize, want: Violation) {
    let (bytes, start) = after_prefix(policy, bad);
    assert_violation(policy, &bytes, start, start + header_len, want);
}

#[test]
fn header_violations_from_frame_parser() {
    for policy in [SERVER, CLIENT] {
        let k = if policy.sender == Role::Client { 4 } else { 0 };
        let m = if k == 4 { 0x80 } else { 0 };
        let key: &[u8] = if k == 4 { &KEY } else { &[] };
        let with_key = |head: &[u8]| [head, key].concat();
        check_header_violation(policy, &with_key(&[0x83, m]), 2 + k, Violation::ReservedOpcode);
        check_header_violation(policy, &with_key(&[0x8F, m | 3]), 2 + k, Violation::ReservedOpcode);
        check_header_violation(
            policy,
            &with_key(&[0x82, m | 127, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            10 + k,
            Violation::LengthTooLarge,
        );
        check_header_violation(policy, &with_key(&[0x89, m | 126, 0, 126]), 4 + k, Violation::ControlFrameTooLong);
        check_header_violation(policy, &with_key(&[0x09, m]), 2 + k, Violation::FragmentedControlFrame);
    }
}

#[test]
fn masking_rules() {
    check_header_violation(CLIENT, &frame(0x81, None, b"hi"), 2, Violation::UnmaskedClientFrame);
    check_header_violation(CLIENT, &frame(0x8A, None, b""), 2, Violation::UnmaskedClientFrame);
    check_header_violation(SERVER, &frame(0x82, Some(KEY), b"hi"), 6, Violation::MaskedServerFrame);
    check_header_violation(SERVER, &frame(0x88, Some(KEY), &close_payload(1000, b"")), 6, Violation::MaskedServerFrame);
}

#[test]
fn reserved_bits_without_extension() {
    for policy in [SERVER, CLIENT] {
        let k = if policy.sender == Role::Client { 4 } else { 0 };
        for b0 in [0xC1, 0xA2, 0x91, 0xF2, 0xC9] {
            check_header_violation(policy, &frame(b0, key_for(policy), b"x"), 2 + k, Violation::ReservedBits);
        }
    }
}

#[test]
fn rsv1_with_permessage_deflate() {
    // Allowed on the first frame of a data message, fragmented or not.
    let mut ok = frame(0x41, None, b"comp");
    ok.extend(frame(0x89, None, b""));
    ok.extend(frame(0x80, None, b"ressed"));
    ok.extend(frame(0xC2, None, b"one frame"));
    let mut s = FrameScanner::new(DEFLATE_SERVER, NONE);
    assert_eq!(s.feed(&ok), Feed::Ok);
    assert_eq!(s.counts().messages, 2);
    assert_eq!(s.counts().largest_message_bytes, 10);

    // Never on a continuation frame.
    let mut bytes = frame(0x41, None, b"comp");
    let start = bytes.len();
    bytes.extend(frame(0xC0, None, b"ressed"));
    assert_violation(DEFLATE_SERVER, &bytes, start, start + 2, Violation::ReservedBits);
    // Never on control frames.
    for b0 in [0xC9, 0xCA, 0xC8] {
        let (bytes, start) = after_prefix(DEFLATE_SERVER, &frame(b0, None, b""));
        assert_violation(DEFLATE_SERVER, &bytes, start, start + 2, Violation::ReservedBits);
    }
    // RSV2/RSV3 stay reserved.
    let (bytes, start) = after_prefix(DEFLATE_SERVER, &frame(0xE1, None, b"x"));
    assert_violation(DEFLATE_SERVER, &bytes, start, start + 2, Violation::ReservedBits);
    // And RSV1 is rejected when nothing was negotiated.
    let (bytes, start) = after_prefix(SERVER, &frame(0xC1, None, b"x"));
    assert_violation(SERVER, &bytes, start, start + 2, Violation::ReservedBits);
}

/// An extension weir does not know may mark any frame: its RSV bits pass on continuation and
/// control frames too, and the message rules still hold.
#[test]
fn an_unknown_extension_s_rsv_bits_pass_on_every_frame() {
    let policy = ScanPolicy { allowed_rsv: 0b111 | super::RSV_ON_EVERY_FRAME, ..SERVER };
    let mut bytes = frame(0x61, None, b"first");
    bytes.extend(frame(0xD9, None, b"ping"));
    bytes.extend(frame(0x30, None, b"middle"));
    bytes.extend(frame(0xC0, None, b"last"));
    bytes.extend(frame(0xF8, None, &[0x03, 0xE8]));
    let mut s = FrameScanner::new(policy, NONE);
    assert_eq!(s.feed(&bytes), Feed::Ok);
    assert_eq!((s.counts().messages, s.counts().pings, s.counts().closes), (1, 1, 1));
    assert_eq!(s.counts().largest_message_bytes, 15);
    // Without the flag, the same bits are refused on a continuation frame.
    let plain = ScanPolicy { allowed_rsv: 0b111, ..SERVER };
    let mut bytes = frame(0x61, None, b"first");
    let start = bytes.len();
    bytes.extend(frame(0xC0, None, b"last"));
    assert_violation(plain, &bytes, start, start + 2, Violation::ReservedBits);
}

#[test]
fn fragmentation_rules() {
    for policy in [SERVER, CLIENT] {
        let key = key_for(policy);
        let k = if key.is_some() { 4 } else { 0 };
        // A continuation with nothing to continue, with and without FIN.
        check_header_violation(policy, &frame(0x80, key, b"x"), 2 + k, Violation::UnexpectedContinuation);
        check_header_violation(policy, &frame(0x00, key, b"x"), 2 + k, Violation::UnexpectedContinuation);
        // A new message while one is open, even with a control frame in between.
        let mut bytes = frame(0x01, key, b"open");
        bytes.extend(frame(0x89, key, b"ping"));
        let start = bytes.len();
        bytes.extend(frame(0x82, key, b"new"));
        assert_violation(policy, &bytes, start, start + 2 + k, Violation::ExpectedContinuation);
        // A finished message leaves nothing to continue.
        let mut bytes = frame(0x01, key, b"a");
        bytes.extend(frame(0x80, key, b"b"));
        let start = bytes.len();
        bytes.extend(frame(0x00, key, b"c"));
        assert_violation(policy, &bytes, start, start + 2 + k, Violation::UnexpectedContinuation);
    }
}

#[test]
fn close_payload_rules() {
    for policy in [SERVER, CLIENT] {
        let key = key_for(policy);
        let k = if key.is_some() { 4 } else { 0 };
        check_header_violation(policy, &frame(0x88, key, &[0x03]), 2 + k, Violation::InvalidClosePayload);
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 0xFFFF] {
            // Detected once both code bytes are in, whether or not a reason follows.
            for reason in [&b""[..], b"why"] {
                let bad = frame(0x88, key, &close_payload(code, reason));
                let (bytes, start) = after_prefix(policy, &bad);
                assert_violation(policy, &bytes, start, start + 2 + k + 2, Violation::InvalidCloseCode);
            }
        }
    }
}

#[test]
fn close_code_is_unmasked_before_validation() {
    // 1000 masked with 0xFFFF reads as 64535 on the wire, which would be invalid.
    let bytes = frame(0x88, Some([0xFF, 0xFF, 0x00, 0x00]), &close_payload(1000, b"ok"));
    assert_eq!(&bytes[6..8], &[0xFC, 0x17]);
    let mut s = FrameScanner::new(CLIENT, NONE);
    assert_eq!(s.feed(&bytes), Feed::Ok);
    assert_eq!(s.close(), Some(CloseInfo { code: Some(1000), reason_len: 2 }));
    // And an invalid code hidden behind a mask is still caught.
    let bytes = frame(0x88, Some([0x12, 0x34, 0x56, 0x78]), &close_payload(1005, b""));
    let mut s = FrameScanner::new(CLIENT, NONE);
    assert_eq!(s.feed(&bytes), Feed::Violation { valid_up_to: 0, violation: Violation::InvalidCloseCode });
}

#[test]
fn close_code_split_across_chunks() {
    let bytes = frame(0x88, Some(KEY), &close_payload(1001, b"away"));
    // Header in chunk 1, first code byte in chunk 2, second code byte and reason in chunk 3.
    let mut s = FrameScanner::new(CLIENT, NONE);
    assert_eq!(s.feed(&bytes[..6]), Feed::Ok);
    assert_eq!(s.counts().closes, 1);
    assert_eq!(s.close(), None);
    assert_eq!(s.feed(&bytes[6..7]), Feed::Ok);
    assert_eq!(s.close(), None);
    assert_eq!(s.feed(&bytes[7..]), Feed::Ok);
    assert_eq!(s.close(), Some(CloseInfo { code: Some(1001), reason_len: 4 }));
    assert!(s.at_frame_boundary());
}

#[test]
fn empty_close_is_known_at_its_header() {
    let mut s = FrameScanner::new(SERVER, NONE);
    assert_eq!(s.feed(&[0x88]), Feed::Ok);
    assert_eq!(s.close(), None);
    assert_eq!(s.feed(&[0x00]), Feed::Ok);
    assert_eq!(s.close(), Some(CloseInfo { code: None, reason_len: 0 }));
    assert!(s.at_frame_boundary());
}

#[test]
fn after_close() {
    for policy in [SERVER, CLIENT] {
        let key = key_for(policy);
        let k = if key.is_some() { 4 } else { 0 };
        // Control frames after close are tolerated; a second close keeps the first's info but
        // is validated all the same.
        let mut bytes = frame(0x01, key, b"half");
        bytes.extend(frame(0x88, key, &close_payload(1000, b"done")));
        bytes.extend(frame(0x89, key, b"still alive?"));
        bytes.extend(frame(0x8A, key, b""));
        bytes.extend(frame(0x88, key, &close_payload(1001, b"")));
        let mut s = FrameScanner::new(policy, NONE);
        assert_eq!(s.feed(&bytes), Feed::Ok);
        assert_eq!(s.close(), Some(CloseInfo { code: Some(1000), reason_len: 4 }));
        assert_eq!(s.counts().closes, 2);
        assert_eq!(s.counts().pings, 1);
        assert_eq!(s.counts().pongs, 1);
        assert!(s.in_message());
        assert_eq!(s.counts().messages, 0);
        let mut bad = bytes.clone();
        bad.extend(frame(0x88, key, &close_payload(1005, b"")));
        assert_violation(policy, &bad, bytes.len(), bytes.len() + 2 + k + 2, Violation::InvalidCloseCode);
        // Any data frame after close, a continuation of the open message included.
        for b0 in [0x80, 0x00, 0x81, 0x82] {
            let mut bad = bytes.clone();
            bad.extend(frame(b0, key, b"late"));
            assert_violation(policy, &bad, bytes.len(), bytes.len() + 2 + k, Violation::DataAfterClose);
        }
    }
}

#[test]
fn straddling_header_violation() {
    // A valid frame, then a reserved-opcode header split 1|1 across two chunks.
    let mut s = FrameScanner::new(SERVER, NONE);
    assert_eq!(s.feed(&[0x81, 0x02, b'h', b'i', 0x83]), Feed::Ok);
    assert!(!s.at_frame_boundary());
    assert_eq!(s.feed(&[0x00, 0x81, 0x00]), Feed::Violation { valid_up_to: 0, violation: Violation::ReservedOpcode });
    assert!(!s.at_frame_boundary(), "the relay already forwarded the header's first byte");
    assert_eq!(s.counts().wire_bytes, 5);
    assert_eq!(s.counts().frames, 1);
    // The same header whole in the second chunk: boundary, nothing of it forwarded.
    let mut s = FrameScanner::new(SERVER, NONE);
    assert_eq!(s.feed(&[0x81, 0x02, b'h', b'i']), Feed::Ok);
    assert_eq!(s.feed(&[0x83, 0x00]), Feed::Violation { valid_up_to: 0, violation: Violation::ReservedOpcode });
    assert!(s.at_frame_boundary());
    assert_eq!(s.counts().wire_bytes, 4);
}

#[test]
fn violation_order_for_one_header() {
    // Unmasked + RSV2 + continuation-without-message: masking is reported first.
    let mut s = FrameScanner::new(CLIENT, NONE);
    assert_eq!(s.feed(&[0xA0, 0x00]), Feed::Violation { valid_up_to: 0, violation: Violation::UnmaskedClientFrame });
    // RSV before sequencing.
    let mut s = FrameScanner::new(SERVER, NONE);
    assert_eq!(s.feed(&[0xA0, 0x00]), Feed::Violation { valid_up_to: 0, violation: Violation::ReservedBits });
    // Frame-parser errors before any per-direction rule.
    let mut s = FrameScanner::new(CLIENT, NONE);
    assert_eq!(s.feed(&[0xB3, 0x00]), Feed::Violation { valid_up_to: 0, violation: Violation::ReservedOpcode });
}

// ---- per-message chunk counts --------------------------------------------------------

/// Slot 0: 32 KiB (API Gateway's increment), slot 1 unused, slot 2: 2 KiB (Web PubSub's),
/// slot 3: 1 byte (every message counts its length, at least 1).
const CHUNKS: Chunks = Chunks([32_768, 0, 2_048, 1]);

/// An empty text message, binary messages of exactly 32768 and 32769 bytes, a text message
/// of 32769 bytes in three fragments (10000 + 22768 + 1) with a ping and a pong between
/// them, a binary message of 1 byte, then a close. Returns the bytes and, per completed
/// message, where its FIN header ends and its length.
fn chunk_script(sender: Role) -> (Vec<u8>, Vec<(usize, u64)>) {
    let parts: [(u8, usize); 9] = [
        (0x81, 0),
        (0x82, 32_768),
        (0x82, 32_769),
        (0x01, 10_000),
        (0x89, 5),
        (0x00, 22_768),
        (0x8A, 3),
        (0x80, 1),
        (0x82, 1),
    ];
    let mut bytes = Vec::new();
    let mut fins = Vec::new();
    let mut open = 0u64;
    for (i, (b0, len)) in parts.iter().enumerate() {
        let mask = (sender == Role::Client).then_some([0x11 ^ i as u8, 0x22, 0x33, 0x44]);
        bytes.extend_from_slice(&frame(*b0, mask, &vec![0x61; *len]));
        let header_end = bytes.len() - len;
        let opcode = b0 & 0x0F;
        if opcode < 0x8 {
            open += *len as u64;
            if b0 & 0x80 != 0 {
                fins.push((header_end, open));
                open = 0;
            }
        }
    }
    let close = close_payload(1000, b"");
    bytes.extend_from_slice(&frame(0x88, key_for(ScanPolicy::new(sender)), &close));
    (bytes, fins)
}

/// `max(1, ceil(len / size))` per used slot, summed over `lens`; written out independently
/// of the scanner's code.
fn expected_chunked(lens: impl IntoIterator<Item = u64>, chunks: Chunks) -> [u64; 4] {
    let mut out = [0u64; 4];
    for len in lens {
        for (total, size) in out.iter_mut().zip(chunks.0.map(u64::from)) {
            // Whole chunks, plus one for a remainder or for an empty message; none when unused.
            let Some(whole) = len.checked_div(size) else {
                continue;
            };
            let rest = len - whole * size;
            *total += whole + u64::from(rest > 0 || len == 0);
        }
    }
    out
}

/// What the chunk tests scan under: `CHUNKS`, no size limits.
const CHUNK_LIMITS: ScanLimits = ScanLimits { chunks: CHUNKS, ..ScanLimits::NONE };

#[test]
fn chunk_counts_of_the_script() {
    for sender in [Role::Server, Role::Client] {
        let (bytes, fins) = chunk_script(sender);
        let lens: Vec<u64> = fins.iter().map(|&(_, len)| len).collect();
        assert_eq!(lens, vec![0, 32_768, 32_769, 32_769, 1]);
        let mut s = FrameScanner::new(ScanPolicy::new(sender), CHUNK_LIMITS);
        assert_eq!(s.feed(&bytes), Feed::Ok);
        let c = s.counts();
        assert_eq!(c.messages, 5);
        // By hand: 32 KiB slot: 1 (empty) + 1 (32768) + 2 (32769) + 2 (fragmented 32769)
        // + 1 (1 byte); 2 KiB slot: 1 + 16 + 17 + 17 + 1; 1-byte slot: the lengths, the
        // empty message counting 1.
        assert_eq!(c.chunked, [7, 0, 52, 1 + 32_768 + 32_769 + 32_769 + 1]);
        assert_eq!(c.chunked, expected_chunked(lens, CHUNKS));
        // Control frames are not messages: 2 control frames and a close were not counted.
        assert_eq!(c.pings + c.pongs + c.closes, 3);
    }
}

#[test]
fn chunk_counts_split_at_every_point() {
    for sender in [Role::Server, Role::Client] {
        let (bytes, fins) = chunk_script(sender);
        let total = expected_chunked(fins.iter().map(|&(_, len)| len), CHUNKS);
        for i in 0..=bytes.len() {
            let mut s = FrameScanner::new(ScanPolicy::new(sender), CHUNK_LIMITS);
            assert_eq!(s.feed(&bytes[..i]), Feed::Ok, "split {i}");
            // A message counts once the header of its FIN frame is complete.
            let done = fins.iter().filter(|&&(end, _)| end <= i).map(|&(_, len)| len);
            assert_eq!(s.counts().chunked, expected_chunked(done, CHUNKS), "at {i}");
            assert_eq!(s.feed(&bytes[i..]), Feed::Ok, "split {i}");
            assert_eq!(s.counts().chunked, total, "split {i}");
        }
    }
}

#[test]
fn chunk_counts_one_byte_at_a_time() {
    let (bytes, fins) = chunk_script(Role::Client);
    let mut s = FrameScanner::new(ScanPolicy::new(Role::Client), CHUNK_LIMITS);
    for (i, byte) in bytes.iter().enumerate() {
        assert_eq!(s.feed(std::slice::from_ref(byte)), Feed::Ok, "byte {i}");
        let done = fins.iter().filter(|&&(end, _)| end <= i + 1).map(|&(_, len)| len);
        assert_eq!(s.counts().chunked, expected_chunked(done, CHUNKS), "at {}", i + 1);
    }
}

#[test]
fn chunk_boundaries_exact_multiples_and_empty() {
    let one = |len: usize| {
        let mut s = FrameScanner::new(SERVER, ScanLimits { chunks: Chunks([32_768, 0, 0, 0]), ..NONE });
        assert_eq!(s.feed(&frame(0x82, None, &vec![0; len])), Feed::Ok);
        s.counts().chunked[0]
    };
    assert_eq!(one(0), 1, "an empty message is at least one chunk");
    assert_eq!(one(1), 1);
    assert_eq!(one(32_767), 1);
    assert_eq!(one(32_768), 1, "an exact multiple takes no extra chunk");
    assert_eq!(one(32_769), 2);
    // API Gateway's "33 KB message is metered as two messages" (KB = 1024 bytes).
    assert_eq!(one(33 * 1024), 2);
    assert_eq!(one(65_536), 2);
    assert_eq!(one(65_537), 3);
}

#[test]
fn fragmented_message_is_one_message_of_its_total_length() {
    // 2048 + 1 bytes in two fragments with a ping between them: one message of 2049 bytes,
    // so 2 chunks of 2 KiB (not 1 + 1 per fragment and nothing for the ping).
    let mut s = FrameScanner::new(SERVER, ScanLimits { chunks: Chunks([2_048, 0, 0, 0]), ..NONE });
    assert_eq!(s.feed(&frame(0x02, None, &[0; 2_048])), Feed::Ok);
    assert_eq!(s.counts().chunked[0], 0, "nothing counts before the FIN frame");
    assert_eq!(s.feed(&frame(0x89, None, &[0; 125])), Feed::Ok);
    assert_eq!(s.counts().chunked[0], 0, "a ping is not a message");
    assert_eq!(s.feed(&frame(0x80, None, &[0])), Feed::Ok);
    assert_eq!(s.counts().chunked[0], 2);
    // A fragmented message whose fragments are all empty is still one chunk.
    assert_eq!(s.feed(&frame(0x01, None, &[])), Feed::Ok);
    assert_eq!(s.feed(&frame(0x80, None, &[])), Feed::Ok);
    assert_eq!(s.counts().chunked[0], 3);
    assert_eq!(s.counts().messages, 2);
}

#[test]
fn no_chunk_sizes_count_nothing() {
    let (bytes, _) = chunk_script(Role::Server);
    let mut s = FrameScanner::new(SERVER, NONE);
    assert!(NONE.chunks.is_unused());
    assert_eq!(s.feed(&bytes), Feed::Ok);
    assert_eq!(s.counts().chunked, [0; 4]);
    assert_eq!(s.counts().messages, 5);
}

#[test]
fn chunk_counts_stop_at_a_violation() {
    // A 3-byte message, then a masked server frame: only the first message counts.
    let mut bytes = frame(0x82, None, &[1, 2, 3]);
    bytes.extend_from_slice(&frame(0x82, Some(KEY), &[4, 5]));
    let mut s = FrameScanner::new(ScanPolicy::new(Role::Server), CHUNK_LIMITS);
    assert!(matches!(s.feed(&bytes), Feed::Violation { .. }));
    assert_eq!(s.counts().chunked, [1, 0, 1, 3]);
}

// ---- scale and footprint -------------------------------------------------------------

#[test]
fn huge_frame_is_skipped_arithmetically() {
    let mut s = FrameScanner::new(SERVER, NONE);
    let len: u64 = 1 << 62;
    let mut head = vec![0x82, 127];
    head.extend_from_slice(&len.to_be_bytes());
    assert_eq!(s.feed(&head), Feed::Ok);
    assert_eq!(s.counts().frames, 1);
    assert_eq!(s.counts().messages, 1);
    assert_eq!(s.counts().largest_message_bytes, len);
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..64 {
        assert_eq!(s.feed(&chunk), Feed::Ok);
    }
    assert_eq!(s.counts().payload_bytes, 64 << 20);
    assert_eq!(s.counts().wire_bytes, (64 << 20) + 10);
    assert!(!s.at_frame_boundary());
}

#[test]
fn footprint_is_small() {
    let total = std::mem::size_of::<FrameScanner>();
    assert!(total <= 216, "{total}");
    assert!(total - std::mem::size_of::<DirectionCounts>() <= 96, "{total}");
}

// ---- property tests against tungstenite's encoder --------------------------------------

mod prop_stream {
    use super::*;
    use tungstenite::protocol::frame::{
        coding::{CloseCode, Data, OpCode},
        CloseFrame, Frame, Utf8Bytes,
    };

    #[derive(Clone, Debug)]
    pub enum Ctl {
        Ping(usize),
        Pong(usize),
    }

    #[derive(Clone, Debug)]
    pub struct Msg {
        pub text: bool,
        pub size: usize,
        /// Fragment boundaries (up to 3, so 1..=4 frames).
        pub cuts: Vec<prop::sample::Index>,
        /// Control frames to put after fragment `j` (for all but the last fragment).
        pub between: Vec<Vec<Ctl>>,
    }

    #[derive(Clone, Debug)]
    pub enum Item {
        Msg(Msg),
        Ctl(Ctl),
    }

    fn ctl() -> impl Strategy<Value = Ctl> {
        prop_oneof![(0usize..=125).prop_map(Ctl::Ping), (0usize..=125).prop_map(Ctl::Pong)]
    }

    fn msg() -> impl Strategy<Value = Msg> {
        let size = prop_oneof![6 => 0usize..=64, 3 => 0usize..=1_000, 1 => 0usize..=70_000];
        (
            any::<bool>(),
            size,
            prop::collection::vec(any::<prop::sample::Index>(), 0..=3),
            prop::collection::vec(prop::collection::vec(ctl(), 0..=2), 3),
        )
            .prop_map(|(text, size, cuts, between)| Msg { text, size, cuts, between })
    }

    pub fn items() -> impl Strategy<Value = Vec<Item>> {
        prop::collection::vec(prop_oneof![4 => msg().prop_map(Item::Msg), 1 => ctl().prop_map(Item::Ctl)], 0..=8)
    }

    /// `None`: no close; `Some(None)`: empty close; `Some(Some((code, reason_len)))`.
    pub fn close() -> impl Strategy<Value = Option<Option<(u16, usize)>>> {
        let code = prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999];
        prop::option::of(prop::option::of((code, 0usize..=20)))
    }

    /// Encodes frames with tungstenite and keeps the truth alongside.
    pub struct Built {
        pub bytes: Vec<u8>,
        pub truth: DirectionCounts,
        pub close: Option<CloseInfo>,
        key: Option<[u8; 4]>,
        n: u8,
    }

    impl Built {
        fn push(&mut self, mut frame: Frame) {
            let payload_len = frame.payload().len() as u64;
            frame.header_mut().mask = self.key.map(|k| [k[0] ^ self.n, k[1], k[2].wrapping_add(self.n), k[3]]);
            self.n = self.n.wrapping_add(1);
            frame.format(&mut self.bytes).unwrap();
            self.truth.frames += 1;
            self.truth.payload_bytes += payload_len;
        }

        fn ctl(&mut self, c: &Ctl) {
            match *c {
                Ctl::Ping(n) => {
                    self.push(Frame::ping(vec![0x5A; n]));
                    self.truth.pings += 1;
                }
                Ctl::Pong(n) => {
                    self.push(Frame::pong(vec![0xA5; n]));
                    self.truth.pongs += 1;
                }
            }
        }

        pub fn new(items: &[Item], close: Option<Option<(u16, usize)>>, key: Option<[u8; 4]>, chunks: Chunks) -> Self {
            let mut b = Built { bytes: Vec::new(), truth: DirectionCounts::default(), close: None, key, n: 0 };
            for item in items {
                let m = match item {
                    Item::Ctl(c) => {
                        b.ctl(c);
                        continue;
                    }
                    Item::Msg(m) => m,
                };
                let mut bounds: Vec<usize> = m.cuts.iter().map(|ix| ix.index(m.size + 1)).collect();
                bounds.push(0);
                bounds.push(m.size);
                bounds.sort_unstable();
                let last = bounds.len() - 2;
                for j in 0..=last {
                    let data = if j > 0 {
                        Data::Continue
                    } else if m.text {
                        Data::Text
                    } else {
                        Data::Binary
                    };
                    let len = bounds[j + 1] - bounds[j];
                    b.push(Frame::message(vec![b'x'; len], OpCode::Data(data), j == last));
                    b.truth.data_frames += 1;
                    if j < last {
                        for c in m.between.get(j).into_iter().flatten() {
                            b.ctl(c);
                        }
                    }
                }
                b.truth.messages += 1;
                if m.text {
                    b.truth.text_messages += 1;
                } else {
                    b.truth.binary_messages += 1;
                }
                b.truth.largest_message_bytes = b.truth.largest_message_bytes.max(m.size as u64);
                for (total, size) in b.truth.chunked.iter_mut().zip(chunks.0) {
                    if size > 0 {
                        *total += (m.size as u64).div_ceil(u64::from(size)).max(1);
                    }
                }
            }
            if let Some(close) = close {
                let frame = close.map(|(code, reason_len)| CloseFrame {
                    code: CloseCode::from(code),
                    reason: Utf8Bytes::from("r".repeat(reason_len)),
                });
                b.push(Frame::close(frame));
                b.truth.closes += 1;
                b.close = Some(match close {
                    Some((code, reason_len)) => CloseInfo { code: Some(code), reason_len: reason_len as u16 },
                    None => CloseInfo { code: None, reason_len: 0 },
                });
            }
            b.truth.wire_bytes = b.bytes.len() as u64;
            b
        }
    }

    /// Cuts `bytes` at the given points.
    pub fn chunks<'a>(bytes: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = cuts.iter().map(|ix| ix.index(bytes.len() + 1)).collect();
        at.push(0);
        at.push(bytes.len());
        at.sort_unstable();
        at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Valid traffic encoded by tungstenite, split at random points, matches the truth (chunk
    /// counts included, for random chunk sizes).
    #[test]
    fn tungstenite_streams_match_truth(
        items in prop_stream::items(),
        close in prop_stream::close(),
        client in any::<bool>(),
        key in any::<[u8; 4]>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..=12),
        sizes in prop::array::uniform4(prop_oneof![2 => Just(0u32), 2 => 1u32..=100, 1 => 1u32..=70_000, 1 => any::<u32>()]),
    ) {
        let chunks = Chunks(sizes);
        let policy = if client { CLIENT } else { SERVER };
        let built = prop_stream::Built::new(&items, close, client.then_some(key), chunks);
        let mut s = FrameScanner::new(policy, ScanLimits { chunks, ..NONE });
        for chunk in prop_stream::chunks(&built.bytes, &cuts) {
            prop_assert_eq!(s.feed(chunk), Feed::Ok);
        }
        prop_assert_eq!(*s.counts(), built.truth);
        prop_assert_eq!(s.close(), built.close);
        prop_assert!(s.at_frame_boundary());
        prop_assert!(!s.in_message());
        prop_assert_eq!(s.violation(), None);
    }
}

/// One frame of a hostile stream: (first byte, flip the mask bit, length form, payload).
/// Mostly plausible headers, some garbage; form 0..=5 is minimal, 6 forces 16-bit, 7 forces 64-bit.
fn hostile_frame() -> impl Strategy<Value = (u8, bool, u8, Vec<u8>)> {
    let b0 = prop_oneof![
        8 => prop::sample::select(vec![0x81u8, 0x82, 0x01, 0x02, 0x00, 0x80, 0x88, 0x89, 0x8A, 0xC1, 0xC0, 0x08]),
        1 => any::<u8>(),
    ];
    let payload = prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..=20),
        1 => prop::collection::vec(any::<u8>(), 0..=200),
    ];
    (b0, prop::bool::weighted(0.05), 0u8..8, payload)
}

fn hostile_bytes(frames: &[(u8, bool, u8, Vec<u8>)], client: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (b0, flip_mask, form, payload)) in frames.iter().enumerate() {
        let masked = client != *flip_mask;
        let m = if masked { 0x80 } else { 0 };
        let len = payload.len();
        out.push(*b0);
        match form {
            7 => {
                out.push(m | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
            6 => {
                out.push(m | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ if len < 126 => out.push(m | len as u8),
            _ => {
                out.push(m | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        let key = [i as u8, 0x33, 0x66, 0x99];
        if masked {
            out.extend_from_slice(&key);
        }
        let mut payload = payload.clone();
        // Half of the close frames carry a valid code (1000), the rest a random one.
        if b0 & 0x0F == 0x8 && payload.len() >= 2 && payload[0] & 1 == 0 {
            let key = if masked { key } else { [0; 4] };
            payload[0] = 0x03 ^ key[0];
            payload[1] = 0xE8 ^ key[1];
        }
        out.extend_from_slice(&payload);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any stream, split anywhere, gives the same verdict as the whole stream: the same
    /// violation at the same offset (when the split leaves it on a boundary), and the same
    /// counts. Never panics.
    #[test]
    fn split_never_changes_the_verdict(
        frames in prop::collection::vec(hostile_frame(), 0..=8),
        garbage in prop::collection::vec(any::<u8>(), 0..=4),
        client in any::<bool>(),
        allowed_rsv in 0u8..16,
        max_frame in prop_oneof![Just(0u64), 1u64..=130],
        max_message in prop_oneof![Just(0u64), 1u64..=130],
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..=12),
    ) {
        let policy = ScanPolicy { sender: if client { Role::Client } else { Role::Server }, allowed_rsv };
        let limits = ScanLimits { max_frame, max_message, ..NONE };
        let mut bytes = hostile_bytes(&frames, client);
        bytes.extend_from_slice(&garbage);

        let mut whole = FrameScanner::new(policy, limits);
        let verdict = whole.feed(&bytes);

        let mut split = FrameScanner::new(policy, limits);
        let mut chunk_start = 0;
        let mut found = None;
        for chunk in prop_stream::chunks(&bytes, &cuts) {
            if let Feed::Violation { valid_up_to, .. } = split.feed(chunk) {
                prop_assert!(valid_up_to <= chunk.len());
                found = Some(valid_up_to);
                break;
            }
            chunk_start += chunk.len();
        }
        prop_assert_eq!(split.violation(), whole.violation());
        match (verdict, found) {
            (Feed::Ok, None) => {
                prop_assert_eq!(split.counts(), whole.counts());
                prop_assert_eq!(split.close(), whole.close());
                prop_assert_eq!(split.at_frame_boundary(), whole.at_frame_boundary());
                prop_assert_eq!(split.in_message(), whole.in_message());
                prop_assert_eq!(whole.counts().wire_bytes, bytes.len() as u64);
            }
            (Feed::Violation { valid_up_to: offset, .. }, Some(valid_up_to)) => {
                prop_assert!(whole.at_frame_boundary());
                prop_assert_eq!(whole.counts().wire_bytes, offset as u64);
                if split.at_frame_boundary() {
                    prop_assert_eq!(chunk_start + valid_up_to, offset);
                    prop_assert_eq!(split.counts(), whole.counts());
                    prop_assert_eq!(split.close(), whole.close());
                } else {
                    prop_assert_eq!(valid_up_to, 0);
                    prop_assert!(offset < chunk_start);
                    prop_assert_eq!(split.counts().wire_bytes, chunk_start as u64);
                }
            }
            (verdict, found) => prop_assert!(false, "whole {:?} vs split {:?}", verdict, found),
        }
    }
}

/// Payload moved without being read (`skip_payload`, the relay's splice path) counts exactly as
/// fed payload, from every split point of the script; nothing is skipped inside a header or a
/// close code, nor past the current frame.
#[test]
fn skipped_payload_counts_as_fed_from_every_point() {
    for (sender, policy) in [(Role::Server, SERVER), (Role::Client, CLIENT)] {
        let script = script(sender);
        let b = &script.bytes;
        for i in 0..=b.len() {
            // Every point outside the big frame, every 61st inside it (70 000 bytes).
            let big = &script.frames[7];
            if i > big.header_end + 3 && i < big.end - 3 && i % 61 != 0 {
                continue;
            }
            for want in [1u64, 4096, u64::MAX] {
                let mut s = FrameScanner::new(policy, NONE);
                assert_eq!(s.feed(&b[..i]), Feed::Ok);
                let before = s.frame_remaining();
                let skipped = s.skip_payload(want);
                assert!(skipped <= want, "at {i}: skipped {skipped} of {want}");
                match before {
                    None => assert_eq!(skipped, 0, "at {i}: inside a header"),
                    Some(rest) if skipped > 0 => assert_eq!(skipped, rest.min(want), "at {i}"),
                    Some(_) => {}
                }
                let at = i + skipped as usize;
                assert_state_after(&script, &s, at);
                assert_eq!(s.feed(&b[at..]), Feed::Ok, "rest after {i}+{skipped}");
                assert_finished(&s, sender);
            }
        }
        // Inside the close frame's code nothing is skipped: the code must be read.
        let close = &script.frames[8];
        let mut s = FrameScanner::new(policy, NONE);
        assert_eq!(s.feed(&b[..close.header_end + 1]), Feed::Ok);
        assert_eq!(s.skip_payload(10), 0);
    }
}

/// Runs of small whole data frames (the fast path) count exactly as the same bytes fed one at a
/// time (the general path), in both directions, with an extension's RSV1; whatever the fast
/// path leaves (a size limit under 125, a refused RSV bit, a fragment, a control frame, chunk
/// counting) gets the general path's verdict at the same byte.
#[test]
fn runs_of_small_frames_count_as_fed_a_byte_at_a_time() {
    let deflate_client = ScanPolicy { sender: Role::Client, allowed_rsv: 0b100 };
    let limited = ScanLimits { max_frame: 40, ..NONE };
    let chunked = ScanLimits { chunks: Chunks([16, 0, 0, 0]), ..NONE };
    for (policy, limits) in [
        (SERVER, NONE),
        (CLIENT, NONE),
        (DEFLATE_SERVER, NONE),
        (deflate_client, NONE),
        (CLIENT, limited),
        (SERVER, chunked),
    ] {
        let key = key_for(policy);
        let mut bytes = Vec::new();
        let mut messages = 0;
        for n in 0..200usize {
            let len = (n * 7) % 126;
            let deflate = policy.allowed_rsv & 0b100 != 0;
            let b0 = match n % 11 {
                3 if deflate => 0x81 | 0x40, // RSV1: the extension's compressed message
                5 => 0x01,                   // a fragment (FIN clear) ...
                6 => 0x80,                   // ... and its last part
                7 => 0x89,                   // a ping
                _ if n % 2 == 0 => 0x82,     // binary
                _ => 0x81,                   // text
            };
            messages += u64::from(b0 & 0x80 != 0 && b0 & 0x0F < 0x8);
            bytes.extend(frame(b0, key, &vec![b'x'; len]));
        }
        if policy.allowed_rsv == 0 {
            // RSV1 without the extension, after all that: refused where it starts.
            bytes.extend(frame(0x81 | 0x40, key, b"late"));
        }
        let mut whole = FrameScanner::new(policy, limits);
        let verdict = whole.feed(&bytes);
        let mut bytewise = FrameScanner::new(policy, limits);
        let mut found = Feed::Ok;
        for (i, b) in bytes.iter().enumerate() {
            if let Feed::Violation { violation, .. } = bytewise.feed(std::slice::from_ref(b)) {
                found = Feed::Violation { valid_up_to: i, violation };
                break;
            }
        }
        match (verdict, found) {
            (Feed::Ok, Feed::Ok) => {}
            (Feed::Violation { violation: a, valid_up_to }, Feed::Violation { violation: b, .. }) => {
                assert_eq!(a, b, "{policy:?}");
                assert!(whole.at_frame_boundary(), "{policy:?}: stopped at a frame start");
                assert_eq!(whole.counts().wire_bytes, valid_up_to as u64, "{policy:?}");
            }
            other => panic!("{policy:?} {limits:?}: whole vs byte by byte {other:?}"),
        }
        // The same counts, but for the bytes of the refused frame's header a byte-by-byte feed
        // had already taken (the module doc: counters cover what was forwarded).
        let mut same = *bytewise.counts();
        same.wire_bytes = whole.counts().wire_bytes;
        assert_eq!(whole.counts(), &same, "{policy:?} {limits:?}");
        if limits == NONE {
            assert_eq!(whole.counts().messages, messages, "{policy:?}: every message of the run");
        }
    }
}

/// `withhold_close` at every split of [text, close, text] in two chunks, both senders: the
/// close is withheld (nothing of it or after it passes, it is not counted) when it starts at a
/// chunk's frame boundary or its header completes within the chunk it starts in; when only part
/// of its header came in the first chunk (already forwarded), it passes as any close (and the
/// text after it is data after a close).
#[test]
fn a_withheld_close_stops_the_stream_at_its_first_byte_at_every_split() {
    for policy in [SERVER, CLIENT] {
        let key = key_for(policy);
        let text = frame(0x81, key, b"before");
        let close = frame(0x88, key, &close_payload(1000, b"bye"));
        let bytes = [&text[..], &close, &frame(0x81, key, b"after")].concat();
        let close_header = close.len() - 5;
        for split in 0..=bytes.len() {
            let mut s = Scan::new(policy);
            s.withhold_close();
            let mut c = DirectionCounts::default();
            let (a, b) = bytes.split_at(split);
            let passed: Vec<Feed> = [a, b].iter().map(|chunk| s.feed(&NONE, &mut c, chunk)).collect();
            let forwarded: usize = passed
                .iter()
                .zip([a.len(), b.len()])
                .map(|(f, len)| match *f {
                    Feed::Ok => len,
                    Feed::CloseWithheld { valid_up_to } | Feed::Violation { valid_up_to, .. } => valid_up_to,
                })
                .sum();
            let partial_header = split > text.len() && split < text.len() + close_header;
            if partial_header {
                // The data after it is data after a close, as without the flag.
                assert_eq!(forwarded, text.len() + close.len(), "split {split}: {passed:?}");
                assert_eq!(s.close().map(|c| c.code), Some(Some(1000)), "split {split}");
                assert_eq!(c.frames, 2, "split {split}");
            } else {
                assert_eq!(forwarded, text.len(), "split {split}: {passed:?}");
                assert!(passed.iter().any(|f| matches!(f, Feed::CloseWithheld { .. })), "split {split}");
                assert_eq!((s.close(), s.violation()), (None, None), "split {split}");
                assert!(s.at_frame_boundary(), "split {split}");
                assert_eq!((c.frames, c.wire_bytes), (1, text.len() as u64), "split {split}");
                assert_eq!(s.feed(&NONE, &mut c, b"\x81\x00"), Feed::CloseWithheld { valid_up_to: 0 });
            }
        }
    }
}

/// Without `withhold_close`, a close passes as before (the flag is the relay's to set).
#[test]
fn a_close_passes_unless_withheld() {
    let mut s = Scan::new(SERVER);
    let mut c = DirectionCounts::default();
    assert_eq!(s.feed(&NONE, &mut c, &frame(0x88, None, &close_payload(1000, b""))), Feed::Ok);
    assert_eq!(s.close().map(|c| c.code), Some(Some(1000)));
}
