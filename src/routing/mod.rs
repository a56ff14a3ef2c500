//! Routing: (host, path) → route, longest path prefix first.
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
        self.routes.iter().find(|r| {
            let host_ok = match (&r.host, host) {
                (None, _) => true,
                (Some(want), Some(h)) => want == h,
                (Some(_), None) => false,
            };
            host_ok && r.matches_path(path)
        })
    }
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
    fn segment_wise_prefix() {
        assert!(prefix_matches("/chat", "/chat"));
        assert!(prefix_matches("/chat", "/chat/1"));
        assert!(!prefix_matches("/chat", "/chatter"));
        assert!(prefix_matches("", "/anything"));
    }
}
