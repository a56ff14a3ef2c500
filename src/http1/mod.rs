//! HTTP/1 heads and the WebSocket handshake helpers: the leaf every module that speaks HTTP/1
//! shares (the gateway, pool health probes, object ids, the HTTP billing sink). It imports
//! nothing from the rest of weir.
//!
//! - `head.rs`: reading request and response heads, bounded in size and time (warm path).
//! - `proxy.rs`: the PROXY protocol header and `X-Forwarded-For` from trusted proxies (warm, sans-io).
//! - `query.rs`: query parameters and percent-escapes (warm path, pure).
//! - `upgrade.rs`: RFC 6455 §4 helpers: the accept key, the check of a server's upgrade answer,
//!   the 101 weir writes itself, extensions → RSV bits (warm path, pure).
//! - here: `Fields`, the header fields of a head, and `host_without_port` (pure).

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod head;
pub mod proxy;
pub mod query;
pub mod upgrade;

use std::borrow::Cow;

/// Header fields of a request or response head, in order, names as sent. Kept as one buffer of
/// names and values plus their spans, so a head of N fields costs two allocations instead of
/// 2N + 1 (issue 14: header fields were 11 of a handshake's 67 allocations).
#[derive(Default, Clone)]
pub struct Fields {
    /// The names and values, back to back (a replaced or removed field's bytes stay until the
    /// fields are dropped: they are bounded by the head's size and what admission adds).
    bytes: Vec<u8>,
    /// Each field as `[name start, name end, value start, value end]` in `bytes`, in order.
    spans: Vec<[usize; 4]>,
}

impl Fields {
    /// No fields.
    pub fn new() -> Fields {
        Fields::default()
    }

    /// Copy the fields httparse found in `head` (the bytes it parsed) with one copy: the bytes
    /// of `head` up to the end of its last field are copied whole (the request or status line,
    /// the `: ` and CRLFs too, a few dozen bytes more) and each field is its offsets in them. A
    /// field outside `head` (never, for httparse's own fields) makes it `from_parsed`.
    pub fn from_parsed_in(head: &[u8], parsed: &[httparse::Header<'_>]) -> Fields {
        let base = head.as_ptr() as usize;
        // Where `part` starts in `head`, when it lies inside it.
        let offset = |part: &[u8]| {
            let start = (part.as_ptr() as usize).checked_sub(base)?;
            (start.checked_add(part.len())? <= head.len()).then_some(start)
        };
        let mut spans = Vec::with_capacity(parsed.len());
        let mut end = 0;
        for h in parsed {
            let (Some(n), Some(v)) = (offset(h.name.as_bytes()), offset(h.value)) else {
                return Fields::from_parsed(parsed);
            };
            end = end.max(v + h.value.len()).max(n + h.name.len());
            spans.push([n, n + h.name.len(), v, v + h.value.len()]);
        }
        Fields { bytes: head.get(..end).unwrap_or_default().to_vec(), spans }
    }

    /// Copy the fields httparse found.
    pub fn from_parsed(parsed: &[httparse::Header<'_>]) -> Fields {
        let len = parsed.iter().map(|h| h.name.len() + h.value.len()).sum();
        let mut fields = Fields { bytes: Vec::with_capacity(len), spans: Vec::with_capacity(parsed.len()) };
        for h in parsed {
            fields.push(h.name, h.value);
        }
        fields
    }

    /// Fields from `(name, value)` pairs, in order.
    pub fn from_pairs<N: AsRef<str>, V: AsRef<[u8]>>(pairs: impl IntoIterator<Item = (N, V)>) -> Fields {
        let mut fields = Fields::new();
        for (name, value) in pairs {
            fields.push(name.as_ref(), value.as_ref());
        }
        fields
    }

    /// Add a field after the others.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        let span = self.store(name, value);
        self.spans.push(span);
    }

    /// Add a field before the others.
    pub fn push_first(&mut self, name: &str, value: &[u8]) {
        let span = self.store(name, value);
        self.spans.insert(0, span);
    }

    fn store(&mut self, name: &str, value: &[u8]) -> [usize; 4] {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name.as_bytes());
        let mid = self.bytes.len();
        self.bytes.extend_from_slice(value);
        [start, mid, mid, self.bytes.len()]
    }

    fn field(&self, span: [usize; 4]) -> (&str, &[u8]) {
        let (name, value) = self.field_bytes(span);
        (std::str::from_utf8(name).unwrap_or(""), value)
    }

    /// The name and value at `span`, as bytes. Spans are made by `store` from a `&str` name and
    /// always lie inside `bytes`.
    fn field_bytes(&self, [ns, ne, vs, ve]: [usize; 4]) -> (&[u8], &[u8]) {
        (self.bytes.get(ns..ne).unwrap_or(&[]), self.bytes.get(vs..ve).unwrap_or(&[]))
    }

    /// Every field as `(name, value)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.spans.iter().map(|&s| self.field(s))
    }

    /// Every field as `(name, value)` bytes, in order: `iter` without checking each name's UTF-8
    /// again (it was a `&str` when stored), for loops that only compare and copy names.
    pub fn iter_bytes(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans.iter().map(|&s| self.field_bytes(s))
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Keep only the fields for which `keep(name, value)` is true, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &[u8]) -> bool) {
        let mut spans = std::mem::take(&mut self.spans);
        spans.retain(|&s| {
            let (name, value) = self.field(s);
            keep(name, value)
        });
        self.spans = spans;
    }

    /// Replace the value of every field named `name` (case-insensitive) with `new(value)`.
    pub fn rewrite(&mut self, name: &str, mut new: impl FnMut(&[u8]) -> Vec<u8>) {
        for i in 0..self.spans.len() {
            if self.is_named(self.spans[i], name) {
                let (_, value) = self.field_bytes(self.spans[i]);
                let value = new(value);
                let start = self.bytes.len();
                self.bytes.extend_from_slice(&value);
                self.spans[i][2..].copy_from_slice(&[start, self.bytes.len()]);
            }
        }
    }

    /// Values of every field named `name` (case-insensitive), in order. Names are compared as
    /// bytes: a lookup checks no name's UTF-8.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.spans.iter().filter(move |&&s| self.is_named(s, name)).map(move |&s| self.field_bytes(s).1)
    }

    /// Whether the field at `span` is named `name` (case-insensitive). The lengths first: most
    /// fields of a head differ from the one looked for in length (a lookup scans them all).
    #[inline]
    fn is_named(&self, [ns, ne, _, _]: [usize; 4], name: &str) -> bool {
        ne.wrapping_sub(ns) == name.len()
            && self.bytes.get(ns..ne).is_some_and(|n| eq_ignore_ascii_case(n, name.as_bytes()))
    }

    /// The first field named `name`, trimmed of ASCII whitespace (HTTP's optional whitespace),
    /// as bytes: `get` without the text and its allocation, for values only compared.
    pub fn value(&self, name: &str) -> Option<&[u8]> {
        let &span = self.spans.iter().find(|&&s| self.is_named(s, name))?;
        Some(self.field_bytes(span).1.trim_ascii())
    }

    /// The first field named `name`, as text (lossy), trimmed.
    pub fn get(&self, name: &str) -> Option<String> {
        self.all(name).next().map(|v| match std::str::from_utf8(v) {
            Ok(text) => text.trim().to_owned(),
            Err(_) => String::from_utf8_lossy(v).trim().to_owned(),
        })
    }

    /// Whether any `name` field contains `token` in its comma-separated list (case-insensitive;
    /// elements trimmed of ASCII whitespace, which covers HTTP's optional whitespace, space and
    /// tab). Compared as bytes: a token is ASCII, so bytes that are not UTF-8 never match it.
    ///
    /// A value exactly as long as `token` (trimmed) is compared whole: a list element is shorter
    /// than its list, so such a value matches only as the one element (the common `Upgrade:
    /// websocket`, `Connection: Upgrade`); a shorter value cannot hold it at all.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name).any(|v| value_has_token(v, token))
    }
}

/// Whether one field value contains `token` in its comma-separated list: `Fields::has_token`
/// for a value already found (case-insensitive, elements trimmed of ASCII whitespace).
pub fn value_has_token(value: &[u8], token: &str) -> bool {
    let (v, token) = (value.trim_ascii(), token.as_bytes());
    match v.len().cmp(&token.len()) {
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => eq_ignore_ascii_case(v, token),
        std::cmp::Ordering::Greater => v.split(|&b| b == b',').any(|t| eq_ignore_ascii_case(t.trim_ascii(), token)),
    }
}

/// `a.eq_ignore_ascii_case(b)`, eight bytes at a time, for the fields' names and list tokens:
/// they are 7 to 22 bytes (callgrind, per handshake cycle: the token checks took 1 256
/// instructions with the standard library's comparison, 1 046 with this). The gateway's own
/// per-field name filters (`handshake::Seen`, `upstream::hop_by_hop`, `forged_name`) keep the
/// standard one: there it is inlined behind its length check, and this out-of-line call
/// measured about 240 instructions a cycle more.
pub fn eq_ignore_ascii_case(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() < 8 {
        return lower8(short_word(a)) == lower8(short_word(b));
    }
    let (words_a, words_b) = (a.chunks_exact(8), b.chunks_exact(8));
    // The last eight bytes (overlapping the last whole word when the length is not a multiple).
    let last = a.len() - 8;
    let tail = |s: &[u8]| s.get(last..).map_or(0, word);
    words_a.zip(words_b).all(|(x, y)| lower8(word(x)) == lower8(word(y))) && lower8(tail(a)) == lower8(tail(b))
}

/// Eight bytes as a word (`chunk` is eight bytes long).
#[inline]
fn word(chunk: &[u8]) -> u64 {
    chunk.try_into().map_or(0, u64::from_le_bytes)
}

/// Fewer than eight bytes as a word: from four on, its first four and last four bytes (they
/// overlap below eight; two strings of one length compare equal exactly when these do), below
/// four, byte by byte.
#[inline]
fn short_word(bytes: &[u8]) -> u64 {
    let half = |s: Option<&[u8]>| s.and_then(|s| s.try_into().ok()).map_or(0, u32::from_le_bytes);
    match bytes.len() {
        4.. => u64::from(half(bytes.get(..4))) | u64::from(half(bytes.get(bytes.len() - 4..))) << 32,
        _ => bytes.iter().fold(0, |w, &b| w << 8 | u64::from(b)),
    }
}

/// `x` with every ASCII capital letter byte made lower case (bytes of 0x80 and above unchanged).
#[inline]
fn lower8(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let low7 = x & (0x7f * ONES);
    // The high bit of each byte: set where its low seven bits are at least 'A', and at least 'Z' + 1.
    let from_a = low7 + (0x80 - u64::from(b'A')) * ONES;
    let past_z = low7 + (0x80 - u64::from(b'Z') - 1) * ONES;
    let capital = from_a & !past_z & !x & (0x80 * ONES);
    x | (capital >> 2)
}

impl PartialEq for Fields {
    /// The same fields in the same order (however they are stored).
    fn eq(&self, other: &Fields) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Fields {}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter().map(|(n, v)| (n, String::from_utf8_lossy(v)))).finish()
    }
}

/// A `Host` value without its port, lower-cased (`[::1]:80` → `[::1]`, `A.com:8080` → `a.com`):
/// a part of `h` when that is already the answer (a lower-case host, the common case), else a
/// new string.
pub fn host_without_port(h: &str) -> Cow<'_, str> {
    let host = match h.strip_prefix('[') {
        Some(rest) => {
            // Up to the first `]`, closed with one (also when the value has none).
            let inside = rest.split(']').next().unwrap_or(rest);
            match h.get(..inside.len() + 2) {
                Some(bracketed) if bracketed.ends_with(']') => Cow::Borrowed(bracketed),
                _ => Cow::Owned(format!("[{inside}]")),
            }
        }
        None => Cow::Borrowed(h.rsplit_once(':').map_or(h, |(a, _)| a)),
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_loses_its_port_and_case() {
        for (h, want) in [
            ("[::1]:80", "[::1]"),
            ("[::1]", "[::1]"),
            ("[::1", "[::1]"),
            ("[FE80::1]]x", "[fe80::1]"),
            ("A.com:8080", "a.com"),
            ("A.com", "a.com"),
            ("", ""),
        ] {
            assert_eq!(host_without_port(h), want, "{h}");
        }
        // What is already the answer is not copied.
        for (h, want) in [("a.com:8080", "a.com"), ("a.com", "a.com"), ("[::1]:80", "[::1]"), ("", "")] {
            assert!(matches!(host_without_port(h), Cow::Borrowed(b) if b == want), "{h}");
        }
    }

    /// Bytes around the letters' edges (`@`, `[`, `` ` ``, `{`, and with the high bit set).
    const EDGES: &[u8] = b"@AZ[`az{\xc0\xc1\xda\xdb\xe0\xe1\xfa\xfb09-";

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        /// The word-wise comparison is the standard library's, for every length up to 40: `b`
        /// is `a` with some bytes' case flipped (`edit` 0) or replaced by another edge byte (1).
        #[test]
        fn case_blind_comparison_is_the_standard_one(
            pairs in proptest::collection::vec(
                (proptest::sample::select(EDGES), 0u8..4, proptest::sample::select(EDGES)),
                0..40,
            ),
        ) {
            let a: Vec<u8> = pairs.iter().map(|&(c, _, _)| c).collect();
            let b: Vec<u8> = pairs.iter().map(|&(c, edit, other)| match edit { 0 => c ^ 0x20, 1 => other, _ => c }).collect();
            proptest::prop_assert_eq!(eq_ignore_ascii_case(&a, &b), a.eq_ignore_ascii_case(&b));
            proptest::prop_assert!(eq_ignore_ascii_case(&a, &a.to_ascii_uppercase()));
        }
    }

    #[test]
    fn lengths_must_match_and_case_does_not() {
        assert!(!eq_ignore_ascii_case(b"upgrade", b"upgrades"));
        assert!(eq_ignore_ascii_case(b"Sec-WebSocket-Accept", b"sec-websocket-accept"));
    }

    /// One copy of the head up to its last field gives the same fields as copying each.
    #[test]
    fn fields_copied_at_once_are_the_fields_copied_one_by_one() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nUpgrade:  websocket \r\nconnection: Upgrade\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nA:\r\n\r\n",
        ] {
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut req = httparse::Request::new(&mut headers);
            assert!(req.parse(raw).unwrap().is_complete());
            let at_once = Fields::from_parsed_in(raw, req.headers);
            assert_eq!(at_once, Fields::from_parsed(req.headers));
            assert!(at_once.bytes.len() < raw.len());
            // With a field, the copy holds the request line too: it was taken.
            assert_eq!(at_once.bytes.starts_with(b"GET / HTTP/1.1\r\n"), !req.headers.is_empty());
            // Fields not inside the bytes given are copied one by one.
            assert_eq!(Fields::from_parsed_in(b"", req.headers), Fields::from_parsed(req.headers));
        }
    }

    /// Tokens are found in any field of the name, in any element of its list, whatever their
    /// case and the optional whitespace around them; never inside a longer element or in bytes
    /// that are not UTF-8. `get` trims, and shows bytes that are not UTF-8 as U+FFFD.
    #[test]
    fn tokens_are_list_elements_of_any_field_of_the_name() {
        let mut f = Fields::from_pairs([("Connection", "keep-alive"), ("connection", " foo,\tUpGrade ,bar")]);
        assert!(f.has_token("CONNECTION", "upgrade"));
        assert!(f.has_token("connection", "keep-alive"));
        assert!(!f.has_token("connection", "upgrades"));
        assert!(!f.has_token("connection", "grade"));
        assert!(!f.has_token("upgrade", "upgrade"));
        f.push("Upgrade", b"\xffwebsocket, \xfe, websocket\xff");
        assert!(!f.has_token("upgrade", "websocket"));
        f.push("Upgrade", b" websocket ");
        assert!(f.has_token("upgrade", "WebSocket"));
        assert_eq!(f.get("upgrade").as_deref(), Some("\u{fffd}websocket, \u{fffd}, websocket\u{fffd}"));
        assert_eq!(f.get("connection").as_deref(), Some("keep-alive"));
    }

    /// `value` is the first field of the name, whatever the case, trimmed of ASCII whitespace
    /// only (HTTP's optional whitespace), bytes that are not UTF-8 kept as they are; `iter_bytes`
    /// is `iter` as bytes.
    #[test]
    fn a_value_is_the_first_field_s_bytes_trimmed() {
        let f = Fields::from_pairs([
            ("Sec-WebSocket-Version", &b" \t13 "[..]),
            ("sec-websocket-version", b"8"),
            ("X", b"\xff1\xc2\xa0"),
        ]);
        assert_eq!(f.value("SEC-WEBSOCKET-VERSION"), Some(&b"13"[..]));
        assert_eq!(f.value("x"), Some(&b"\xff1\xc2\xa0"[..]), "U+00A0 is not HTTP whitespace");
        assert_eq!(f.value("content-length"), None);
        let as_bytes: Vec<(&[u8], &[u8])> = f.iter().map(|(n, v)| (n.as_bytes(), v)).collect();
        assert_eq!(f.iter_bytes().collect::<Vec<_>>(), as_bytes);
    }

    /// Fields keep their order through pushes, removals and rewrites, and compare by content.
    #[test]
    fn fields_keep_order_through_edits() {
        let mut f = Fields::from_pairs([("Host", "a"), ("X-A", "1"), ("x-a", "2"), ("Sec-WebSocket-Protocol", "p, q")]);
        f.push_first("First", b"0");
        f.push("Last", b"9");
        f.retain(|n, v| !(n.eq_ignore_ascii_case("x-a") && v == b"1"));
        f.rewrite("sec-websocket-protocol", |v| v.strip_prefix(b"p, ").unwrap_or(v).to_vec());
        let got: Vec<(&str, &[u8])> = f.iter().collect();
        let want: Vec<(&str, &[u8])> =
            vec![("First", b"0"), ("Host", b"a"), ("x-a", b"2"), ("Sec-WebSocket-Protocol", b"q"), ("Last", b"9")];
        assert_eq!(got, want);
        assert_eq!(f.get("X-A").as_deref(), Some("2"));
        assert!(f.has_token("sec-websocket-protocol", "Q"));
        assert_eq!(f.len(), 5);
        assert_eq!(f, Fields::from_pairs(want));
        assert_ne!(f, Fields::new());
        let parsed = [httparse::Header { name: "A", value: b" x " }];
        assert_eq!(Fields::from_parsed(&parsed), Fields::from_pairs([("A", " x ")]));
    }
}
