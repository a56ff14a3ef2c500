//! Authentication of an upgrade (`routes[].auth`): find the credential (header, query parameter
//! or a `Sec-WebSocket-Protocol` entry), verify it against the route's methods in order (API
//! keys by SHA-256 digest, JWTs), and say which tenant it bills and which object ids it may open.
//! A client certificate the listener verified (`client_cert`, `crate::client_cert::PeerCert`) is
//! tried first; it is never read from the request.
//!
//! Warm path (once per upgrade). Credentials are never logged, recorded or counted: errors carry
//! a label only. The credential weir consumed is removed from the request before the backend
//! sees it (`strip`); the backend learns the tenant from `X-Weir-Tenant`.

use super::jwt::{JwtError, JwtVerifier};
use crate::client_cert::PeerCert;
use crate::config::{Auth, AuthMethod, ClientCertAuth, CredentialSources, TenantFrom};
use crate::http1::head::RequestHead;
use crate::http1::query;
use crate::http1::Fields;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Where a credential was found (what `strip` removes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A header (lower-case name).
    Header(String),
    /// A query parameter.
    Query(String),
    /// One `Sec-WebSocket-Protocol` entry, as sent.
    Subprotocol(String),
    /// The client certificate the listener verified (nothing to remove from the request).
    ClientCert,
}

/// An admitted credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Tenant billed for the connection.
    pub tenant: String,
    /// Object ids it may open (`*` wildcards); empty: any.
    pub objects: Vec<String>,
    /// Where the credential was.
    pub from: Found,
}

/// Why a request was not admitted (labels only, never the credential).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No credential in any allowed place: 401.
    Missing,
    /// A credential that no method accepts (unknown key, bad or expired token): 401.
    Invalid(&'static str),
}

/// What a key grants.
#[derive(Debug, Clone)]
struct KeyGrant {
    tenant: String,
    objects: Vec<String>,
}

enum Method {
    Keys(HashMap<[u8; 32], KeyGrant>),
    Jwt(Box<JwtVerifier>),
    ClientCert(ClientCertAuth),
}

/// A route's verifier, built once at startup.
pub struct Authenticator {
    sources: CredentialSources,
    methods: Vec<Method>,
}

impl Authenticator {
    /// Build the verifier of `auth` (loads JWT keys; the error names the problem).
    pub fn new(auth: &Auth) -> Result<Authenticator, String> {
        let methods = auth
            .methods
            .iter()
            .map(|m| match m {
                AuthMethod::ApiKeys(keys) => Ok(Method::Keys(
                    keys.iter()
                        .map(|k| (k.sha256, KeyGrant { tenant: k.tenant.clone(), objects: k.objects.clone() }))
                        .collect(),
                )),
                AuthMethod::Jwt(settings) => JwtVerifier::new(settings).map(|v| Method::Jwt(Box::new(v))),
                AuthMethod::ClientCert(c) => Ok(Method::ClientCert(c.clone())),
                // Served by `external::External` (the `Gatekeeper` builds no verifier for it).
                AuthMethod::External(_) => Err("external auth has no local verifier".into()),
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Authenticator { sources: auth.sources.clone(), methods })
    }

    /// Verify the credential of a request for `target` with `headers`, arriving with `peer`, the
    /// client certificate its listener verified (if any): certificate methods first, then the
    /// credential found in the request.
    pub fn check(&self, target: &str, headers: &Fields, peer: Option<&PeerCert>) -> Result<Admitted, AuthError> {
        let mut last = None;
        for method in &self.methods {
            if let (Method::ClientCert(c), Some(p)) = (method, peer) {
                match client_cert_tenant(c, p) {
                    Ok(tenant) => return Ok(Admitted { tenant, objects: c.objects.clone(), from: Found::ClientCert }),
                    Err(why) => last = Some(AuthError::Invalid(why)),
                }
            }
        }
        let in_request = self.methods.iter().any(|m| !matches!(m, Method::ClientCert(_)));
        let Some((credential, from)) = in_request.then(|| self.find(target, headers)).flatten() else {
            return Err(last.unwrap_or(AuthError::Missing));
        };
        let mut last = AuthError::Invalid("unknown_key");
        for method in &self.methods {
            match method {
                Method::Keys(keys) => {
                    let digest: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
                    if let Some(g) = keys.get(&digest) {
                        return Ok(Admitted { tenant: g.tenant.clone(), objects: g.objects.clone(), from });
                    }
                }
                Method::Jwt(verifier) => match verifier.verify(&credential) {
                    Ok(g) => return Ok(Admitted { tenant: g.tenant, objects: g.objects, from }),
                    Err(e) => last = AuthError::Invalid(jwt_label(e)),
                },
                Method::ClientCert(_) => {}
            }
        }
        Err(last)
    }

    /// The credential and where it was: the header, then the query, then the subprotocol list.
    fn find(&self, target: &str, headers: &Fields) -> Option<(String, Found)> {
        let s = &self.sources;
        if let Some(v) = headers.get(&s.header) {
            let v = if s.header == "authorization" {
                v.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")).map(|(_, t)| t.trim())
            } else {
                Some(v.as_str())
            };
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                return Some((v.to_string(), Found::Header(s.header.clone())));
            }
        }
        if let Some(name) = &s.query {
            if let Some(Some(v)) = query::param(query::query_of(target), name) {
                if let Ok(v) = String::from_utf8(v) {
                    return Some((v, Found::Query(name.clone())));
                }
            }
        }
        let prefix = s.subprotocol.as_deref()?;
        headers.all("sec-websocket-protocol").flat_map(|v| v.split(|&b| b == b',')).find_map(|entry| {
            let entry = std::str::from_utf8(entry).ok()?.trim();
            let key = entry.strip_prefix(prefix).filter(|k| !k.is_empty())?;
            Some((key.to_string(), Found::Subprotocol(entry.to_string())))
        })
    }
}

/// The tenant a verified certificate bills under `c`, or the label of why it is not admitted.
fn client_cert_tenant(c: &ClientCertAuth, p: &PeerCert) -> Result<String, &'static str> {
    let field = match c.tenant_from {
        TenantFrom::Cn => p.cn.as_deref(),
        TenantFrom::O => p.o.as_deref(),
        TenantFrom::Ou => p.ou.as_deref(),
        TenantFrom::SanDns => p.san_dns.first().map(String::as_str),
    };
    // The same rule as a configured tenant name (1 to 128 printable characters).
    let tenant = field
        .filter(|t| !t.is_empty() && t.len() <= 128 && !t.chars().any(char::is_control))
        .ok_or("client_cert_no_tenant")?;
    if !object_allowed(&c.allow, tenant) {
        return Err("client_cert_not_allowed");
    }
    Ok(tenant.to_string())
}

/// The label of a JWT failure.
fn jwt_label(e: JwtError) -> &'static str {
    e.as_str()
}

/// Remove the credential weir consumed from `head` (header line, query parameter or
/// subprotocol entry; an emptied `Sec-WebSocket-Protocol` header goes entirely).
pub fn strip(head: &mut RequestHead, from: &Found) {
    match from {
        Found::ClientCert => {}
        Found::Header(name) => head.headers.retain(|n, _| !n.eq_ignore_ascii_case(name)),
        Found::Query(name) => head.target = query::without_param(&head.target, name),
        Found::Subprotocol(entry) => {
            head.headers.rewrite("sec-websocket-protocol", |value| {
                let kept: Vec<&str> = std::str::from_utf8(value)
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty() && e != entry)
                    .collect();
                kept.join(", ").into_bytes()
            });
            head.headers.retain(|n, v| !(n.eq_ignore_ascii_case("sec-websocket-protocol") && v.is_empty()));
        }
    }
}

/// Whether `id` matches one of `patterns` (`*` matches any run of characters); an empty list
/// allows every id.
pub fn object_allowed(patterns: &[String], id: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| glob(p.as_bytes(), id.as_bytes()))
}

/// `*`-only glob match, iterative (no backtracking blow-up).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some(pi);
                mark = si;
                pi += 1;
            }
            Some(&c) if c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some(st) => {
                    pi = st + 1;
                    mark += 1;
                    si = mark;
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

/// The SHA-256 of `key`, as 64 lower-case hex digits (`weir key hash`).
pub fn key_digest_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKey;

    fn auth(query: Option<&str>) -> Authenticator {
        let key = |k: &str, tenant: &str, objects: &[&str]| {
            let sha256 = crate::config::admission::parse_sha256(&key_digest_hex(k)).unwrap();
            ApiKey { sha256, tenant: tenant.into(), objects: objects.iter().map(|s| s.to_string()).collect() }
        };
        Authenticator::new(&Auth {
            sources: CredentialSources {
                header: "authorization".into(),
                query: query.map(String::from),
                subprotocol: Some("weir.key.".into()),
            },
            methods: vec![AuthMethod::ApiKeys(vec![key("k-acme", "acme", &[]), key("k-beta", "beta", &["team-*"])])],
        })
        .unwrap()
    }

    fn fields(list: &[(&str, &str)]) -> Fields {
        Fields::from_pairs(list.iter().copied())
    }

    #[test]
    fn a_key_is_found_in_each_place_and_maps_to_its_tenant() {
        let a = auth(Some("key"));
        let got = a.check("/c", &fields(&[("Authorization", "Bearer k-acme")]), None).unwrap();
        assert_eq!((got.tenant.as_str(), got.from), ("acme", Found::Header("authorization".into())));
        let got = a.check("/c?x=1&key=k-beta", &fields(&[]), None).unwrap();
        assert_eq!((got.tenant.as_str(), got.from), ("beta", Found::Query("key".into())));
        let got = a.check("/c", &fields(&[("Sec-WebSocket-Protocol", "chat, weir.key.k-acme")]), None).unwrap();
        assert_eq!(got.from, Found::Subprotocol("weir.key.k-acme".into()));
        assert_eq!(a.check("/c", &fields(&[]), None), Err(AuthError::Missing));
        assert_eq!(a.check("/c", &fields(&[("Authorization", "Basic k-acme")]), None), Err(AuthError::Missing));
        assert_eq!(
            a.check("/c", &fields(&[("Authorization", "Bearer nope")]), None),
            Err(AuthError::Invalid("unknown_key"))
        );
        assert_eq!(auth(None).check("/c?key=k-acme", &fields(&[]), None), Err(AuthError::Missing), "query not allowed");
    }

    async fn parse(raw: &str) -> RequestHead {
        crate::http1::head::read_head(&mut raw.as_bytes(), std::time::Duration::from_secs(1)).await.unwrap()
    }

    #[tokio::test]
    async fn strip_removes_only_the_credential() {
        let raw = "GET /c?a=1&key=k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nSec-WebSocket-Protocol: chat, weir.key.k\r\n\r\n";
        let mut head = parse(raw).await;
        strip(&mut head, &Found::Subprotocol("weir.key.k".into()));
        assert_eq!(head.headers.get("sec-websocket-protocol").as_deref(), Some("chat"));
        strip(&mut head, &Found::Query("key".into()));
        assert_eq!(head.target, "/c?a=1");
        strip(&mut head, &Found::Header("authorization".into()));
        assert!(head.headers.get("authorization").is_none());
        let mut only = parse("GET / HTTP/1.1\r\nSec-WebSocket-Protocol: weir.key.k\r\n\r\n").await;
        strip(&mut only, &Found::Subprotocol("weir.key.k".into()));
        assert!(only.headers.get("sec-websocket-protocol").is_none(), "an emptied header goes");
    }

    #[test]
    fn object_patterns() {
        let p = vec!["lobby".to_string(), "team-*".to_string()];
        assert!(object_allowed(&p, "lobby") && object_allowed(&p, "team-7") && object_allowed(&p, "team-"));
        assert!(!object_allowed(&p, "lobby2") && !object_allowed(&p, "x-team-1"));
        assert!(object_allowed(&[], "anything"));
        assert!(object_allowed(&["*a*b*".to_string()], "xxaxxbxx"));
        assert!(!object_allowed(&["*a*b".to_string()], "xxaxxbxx"));
    }

    #[test]
    fn a_verified_certificate_bills_its_subject_and_nothing_in_the_request_stands_in_for_it() {
        use crate::config::{ClientCertAuth, TenantFrom};
        let key = crate::config::admission::parse_sha256(&key_digest_hex("k-acme")).unwrap();
        let sources = || CredentialSources { header: "authorization".into(), query: None, subprotocol: None };
        let a = Authenticator::new(&Auth {
            sources: sources(),
            methods: vec![
                AuthMethod::ClientCert(ClientCertAuth {
                    tenant_from: TenantFrom::Cn,
                    allow: vec!["tenant-*".into()],
                    objects: vec!["room-*".into()],
                }),
                AuthMethod::ApiKeys(vec![ApiKey { sha256: key, tenant: "acme".into(), objects: vec![] }]),
            ],
        })
        .unwrap();
        let peer = |cn: &str| PeerCert { cn: Some(cn.into()), ..PeerCert::default() };
        let none = fields(&[]);
        let got = a.check("/c", &none, Some(&peer("tenant-a"))).unwrap();
        assert_eq!((got.tenant.as_str(), &got.from), ("tenant-a", &Found::ClientCert));
        assert_eq!(got.objects, vec!["room-*".to_string()]);
        assert_eq!(a.check("/c", &none, Some(&peer("intruder"))), Err(AuthError::Invalid("client_cert_not_allowed")));
        assert_eq!(a.check("/c", &none, None), Err(AuthError::Missing));
        // A certificate not allowed does not stop a valid key; a header naming a subject is no credential.
        let key_hdr = fields(&[("Authorization", "Bearer k-acme")]);
        assert_eq!(a.check("/c", &key_hdr, Some(&peer("intruder"))).unwrap().tenant, "acme");
        let forged = fields(&[("X-Client-Cert-CN", "tenant-a"), ("Authorization", "Bearer tenant-a")]);
        assert_eq!(a.check("/c", &forged, None), Err(AuthError::Invalid("unknown_key")));
        let san_only = ClientCertAuth { tenant_from: TenantFrom::SanDns, allow: vec![], objects: vec![] };
        let only =
            Authenticator::new(&Auth { sources: sources(), methods: vec![AuthMethod::ClientCert(san_only)] }).unwrap();
        assert_eq!(only.check("/c", &key_hdr, None), Err(AuthError::Missing), "a header is never looked at");
        let san = PeerCert { san_dns: vec!["svc.example".into()], ..PeerCert::default() };
        assert_eq!(only.check("/c", &none, Some(&san)).unwrap().tenant, "svc.example");
        assert_eq!(only.check("/c", &none, Some(&peer("x"))), Err(AuthError::Invalid("client_cert_no_tenant")));
    }
}
