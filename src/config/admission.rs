//! `routes[].auth`, `routes[].origins`, `admission:`: validation of who may connect and how
//! many. Cold path (startup and `weir check`); every bad value is reported with its key path.

use super::file::{FileAdmission, FileApiKey, FileAuth, FileConnRate, FileJwt, FileRoute};
use super::model::{
    Admission, ApiKey, Auth, AuthMethod, CredentialSources, JwtSettings, NewConnRate, Origins, RouteAdmission,
};
use super::validate::Validator;
use std::path::PathBuf;
use std::time::Duration;

/// Default `auth.subprotocol`: the prefix of a subprotocol entry carrying a credential.
pub const DEFAULT_SUBPROTOCOL_PREFIX: &str = "weir.key.";
/// Default `admission.max_tracked_ips`.
pub const DEFAULT_MAX_TRACKED_IPS: u64 = 100_000;
/// Default `auth.jwt.leeway`.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);
/// The JWT algorithms weir verifies.
pub const JWT_ALGORITHMS: [&str; 4] = ["HS256", "RS256", "ES256", "EdDSA"];

/// Decode 64 hex digits into a SHA-256 digest.
pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Validator {
    /// `routes[i].auth`, `.origins`, `.allow_no_origin`, `.admission`.
    pub(super) fn route_admission(
        &mut self,
        i: usize,
        r: &FileRoute,
    ) -> (Option<Auth>, Option<Origins>, RouteAdmission) {
        let auth = r.auth.as_ref().and_then(|a| self.auth(&format!("routes[{i}].auth"), a));
        if r.allow_no_origin.is_some() && r.origins.is_none() {
            self.err(
                format!("routes[{i}].allow_no_origin"),
                "",
                "applies with `origins` only; add `origins: [...]` or remove it",
            );
        }
        let origins = r.origins.as_ref().map(|list| self.origins(i, list, r.allow_no_origin.unwrap_or(true)));
        let admission =
            RouteAdmission { max_connections: r.admission.as_ref().and_then(|a| a.max_connections).unwrap_or(0) };
        (auth, origins, admission)
    }

    fn auth(&mut self, at: &str, a: &FileAuth) -> Option<Auth> {
        let header = a.header.clone().unwrap_or_else(|| "authorization".into()).to_ascii_lowercase();
        if header.is_empty() || !header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            self.err(format!("{at}.header"), &header, "must be a header name such as authorization or x-api-key");
        }
        let subprotocol = match a.subprotocol.as_deref() {
            None => Some(DEFAULT_SUBPROTOCOL_PREFIX.to_string()),
            Some("") => None,
            Some(p) if p.bytes().all(|b| b.is_ascii_graphic() && !b",;\"".contains(&b)) => Some(p.to_string()),
            Some(p) => {
                self.err(
                    format!("{at}.subprotocol"),
                    p,
                    "must be a token prefix such as weir.key. (\"\" turns it off)",
                );
                None
            }
        };
        let sources = CredentialSources { header, query: a.query.clone(), subprotocol };
        let mut methods = Vec::new();
        let mut keys: Vec<ApiKey> = a
            .api_keys
            .iter()
            .enumerate()
            .filter_map(|(k, key)| self.api_key(&format!("{at}.api_keys[{k}]"), key))
            .collect();
        if let Some(file) = &a.keys_file {
            keys.extend(self.keys_file(&format!("{at}.keys_file"), file));
        }
        if !a.api_keys.is_empty() || a.keys_file.is_some() {
            methods.push(AuthMethod::ApiKeys(keys));
        }
        if let Some(j) = &a.jwt {
            if let Some(settings) = self.jwt(&format!("{at}.jwt"), j) {
                methods.push(AuthMethod::Jwt(settings));
            }
        }
        if a.api_keys.is_empty() && a.keys_file.is_none() && a.jwt.is_none() {
            self.err(at, "", "names no method; add `api_keys: [{sha256: ..., tenant: ...}]`, `keys_file` or `jwt`");
            return None;
        }
        Some(Auth { sources, methods })
    }

    fn api_key(&mut self, at: &str, k: &FileApiKey) -> Option<ApiKey> {
        self.tenant_name(&format!("{at}.tenant"), &k.tenant);
        let Some(sha256) = parse_sha256(&k.sha256) else {
            self.err(
                format!("{at}.sha256"),
                &k.sha256,
                "must be 64 hex digits: the SHA-256 of the key (`weir key hash KEY` prints it)",
            );
            return None;
        };
        Some(ApiKey { sha256, tenant: k.tenant.clone(), objects: k.objects.clone().unwrap_or_default() })
    }

    fn tenant_name(&mut self, key: &str, t: &str) {
        if t.is_empty() || t.len() > 128 || t.chars().any(char::is_control) {
            self.err(key, t, "must be 1 to 128 printable characters");
        }
    }

    /// A keys file: `SHA256HEX TENANT` per line, `#` comments and blank lines ignored.
    fn keys_file(&mut self, at: &str, path: &str) -> Vec<ApiKey> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.err(at, path, format!("cannot be read ({e}); name a file of `SHA256HEX TENANT` lines"));
                return Vec::new();
            }
        };
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            match (parts.next().and_then(parse_sha256), parts.next(), parts.next()) {
                (Some(sha256), Some(tenant), None) => {
                    self.tenant_name(&format!("{at} ({path} line {})", n + 1), tenant);
                    keys.push(ApiKey { sha256, tenant: tenant.to_string(), objects: Vec::new() });
                }
                _ => self.err(
                    format!("{at} ({path} line {})", n + 1),
                    "(line not shown: it may hold a key)",
                    "each line must be `SHA256HEX TENANT` (64 hex digits, a space, the tenant)",
                ),
            }
        }
        keys
    }

    fn jwt(&mut self, at: &str, j: &FileJwt) -> Option<JwtSettings> {
        let algorithms = match &j.algorithms {
            Some(list) => {
                for a in list {
                    if !JWT_ALGORITHMS.contains(&a.as_str()) {
                        self.err(format!("{at}.algorithms"), a, "must be HS256, RS256, ES256 or EdDSA");
                    }
                }
                list.clone()
            }
            None if j.secret.is_some() => vec!["HS256".into()],
            None => vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
        };
        if j.secret.is_none() && j.public_key_file.is_none() && j.jwks_file.is_none() {
            self.err(at, "", "names no key; set `secret` (HS256), `public_key_file` or `jwks_file`");
            return None;
        }
        let leeway = match j.leeway.as_deref().map(humantime::parse_duration) {
            None => DEFAULT_JWT_LEEWAY,
            Some(Ok(d)) => d,
            Some(Err(_)) => {
                self.err(format!("{at}.leeway"), j.leeway.as_deref().unwrap_or(""), "is not a duration, e.g. \"30s\"");
                DEFAULT_JWT_LEEWAY
            }
        };
        for (key, file) in [("public_key_file", &j.public_key_file), ("jwks_file", &j.jwks_file)] {
            if let Some(f) = file {
                if !std::path::Path::new(f).is_file() {
                    self.err(format!("{at}.{key}"), f, "is not a readable file");
                }
            }
        }
        Some(JwtSettings {
            algorithms,
            secret: j.secret.clone(),
            public_key_file: j.public_key_file.as_ref().map(PathBuf::from),
            jwks_file: j.jwks_file.as_ref().map(PathBuf::from),
            issuer: j.issuer.clone(),
            audience: j.audience.clone(),
            leeway,
            tenant_claim: j.tenant_claim.clone().unwrap_or_else(|| "sub".into()),
            objects_claim: j.objects_claim.clone(),
        })
    }

    fn origins(&mut self, i: usize, list: &[String], allow_missing: bool) -> Origins {
        let mut o = Origins { exact: Vec::new(), wildcard: Vec::new(), allow_missing };
        for (k, origin) in list.iter().enumerate() {
            let lower = origin.trim().trim_end_matches('/').to_ascii_lowercase();
            let Some((scheme, host)) = lower.split_once("://") else {
                self.err(
                    format!("routes[{i}].origins[{k}]"),
                    origin,
                    "must be an origin such as https://app.example.com or https://*.example.com",
                );
                continue;
            };
            if host.is_empty() || host.contains('/') || !["http", "https"].contains(&scheme) {
                self.err(
                    format!("routes[{i}].origins[{k}]"),
                    origin,
                    "must be scheme://host[:port] with scheme http or https, no path",
                );
            } else if let Some(suffix) = host.strip_prefix("*.") {
                o.wildcard.push((scheme.to_string(), format!(".{suffix}")));
            } else if host.contains('*') {
                self.err(
                    format!("routes[{i}].origins[{k}]"),
                    origin,
                    "a wildcard may only be a leading `*.`, e.g. https://*.example.com",
                );
            } else {
                o.exact.push(lower.clone());
            }
        }
        o
    }

    /// `admission:`.
    pub(super) fn admission(&mut self, a: &FileAdmission) -> Admission {
        let rate = |v: &mut Validator, key: &str, r: &Option<FileConnRate>| {
            let r = r.as_ref()?;
            match r.per_second {
                None | Some(0) => {
                    v.err(
                        format!("admission.{key}.per_second"),
                        r.per_second.unwrap_or(0),
                        "must be at least 1 new connection per second (remove the section for no limit)",
                    );
                    None
                }
                Some(n) => Some(NewConnRate { per_second: n as f64, burst: r.burst.unwrap_or(n).max(1) as f64 }),
            }
        };
        let max_tracked_ips = a.max_tracked_ips.unwrap_or(DEFAULT_MAX_TRACKED_IPS);
        if !(1..=10_000_000).contains(&max_tracked_ips) {
            self.err(
                "admission.max_tracked_ips",
                max_tracked_ips,
                "must be between 1 and 10000000; the default is 100000",
            );
        }
        Admission {
            max_connections: a.max_connections.unwrap_or(0),
            max_connections_per_ip: a.max_connections_per_ip.unwrap_or(0),
            max_connections_per_tenant: a.max_connections_per_tenant.unwrap_or(0),
            ip_rate: rate(self, "ip_rate", &a.ip_rate),
            tenant_rate: rate(self, "tenant_rate", &a.tenant_rate),
            max_tracked_ips: max_tracked_ips.clamp(1, 10_000_000) as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn config(route_extra: &str, extra: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
        parse(
            &format!(
                "listeners: [{{address: \"127.0.0.1:0\"}}]\n\
                 pools: [{{name: p, backends: [\"127.0.0.1:1\"]}}]\n\
                 routes: [{{path_prefix: /a, pool: p{route_extra}}}]\n{extra}"
            ),
            "test",
        )
    }

    #[test]
    fn the_issue_shape_parses() {
        let sha = "a".repeat(64);
        let c = config(
            &format!(", auth: {{api_keys: [{{sha256: \"{sha}\", tenant: acme}}]}}, origins: [\"https://app.example.com\", \"https://*.example.com\"]"),
            "admission: {max_connections_per_ip: 3, ip_rate: {per_second: 2}}",
        )
        .unwrap();
        let r = &c.routes[0];
        let auth = r.auth.as_ref().unwrap();
        assert_eq!(auth.sources.header, "authorization");
        assert_eq!(auth.sources.subprotocol.as_deref(), Some("weir.key."));
        assert!(
            matches!(&auth.methods[0], AuthMethod::ApiKeys(k) if k[0].tenant == "acme" && k[0].sha256 == [0xaa; 32])
        );
        let o = r.origins.as_ref().unwrap();
        assert_eq!(o.exact, vec!["https://app.example.com"]);
        assert_eq!(o.wildcard, vec![("https".to_string(), ".example.com".to_string())]);
        assert!(o.allow_missing);
        assert_eq!(c.admission.max_connections_per_ip, 3);
        assert_eq!(c.admission.ip_rate, Some(NewConnRate { per_second: 2.0, burst: 2.0 }));
    }

    #[test]
    fn bad_values_are_all_reported() {
        let e = config(
            ", auth: {api_keys: [{sha256: xyz, tenant: \"\"}], subprotocol: \"a b,\"}, origins: [\"app.example.com\", \"https://a*.b\"]",
            "admission: {ip_rate: {per_second: 0}, max_tracked_ips: 0}",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "routes[0].auth.api_keys[0].sha256",
            "routes[0].auth.api_keys[0].tenant",
            "routes[0].auth.subprotocol",
            "routes[0].origins[0]",
            "routes[0].origins[1]",
            "admission.ip_rate.per_second",
            "admission.max_tracked_ips",
        ] {
            assert!(e.contains(key), "{key} missing in:\n{e}");
        }
    }

    #[test]
    fn a_keys_file_adds_keys_and_its_bad_lines_are_reported_without_their_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("# team keys\n{} beta\n\nnot-a-key secret-looking\n", "b".repeat(64))).unwrap();
        let e = config(&format!(", auth: {{keys_file: \"{}\"}}", path.display()), "").unwrap_err().to_string();
        assert!(e.contains("line 4"), "{e}");
        assert!(!e.contains("secret-looking"), "a bad line is not echoed: {e}");
        std::fs::write(&path, format!("{} beta # ci\n", "b".repeat(64))).unwrap();
        let c = config(&format!(", auth: {{keys_file: \"{}\"}}", path.display()), "").unwrap();
        let AuthMethod::ApiKeys(keys) = &c.routes[0].auth.as_ref().unwrap().methods[0] else { panic!() };
        assert_eq!((keys.len(), keys[0].tenant.as_str()), (1, "beta"));
    }
}
