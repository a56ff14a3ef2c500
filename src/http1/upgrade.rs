//! RFC 6455 §4 handshake helpers shared by every side weir plays: the accept key, the one check
//! of a server's answer to an upgrade, the 101 weir writes for a built-in object, and the RSV
//! bits negotiated extensions allow. Warm path (once per connection), pure.

use super::head::ResponseHead;
use super::Fields;
use base64::Engine;
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 appends to the key before hashing.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether a head asks for a WebSocket upgrade at all (`Upgrade` lists `websocket`).
pub fn wants_websocket(headers: &Fields) -> bool {
    headers.has_token("upgrade", "websocket")
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// How a server answered an upgrade sent with `Sec-WebSocket-Key: key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 101 with `Upgrade: websocket` and the right `Sec-WebSocket-Accept`.
    Accepted,
    /// 101 without a valid `Sec-WebSocket-Accept` or `Upgrade: websocket`.
    BadHandshake,
    /// Any other status: the server refused the upgrade.
    Refused(u16),
}

/// The one check of a server's answer to an upgrade (RFC 6455 §4.1, the client's duties).
pub fn check_answer(answer: &ResponseHead, key: &str) -> Answer {
    if answer.status != 101 {
        return Answer::Refused(answer.status);
    }
    let accepted = answer.headers.value("sec-websocket-accept") == Some(accept_key(key).as_bytes());
    if accepted && wants_websocket(&answer.headers) {
        Answer::Accepted
    } else {
        Answer::BadHandshake
    }
}

/// The 101 answer weir writes itself (built-in objects) for a client whose key gave `accept`:
/// no extension and no subprotocol.
pub fn switching_protocols(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// A response head (`head`, ending in the blank line) with `Sec-WebSocket-Protocol: entry` added
/// before the blank line; `head` itself when `entry` is `None`.
pub fn with_subprotocol<'a>(head: &'a [u8], entry: Option<&str>) -> std::borrow::Cow<'a, [u8]> {
    match entry {
        Some(entry) if head.ends_with(b"\r\n\r\n") => {
            let mut with = head.get(..head.len() - 2).unwrap_or(head).to_vec();
            with.extend_from_slice(format!("Sec-WebSocket-Protocol: {entry}\r\n\r\n").as_bytes());
            with.into()
        }
        // Unchanged: the head itself, not a copy (the usual 101).
        _ => head.into(),
    }
}

/// In `allowed_rsv`'s answer: the bits may be set on every frame, not only a data message's
/// first (the scanner's `RSV_ON_EVERY_FRAME`, same value; http1 imports nothing from the relay).
pub const RSV_ON_EVERY_FRAME: u8 = 0b1000;

/// RSV bits the negotiated extensions allow, from the server's `Sec-WebSocket-Extensions`:
/// permessage-deflate allows RSV1 on a data message's first frame; an extension weir does not
/// know allows all three on every frame (weir cannot tell what it uses them for, or on which
/// frames: `RSV_ON_EVERY_FRAME`); none allows none.
pub fn allowed_rsv(extensions: Option<&str>) -> u8 {
    let Some(ext) = extensions.filter(|e| !e.trim().is_empty()) else { return 0 };
    let names = ext.split(',').map(|e| e.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let mut rsv = 0;
    for name in names {
        rsv |= if name == "permessage-deflate" { 0b100 } else { 0b111 | RSV_ON_EVERY_FRAME };
    }
    rsv
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use std::borrow::Cow;

    /// A named entry goes before the blank line; without one the head is passed on as it is,
    /// not copied; a head without its blank line is not touched.
    #[test]
    fn a_subprotocol_entry_is_added_before_the_blank_line() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        assert!(matches!(with_subprotocol(head, None), Cow::Borrowed(h) if h == head));
        assert_eq!(
            &*with_subprotocol(head, Some("key.abc")),
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: key.abc\r\n\r\n"[..]
        );
        let cut = &head[..head.len() - 2];
        assert_eq!(&*with_subprotocol(cut, Some("key.abc")), cut);
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn extensions_set_rsv_bits() {
        assert_eq!(allowed_rsv(None), 0);
        assert_eq!(allowed_rsv(Some("permessage-deflate; client_max_window_bits=15")), 0b100);
        assert_eq!(allowed_rsv(Some("x-custom")), 0b1111);
        assert_eq!(allowed_rsv(Some("permessage-deflate, x-webkit-deflate-frame")), 0b1111);
    }

    fn answer(status: u16, headers: &[(&str, &str)]) -> ResponseHead {
        let fields = Fields::from_pairs(headers.iter().copied());
        ResponseHead { status, headers: fields, buf: BytesMut::new(), head_len: 0 }
    }

    #[test]
    fn answers_are_accepted_only_with_the_right_key_and_upgrade() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let good = [("Upgrade", "websocket"), ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")];
        assert_eq!(check_answer(&answer(101, &good), key), Answer::Accepted);
        assert_eq!(check_answer(&answer(101, &good[1..]), key), Answer::BadHandshake);
        assert_eq!(
            check_answer(&answer(101, &[("Upgrade", "websocket"), ("Sec-WebSocket-Accept", "x")]), key),
            Answer::BadHandshake
        );
        assert_eq!(check_answer(&answer(403, &good), key), Answer::Refused(403));
    }
}
