//! The peer hop's first line: how an instance that a client reached tells the owner instance
//! who the client is, so that the owner serves it without authenticating it again.
//!
//! Warm path, pure (once per relayed connection, on both ends). The line is
//!
//! ```text
//! WEIR-PEER 1 <hmac> <identity>\r\n
//! ```
//!
//! where `<identity>` is one line of JSON (`Identity`) and `<hmac>` is the lowercase hex
//! HMAC-SHA256 of the identity's bytes under the secret every instance shares
//! (`cluster.peer.secret_file`), compared in constant time. The identity carries when it was
//! made (`at`, Unix seconds): a line older than `MAX_AGE` (or from further in the future) is
//! refused, so a captured line cannot be replayed later. After the line comes the client's
//! upgrade request head as weir forwards it to any backend; the owner answers it like one (a
//! 101, or a refusal the relaying instance passes on to the client).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first word of the line.
pub const MAGIC: &str = "WEIR-PEER";
/// The protocol version (the second word).
pub const VERSION: u32 = 1;
/// Longest first line accepted, bytes (`\r\n` included).
pub const MAX_LINE: usize = 8 * 1024;
/// Oldest (and furthest in the future) a line may be: clocks of instances agree within this.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// Who the relayed client is, as the instance it reached established.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The instance that relays (it writes the connection record).
    pub from: String,
    /// The object namespace.
    pub namespace: String,
    /// The object id.
    pub id: String,
    /// The fencing token the relaying instance read for the object.
    pub token: i64,
    /// The client's address, as the relaying instance saw it (after PROXY / trusted proxies).
    pub client: Option<String>,
    /// The connection's tenant (from its credential, route or `usage.default_tenant`).
    pub tenant: Option<String>,
    /// The route the client matched.
    pub route: String,
    /// The connection id (the relaying instance's, in its connection record).
    pub connection_id: String,
    /// The credential check's outcome: `accepted` (a credential was checked and let in) or
    /// `none` (the route has no auth). The owner never checks again.
    pub credential: String,
    /// When the line was made, Unix seconds.
    pub at: u64,
}

/// Why a first line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// Not `WEIR-PEER 1 <hmac> <json>\r\n`.
    #[error("malformed peer line")]
    Malformed,
    /// Another protocol version.
    #[error("peer protocol version {0} (this instance speaks 1)")]
    Version(String),
    /// The HMAC does not match: another secret, or a forged identity.
    #[error("peer line not signed with this cluster's secret")]
    BadSignature,
    /// The line's time is more than `MAX_AGE` away from now.
    #[error("peer line too old or from the future")]
    Stale,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The hex HMAC-SHA256 of `json` under `secret` (HMAC takes keys of any length, so the key is
/// never refused; `None` would only mean a broken hmac crate, and then no line checks out).
fn signature(secret: &[u8], json: &str) -> Option<Hmac<Sha256>> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).ok()?;
    m.update(json.as_bytes());
    Some(m)
}

/// The first line for `identity` (its `at` is set to now).
pub fn line(secret: &[u8], identity: &Identity) -> Vec<u8> {
    let identity = Identity { at: now_secs(), ..identity.clone() };
    // Serializing plain strings and numbers cannot fail.
    let json = serde_json::to_string(&identity).unwrap_or_default();
    let sig: String = signature(secret, &json)
        .map(|m| m.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default();
    format!("{MAGIC} {VERSION} {sig} {json}\r\n").into_bytes()
}

/// Check a first line (with or without its `\r\n`) and return the identity it carries.
pub fn verify(secret: &[u8], line: &[u8]) -> Result<Identity, PeerError> {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|_| PeerError::Malformed)?;
    let mut parts = text.splitn(4, ' ');
    let (Some(magic), Some(version), Some(sig), Some(json)) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PeerError::Malformed);
    };
    if magic != MAGIC {
        return Err(PeerError::Malformed);
    }
    if version != VERSION.to_string() {
        return Err(PeerError::Version(version.chars().take(16).collect()));
    }
    let sig = decode_hex(sig).ok_or(PeerError::Malformed)?;
    let m = signature(secret, json).ok_or(PeerError::BadSignature)?;
    // `verify_slice` compares in constant time.
    m.verify_slice(&sig).map_err(|_| PeerError::BadSignature)?;
    let identity: Identity = serde_json::from_str(json).map_err(|_| PeerError::Malformed)?;
    if now_secs().abs_diff(identity.at) > MAX_AGE.as_secs() {
        return Err(PeerError::Stale);
    }
    Ok(identity)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            from: "weir-a".into(),
            namespace: "rooms".into(),
            id: "lobby".into(),
            token: 42,
            client: Some("10.0.0.1:5000".into()),
            tenant: Some("acme".into()),
            route: "rooms".into(),
            connection_id: "c1".into(),
            credential: "accepted".into(),
            at: 0,
        }
    }

    #[test]
    fn a_line_round_trips_under_the_same_secret() {
        let l = line(b"0123456789abcdef", &identity());
        assert!(l.starts_with(b"WEIR-PEER 1 ") && l.ends_with(b"\r\n"));
        let got = verify(b"0123456789abcdef", &l).unwrap();
        assert_eq!(Identity { at: 0, ..got }, identity());
    }

    #[test]
    fn another_secret_or_a_changed_identity_is_refused() {
        let l = line(b"0123456789abcdef", &identity());
        assert_eq!(verify(b"fedcba9876543210", &l), Err(PeerError::BadSignature));
        let forged = String::from_utf8(l).unwrap().replace("acme", "evil");
        assert_eq!(verify(b"0123456789abcdef", forged.as_bytes()), Err(PeerError::BadSignature));
    }

    #[test]
    fn garbage_never_panics() {
        for bad in [&b""[..], b"WEIR-PEER", b"WEIR-PEER 1 zz {}", b"WEIR-PEER 2 00 {}", b"GET / HTTP/1.1", b"\xff\xfe"]
        {
            assert!(verify(b"0123456789abcdef", bad).is_err());
        }
        let sig = "0".repeat(64);
        assert_eq!(verify(b"k", format!("WEIR-PEER 1 {sig} {{}}").as_bytes()), Err(PeerError::BadSignature));
    }

    #[test]
    fn an_old_line_is_refused() {
        let json = serde_json::to_string(&Identity { at: 1, ..identity() }).unwrap();
        let m = signature(b"0123456789abcdef", &json).unwrap();
        let sig: String = m.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let l = format!("WEIR-PEER 1 {sig} {json}\r\n");
        assert_eq!(verify(b"0123456789abcdef", l.as_bytes()), Err(PeerError::Stale));
    }
}
