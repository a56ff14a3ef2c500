//! RFC 6455 §4.2.1: checking a client's upgrade request (the answer side lives in
//! `http1::upgrade`), and the checks every request passes before it is routed
//! (`check_request`).
//!
//! Warm path (once per connection), pure: no I/O, testable with literal heads.

use super::reject::RejectReason;
use crate::http1::head::RequestHead;
#[cfg(test)]
use crate::http1::Fields;
use base64::Engine;

/// What weir needs from a valid client upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHandshake {
    /// `Sec-WebSocket-Key` as sent.
    pub key: String,
}

/// Whether the request asks for a WebSocket upgrade at all (`Upgrade` lists `websocket`).
pub fn wants_websocket(head: &RequestHead) -> bool {
    crate::http1::upgrade::wants_websocket(&head.headers)
}

/// Check any request before it is routed: exactly one `Host` at most (RFC 9112 §3.2: weir would
/// route on one and a backend might read the other) and a path `routing::check_path` accepts.
pub fn check_request(head: &RequestHead) -> Result<(), RejectReason> {
    if head.headers.all("host").nth(1).is_some() {
        return Err(RejectReason::DuplicateHost);
    }
    crate::routing::check_path(head.path()).map_err(|_| RejectReason::BadPath)
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
    if head.headers.value("sec-websocket-version") != Some(b"13".as_slice())
        || head.headers.all("sec-websocket-version").count() != 1
    {
        return Err(RejectReason::UnsupportedVersion);
    }
    // The key's 16 bytes decoded into a buffer on the stack (a 24-character key decodes to at
    // most 18; a longer one does not fit and is refused as it should be).
    let key = head.headers.value("sec-websocket-key").unwrap_or_default();
    let mut decoded = [0u8; 18];
    let sixteen = matches!(base64::engine::general_purpose::STANDARD.decode_slice(key, &mut decoded), Ok(16));
    if head.headers.all("sec-websocket-key").count() != 1 || !sixteen {
        return Err(RejectReason::BadKey);
    }
    // Valid base64 is ASCII.
    let key = String::from_utf8_lossy(key).into_owned();
    let has_body = head.headers.value("content-length").is_some_and(|v| v != b"0")
        || head.headers.value("transfer-encoding").is_some();
    if has_body {
        return Err(RejectReason::RequestBody);
    }
    Ok(ClientHandshake { key })
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
            headers: Fields::from_pairs(headers.iter().copied()),
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
    fn requests_with_two_hosts_or_a_bad_path_are_refused_before_routing() {
        assert_eq!(check_request(&head("GET", 1, GOOD)), Ok(()));
        let mut two = GOOD.to_vec();
        two.push(("host", "y"));
        assert_eq!(check_request(&head("GET", 1, &two)), Err(RejectReason::DuplicateHost));
        let mut dots = head("GET", 1, GOOD);
        dots.target = "/raw/../admin?x=1".into();
        assert_eq!(check_request(&dots), Err(RejectReason::BadPath));
        dots.target = "/raw/admin?x=/../".into();
        assert_eq!(check_request(&dots), Ok(()), "the query is not a path");
    }
}
