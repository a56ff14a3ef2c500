//! RFC 6455 §4.2.1: checking a client's upgrade request (the answer side lives in
//! `http1::upgrade`), and the checks every request passes before it is routed
//! (`check_request`).
//!
//! Warm path (once per connection), pure: no I/O, testable with literal heads.

use super::reject::RejectReason;
use crate::http1::head::RequestHead;
use crate::http1::value_has_token;
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

/// Check a client's upgrade request (RFC 6455 §4.2.1). The rules in order, each with its
/// reason; the fields they read are gathered in one pass (`Seen`).
pub fn check_client(head: &RequestHead) -> Result<ClientHandshake, RejectReason> {
    let seen = Seen::of(head);
    if !seen.websocket {
        return Err(RejectReason::NotWebSocket);
    }
    if head.method != "GET" {
        return Err(RejectReason::MethodNotGet);
    }
    if head.minor_version != 1 {
        return Err(RejectReason::HttpVersion);
    }
    if !seen.connection_upgrade {
        return Err(RejectReason::ConnectionHeader);
    }
    if seen.version != Some(b"13".as_slice()) || seen.versions != 1 {
        return Err(RejectReason::UnsupportedVersion);
    }
    // The key's 16 bytes decoded into a buffer on the stack (a 24-character key decodes to at
    // most 18; a longer one does not fit and is refused as it should be).
    let key = seen.key.unwrap_or_default();
    let mut decoded = [0u8; 18];
    let sixteen = matches!(base64::engine::general_purpose::STANDARD.decode_slice(key, &mut decoded), Ok(16));
    if seen.keys != 1 || !sixteen {
        return Err(RejectReason::BadKey);
    }
    // Valid base64 is ASCII.
    let key = String::from_utf8_lossy(key).into_owned();
    let has_body = seen.content_length.is_some_and(|v| v != b"0") || seen.transfer_encoding;
    if has_body {
        return Err(RejectReason::RequestBody);
    }
    Ok(ClientHandshake { key })
}

/// The fields of a request head `check_client` reads, in one pass over them (a lookup per rule
/// scanned every field eight times: about 2 500 instructions of a handshake cycle, callgrind).
/// Values are trimmed of ASCII whitespace, as `Fields::value` trims them.
#[derive(Debug, Default)]
struct Seen<'a> {
    /// An `Upgrade` field lists `websocket`.
    websocket: bool,
    /// A `Connection` field lists `upgrade`.
    connection_upgrade: bool,
    /// The first `Sec-WebSocket-Version`.
    version: Option<&'a [u8]>,
    /// How many `Sec-WebSocket-Version` fields there are.
    versions: usize,
    /// The first `Sec-WebSocket-Key`.
    key: Option<&'a [u8]>,
    /// How many `Sec-WebSocket-Key` fields there are.
    keys: usize,
    /// The first `Content-Length`.
    content_length: Option<&'a [u8]>,
    /// There is a `Transfer-Encoding` field.
    transfer_encoding: bool,
}

impl<'a> Seen<'a> {
    fn of(head: &'a RequestHead) -> Seen<'a> {
        let mut seen = Seen::default();
        for (name, value) in head.headers.iter_bytes() {
            // The length first: most fields are none of these.
            let is = |wanted: &str| name.eq_ignore_ascii_case(wanted.as_bytes());
            match name.len() {
                7 if is("upgrade") => seen.websocket |= value_has_token(value, "websocket"),
                10 if is("connection") => seen.connection_upgrade |= value_has_token(value, "upgrade"),
                14 if is("content-length") => {
                    seen.content_length = seen.content_length.or(Some(value.trim_ascii()));
                }
                17 if is("transfer-encoding") => seen.transfer_encoding = true,
                17 if is("sec-websocket-key") => {
                    seen.key = seen.key.or(Some(value.trim_ascii()));
                    seen.keys += 1;
                }
                21 if is("sec-websocket-version") => {
                    seen.version = seen.version.or(Some(value.trim_ascii()));
                    seen.versions += 1;
                }
                _ => {}
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn head(method: &str, minor: u8, headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: method.to_string().into(),
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

    /// `check_client` as it was, one lookup per rule: the reference the one-pass version must
    /// agree with.
    fn check_by_lookups(head: &RequestHead) -> Result<ClientHandshake, RejectReason> {
        let h = &head.headers;
        if !h.has_token("upgrade", "websocket") {
            return Err(RejectReason::NotWebSocket);
        }
        if head.method != "GET" {
            return Err(RejectReason::MethodNotGet);
        }
        if head.minor_version != 1 {
            return Err(RejectReason::HttpVersion);
        }
        if !h.has_token("connection", "upgrade") {
            return Err(RejectReason::ConnectionHeader);
        }
        if h.value("sec-websocket-version") != Some(b"13".as_slice()) || h.all("sec-websocket-version").count() != 1 {
            return Err(RejectReason::UnsupportedVersion);
        }
        let key = h.value("sec-websocket-key").unwrap_or_default();
        let mut decoded = [0u8; 18];
        let sixteen = matches!(base64::engine::general_purpose::STANDARD.decode_slice(key, &mut decoded), Ok(16));
        if h.all("sec-websocket-key").count() != 1 || !sixteen {
            return Err(RejectReason::BadKey);
        }
        if h.value("content-length").is_some_and(|v| v != b"0") || h.value("transfer-encoding").is_some() {
            return Err(RejectReason::RequestBody);
        }
        Ok(ClientHandshake { key: String::from_utf8_lossy(key).into_owned() })
    }

    proptest::proptest! {
        // Cheap cases, and the rarer shapes (two `Content-Length`s, an empty `Transfer-Encoding`)
        // need many.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(8192))]

        /// The good head with up to two of its fields dropped and up to five fields inserted
        /// anywhere, drawn from every name the rules read (in any case, and names of the same
        /// lengths that are none of them), each with a value that passes, fails or is a list,
        /// padded or not: one pass and one lookup per rule agree.
        #[test]
        fn one_pass_agrees_with_a_lookup_per_rule(
            extra in proptest::collection::vec((0usize..11, 0usize..9, proptest::bool::ANY, proptest::bool::ANY, 0usize..16), 0..6),
            dropped in proptest::collection::vec(0usize..8, 0..3),
            get in proptest::bool::weighted(0.9),
            minor in proptest::strategy::Strategy::prop_map(0u8..8, |m| u8::from(m != 0)),
        ) {
            const NAMES: [&str; 11] = [
                "Upgrade", "connection", "SEC-WEBSOCKET-KEY", "Sec-WebSocket-Version", "Content-Length",
                "transfer-encoding", "upgrades", "Connectio", "sec-websocket-kez", "Host", "X-Other",
            ];
            const VALUES: [&str; 9] = [
                "websocket", "WebSocket, h2c", "keep-alive, Upgrade", "upgrade", "13", "8",
                "dGhlIHNhbXBsZSBub25jZQ==", "0", "",
            ];
            let mut pairs: Vec<(String, String)> = GOOD
                .iter()
                .enumerate()
                .filter(|(i, _)| !dropped.contains(i))
                .map(|(_, (n, v))| (n.to_string(), v.to_string()))
                .collect();
            for &(n, v, upper, padded, at) in &extra {
                let name = if upper { NAMES[n].to_ascii_uppercase() } else { NAMES[n].to_string() };
                let value = if padded { format!(" {}\t", VALUES[v]) } else { VALUES[v].to_string() };
                pairs.insert(at.min(pairs.len()), (name, value));
            }
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let head = head(if get { "GET" } else { "POST" }, minor, &pairs);
            proptest::prop_assert_eq!(check_client(&head), check_by_lookups(&head), "{:?}", pairs);
        }
    }

    /// The good head with each rule's field repeated, reordered or in another case.
    #[test]
    fn the_one_pass_reads_repeats_order_and_case_as_the_lookups_did() {
        let mut twice = GOOD.to_vec();
        twice.push(("sec-websocket-version", "13"));
        assert_eq!(check("GET", 1, &owned(&twice)), Err(RejectReason::UnsupportedVersion));
        let mut keys = GOOD.to_vec();
        keys.insert(0, ("SEC-WEBSOCKET-KEY", "dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(check("GET", 1, &owned(&keys)), Err(RejectReason::BadKey));
        let mut second_upgrade = GOOD.to_vec();
        second_upgrade.insert(0, ("upgrade", "h2c"));
        assert!(check("GET", 1, &owned(&second_upgrade)).is_ok(), "any Upgrade field may list websocket");
        let mut chunked = GOOD.to_vec();
        chunked.push(("Transfer-Encoding", ""));
        assert_eq!(check("GET", 1, &owned(&chunked)), Err(RejectReason::RequestBody));
        let mut zero_then_five = GOOD.to_vec();
        zero_then_five.extend([("content-length", " 0 "), ("Content-Length", "5")]);
        assert!(check("GET", 1, &owned(&zero_then_five)).is_ok(), "the first Content-Length is read");
    }

    fn owned(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        pairs.iter().map(|&(n, v)| (n, v.to_string())).collect()
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
