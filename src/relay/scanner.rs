//! Frame scanner: follows one direction of a relayed WebSocket connection frame by frame,
//! counting frames, messages and bytes and checking what RFC 6455 requires of that direction.
//!
//! Hot path: [`Scan::feed`] runs once per relayed chunk. Contract:
//! - Sans-io: no I/O, no clock, no allocation, no copy of the payload. The relay forwards the very
//!   bytes it fed; the scanner only observes them.
//! - Chunks may be split anywhere, also inside a 2–14 byte header and down to 1 byte at a time;
//!   the verdicts and counts after the last chunk do not depend on the split.
//! - It reads header bytes and nothing else, except the first 2 payload bytes of a close frame,
//!   which it unmasks with the frame's key to learn the close code. A partial header is kept in a
//!   14-byte buffer; payload is skipped with arithmetic, so a feed costs O(headers in the chunk).
//! - Its parsing state ([`Scan`]) is 64 bytes on 64-bit targets. It keeps no counters: each feed
//!   adds what it counted to the counters it is given, so the relay keeps none per connection (it
//!   counts a wakeup's worth on its stack and hands that to its observer). Nor does it keep the
//!   route's limits and chunk sizes ([`ScanLimits`], the same in both directions): each feed is
//!   given them, so a connection holds them once, not once per direction. [`FrameScanner`] is a
//!   scan with its own limits and counters.
//! - Per-message chunk counts ([`DirectionCounts::chunked`]) cost a comparison per completed
//!   message when no chunk size is set, and one division per set size otherwise.
//!
//! What it enforces per direction: the header rules of [`super::frame::parse_header`]; client
//! frames masked and server frames unmasked; RSV bits only as [`ScanPolicy::allowed_rsv`] allows
//! and only on the first frame of a data message; continuation frames only inside a fragmented
//! message and no new data message inside one; close payloads empty or carrying a valid code; no
//! data frame after this direction's close frame; then the configured size limits
//! ([`ScanLimits::max_frame`], [`ScanLimits::max_message`]), reported like violations but marked
//! by [`Violation::is_limit`]. The checks of a complete header run in that order, so one header
//! yields one deterministic violation.
//!
//! Choices the relay must know:
//! - Control frames after this direction's close frame are tolerated and counted (a second close
//!   frame is validated like the first, but [`FrameScanner::close`] keeps the first).
//! - A close reason is not checked for UTF-8 (that would mean reading payload).
//! - After a violation the scanner is poisoned and the counters cover exactly the bytes the
//!   relay forwards: all earlier chunks plus `chunk[..valid_up_to]`.
//! - `valid_up_to` counts from the start of the chunk that revealed the violation. When the
//!   offending frame began in an earlier, already forwarded chunk (a header split across chunks,
//!   or a close code arriving after its header), it is 0 and [`FrameScanner::at_frame_boundary`]
//!   is false: the peer has seen part of a frame, so the relay cannot inject a clean close frame
//!   and should drop the connection instead. When `at_frame_boundary` is true, forwarding
//!   `chunk[..valid_up_to]` and then a close frame (1002) leaves the peer a well-formed stream.

// On top of the relay module's denies (no unwrap, expect or panic): no indexing that can panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use super::frame::{close_code_is_valid, header_len, parse_header, FrameHeader, Opcode, Violation, MAX_HEADER_LEN};

/// Who sends the bytes a scanner sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The WebSocket client: every frame must be masked.
    Client,
    /// The WebSocket server (the backend): no frame may be masked.
    Server,
}

/// What one direction may send, fixed at the handshake (its sizes and chunk counting are the
/// connection's [`ScanLimits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanPolicy {
    /// The sender of this direction's bytes.
    pub sender: Role,
    /// RSV bits the negotiated extensions allow on the first frame of a data message
    /// (`0b100` = RSV1 for permessage-deflate, `0` with no extension); never on control or
    /// continuation frames, unless [`RSV_ON_EVERY_FRAME`] is set too (an extension weir does not
    /// know: it may use them on any frame).
    pub allowed_rsv: u8,
}

/// What a connection's scanners count and allow in both directions, fixed at the handshake (the
/// route's limits, the config's chunk sizes): held once per connection and given to each feed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanLimits {
    /// Chunk sizes whose per-message counts go to [`DirectionCounts::chunked`] (slot by slot).
    pub chunks: Chunks,
    /// Largest payload of one data frame, bytes (0: no limit); a larger header is
    /// [`Violation::FrameTooBig`].
    pub max_frame: u64,
    /// Largest data message (its frames' payloads summed), bytes (0: no limit); the header that
    /// takes a message over it is [`Violation::MessageTooBig`].
    pub max_message: u64,
}

impl ScanLimits {
    /// No size limits and no chunk counting.
    pub const NONE: ScanLimits = ScanLimits { chunks: Chunks([0; 4]), max_frame: 0, max_message: 0 };
}

/// In [`ScanPolicy::allowed_rsv`]: the allowed RSV bits may be set on every frame, control and
/// continuation frames too (an extension weir does not know was negotiated; weir cannot tell
/// which frames it marks, so it leaves them to the peers, as a direct connection would).
pub const RSV_ON_EVERY_FRAME: u8 = 0b1000;

impl ScanPolicy {
    /// A policy for `sender` with no extension.
    #[must_use]
    pub const fn new(sender: Role) -> ScanPolicy {
        ScanPolicy { sender, allowed_rsv: 0 }
    }
}

/// Up to four chunk sizes, in bytes, for per-message quantisation; 0 marks an unused slot.
///
/// For every completed data message and every non-zero slot `k`, the scanner adds
/// `max(1, ceil(message_len / chunks[k]))` to `DirectionCounts::chunked[k]`: the number of
/// `chunks[k]`-byte pieces the message is billed as (a vendor metering "in 32 KB increments"
/// counts a 33 KB message as 2, an empty one as 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Chunks(pub [u32; 4]);

impl Chunks {
    /// True when every slot is 0: no chunk counting (one comparison per completed message).
    #[must_use]
    pub fn is_unused(&self) -> bool {
        self.0 == [0; 4]
    }
}

/// Traffic counters for one direction, all monotonic. `C` holds the chunk counts: `[u64; 4]`
/// (the default) or nothing ([`PlainCounts`]).
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectionCounts<C = [u64; 4]> {
    /// Frames whose header has been fully seen, in frames.
    pub frames: u64,
    /// Completed data messages (counted at the header of their FIN frame), in messages.
    pub messages: u64,
    /// Completed text messages, in messages.
    pub text_messages: u64,
    /// Completed binary messages, in messages.
    pub binary_messages: u64,
    /// Text, binary and continuation frames whose header has been seen, in frames.
    pub data_frames: u64,
    /// Ping frames whose header has been seen, in frames.
    pub pings: u64,
    /// Pong frames whose header has been seen, in frames.
    pub pongs: u64,
    /// Close frames whose header has been seen, in frames.
    pub closes: u64,
    /// Payload bytes of all frames, control frames included, counted as fed, in bytes.
    pub payload_bytes: u64,
    /// Every byte fed, headers and payload, in bytes.
    pub wire_bytes: u64,
    /// Largest completed data message (sum of its frames' payload lengths), in bytes.
    pub largest_message_bytes: u64,
    /// Per chunk-size slot of [`ScanLimits::chunks`]: completed data messages counted in chunks,
    /// each `max(1, ceil(len / size))`, in chunks (0 for unused slots).
    pub chunked: C,
}

/// A direction's counters without its chunk counts: 88 bytes instead of 120, what a connection's
/// live-set entry keeps inline (its chunk counts, zero unless billing units count in chunks, are
/// boxed apart).
pub type PlainCounts = DirectionCounts<()>;

impl<C> DirectionCounts<C> {
    /// Adds `more`'s counters (counted since these were), not its chunk counts: every counter
    /// summed, the largest message the larger of the two.
    pub fn add_counters<D>(&mut self, more: &DirectionCounts<D>) {
        let sum = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        sum(&mut self.frames, more.frames);
        sum(&mut self.messages, more.messages);
        sum(&mut self.text_messages, more.text_messages);
        sum(&mut self.binary_messages, more.binary_messages);
        sum(&mut self.data_frames, more.data_frames);
        sum(&mut self.pings, more.pings);
        sum(&mut self.pongs, more.pongs);
        sum(&mut self.closes, more.closes);
        sum(&mut self.payload_bytes, more.payload_bytes);
        sum(&mut self.wire_bytes, more.wire_bytes);
        self.largest_message_bytes = self.largest_message_bytes.max(more.largest_message_bytes);
    }

    /// These counters with `chunked` as their chunk counts.
    pub fn with_chunks<D>(&self, chunked: D) -> DirectionCounts<D> {
        DirectionCounts {
            frames: self.frames,
            messages: self.messages,
            text_messages: self.text_messages,
            binary_messages: self.binary_messages,
            data_frames: self.data_frames,
            pings: self.pings,
            pongs: self.pongs,
            closes: self.closes,
            payload_bytes: self.payload_bytes,
            wire_bytes: self.wire_bytes,
            largest_message_bytes: self.largest_message_bytes,
            chunked,
        }
    }
}

impl DirectionCounts {
    /// Adds `more` (counted since these were): every counter summed, chunk counts too, the
    /// largest message the larger of the two.
    pub fn add(&mut self, more: &DirectionCounts) {
        self.add_counters(more);
        add_chunk_counts(&mut self.chunked, &more.chunked);
    }
}

/// Adds the chunk counts `more` (counted since `total` was) to `total`, slot by slot.
pub fn add_chunk_counts(total: &mut [u64; 4], more: &[u64; 4]) {
    for (a, b) in total.iter_mut().zip(more) {
        *a = a.saturating_add(*b);
    }
}

/// The close frame a direction sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseInfo {
    /// Close status code; `None` when the close frame had an empty payload.
    pub code: Option<u16>,
    /// Length of the close reason in bytes (payload length minus the 2-byte code).
    pub reason_len: u16,
}

/// Result of feeding one chunk.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// The whole chunk is valid and may be forwarded.
    Ok,
    /// The stream breaks RFC 6455; forward only `chunk[..valid_up_to]`.
    Violation {
        /// Bytes of this chunk before the first header byte of the offending frame; 0 when that
        /// frame began in an earlier chunk (then [`FrameScanner::at_frame_boundary`] is false).
        valid_up_to: usize,
        /// What was broken.
        violation: Violation,
    },
    /// A close frame begins at `chunk[valid_up_to]` and the scanner was told to withhold it
    /// ([`Scan::withhold_close`]): forward only `chunk[..valid_up_to]`. The scanner stops there
    /// (at a frame boundary) and passes nothing more; the close is not counted.
    CloseWithheld {
        /// Bytes of this chunk before the close frame's first header byte (0 on every later
        /// feed).
        valid_up_to: usize,
    },
}

/// Progress through the first two payload bytes of a close frame (its status code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CloseCode {
    /// No close code is being read.
    Idle,
    /// A close frame's header is done and its code bytes are still arriving.
    Reading {
        /// Code bytes seen so far (0 or 1), still masked.
        got: u8,
        /// The masked code bytes.
        bytes: [u8; 2],
        /// The frame's mask key (zeros when unmasked).
        key: [u8; 4],
        /// Reason length of the frame, in bytes.
        reason_len: u16,
    },
}

/// Sans-io frame scanner for one direction of a WebSocket connection, with its counters.
#[derive(Clone, Debug)]
pub struct FrameScanner {
    scan: Scan,
    /// Its sizes and chunk counting.
    limits: ScanLimits,
    /// Counters so far.
    counts: DirectionCounts,
}

impl FrameScanner {
    /// A scanner at the start of a direction's byte stream.
    #[must_use]
    pub fn new(policy: ScanPolicy, limits: ScanLimits) -> Self {
        FrameScanner { scan: Scan::new(policy), limits, counts: DirectionCounts::default() }
    }

    /// Scans the next chunk of the stream; see [`Feed`] for what to forward.
    ///
    /// Once poisoned, returns the same violation with `valid_up_to: 0` and counts nothing more.
    pub fn feed(&mut self, chunk: &[u8]) -> Feed {
        self.scan.feed(&self.limits, &mut self.counts, chunk)
    }

    /// Counters so far.
    #[must_use]
    pub fn counts(&self) -> &DirectionCounts {
        &self.counts
    }

    /// See [`Scan::skip_payload`].
    pub fn skip_payload(&mut self, n: u64) -> u64 {
        self.scan.skip_payload(&mut self.counts, n)
    }

    /// See [`Scan::at_frame_boundary`].
    #[must_use]
    pub fn at_frame_boundary(&self) -> bool {
        self.scan.at_frame_boundary()
    }

    /// See [`Scan::frame_remaining`].
    #[must_use]
    pub fn frame_remaining(&self) -> Option<u64> {
        self.scan.frame_remaining()
    }

    /// See [`Scan::close`].
    #[must_use]
    pub fn close(&self) -> Option<CloseInfo> {
        self.scan.close()
    }

    /// See [`Scan::violation`].
    #[must_use]
    pub fn violation(&self) -> Option<Violation> {
        self.scan.violation()
    }

    /// See [`Scan::in_message`].
    #[must_use]
    pub fn in_message(&self) -> bool {
        self.scan.in_message()
    }

    /// See [`Scan::policy`].
    #[must_use]
    pub fn policy(&self) -> ScanPolicy {
        self.scan.policy()
    }
}

/// The frame scanner without its counters: it adds what it counts to the counters each call
/// passes in (the relay's: what one wakeup counted, handed to its observer at the end of it).
#[derive(Clone, Debug)]
pub struct Scan {
    /// Rules for this direction.
    policy: ScanPolicy,
    /// Ordinal of the current frame (wrapping): tells one frame from the next.
    frame: u32,
    /// Payload bytes of the current frame not yet fed.
    remaining: u64,
    /// Payload bytes of the open fragmented message so far.
    message_bytes: u64,
    /// Start of a header split across chunks; only `hdr[..hdr_len]` is meaningful.
    hdr: [u8; MAX_HEADER_LEN],
    /// Bytes buffered in `hdr`; 0 unless a header straddles chunks.
    hdr_len: u8,
    /// Opcode (text or binary) of the open fragmented message, if one is open.
    open: Option<Opcode>,
    /// This direction has sent a close frame header.
    closed: bool,
    /// Reading state of the current close frame's code.
    code: CloseCode,
    /// The first close frame, once its code is known.
    close: Option<CloseInfo>,
    /// The violation that poisoned the scanner.
    violation: Option<Violation>,
    /// Whether the forwarded bytes ended on a frame boundary when the violation was found.
    violation_at_boundary: bool,
    /// Stop before the next close frame that starts in a chunk (`Feed::CloseWithheld`).
    withhold_close: bool,
    /// Stopped before a withheld close frame: nothing more is passed.
    withheld: bool,
}

impl Scan {
    /// A scanner at the start of a direction's byte stream.
    #[must_use]
    pub fn new(policy: ScanPolicy) -> Self {
        Self {
            policy,
            frame: 0,
            remaining: 0,
            message_bytes: 0,
            hdr: [0; MAX_HEADER_LEN],
            hdr_len: 0,
            open: None,
            closed: false,
            code: CloseCode::Idle,
            close: None,
            violation: None,
            violation_at_boundary: false,
            withhold_close: false,
            withheld: false,
        }
    }

    /// From now on, stop before this direction's close frame instead of passing it
    /// (`Feed::CloseWithheld`), unless its first bytes went out in an earlier chunk. The relay
    /// asks this of the side it closed on its own when the other side broke a rule: that side's
    /// close then answers weir's, not the rule breaker, who gets weir's close instead.
    pub fn withhold_close(&mut self) {
        self.withhold_close = true;
    }

    /// Scans the next chunk of the stream under `limits` (the connection's, the same at every
    /// feed), adding what it counts to `c`; see [`Feed`] for what to forward.
    ///
    /// Once poisoned, returns the same violation with `valid_up_to: 0` and counts nothing more.
    pub fn feed(&mut self, limits: &ScanLimits, c: &mut DirectionCounts, chunk: &[u8]) -> Feed {
        if let Some(violation) = self.violation {
            return Feed::Violation { valid_up_to: 0, violation };
        }
        if self.withheld {
            return Feed::CloseWithheld { valid_up_to: 0 };
        }
        let mut pos = 0;
        loop {
            let rest = chunk.get(pos..).unwrap_or_default();
            if rest.is_empty() {
                break;
            }
            if self.remaining > 0 {
                // Only the tail of a frame whose header ended in an earlier chunk can still be
                // reading its close code, so a violation here leaves nothing of this chunk valid.
                if let Err(violation) = self.read_close_code(rest) {
                    return self.fail(c, violation, None);
                }
                pos += self.take_payload(c, rest);
                continue;
            }
            if self.hdr_len == 0 {
                let taken = self.take_small_frames(limits, c, rest);
                if taken > 0 {
                    pos += taken;
                    continue;
                }
            }
            let frame_start = (self.hdr_len == 0).then_some(pos);
            let (header, used) = match self.take_header(rest) {
                Ok(taken) => taken,
                Err(violation) => return self.fail(c, violation, frame_start),
            };
            pos += used;
            if let Some(header) = header {
                if let (true, Opcode::Close, Some(start)) = (self.withhold_close, header.opcode, frame_start) {
                    add_wire(c, start);
                    self.withheld = true;
                    return Feed::CloseWithheld { valid_up_to: start };
                }
                let after = chunk.get(pos..).unwrap_or_default();
                if let Err(violation) = self.accept(limits, c, &header, after) {
                    return self.fail(c, violation, frame_start);
                }
                if self.code == CloseCode::Idle {
                    // The frame's payload in this chunk, counted in the same pass (no close code
                    // is left to read from it).
                    pos += self.take_payload(c, after);
                }
            }
        }
        add_wire(c, chunk.len());
        Feed::Ok
    }

    /// True when no partial header is buffered and no payload is outstanding; after a
    /// violation, whether the forwarded bytes (earlier chunks plus `valid_up_to`) end on a frame
    /// boundary, i.e. whether the relay may still inject a whole frame after them.
    #[must_use]
    pub fn at_frame_boundary(&self) -> bool {
        if self.violation.is_some() {
            self.violation_at_boundary
        } else {
            self.hdr_len == 0 && self.remaining == 0
        }
    }

    /// Payload bytes of the current frame still to come (0 at a frame boundary); `None` while
    /// part of a header is buffered or after a violation.
    #[must_use]
    pub fn frame_remaining(&self) -> Option<u64> {
        (self.hdr_len == 0 && self.violation.is_none()).then_some(self.remaining)
    }

    /// Accounts for up to `n` payload bytes of the current frame that the relay moved without
    /// reading them (splice(2)): counted into `c` exactly as `feed` would count them. Only payload
    /// no rule looks at can be skipped: none while a header is partial, a close code is still
    /// arriving, or the scanner is poisoned. Returns the bytes skipped (`n` capped at the frame's
    /// rest).
    pub fn skip_payload(&mut self, c: &mut DirectionCounts, n: u64) -> u64 {
        if self.hdr_len != 0 || self.violation.is_some() || self.code != CloseCode::Idle {
            return 0;
        }
        let take = n.min(self.remaining);
        self.remaining -= take;
        c.payload_bytes = c.payload_bytes.saturating_add(take);
        c.wire_bytes = c.wire_bytes.saturating_add(take);
        take
    }

    /// Ordinal of the current frame (the last whose header was seen), wrapping at `u32::MAX`:
    /// tells one frame from the next, as a counter would without keeping one.
    #[must_use]
    pub fn frame(&self) -> u32 {
        self.frame
    }

    /// The first close frame, once its 2 code bytes have arrived (at once for an empty payload).
    #[must_use]
    pub fn close(&self) -> Option<CloseInfo> {
        self.close
    }

    /// The violation that poisoned this scanner, if any.
    #[must_use]
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// True while a fragmented data message is open (its FIN frame not yet seen).
    #[must_use]
    pub fn in_message(&self) -> bool {
        self.open.is_some()
    }

    /// The policy this scanner enforces.
    #[must_use]
    pub fn policy(&self) -> ScanPolicy {
        self.policy
    }

    /// Poisons the scanner; `frame_start` is where the offending frame began in this chunk.
    fn fail(&mut self, c: &mut DirectionCounts, violation: Violation, frame_start: Option<usize>) -> Feed {
        let valid_up_to = frame_start.unwrap_or(0);
        add_wire(c, valid_up_to);
        self.violation = Some(violation);
        self.violation_at_boundary = frame_start.is_some();
        Feed::Violation { valid_up_to, violation }
    }

    /// Counts what `rest` holds of the current frame's payload as fed; returns how many bytes.
    #[inline(always)]
    fn take_payload(&mut self, c: &mut DirectionCounts, rest: &[u8]) -> usize {
        let take = usize::try_from(self.remaining).map_or(rest.len(), |r| r.min(rest.len()));
        let take64 = u64::try_from(take).unwrap_or(u64::MAX);
        self.remaining = self.remaining.saturating_sub(take64);
        c.payload_bytes = c.payload_bytes.saturating_add(take64);
        take
    }

    /// The fast path for the common case of small messages: counts the whole, unfragmented data
    /// frames of at most 125 payload bytes at the start of `rest` (which starts at a frame
    /// boundary) that break no rule, as `accept` would, without parsing a `FrameHeader` per
    /// frame; returns the bytes they take. It stops at the first frame that is anything else
    /// (a control or continuation frame, FIN clear, a longer length form, a mask or RSV bit the
    /// rules refuse, over a size limit, or not whole in `rest`), which the general path then
    /// reads, and takes nothing inside a fragmented message, after a close or when messages
    /// are counted in chunks. The split tests (every split point, one byte at a time, random
    /// hostile streams) compare the two paths: a chunk holding whole frames goes this way, the
    /// same bytes fed a byte at a time the general way.
    #[inline(always)]
    fn take_small_frames(&mut self, limits: &ScanLimits, c: &mut DirectionCounts, rest: &[u8]) -> usize {
        if self.open.is_some() || self.closed || !limits.chunks.is_unused() {
            return 0;
        }
        let masked = self.policy.sender == Role::Client;
        let mask_bit = if masked { 0x80 } else { 0 };
        let header_len = if masked { 6 } else { 2 };
        // The first byte with the RSV bits a data frame may carry (the negotiated extension's, on
        // a message's first frame) cleared: FIN, no other RSV bit, text or binary is 0x81 or 0x82.
        let keep = !((self.policy.allowed_rsv & 0b111) << 4);
        // The longest payload taken here: the 7-bit length form's, within the size limits.
        let ScanLimits { max_frame, max_message, .. } = *limits;
        let small_limit = [max_frame, max_message].into_iter().filter(|&m| m != 0).fold(125, u64::min) as u8;
        let (mut pos, mut frames, mut text, mut payload, mut largest) = (0usize, 0u64, 0u64, 0u64, 0u64);
        while let Some(&[b0, b1]) = rest.get(pos..).and_then(|r| r.first_chunk::<2>()) {
            // With the mask bit the rules want flipped off, the length; a wrong mask bit leaves
            // it at 0x80 or more, over any `small_limit`.
            let len = b1 ^ mask_bit;
            let total = header_len + usize::from(len);
            if (b0 & keep).wrapping_sub(0x81) > 1 || len > small_limit || rest.len() - pos < total {
                break;
            }
            frames += 1;
            text += u64::from(b0 & 0x0F == 0x1);
            payload += u64::from(len);
            largest = largest.max(u64::from(len));
            pos += total;
        }
        if frames > 0 {
            self.frame = self.frame.wrapping_add(u32::try_from(frames).unwrap_or(u32::MAX));
            self.message_bytes = 0;
            let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
            add(&mut c.frames, frames);
            add(&mut c.data_frames, frames);
            add(&mut c.messages, frames);
            add(&mut c.text_messages, text);
            add(&mut c.binary_messages, frames - text);
            add(&mut c.payload_bytes, payload);
            c.largest_message_bytes = c.largest_message_bytes.max(largest);
        }
        pos
    }

    /// Takes header bytes from `rest`: the header if now complete, and how many bytes were used.
    ///
    /// Without a buffered start it parses in place; otherwise it copies exactly the bytes the
    /// header still lacks (never payload) into the 14-byte buffer.
    #[inline(always)]
    fn take_header(&mut self, rest: &[u8]) -> Result<(Option<FrameHeader>, usize), Violation> {
        if self.hdr_len == 0 {
            if let Some(header) = parse_header(rest)? {
                return Ok((Some(header), usize::from(header.header_len)));
            }
            // Incomplete, so `rest` is shorter than its header: at most 13 bytes.
            for (slot, byte) in self.hdr.iter_mut().zip(rest) {
                *slot = *byte;
            }
            self.hdr_len = u8::try_from(rest.len().min(MAX_HEADER_LEN)).unwrap_or(0);
            return Ok((None, rest.len()));
        }
        let mut used = 0;
        loop {
            let have = usize::from(self.hdr_len);
            let need = match self.hdr.get(1) {
                Some(&b1) if have >= 2 => usize::from(header_len(b1)),
                _ => 2,
            };
            let src = rest.get(used..).unwrap_or_default();
            let dst = self.hdr.get_mut(have..need).unwrap_or_default();
            let n = dst.len().min(src.len());
            if n == 0 {
                break;
            }
            for (slot, byte) in dst.iter_mut().zip(src) {
                *slot = *byte;
            }
            used += n;
            self.hdr_len = u8::try_from(have + n).unwrap_or(0);
        }
        let buffered = self.hdr.get(..usize::from(self.hdr_len)).unwrap_or_default();
        let header = parse_header(buffered)?;
        if header.is_some() {
            self.hdr_len = 0;
        }
        Ok((header, used))
    }

    /// Checks a complete header, reads its close code if `after` (the rest of the chunk) has
    /// it, then counts the frame and moves on to its payload.
    #[inline(always)]
    fn accept(
        &mut self,
        limits: &ScanLimits,
        c: &mut DirectionCounts,
        header: &FrameHeader,
        after: &[u8],
    ) -> Result<(), Violation> {
        self.check(limits, header)?;
        if header.opcode == Opcode::Close {
            let reason_len = u16::try_from(header.payload_len.saturating_sub(2)).unwrap_or(u16::MAX);
            if header.payload_len == 0 {
                self.record_close(None, 0);
            } else if let Some(&[b0, b1]) = after.first_chunk::<2>() {
                let [k0, k1, _, _] = header.mask.unwrap_or_default();
                self.validate_close_code([b0 ^ k0, b1 ^ k1], reason_len)?;
            } else {
                self.code =
                    CloseCode::Reading { got: 0, bytes: [0; 2], key: header.mask.unwrap_or_default(), reason_len };
            }
        }
        self.count(limits, c, header);
        self.remaining = header.payload_len;
        Ok(())
    }

    /// The per-direction rules for a complete header, in the order the module doc lists.
    #[inline(always)]
    fn check(&self, limits: &ScanLimits, header: &FrameHeader) -> Result<(), Violation> {
        match (self.policy.sender, header.mask.is_some()) {
            (Role::Client, false) => return Err(Violation::UnmaskedClientFrame),
            (Role::Server, true) => return Err(Violation::MaskedServerFrame),
            _ => {}
        }
        let allowed_rsv = match header.opcode {
            Opcode::Text | Opcode::Binary => self.policy.allowed_rsv,
            _ if self.policy.allowed_rsv & RSV_ON_EVERY_FRAME != 0 => self.policy.allowed_rsv,
            _ => 0,
        };
        if header.rsv & !allowed_rsv != 0 {
            return Err(Violation::ReservedBits);
        }
        if self.closed && !header.opcode.is_control() {
            return Err(Violation::DataAfterClose);
        }
        match header.opcode {
            Opcode::Continuation if self.open.is_none() => Err(Violation::UnexpectedContinuation),
            Opcode::Text | Opcode::Binary if self.open.is_some() => Err(Violation::ExpectedContinuation),
            Opcode::Close if header.payload_len == 1 => Err(Violation::InvalidClosePayload),
            Opcode::Text | Opcode::Binary | Opcode::Continuation => self.check_size(limits, header),
            _ => Ok(()),
        }
    }

    /// The configured size limits, for a data frame that passed every protocol rule: decided
    /// from the header, before any of its payload is forwarded.
    #[inline(always)]
    fn check_size(&self, limits: &ScanLimits, header: &FrameHeader) -> Result<(), Violation> {
        let ScanLimits { max_frame, max_message, .. } = *limits;
        if max_frame != 0 && header.payload_len > max_frame {
            return Err(Violation::FrameTooBig);
        }
        let so_far = if header.opcode == Opcode::Continuation { self.message_bytes } else { 0 };
        if max_message != 0 && so_far.saturating_add(header.payload_len) > max_message {
            return Err(Violation::MessageTooBig);
        }
        Ok(())
    }

    /// Counts a header that passed every check.
    #[inline(always)]
    fn count(&mut self, limits: &ScanLimits, c: &mut DirectionCounts, header: &FrameHeader) {
        self.frame = self.frame.wrapping_add(1);
        c.frames = c.frames.saturating_add(1);
        match header.opcode {
            Opcode::Text | Opcode::Binary => {
                c.data_frames = c.data_frames.saturating_add(1);
                if header.fin {
                    self.finish_message(limits, c, header.opcode, header.payload_len);
                } else {
                    self.open = Some(header.opcode);
                    self.message_bytes = header.payload_len;
                }
            }
            Opcode::Continuation => {
                c.data_frames = c.data_frames.saturating_add(1);
                self.message_bytes = self.message_bytes.saturating_add(header.payload_len);
                if header.fin {
                    if let Some(kind) = self.open.take() {
                        self.finish_message(limits, c, kind, self.message_bytes);
                    }
                }
            }
            Opcode::Ping => c.pings = c.pings.saturating_add(1),
            Opcode::Pong => c.pongs = c.pongs.saturating_add(1),
            Opcode::Close => {
                c.closes = c.closes.saturating_add(1);
                self.closed = true;
            }
        }
    }

    /// Counts a completed data message of `len` payload bytes whose first frame had opcode `kind`.
    #[inline(always)]
    fn finish_message(&mut self, limits: &ScanLimits, c: &mut DirectionCounts, kind: Opcode, len: u64) {
        c.messages = c.messages.saturating_add(1);
        if kind == Opcode::Text {
            c.text_messages = c.text_messages.saturating_add(1);
        } else {
            c.binary_messages = c.binary_messages.saturating_add(1);
        }
        c.largest_message_bytes = c.largest_message_bytes.max(len);
        self.message_bytes = 0;
        if !limits.chunks.is_unused() {
            count_chunks(limits.chunks, c, len);
        }
    }

    /// Notes the close-code bytes at the start of `rest` (the payload still to be fed), if a
    /// close code is being read, and validates the code once both bytes are in.
    fn read_close_code(&mut self, rest: &[u8]) -> Result<(), Violation> {
        let CloseCode::Reading { got, mut bytes, key, reason_len } = self.code else {
            return Ok(());
        };
        let mut got = usize::from(got);
        for (slot, byte) in bytes.iter_mut().skip(got).zip(rest) {
            *slot = *byte;
            got += 1;
        }
        if got < 2 {
            let got = u8::try_from(got).unwrap_or(0);
            self.code = CloseCode::Reading { got, bytes, key, reason_len };
            return Ok(());
        }
        self.code = CloseCode::Idle;
        let [b0, b1] = bytes;
        let [k0, k1, _, _] = key;
        self.validate_close_code([b0 ^ k0, b1 ^ k1], reason_len)
    }

    /// Rejects an invalid close code, or records the close frame.
    fn validate_close_code(&mut self, code: [u8; 2], reason_len: u16) -> Result<(), Violation> {
        let code = u16::from_be_bytes(code);
        if !close_code_is_valid(code) {
            return Err(Violation::InvalidCloseCode);
        }
        self.record_close(Some(code), reason_len);
        Ok(())
    }

    /// Keeps the first close frame's code and reason length.
    fn record_close(&mut self, code: Option<u16>, reason_len: u16) {
        if self.close.is_none() {
            self.close = Some(CloseInfo { code, reason_len });
        }
    }
}

/// Adds a completed message of `len` payload bytes to every used slot of `chunks`.
fn count_chunks(chunks: Chunks, c: &mut DirectionCounts, len: u64) {
    for (total, size) in c.chunked.iter_mut().zip(chunks.0) {
        if size != 0 {
            let pieces = len.div_ceil(u64::from(size)).max(1);
            *total = total.saturating_add(pieces);
        }
    }
}

/// Adds `len` forwarded bytes to the wire counter of `c`.
#[inline(always)]
fn add_wire(c: &mut DirectionCounts, len: usize) {
    let len = u64::try_from(len).unwrap_or(u64::MAX);
    c.wire_bytes = c.wire_bytes.saturating_add(len);
}

#[cfg(test)]
pub(crate) mod tests;
