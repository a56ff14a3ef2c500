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

/// Header fields of a request or response head, in order, names as sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields(pub Vec<(String, Vec<u8>)>);

impl Fields {
    /// Copy the fields httparse found.
    pub fn from_parsed(parsed: &[httparse::Header<'_>]) -> Fields {
        Fields(parsed.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect())
    }

    /// Every field, in order.
    pub fn iter(&self) -> impl Iterator<Item = &(String, Vec<u8>)> {
        self.0.iter()
    }

    /// Values of every field named `name` (case-insensitive), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// The first field named `name`, as text (lossy), trimmed.
    pub fn get(&self, name: &str) -> Option<String> {
        self.all(name).next().map(|v| String::from_utf8_lossy(v).trim().to_string())
    }

    /// Whether any `name` field contains `token` in its comma-separated list (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name).any(|v| String::from_utf8_lossy(v).split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
}

/// A `Host` value without its port, lower-cased (`[::1]:80` → `[::1]`, `A.com:8080` → `a.com`).
pub fn host_without_port(h: &str) -> String {
    let host = match h.strip_prefix('[') {
        Some(rest) => rest.split(']').next().map(|s| format!("[{s}]")).unwrap_or_else(|| h.to_string()),
        None => h.rsplit_once(':').map(|(a, _)| a.to_string()).unwrap_or_else(|| h.to_string()),
    };
    host.to_ascii_lowercase()
}
