//! Fuzz target `frame_scanner`: `weir::relay::scanner::FrameScanner` fed arbitrary bytes split
//! into arbitrary chunks.
//!
//! Input layout (every byte string is a valid input):
//! - byte 0, the policy: bit 0 the sender (0 `Role::Client`, 1 `Role::Server`), bit 1
//!   `allowed_rsv` (0 or `0b100`), bits 2-3 one of four `Chunks` presets (slot 0 unused), bits
//!   4-5 one of four size-limit presets (`max_frame`, `max_message`; slot 0 none);
//! - byte 1: `n`, the number of split bytes (low 5 bits);
//! - `n` split bytes: the chunk lengths, used in a cycle (`b < 0xC0`: `b` bytes, 0 included, so
//!   empty chunks are fed too; else `(b - 0xBF) * 256` bytes);
//! - the rest: the byte stream of one direction.
//!
//! The stream is scanned three times, with fresh scanners: whole (one feed), split as above, and
//! one byte at a time. After every feed it checks that the counters only grow and stay
//! consistent with each other, that `wire_bytes` is the sum of what the relay forwards (the whole
//! chunk for `Feed::Ok`, `chunk[..valid_up_to]` for a violation), and that once poisoned a
//! scanner answers the same violation with `valid_up_to: 0` and counts nothing more. At the end
//! the three scans must agree:
//! - without a violation: on every counter, the close frame, `in_message` and
//!   `at_frame_boundary`;
//! - with one: on the violation and on every counter but those the scanner's contract lets
//!   depend on the split (see `compare`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::relay::frame::{Violation, MAX_HEADER_LEN};
use weir::relay::scanner::{Chunks, DirectionCounts, Feed, FrameScanner, Role, ScanLimits, ScanPolicy};

/// Chunk-size presets for `ScanLimits::chunks` (unused, one size, several, extremes).
const CHUNKS: [Chunks; 4] =
    [Chunks([0; 4]), Chunks([32 * 1024, 0, 0, 0]), Chunks([1, 125, 0, 4096]), Chunks([u32::MAX, 7, 65_536, 1])];
/// Size-limit presets, `(max_frame, max_message)` (0: no limit).
const LIMITS: [(u64, u64); 4] = [(0, 0), (125, 0), (0, 1000), (70_000, 100_000)];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let (max_frame, max_message) = LIMITS[usize::from((selector >> 4) & 3)];
    let policy = ScanPolicy {
        sender: if selector & 1 == 0 { Role::Client } else { Role::Server },
        allowed_rsv: if selector & 2 == 0 { 0 } else { 0b100 },
    };
    let limits = ScanLimits { chunks: CHUNKS[usize::from((selector >> 2) & 3)], max_frame, max_message };
    let (splits, stream) = match rest.split_first() {
        Some((&n, rest)) => rest.split_at(usize::from(n & 0x1F).min(rest.len())),
        None => (&[][..], rest),
    };
    let lens: Vec<usize> =
        splits.iter().map(|&b| if b < 0xC0 { usize::from(b) } else { usize::from(b - 0xBF) * 256 }).collect();

    let whole = scan(policy, limits, std::iter::once(stream));
    let split = scan(policy, limits, SplitChunks { stream, lens: &lens, next: 0, empty_run: 0 });
    let bytewise = scan(policy, limits, stream.chunks(1));
    compare(&whole, &split, stream.len(), "split");
    compare(&whole, &bytewise, stream.len(), "one byte at a time");
});

/// The stream cut into `lens[0]`, `lens[1]`, … bytes (cyclically); when a whole cycle of
/// lengths made no progress (all zero), the rest goes at once.
struct SplitChunks<'a> {
    stream: &'a [u8],
    lens: &'a [usize],
    next: usize,
    empty_run: usize,
}

impl<'a> Iterator for SplitChunks<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.stream.is_empty() {
            return None;
        }
        let len = if self.lens.is_empty() || self.empty_run > self.lens.len() {
            self.stream.len()
        } else {
            self.lens[self.next % self.lens.len()]
        };
        self.next += 1;
        self.empty_run = if len == 0 { self.empty_run + 1 } else { 0 };
        let (chunk, rest) = self.stream.split_at(len.min(self.stream.len()));
        self.stream = rest;
        Some(chunk)
    }
}

/// What one scan ended with.
struct Scanned {
    counts: DirectionCounts,
    violation: Option<Violation>,
    close: Option<weir::relay::scanner::CloseInfo>,
    in_message: bool,
    at_frame_boundary: bool,
    frame_remaining: Option<u64>,
}

/// Feeds `chunks` to a fresh scanner, checking the per-feed contract after every feed.
fn scan<'a>(policy: ScanPolicy, limits: ScanLimits, chunks: impl Iterator<Item = &'a [u8]>) -> Scanned {
    let mut s = FrameScanner::new(policy, limits);
    // Bytes the relay forwards: the whole chunk for `Ok`, `chunk[..valid_up_to]` for a violation.
    let mut forwarded: u64 = 0;
    for chunk in chunks {
        let before = *s.counts();
        let poisoned = s.violation();
        let close_before = s.close();
        let boundary_before = s.at_frame_boundary();
        let feed = s.feed(chunk);
        let after = *s.counts();
        check_monotonic(&before, &after);
        match (poisoned, feed) {
            (None, Feed::Ok) => {
                forwarded += chunk.len() as u64;
                assert_eq!(s.violation(), None, "Feed::Ok but the scanner is poisoned");
            }
            (None, Feed::Violation { valid_up_to, violation }) => {
                assert!(valid_up_to <= chunk.len(), "valid_up_to {valid_up_to} > chunk length {}", chunk.len());
                forwarded += valid_up_to as u64;
                assert_eq!(s.violation(), Some(violation), "violation() is not the violation returned");
                if valid_up_to > 0 {
                    assert!(s.at_frame_boundary(), "valid_up_to {valid_up_to} > 0 but not at a frame boundary");
                }
            }
            (Some(v), Feed::Violation { valid_up_to, violation }) => {
                assert_eq!(valid_up_to, 0, "a poisoned scanner let bytes through");
                assert_eq!(violation, v, "a poisoned scanner changed its violation");
                assert_eq!(after, before, "a poisoned scanner still counts");
                assert_eq!(s.at_frame_boundary(), boundary_before, "a poisoned scanner's boundary moved");
                assert_eq!(s.close(), close_before, "a poisoned scanner's close moved");
            }
            (Some(v), Feed::Ok) => panic!("poisoned by {v:?}, yet Feed::Ok"),
            // Only the relay asks a scanner to withhold a close (`Scan::withhold_close`).
            (_, Feed::CloseWithheld { .. }) => panic!("a close withheld that no one asked to withhold"),
        }
        assert_eq!(after.wire_bytes, forwarded, "wire_bytes is not the sum of the forwarded prefixes");
        if close_before.is_some() {
            assert_eq!(s.close(), close_before, "the first close frame is kept");
        }
        assert_eq!(s.policy(), policy);
        match s.frame_remaining() {
            Some(left) => {
                assert_eq!(s.violation(), None, "frame_remaining() after a violation");
                assert_eq!(left == 0, s.at_frame_boundary(), "frame_remaining() {left} vs at_frame_boundary()");
            }
            None if s.violation().is_none() => assert!(!s.at_frame_boundary(), "no frame_remaining() at a boundary"),
            None => {}
        }
        check_consistent(&after, policy, &limits);
    }
    Scanned {
        counts: *s.counts(),
        violation: s.violation(),
        close: s.close(),
        in_message: s.in_message(),
        at_frame_boundary: s.at_frame_boundary(),
        frame_remaining: s.frame_remaining(),
    }
}

/// Every counter of `after` is at least its value in `before`.
fn check_monotonic(before: &DirectionCounts, after: &DirectionCounts) {
    let pairs = [
        (before.frames, after.frames, "frames"),
        (before.messages, after.messages, "messages"),
        (before.text_messages, after.text_messages, "text_messages"),
        (before.binary_messages, after.binary_messages, "binary_messages"),
        (before.data_frames, after.data_frames, "data_frames"),
        (before.pings, after.pings, "pings"),
        (before.pongs, after.pongs, "pongs"),
        (before.closes, after.closes, "closes"),
        (before.payload_bytes, after.payload_bytes, "payload_bytes"),
        (before.wire_bytes, after.wire_bytes, "wire_bytes"),
        (before.largest_message_bytes, after.largest_message_bytes, "largest_message_bytes"),
    ];
    for (b, a, name) in pairs {
        assert!(a >= b, "{name} went backwards: {b} -> {a}");
    }
    for (k, (b, a)) in before.chunked.iter().zip(&after.chunked).enumerate() {
        assert!(a >= b, "chunked[{k}] went backwards: {b} -> {a}");
    }
}

/// Relations between the counters that hold after any feed.
fn check_consistent(c: &DirectionCounts, policy: ScanPolicy, limits: &ScanLimits) {
    assert_eq!(c.frames, c.data_frames + c.pings + c.pongs + c.closes, "frames by kind: {c:?}");
    assert_eq!(c.messages, c.text_messages + c.binary_messages, "messages by kind: {c:?}");
    assert!(c.messages <= c.data_frames, "more messages than data frames: {c:?}");
    // Every counted frame had its whole header forwarded (client frames carry a 4-byte mask),
    // and every counted payload byte was forwarded.
    let min_header = if policy.sender == Role::Client { 6 } else { 2 };
    assert!(c.payload_bytes + min_header * c.frames <= c.wire_bytes, "more counted than forwarded: {c:?}");
    for (k, (&n, &size)) in c.chunked.iter().zip(&limits.chunks.0).enumerate() {
        if size == 0 {
            assert_eq!(n, 0, "chunked[{k}] counts an unused slot");
        } else {
            assert!(n >= c.messages, "chunked[{k}] = {n} < {} messages (each is at least 1)", c.messages);
        }
    }
}

/// `other` (the same stream, split differently) agrees with `whole`, as far as the scanner's
/// contract says it must.
fn compare(whole: &Scanned, other: &Scanned, len: usize, how: &str) {
    assert_eq!(other.violation, whole.violation, "{how}: the violation depends on the split");
    assert_eq!(other.close, whole.close, "{how}: the close frame depends on the split");
    assert_eq!(other.in_message, whole.in_message, "{how}: in_message depends on the split");
    let Some(violation) = whole.violation else {
        assert_eq!(other.counts, whole.counts, "{how}: the counts depend on the split");
        assert_eq!(whole.counts.wire_bytes, len as u64, "a clean stream is forwarded whole");
        assert_eq!(other.at_frame_boundary, whole.at_frame_boundary, "{how}: at_frame_boundary depends on the split");
        assert_eq!(other.frame_remaining, whole.frame_remaining, "{how}: frame_remaining depends on the split");
        return;
    };
    // Fed whole, the offending frame is refused at its first byte; split, the bytes of its header
    // that arrived in earlier chunks were already forwarded (at most a header minus its last
    // byte), and with a bad close code the header and the code's first byte may have been too:
    // that frame is then counted (as a frame and a close, with at most 1 payload byte).
    let (w, o) = (&whole.counts, &other.counts);
    let extra_wire = o
        .wire_bytes
        .checked_sub(w.wire_bytes)
        .unwrap_or_else(|| panic!("{how}: forwarded less ({}) than whole ({})", o.wire_bytes, w.wire_bytes));
    let mut o_adj = *o;
    o_adj.wire_bytes = w.wire_bytes;
    if violation == Violation::InvalidCloseCode {
        let extra_frames = o.frames - w.frames;
        let extra_payload = o.payload_bytes - w.payload_bytes;
        assert!(extra_frames <= 1 && extra_payload <= extra_frames, "{how}: {w:?} vs {o:?}");
        assert!(extra_wire <= (MAX_HEADER_LEN + 1) as u64, "{how}: {extra_wire} more bytes forwarded");
        o_adj.frames = w.frames;
        o_adj.closes -= extra_frames;
        o_adj.payload_bytes = w.payload_bytes;
    } else {
        assert!(extra_wire < MAX_HEADER_LEN as u64, "{how}: {extra_wire} more bytes forwarded");
    }
    assert_eq!(&o_adj, w, "{how}: the counts before the offending frame depend on the split");
}
