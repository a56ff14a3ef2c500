//! RFC 6455 §4 handshake rules: checking a client's upgrade and a backend's answer.
//!
//! Warm path (once per connection), pure: no I/O, testable with literal heads.

#[cfg(test)]
use super::head::Fields;
use super::head::RequestHead;
use super::reject::RejectReason;
use base64::Engine;
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 appends to the key before hashing.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What weir needs from a valid client upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHandshake {
    /// `Sec-WebSocket-Key` as sent.
    pub key: String,
}

/// Whether the request asks for a WebSocket upgrade at all (`Upgrade` lists `websocket`).
pub fn wants_websocket(head: &RequestHead) -> bool {
    head.headers.has_token("upgrade", "websocket")
}

/// Check a client's upgrade request (RFC 6455 §4.2.1).
pub fn check_client(head: &RequestHead) -> Result<ClientHandshake, RejectReason> {
    if !wants_websocket(head) {
        return Err(RejectReason::NotWebSocket);
    }
    if head.method != "GET" {
        return Err(RejectReason::MethodNotGet);
    }
    if head.minor_version != 1 {
        return Err(RejectReason::HttpVersion);
    }
    if !head.headers.has_token("connection", "upgrade") {
        return Err(RejectReason::ConnectionHeader);
    }
    if head.headers.get("sec-websocket-version").as_deref() != Some("13")
        || head.headers.all("sec-websocket-version").count() != 1
    {
        return Err(RejectReason::UnsupportedVersion);
    }
    let key = head.headers.get("sec-websocket-key").unwrap_or_default();
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.as_bytes());
    if head.headers.all("sec-websocket-key").count() != 1 || !matches!(decoded, Ok(ref k) if k.len() == 16) {
        return Err(RejectReason::BadKey);
    }
    let has_body =
        head.headers.get("content-length").is_some_and(|v| v != "0") || head.headers.get("transfer-encoding").is_some();
    if has_body {
        return Err(RejectReason::RequestBody);
    }
    Ok(ClientHandshake { key })
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// RSV bits the negotiated extensions allow, from the backend's `Sec-WebSocket-Extensions`:
/// permessage-deflate allows RSV1; an extension weir does not know allows all three (weir
/// cannot tell what it uses them for); none allows none.
pub fn allowed_rsv(extensions: Option<&str>) -> u8 {
    let Some(ext) = extensions.filter(|e| !e.trim().is_empty()) else { return 0 };
    let names = ext.split(',').map(|e| e.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let mut rsv = 0;
    for name in names {
        rsv |= if name == "permessage-deflate" { 0b100 } else { 0b111 };
    }
    rsv
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn head(method: &str, minor: u8, headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: method.into(),
            target: "/".into(),
            minor_version: minor,
            headers: Fields(headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()),
            buf: BytesMut::new(),
            head_len: 0,
        }
    }

    const GOOD: &[(&str, &str)] = &[
        ("Host", "x"),
        ("Upgrade", "websocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];

    fn with(replace: &str, value: Option<&str>) -> Vec<(&'static str, String)> {
        GOOD.iter()
            .filter_map(|(n, v)| {
                if n.eq_ignore_ascii_case(replace) {
                    value.map(|x| (*n, x.to_string()))
                } else {
                    Some((*n, v.to_string()))
                }
            })
            .collect()
    }

    fn check(method: &str, minor: u8, h: &[(&'static str, String)]) -> Result<ClientHandshake, RejectReason> {
        let pairs: Vec<(&str, &str)> = h.iter().map(|(n, v)| (*n, v.as_str())).collect();
        check_client(&head(method, minor, &pairs))
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn each_rule_has_its_reason() {
        assert!(check("GET", 1, &with("x", None)).is_ok());
        assert_eq!(check("GET", 1, &with("upgrade", None)), Err(RejectReason::NotWebSocket));
        assert_eq!(check("GET", 1, &with("upgrade", Some("h2c"))), Err(RejectReason::NotWebSocket));
        assert_eq!(check("POST", 1, &with("x", None)), Err(RejectReason::MethodNotGet));
        assert_eq!(check("GET", 0, &with("x", None)), Err(RejectReason::HttpVersion));
        assert_eq!(check("GET", 1, &with("connection", Some("keep-alive"))), Err(RejectReason::ConnectionHeader));
        assert_eq!(check("GET", 1, &with("sec-websocket-version", Some("8"))), Err(RejectReason::UnsupportedVersion));
        assert_eq!(check("GET", 1, &with("sec-websocket-version", None)), Err(RejectReason::UnsupportedVersion));
        assert_eq!(check("GET", 1, &with("sec-websocket-key", None)), Err(RejectReason::BadKey));
        assert_eq!(check("GET", 1, &with("sec-websocket-key", Some("c2hvcnQ="))), Err(RejectReason::BadKey));
        let mut body = with("x", None);
        body.push(("Content-Length", "5".into()));
        assert_eq!(check("GET", 1, &body), Err(RejectReason::RequestBody));
    }

    #[test]
    fn extensions_set_rsv_bits() {
        assert_eq!(allowed_rsv(None), 0);
        assert_eq!(allowed_rsv(Some("permessage-deflate; client_max_window_bits=15")), 0b100);
        assert_eq!(allowed_rsv(Some("x-custom")), 0b111);
    }
}
