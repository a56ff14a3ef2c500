//! Object ids: read from the request (path segment, query parameter or header), percent-decode,
//! check against the namespace's rules.
//!
//! Warm path (once per upgrade), pure and sans-io. Every failure is an `IdError` that names the
//! rule it broke; the gateway answers it with 400 and that text.

use crate::config::{IdRules, IdSource};
use crate::http1::query::{self, percent_decode};
use crate::http1::Fields;
use std::fmt;

/// Why a request carries no acceptable object id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    /// The path does not match the template, or the parameter or header is missing.
    Missing(String),
    /// The id is empty.
    Empty,
    /// The id is longer than `max_length` bytes.
    TooLong {
        /// Length of the id, bytes.
        len: usize,
        /// The namespace's limit, bytes.
        max: usize,
    },
    /// The id has a character outside `allowed`.
    BadChar {
        /// The first bad character (or `\u{fffd}` for a non-UTF-8 byte).
        ch: char,
        /// Its byte offset in the id.
        at: usize,
        /// The namespace's `allowed` setting.
        allowed: String,
    },
    /// A `%` escape is not two hex digits.
    BadEscape,
}

impl IdError {
    /// Metric label (`reason` on rejections).
    pub fn label(&self) -> &'static str {
        match self {
            IdError::Missing(_) => "object_id_missing",
            IdError::Empty => "object_id_empty",
            IdError::TooLong { .. } => "object_id_too_long",
            IdError::BadChar { .. } => "object_id_bad_char",
            IdError::BadEscape => "object_id_bad_escape",
        }
    }
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Missing(where_) => write!(f, "Missing object id: expected {where_}"),
            IdError::Empty => write!(f, "Object id must not be empty"),
            IdError::TooLong { len, max } => write!(f, "Object id is {len} bytes; max_length is {max}"),
            IdError::BadChar { ch, at, allowed } => {
                write!(f, "Object id has {ch:?} at byte {at}; allowed characters are {allowed}")
            }
            IdError::BadEscape => write!(f, "Object id has a bad percent-escape"),
        }
    }
}

/// The object id of a request to `target` (path and query) with `headers`.
pub fn extract(source: &IdSource, rules: &IdRules, target: &str, headers: &Fields) -> Result<String, IdError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let raw: Vec<u8> = match source {
        IdSource::Path { prefix, suffix } => {
            let missing = || IdError::Missing(format!("a path like {prefix}{{id}}{suffix}"));
            let rest = path.strip_prefix(prefix.as_str()).ok_or_else(missing)?;
            let (id, tail) = rest.find('/').map_or((rest, ""), |k| rest.split_at(k));
            if tail != suffix {
                return Err(missing());
            }
            percent_decode(id, false).ok_or(IdError::BadEscape)?
        }
        IdSource::Query(name) => query::param(query, name)
            .ok_or_else(|| IdError::Missing(format!("the query parameter {name}")))?
            .ok_or(IdError::BadEscape)?,
        IdSource::Header(name) => {
            let mut values = headers.all(name);
            let value = values.next().ok_or_else(|| IdError::Missing(format!("the header {name}")))?;
            if values.next().is_some() {
                return Err(IdError::Missing(format!("exactly one {name} header")));
            }
            value.to_vec()
        }
    };
    check(rules, raw)
}

/// Check a decoded id against `rules`.
fn check(rules: &IdRules, raw: Vec<u8>) -> Result<String, IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if raw.len() > rules.max_length {
        return Err(IdError::TooLong { len: raw.len(), max: rules.max_length });
    }
    if let Some(at) = raw.iter().position(|&b| !rules.allowed.get(b as usize).copied().unwrap_or(false)) {
        let ch =
            std::str::from_utf8(&raw[at..]).ok().and_then(|s| s.chars().next()).unwrap_or(char::REPLACEMENT_CHARACTER);
        let ch = if raw[at].is_ascii() { raw[at] as char } else { ch };
        return Err(IdError::BadChar { ch, at, allowed: rules.allowed_text.clone() });
    }
    // Every allowed byte is ASCII, so the id is valid UTF-8.
    String::from_utf8(raw).map_err(|_| IdError::BadEscape)
}

/// Percent-encode `id` for a request path (everything but RFC 3986 unreserved characters).
pub fn percent_encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::parse_charset;

    fn rules(max: usize, allowed: &str) -> IdRules {
        IdRules { max_length: max, allowed: parse_charset(allowed).unwrap(), allowed_text: allowed.into() }
    }

    fn path(prefix: &str, suffix: &str) -> IdSource {
        IdSource::Path { prefix: prefix.into(), suffix: suffix.into() }
    }

    fn none() -> Fields {
        Fields::new()
    }

    #[test]
    fn path_template_with_and_without_suffix() {
        let r = rules(16, "a-z0-9");
        assert_eq!(extract(&path("/rooms/", ""), &r, "/rooms/lobby", &none()), Ok("lobby".into()));
        assert_eq!(extract(&path("/rooms/", ""), &r, "/rooms/lobby?x=1", &none()), Ok("lobby".into()));
        assert_eq!(extract(&path("/o/", "/ws"), &r, "/o/abc/ws", &none()), Ok("abc".into()));
        for bad in ["/rooms", "/rooms/lobby/more", "/other/lobby", "/o/abc", "/o/abc/wsx"] {
            let src = if bad.starts_with("/o") { path("/o/", "/ws") } else { path("/rooms/", "") };
            assert!(matches!(extract(&src, &r, bad, &none()), Err(IdError::Missing(_))), "{bad}");
        }
        assert_eq!(extract(&path("/rooms/", ""), &r, "/rooms/", &none()), Err(IdError::Empty));
    }

    #[test]
    fn query_and_header_sources() {
        let mut r = rules(16, "a-z0-9");
        r.allowed[b' ' as usize] = true;
        let q = IdSource::Query("room".into());
        assert_eq!(extract(&q, &r, "/x?a=1&room=lob%62y", &none()), Ok("lobby".into()));
        assert_eq!(extract(&q, &r, "/x?ro%6Fm=a+b", &none()), Ok("a b".into()));
        assert!(matches!(extract(&q, &r, "/x?rooms=1", &none()), Err(IdError::Missing(_))));
        let h = IdSource::Header("x-room".into());
        let headers = Fields::from_pairs([("X-Room", "abc")]);
        assert_eq!(extract(&h, &r, "/", &headers), Ok("abc".into()));
        let twice = Fields::from_pairs([("X-Room", "a"), ("x-room", "b")]);
        assert!(matches!(extract(&h, &r, "/", &twice), Err(IdError::Missing(_))));
        assert!(matches!(extract(&h, &r, "/", &none()), Err(IdError::Missing(_))));
    }

    #[test]
    fn rules_name_what_broke() {
        let r = rules(5, "a-z");
        let p = path("/r/", "");
        assert_eq!(extract(&p, &r, "/r/abcdef", &none()), Err(IdError::TooLong { len: 6, max: 5 }));
        let e = extract(&p, &r, "/r/abC", &none()).unwrap_err();
        assert_eq!(e, IdError::BadChar { ch: 'C', at: 2, allowed: "a-z".into() });
        assert_eq!(e.to_string(), "Object id has 'C' at byte 2; allowed characters are a-z");
        assert!(matches!(extract(&p, &r, "/r/%C3%A9", &none()), Err(IdError::BadChar { at: 0, .. })));
        assert_eq!(extract(&p, &r, "/r/a%2", &none()), Err(IdError::BadEscape));
        assert_eq!(extract(&p, &r, "/r/a%zz", &none()), Err(IdError::BadEscape));
        // A decoded slash is a character like any other: refused unless allowed.
        assert!(matches!(extract(&p, &r, "/r/a%2Fb", &none()), Err(IdError::BadChar { ch: '/', .. })));
    }

    #[test]
    fn encode_round_trips_through_decode() {
        for id in ["lobby", "a b/c", "x%y", "é"] {
            assert_eq!(percent_decode(&percent_encode(id), false).unwrap(), id.as_bytes());
        }
        assert_eq!(percent_encode("a.b-c_d~"), "a.b-c_d~");
    }
}
