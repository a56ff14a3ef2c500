//! Routing: (host, path) → route, longest path prefix first, and the check every path passes
//! before it is routed (`check_path`).
//!
//! Warm path (once per request), pure and table-driven. The table is built once at startup
//! from the validated config and shared read-only.

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use crate::config::{Config, Route};

/// The compiled routes, sorted so the first match is the most specific.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Build the table from a validated config.
    pub fn new(config: &Config) -> RouteTable {
        let mut routes = config.routes.clone();
        // Host-specific routes before host-less ones, then longer prefixes first.
        routes.sort_by(|a, b| {
            b.host.is_some().cmp(&a.host.is_some()).then(b.path_prefix.len().cmp(&a.path_prefix.len()))
        });
        RouteTable { routes }
    }

    /// The route for a request to `host` (lower-case, no port) and `path`.
    pub fn resolve(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.resolve_indexed(host, path).map(|(_, r)| r)
    }

    /// The route for a request, with its index in this table (see `iter`).
    pub fn resolve_indexed(&self, host: Option<&str>, path: &str) -> Option<(usize, &Route)> {
        self.routes.iter().enumerate().find(|(_, r)| {
            let host_ok = match (&r.host, host) {
                (None, _) => true,
                (Some(want), Some(h)) => want == h,
                (Some(_), None) => false,
            };
            host_ok && r.matches_path(path)
        })
    }

    /// The route at `index` (an index `resolve_indexed` gave).
    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// The routes in table order (the order of `resolve_indexed`'s indices).
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

/// Why a request path is refused before routing.
///
/// Paths are matched segment-wise as sent and forwarded as sent, so a path whose meaning a
/// backend could resolve differently (`/raw/../admin` matches the `/raw` prefix, then a backend
/// serves `/admin`) is refused rather than resolved: no normalisation can then disagree with
/// a backend's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// A `.` or `..` segment, also percent-encoded (`%2e`, `.%2E`, ...).
    DotSegment,
    /// `%2f` or `%5c`: a slash or backslash hidden from segment matching.
    EncodedSlash,
    /// A backslash (some servers read it as `/`).
    Backslash,
    /// A NUL byte, raw or `%00`.
    Nul,
}

impl BadPath {
    /// A short description, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BadPath::DotSegment => "dot segment",
            BadPath::EncodedSlash => "encoded slash or backslash",
            BadPath::Backslash => "backslash",
            BadPath::Nul => "NUL",
        }
    }
}

/// Check a request path (the target before `?`) before it is routed: no dot segments (also
/// percent-encoded), no encoded slash or backslash, no backslash, no NUL. One pass over the
/// bytes (warm path, once per request); when a path breaks several rules, the first of NUL,
/// backslash, the first bad escape, dot segment is reported.
pub fn check_path(path: &str) -> Result<(), BadPath> {
    let bytes = path.as_bytes();
    let (mut backslash, mut escape, mut dots) = (false, None, false);
    let mut segment = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            0 => return Err(BadPath::Nul),
            b'\\' => backslash = true,
            b'%' if escape.is_none() => match bytes.get(i + 1..i + 3) {
                Some(b"00") => escape = Some(BadPath::Nul),
                Some(hex) if hex.eq_ignore_ascii_case(b"2f") || hex.eq_ignore_ascii_case(b"5c") => {
                    escape = Some(BadPath::EncodedSlash)
                }
                _ => {}
            },
            b'/' => {
                dots |= is_dot_segment(bytes.get(segment..i).unwrap_or_default());
                segment = i + 1;
            }
            _ => {}
        }
    }
    dots |= is_dot_segment(bytes.get(segment..).unwrap_or_default());
    match (backslash, escape, dots) {
        (true, _, _) => Err(BadPath::Backslash),
        (false, Some(bad), _) => Err(bad),
        (false, None, true) => Err(BadPath::DotSegment),
        (false, None, false) => Ok(()),
    }
}

/// `.` or `..`, each dot possibly written `%2e` / `%2E`.
fn is_dot_segment(segment: &[u8]) -> bool {
    let mut rest = segment;
    let mut dots = 0;
    while let Some(&first) = rest.first() {
        if first == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::prefix_matches;

    fn table(yaml: &str) -> RouteTable {
        RouteTable::new(&crate::config::parse(yaml, "test").unwrap())
    }

    const YAML: &str = r#"
listeners: [{address: "127.0.0.1:0"}]
pools: [{name: p, backends: ["127.0.0.1:1"], health_check: {kind: none}}]
routes:
  - {path_prefix: /, pool: p, name: root}
  - {path_prefix: /chat, pool: p, name: chat}
  - {path_prefix: /chat, host: Example.COM, pool: p, name: chat-example}
"#;

    #[test]
    fn longest_prefix_and_host_win() {
        let t = table(YAML);
        assert_eq!(t.resolve(None, "/chat/room").unwrap().name, "chat");
        assert_eq!(t.resolve(Some("example.com"), "/chat").unwrap().name, "chat-example");
        assert_eq!(t.resolve(Some("other"), "/chatter").unwrap().name, "root");
        assert_eq!(t.resolve(None, "/").unwrap().name, "root");
    }

    #[test]
    fn paths_with_dot_segments_encoded_slashes_backslashes_or_nul_are_refused() {
        for ok in ["/", "/chat", "/chat/room-1", "/a.b/c..d", "/.well-known/x", "/x%20y", "/%2e%2e%2e", "/a/...", ""] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for dots in ["/raw/../admin", "/raw/..", "/./x", "/raw/%2e%2e/admin", "/raw/.%2E/x", "/raw/%2E", "/a/%2e./b"] {
            assert_eq!(check_path(dots), Err(BadPath::DotSegment), "{dots}");
        }
        for slash in ["/raw%2fadmin", "/raw%2F..%2Fadmin", "/raw%5cadmin", "/raw%5C"] {
            assert_eq!(check_path(slash), Err(BadPath::EncodedSlash), "{slash}");
        }
        assert_eq!(check_path("/raw\\..\\admin"), Err(BadPath::Backslash));
        assert_eq!(check_path("/raw%00.txt"), Err(BadPath::Nul));
        assert_eq!(check_path("/raw\0x"), Err(BadPath::Nul));
    }

    #[test]
    fn a_path_breaking_several_rules_reports_the_first_of_them() {
        assert_eq!(check_path("/../%2f\\x\0"), Err(BadPath::Nul));
        assert_eq!(check_path("/../%2f\\x"), Err(BadPath::Backslash));
        assert_eq!(check_path("/../%5c/%00"), Err(BadPath::EncodedSlash));
        assert_eq!(check_path("/../%00/%2f"), Err(BadPath::Nul));
        assert_eq!(check_path("/x/%2e%2E/y%20"), Err(BadPath::DotSegment));
    }

    #[test]
    fn segment_wise_prefix() {
        assert!(prefix_matches("/chat", "/chat"));
        assert!(prefix_matches("/chat", "/chat/1"));
        assert!(!prefix_matches("/chat", "/chatter"));
        assert!(prefix_matches("", "/anything"));
    }
}
