//! RFC 6455 frame headers for the relay: the opcode set, the header layout, the protocol
//! [`Violation`]s the frame scanner can report, close-code validity, and the close-frame encoder
//! the gateway uses to inject a close toward a client or a backend.
//!
//! Sans-io and allocation-free; it reads only header bytes, never a payload.
//! Hot path: called once per frame header.
//!
//! [`parse_header`] follows tungstenite's `FrameHeader::parse`: it answers `Ok(None)` until the
//! whole 2–14 byte header is present, and it checks a header only once it is complete, so the
//! verdict on a header never depends on how the stream was split into chunks.

// On top of the relay module's denies (no unwrap, expect or panic): no indexing that can panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::fmt;

/// Longest frame header in bytes: 2 fixed, 8 extended length and 4 mask-key bytes.
pub const MAX_HEADER_LEN: usize = 14;

/// Largest payload a control frame may carry, in bytes (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Length of the buffer [`encode_close_frame`] writes into, in bytes: 2 header, 4 mask, 125 payload.
pub const MAX_CLOSE_FRAME_LEN: usize = 2 + 4 + 125;

/// Longest close reason [`encode_close_frame`] keeps, in bytes (125 payload minus the 2-byte code).
pub const MAX_CLOSE_REASON_LEN: usize = 125 - 2;

/// First-byte flag: this frame is the last one of its message.
const FIN_BIT: u8 = 0x80;
/// Second-byte flag: a 4-byte mask key follows the length.
const MASK_BIT: u8 = 0x80;
/// 7-bit length value announcing a 16-bit extended length.
const LEN_16: u8 = 126;
/// 7-bit length value announcing a 64-bit extended length.
const LEN_64: u8 = 127;

/// A frame opcode (RFC 6455 section 5.2); reserved values never get this far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// 0x0: carries the next fragment of a fragmented data message.
    Continuation,
    /// 0x1: first frame of a text message.
    Text,
    /// 0x2: first frame of a binary message.
    Binary,
    /// 0x8: closing handshake.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl Opcode {
    /// Decodes a 4-bit opcode value; `None` for the reserved values 0x3–0x7 and 0xB–0xF (and > 0xF).
    #[must_use]
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    /// The 4-bit wire value of this opcode.
    #[must_use]
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// True for close, ping and pong (opcodes >= 0x8).
    #[must_use]
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }

    /// Lowercase name, usable as a metric label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Continuation => "continuation",
            Self::Text => "text",
            Self::Binary => "binary",
            Self::Close => "close",
            Self::Ping => "ping",
            Self::Pong => "pong",
        }
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A complete, well-formed frame header as it appeared on the wire.
///
/// `repr(C)` with the 8-byte length first: in Rust's own layout the 5-byte `mask` sat at an odd
/// offset, and the scanner's hot loop moved headers through the stack as unaligned words that
/// missed store forwarding (perf: two loads held 60 % of `FrameScanner::feed`'s samples).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct FrameHeader {
    /// Payload length in bytes, as announced by the header.
    pub payload_len: u64,
    /// The 4-byte masking key, present when the mask bit is set.
    pub mask: Option<[u8; 4]>,
    /// FIN bit: this frame ends its message.
    pub fin: bool,
    /// RSV bits as `0b100` = RSV1, `0b010` = RSV2, `0b001` = RSV3.
    pub rsv: u8,
    /// The frame's opcode.
    pub opcode: Opcode,
    /// Length of this header on the wire in bytes (2..=14).
    pub header_len: u8,
}

/// A breach of RFC 6455 found in one direction of a connection; also the scanner's error type.
///
/// Every variant maps to a fixed `snake_case` label ([`Violation::as_str`]) for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Violation {
    /// The opcode is one of the reserved values 0x3–0x7 or 0xB–0xF.
    ReservedOpcode,
    /// The 64-bit payload length has its most significant bit set.
    LengthTooLarge,
    /// A control frame announced more than 125 payload bytes.
    ControlFrameTooLong,
    /// A control frame had FIN clear.
    FragmentedControlFrame,
    /// A frame sent by a client was not masked.
    UnmaskedClientFrame,
    /// A frame sent by a server was masked.
    MaskedServerFrame,
    /// An RSV bit was set that no negotiated extension allows on this frame.
    ReservedBits,
    /// A continuation frame arrived while no fragmented message was open.
    UnexpectedContinuation,
    /// A text or binary frame arrived while a fragmented message was still open.
    ExpectedContinuation,
    /// A close frame carried exactly one payload byte.
    InvalidClosePayload,
    /// A close frame carried a status code that may not appear on the wire.
    InvalidCloseCode,
    /// A data frame followed this direction's close frame.
    DataAfterClose,
    /// Not an RFC 6455 rule but a configured limit (`limits.max_frame`): a data frame announced
    /// more payload than allowed.
    FrameTooBig,
    /// Not an RFC 6455 rule but a configured limit (`limits.max_message`): a data message's
    /// frames announced more payload in all than allowed.
    MessageTooBig,
}

impl Violation {
    /// Every variant, in declaration order (for label pre-registration and tests).
    pub const ALL: [Violation; 14] = [
        Self::ReservedOpcode,
        Self::LengthTooLarge,
        Self::ControlFrameTooLong,
        Self::FragmentedControlFrame,
        Self::UnmaskedClientFrame,
        Self::MaskedServerFrame,
        Self::ReservedBits,
        Self::UnexpectedContinuation,
        Self::ExpectedContinuation,
        Self::InvalidClosePayload,
        Self::InvalidCloseCode,
        Self::DataAfterClose,
        Self::FrameTooBig,
        Self::MessageTooBig,
    ];

    /// True for the configured size limits (not protocol violations: closed with 1009, cause
    /// `message_too_big`, not counted as violations).
    #[must_use]
    pub fn is_limit(self) -> bool {
        matches!(self, Self::FrameTooBig | Self::MessageTooBig)
    }

    /// Short `snake_case` label for a Prometheus label value (a fixed set of 14).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReservedOpcode => "reserved_opcode",
            Self::LengthTooLarge => "length_too_large",
            Self::ControlFrameTooLong => "control_frame_too_long",
            Self::FragmentedControlFrame => "fragmented_control_frame",
            Self::UnmaskedClientFrame => "unmasked_client_frame",
            Self::MaskedServerFrame => "masked_server_frame",
            Self::ReservedBits => "reserved_bits",
            Self::UnexpectedContinuation => "unexpected_continuation",
            Self::ExpectedContinuation => "expected_continuation",
            Self::InvalidClosePayload => "invalid_close_payload",
            Self::InvalidCloseCode => "invalid_close_code",
            Self::DataAfterClose => "data_after_close",
            Self::FrameTooBig => "frame_too_big",
            Self::MessageTooBig => "message_too_big",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ReservedOpcode => "frame uses a reserved opcode",
            Self::LengthTooLarge => "frame payload length has its most significant bit set",
            Self::ControlFrameTooLong => "control frame payload is longer than 125 bytes",
            Self::FragmentedControlFrame => "control frame is fragmented (FIN clear)",
            Self::UnmaskedClientFrame => "client frame is not masked",
            Self::MaskedServerFrame => "server frame is masked",
            Self::ReservedBits => "frame sets RSV bits that no negotiated extension allows",
            Self::UnexpectedContinuation => "continuation frame without a fragmented message to continue",
            Self::ExpectedContinuation => "new data message started before the fragmented one ended",
            Self::InvalidClosePayload => "close frame payload is one byte long",
            Self::InvalidCloseCode => "close frame carries a status code not allowed on the wire",
            Self::DataAfterClose => "data frame sent after the close frame",
            Self::FrameTooBig => "data frame is larger than limits.max_frame",
            Self::MessageTooBig => "data message is larger than limits.max_message",
        })
    }
}

impl std::error::Error for Violation {}

/// Header length in bytes (2..=14) implied by a header's second byte (mask bit and 7-bit length).
#[must_use]
pub fn header_len(second_byte: u8) -> u8 {
    let extended = match second_byte & !MASK_BIT {
        LEN_16 => 2,
        LEN_64 => 8,
        _ => 0,
    };
    let mask = if second_byte & MASK_BIT != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// Parses the frame header at the start of `buf`; `Ok(None)` (nothing consumed) until all of it is there.
///
/// Bytes after the header are ignored. A complete header is checked in this order: reserved
/// opcode, 64-bit length with its top bit set, control frame longer than 125 bytes, fragmented
/// control frame. A length in a longer form than needed (16-bit below 126, 64-bit below 65 536)
/// is read as it says: RFC 6455 asks senders for the minimal form, but receivers such as
/// tungstenite accept the others, and refusing them would make weir less transparent than the
/// backend behind it. Per-direction rules (masking, RSV bits, message
/// sequencing, close payloads) belong to the scanner.
///
/// # Errors
///
/// The first broken rule of a complete header, as listed above.
#[inline]
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, Violation> {
    let Some(&[b0, b1]) = buf.first_chunk::<2>() else {
        return Ok(None);
    };
    let header_len = header_len(b1);
    let Some(header) = buf.get(..usize::from(header_len)) else {
        return Ok(None);
    };
    let opcode = Opcode::from_u8(b0 & 0x0F).ok_or(Violation::ReservedOpcode)?;
    let rest = header.get(2..).unwrap_or_default();
    // `header` is exactly `header_len` bytes, so the `else` arms below cannot be taken; they
    // answer "need more bytes" rather than panic.
    let (payload_len, rest) = match b1 & !MASK_BIT {
        LEN_16 => {
            let Some((ext, rest)) = rest.split_first_chunk::<2>() else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes(*ext)), rest)
        }
        LEN_64 => {
            let Some((ext, rest)) = rest.split_first_chunk::<8>() else {
                return Ok(None);
            };
            let len = u64::from_be_bytes(*ext);
            if len >> 63 != 0 {
                return Err(Violation::LengthTooLarge);
            }
            (len, rest)
        }
        short => (u64::from(short), rest),
    };
    let mask = if b1 & MASK_BIT != 0 {
        let Some(key) = rest.first_chunk::<4>() else {
            return Ok(None);
        };
        Some(*key)
    } else {
        None
    };
    let fin = b0 & FIN_BIT != 0;
    if opcode.is_control() {
        if payload_len > MAX_CONTROL_PAYLOAD {
            return Err(Violation::ControlFrameTooLong);
        }
        if !fin {
            return Err(Violation::FragmentedControlFrame);
        }
    }
    Ok(Some(FrameHeader { fin, rsv: (b0 >> 4) & 0b111, opcode, mask, payload_len, header_len }))
}

/// True when `code` may appear in a close frame (RFC 6455 section 7.4): 1000–1003, 1007–1014, 3000–4999.
#[must_use]
pub fn close_code_is_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Writes a complete close frame (FIN, opcode 0x8, `code` big-endian, then `reason`) into `out`
/// and returns its length in bytes.
///
/// `mask` is `None` toward a client (servers send unmasked frames) and `Some(key)` toward a
/// backend (clients must mask). `reason` is cut to [`MAX_CLOSE_REASON_LEN`] bytes, backing off up
/// to 3 bytes so that a UTF-8 character is not split. `code` is written as given: pass one for
/// which [`close_code_is_valid`] holds (the gateway uses 1001, 1002 and 1011).
pub fn encode_close_frame(
    code: u16,
    reason: &[u8],
    mask: Option<[u8; 4]>,
    out: &mut [u8; MAX_CLOSE_FRAME_LEN],
) -> usize {
    let reason = truncate_reason(reason);
    // At most 2 + 123 = 125, so the 7-bit length form applies and the conversion cannot fail.
    let payload_len = u8::try_from(2 + reason.len()).unwrap_or(125);
    encode_control(Opcode::Close, payload_len, code.to_be_bytes().into_iter().chain(reason.iter().copied()), mask, out)
}

/// Writes a ping frame with `payload` (at most 125 bytes; longer is cut) into `out`, masked
/// with `mask` if given (frames to a server must be); returns its length.
pub fn encode_ping_frame(payload: &[u8], mask: Option<[u8; 4]>, out: &mut [u8; MAX_CLOSE_FRAME_LEN]) -> usize {
    let payload = payload.get(..payload.len().min(125)).unwrap_or_default();
    let len = u8::try_from(payload.len()).unwrap_or(125);
    encode_control(Opcode::Ping, len, payload.iter().copied(), mask, out)
}

/// A whole unmasked data frame (FIN set: one message) with `payload`, as weir sends it to a
/// client on its own (an operator's push): text (opcode 0x1) or binary (0x2). Warm path: one
/// allocation per pushed message.
#[must_use]
pub fn encode_data_frame(text: bool, payload: &[u8]) -> Vec<u8> {
    let opcode = if text { Opcode::Text } else { Opcode::Binary };
    let mut out = Vec::with_capacity(payload.len() + MAX_HEADER_LEN);
    out.push(FIN_BIT | opcode.as_u8());
    let len = payload.len() as u64;
    if len <= 125 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// Writes a control frame of `opcode` whose payload (`len` ≤ 125 bytes) is `payload`.
fn encode_control(
    opcode: Opcode,
    len: u8,
    payload: impl Iterator<Item = u8>,
    mask: Option<[u8; 4]>,
    out: &mut [u8; MAX_CLOSE_FRAME_LEN],
) -> usize {
    let mask_bit = if mask.is_some() { MASK_BIT } else { 0 };
    let key = mask.unwrap_or([0; 4]);
    let header = [FIN_BIT | opcode.as_u8(), mask_bit | len];
    let body = payload.zip(key.into_iter().cycle()).map(|(byte, k)| byte ^ k);
    let frame = header.into_iter().chain(mask.into_iter().flatten()).chain(body);
    let mut written = 0;
    for (slot, byte) in out.iter_mut().zip(frame) {
        *slot = byte;
        written += 1;
    }
    written
}

/// Cuts a close reason to [`MAX_CLOSE_REASON_LEN`] bytes without splitting a UTF-8 character.
fn truncate_reason(reason: &[u8]) -> &[u8] {
    if reason.len() <= MAX_CLOSE_REASON_LEN {
        return reason;
    }
    let is_continuation = |i: usize| reason.get(i).is_some_and(|b| b & 0xC0 == 0x80);
    let mut cut = MAX_CLOSE_REASON_LEN;
    // A UTF-8 character is at most 4 bytes, so at most 3 steps back reach its first byte; the
    // bound also keeps non-UTF-8 reasons from being cut to nothing.
    while cut > MAX_CLOSE_REASON_LEN - 3 && is_continuation(cut) {
        cut -= 1;
    }
    reason.get(..cut).unwrap_or_default()
}

#[cfg(test)]
mod tests;
