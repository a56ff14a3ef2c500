use super::*;
use proptest::prelude::*;

const KEY: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

fn header(fin: bool, rsv: u8, opcode: Opcode, mask: Option<[u8; 4]>, payload_len: u64, header_len: u8) -> FrameHeader {
    FrameHeader { fin, rsv, opcode, mask, payload_len, header_len }
}

/// Asserts that every strict prefix of `bytes` needs more data, and the full header parses to `want`.
fn assert_parses(bytes: &[u8], want: Result<FrameHeader, Violation>) {
    for i in 0..bytes.len() {
        assert_eq!(parse_header(&bytes[..i]), Ok(None), "prefix {i} of {bytes:02x?}");
    }
    assert_eq!(parse_header(bytes), want.map(Some), "{bytes:02x?}");
    // Trailing payload bytes never change the verdict.
    let mut longer = bytes.to_vec();
    longer.extend_from_slice(&[0xFF; 20]);
    assert_eq!(parse_header(&longer), want.map(Some), "{bytes:02x?} + payload");
}

#[test]
fn seven_bit_lengths() {
    assert_parses(&[0x81, 0x05], Ok(header(true, 0, Opcode::Text, None, 5, 2)));
    assert_parses(&[0x82, 0x00], Ok(header(true, 0, Opcode::Binary, None, 0, 2)));
    assert_parses(&[0x02, 0x7D], Ok(header(false, 0, Opcode::Binary, None, 125, 2)));
    assert_parses(&[0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D], Ok(header(true, 0, Opcode::Text, Some(KEY), 5, 6)));
}

#[test]
fn sixteen_bit_lengths() {
    assert_parses(&[0x82, 0x7E, 0x00, 0x7E], Ok(header(true, 0, Opcode::Binary, None, 126, 4)));
    assert_parses(&[0x82, 0x7E, 0x01, 0x00], Ok(header(true, 0, Opcode::Binary, None, 256, 4)));
    assert_parses(
        &[0x00, 0xFE, 0xFF, 0xFF, 0x37, 0xFA, 0x21, 0x3D],
        Ok(header(false, 0, Opcode::Continuation, Some(KEY), 0xFFFF, 8)),
    );
}

#[test]
fn sixty_four_bit_lengths() {
    assert_parses(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0], Ok(header(true, 0, Opcode::Binary, None, 0x1_0000, 10)));
    assert_parses(
        &[0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x37, 0xFA, 0x21, 0x3D],
        Ok(header(true, 0, Opcode::Binary, Some(KEY), 0x7FFF_FFFF_FFFF_FFFF, 14)),
    );
}

#[test]
fn flags_and_opcodes() {
    assert_parses(&[0xC1, 0x00], Ok(header(true, 0b100, Opcode::Text, None, 0, 2)));
    assert_parses(&[0x22, 0x00], Ok(header(false, 0b010, Opcode::Binary, None, 0, 2)));
    assert_parses(&[0x90, 0x00], Ok(header(true, 0b001, Opcode::Continuation, None, 0, 2)));
    assert_parses(&[0xF8, 0x00], Ok(header(true, 0b111, Opcode::Close, None, 0, 2)));
    assert_parses(&[0x89, 0x7D], Ok(header(true, 0, Opcode::Ping, None, 125, 2)));
    assert_parses(&[0x8A, 0x80, 1, 2, 3, 4], Ok(header(true, 0, Opcode::Pong, Some([1, 2, 3, 4]), 0, 6)));
    for value in 0..=0xFF_u8 {
        match Opcode::from_u8(value) {
            Some(op) => {
                assert_eq!(op.as_u8(), value);
                assert_eq!(op.is_control(), value >= 8);
                assert_eq!(op.to_string(), op.as_str());
            }
            None => assert!(matches!(value, 0x3..=0x7 | 0xB..), "{value:#x}"),
        }
    }
}

#[test]
fn reserved_opcodes() {
    for op in (0x3..=0x7).chain(0xB..=0xF) {
        assert_parses(&[0x80 | op, 0x00], Err(Violation::ReservedOpcode));
        assert_parses(&[op, 0x80, 1, 2, 3, 4], Err(Violation::ReservedOpcode));
    }
}

/// Lengths in a longer form than needed are read as they say (as tungstenite reads them).
#[test]
fn non_minimal_lengths_are_read_as_they_say() {
    for (bytes, len) in [
        (&[0x82, 0x7E, 0x00, 0x00][..], 0),
        (&[0x82, 0x7E, 0x00, 0x7D], 125),
        (&[0x82, 0x7F, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF], 0xFFFF),
        (&[0x82, 0x7F, 0, 0, 0, 0, 0, 0, 0, 0x05], 5),
        (&[0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4], 0),
        // A control frame's length is its value, whatever the form.
        (&[0x89, 0x7E, 0x00, 0x7D], 125),
    ] {
        let h = parse_header(bytes).expect("valid").expect("complete");
        assert_eq!((h.payload_len, usize::from(h.header_len)), (len, bytes.len()), "{bytes:x?}");
    }
}

#[test]
fn length_with_top_bit() {
    assert_parses(&[0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0], Err(Violation::LengthTooLarge));
    assert_parses(&[0x02, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], Err(Violation::LengthTooLarge));
    assert_parses(&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4], Err(Violation::LengthTooLarge));
}

#[test]
fn control_frame_rules() {
    assert_parses(&[0x89, 0x7E, 0x00, 0x7E], Err(Violation::ControlFrameTooLong));
    assert_parses(&[0x88, 0x7E, 0xFF, 0xFF], Err(Violation::ControlFrameTooLong));
    assert_parses(&[0x8A, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0], Err(Violation::ControlFrameTooLong));
    assert_parses(&[0x09, 0x00], Err(Violation::FragmentedControlFrame));
    assert_parses(&[0x08, 0x82, 1, 2, 3, 4], Err(Violation::FragmentedControlFrame));
    assert_parses(&[0x0A, 0x7D], Err(Violation::FragmentedControlFrame));
    // A fragmented *and* too long control frame reports the length first.
    assert_parses(&[0x09, 0x7E, 0x00, 0x7E], Err(Violation::ControlFrameTooLong));
}

#[test]
fn check_order_is_fixed() {
    // Reserved opcode wins over a bad length; length over control rules.
    assert_parses(&[0x83, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0], Err(Violation::ReservedOpcode));
    assert_parses(&[0x09, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0], Err(Violation::LengthTooLarge));
}

#[test]
fn header_len_matches_every_second_byte() {
    for b1 in 0..=0xFF_u8 {
        let want =
            2 + match b1 & 0x7F {
                126 => 2,
                127 => 8,
                _ => 0,
            } + if b1 & 0x80 != 0 { 4 } else { 0 };
        assert_eq!(header_len(b1), want);
        assert!(usize::from(header_len(b1)) <= MAX_HEADER_LEN);
    }
}

#[test]
fn close_codes() {
    let valid: Vec<u16> = (0..=u16::MAX).filter(|&c| close_code_is_valid(c)).collect();
    let want: Vec<u16> = (1000..=1003).chain(1007..=1014).chain(3000..=4999).collect();
    assert_eq!(valid, want);
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
        assert!(!close_code_is_valid(code), "{code}");
    }
}

#[test]
fn violation_labels_are_unique_snake_case() {
    let labels: std::collections::HashSet<&str> = Violation::ALL.iter().map(|v| v.as_str()).collect();
    assert_eq!(labels.len(), Violation::ALL.len());
    for v in Violation::ALL {
        assert!(v.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{v:?}");
        assert!(!v.to_string().is_empty());
        let _: &dyn std::error::Error = &v;
    }
}

fn unmask(payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
    let key = key.unwrap_or([0; 4]);
    payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k).collect()
}

/// Encodes, parses back and returns (header, unmasked payload).
fn round_trip(code: u16, reason: &[u8], mask: Option<[u8; 4]>) -> (FrameHeader, Vec<u8>) {
    let mut out = [0u8; MAX_CLOSE_FRAME_LEN];
    let len = encode_close_frame(code, reason, mask, &mut out);
    let hdr = parse_header(&out[..len]).unwrap().unwrap();
    assert_eq!(hdr.opcode, Opcode::Close);
    assert!(hdr.fin);
    assert_eq!(hdr.rsv, 0);
    assert_eq!(hdr.mask, mask);
    assert_eq!(usize::from(hdr.header_len) + hdr.payload_len as usize, len);
    (hdr, unmask(&out[usize::from(hdr.header_len)..len], mask))
}

#[test]
fn close_frame_round_trip() {
    let (hdr, payload) = round_trip(1001, b"going away", None);
    assert_eq!(hdr.header_len, 2);
    assert_eq!(payload, b"\x03\xE9going away");

    let (hdr, payload) = round_trip(1011, b"internal error", Some(KEY));
    assert_eq!(hdr.header_len, 6);
    assert_eq!(payload, b"\x03\xF3internal error");

    let (_, payload) = round_trip(1002, b"", Some(KEY));
    assert_eq!(payload, [0x03, 0xEA]);

    // The masked bytes on the wire really are masked.
    let mut out = [0u8; MAX_CLOSE_FRAME_LEN];
    let len = encode_close_frame(1000, b"x", Some(KEY), &mut out);
    assert_eq!(&out[..len], &[0x88, 0x83, 0x37, 0xFA, 0x21, 0x3D, 0x03 ^ 0x37, 0xE8 ^ 0xFA, b'x' ^ 0x21]);
}

#[test]
fn close_reason_is_truncated_to_fit() {
    let long = [b'r'; 300];
    for mask in [None, Some(KEY)] {
        let (hdr, payload) = round_trip(1011, &long, mask);
        assert_eq!(hdr.payload_len, 125);
        assert_eq!(&payload[..2], &[0x03, 0xF3]);
        assert_eq!(&payload[2..], &long[..MAX_CLOSE_REASON_LEN]);
    }
    // Exactly 123 bytes fits untouched.
    let (hdr, _) = round_trip(1000, &long[..123], None);
    assert_eq!(hdr.payload_len, 125);
    // A multi-byte character straddling the limit is dropped whole.
    let reason = format!("{}€tail", "a".repeat(121));
    let (hdr, payload) = round_trip(1000, reason.as_bytes(), None);
    assert_eq!(hdr.payload_len, 2 + 121);
    assert_eq!(std::str::from_utf8(&payload[2..]).unwrap(), "a".repeat(121));
    // Non-UTF-8 reasons are cut at most 3 bytes short.
    let (hdr, _) = round_trip(1000, &[0x80; 200], None);
    assert_eq!(hdr.payload_len, 2 + 120);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Headers written by tungstenite's encoder parse back to the same fields.
    #[test]
    fn agrees_with_tungstenite_encoder(
        fin in any::<bool>(),
        rsv in 0u8..8,
        opcode in prop::sample::select(vec![0u8, 1, 2, 8, 9, 10]),
        mask in any::<Option<[u8; 4]>>(),
        len in prop_oneof![0u64..=125, 126u64..=0xFFFF, 0x1_0000u64..=0x7FFF_FFFF_FFFF_FFFF],
    ) {
        use tungstenite::protocol::frame::{coding::OpCode, FrameHeader as TgHeader};
        let op = Opcode::from_u8(opcode).unwrap();
        let fin = fin || op.is_control();
        let len = if op.is_control() { len % 126 } else { len };
        let tg = TgHeader {
            is_final: fin,
            rsv1: rsv & 0b100 != 0,
            rsv2: rsv & 0b010 != 0,
            rsv3: rsv & 0b001 != 0,
            opcode: OpCode::from(opcode),
            mask,
        };
        let mut bytes = Vec::new();
        tg.format(len, &mut bytes).unwrap();
        prop_assert_eq!(bytes.len(), tg.len(len));
        let parsed = parse_header(&bytes).unwrap().unwrap();
        prop_assert_eq!(parsed, header(fin, rsv, op, mask, len, bytes.len() as u8));
        for i in 0..bytes.len() {
            prop_assert_eq!(parse_header(&bytes[..i]), Ok(None));
        }
    }

    /// Arbitrary bytes never panic, and a parsed header fits in the input.
    #[test]
    fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..=20)) {
        if let Ok(Some(h)) = parse_header(&bytes) {
            prop_assert!(usize::from(h.header_len) <= bytes.len());
            prop_assert!(usize::from(h.header_len) <= MAX_HEADER_LEN);
        }
    }
}
