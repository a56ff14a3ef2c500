//! `routes[].auth`, `routes[].origins`, `admission:`: validation of who may connect and how
//! many. Cold path (startup and `weir check`); every bad value is reported with its key path.

use super::file::{
    FileAdmission, FileApiKey, FileAuth, FileClientCertAuth, FileConnRate, FileExternalAuth, FileJwt, FileQuota,
    FileRoute,
};
use super::model::{
    Admission, ApiKey, Auth, AuthMethod, ClientCertAuth, CredentialSources, ExternalAuth, JwtSettings, NewConnRate,
    Origins, Quota, QuotaOf, QuotaPeriod, RouteAdmission, TenantFrom,
};
use super::validate::Validator;
use std::time::Duration;

/// Default `auth.subprotocol`: the prefix of a subprotocol entry carrying a credential.
pub const DEFAULT_SUBPROTOCOL_PREFIX: &str = "weir.key.";
/// Default `admission.max_tracked_ips`.
pub const DEFAULT_MAX_TRACKED_IPS: u64 = 100_000;
/// Default `auth.jwt.leeway`.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);
/// The JWT algorithms weir verifies.
pub const JWT_ALGORITHMS: [&str; 4] = ["HS256", "RS256", "ES256", "EdDSA"];
/// Default `auth.external.headers`: the request headers forwarded to the endpoint.
pub const DEFAULT_EXTERNAL_HEADERS: [&str; 2] = ["authorization", "cookie"];
/// Default `auth.external.timeout`.
pub const DEFAULT_EXTERNAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest `auth.external.timeout`.
pub const MAX_EXTERNAL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `auth.external.cache_ttl`.
pub const MAX_EXTERNAL_CACHE_TTL: Duration = Duration::from_secs(3600);

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

/// Split `http://host[:port][/path]` into the address to connect to (`host:port`, port 80 by
/// default), the `Host` header value and the request target (`/` by default); the error says
/// what is wrong (the caller adds the key path and an example).
pub fn parse_http_url(url: &str) -> Result<(String, String, String), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(if url.starts_with("https://") {
            "https is not supported (plain http to a local or private endpoint)".into()
        } else {
            "must start with http://".into()
        });
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(split);
    let path = match target {
        "" => "/".to_string(),
        t if t.starts_with('?') => format!("/{t}"),
        t => t.to_string(),
    };
    if path.bytes().any(|b| !b.is_ascii_graphic() || b == b'#') {
        return Err("the path must be printable ASCII without spaces or `#`".into());
    }
    if authority.contains('@') {
        return Err("must not carry a user or password".into());
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (ip, after) = v6.split_once(']').ok_or("an IPv6 address must be closed with `]`")?;
            ip.parse::<std::net::Ipv6Addr>().map_err(|_| format!("`{ip}` is not an IPv6 address"))?;
            (format!("[{ip}]"), after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        },
    };
    let host_ok = host.starts_with('[')
        || (!host.is_empty()
            && host.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')));
    if !host_ok {
        return Err("the host must be an IP address or a host name".into());
    }
    let port = match port {
        None => 80,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("`{p}` is not a port (1-65535)"))?,
    };
    Ok((format!("{host}:{port}"), authority.to_string(), path))
}

/// A lower-case header name weir accepts in `auth` settings: letters, digits, `-` and `_`.
fn is_header_name(h: &str) -> bool {
    !h.is_empty() && h.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Headers weir always writes itself on a request it sends (host, hop-by-hop, framing and
/// forwarding headers): never named in `auth.external.headers` or `copy_headers`.
const SET_BY_WEIR: [&str; 10] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "forwarded",
    "x-real-ip",
];

/// Why `h` may not be in `auth.external.headers`: weir writes it itself.
fn set_by_weir_for_the_endpoint(h: &str) -> Option<&'static str> {
    (SET_BY_WEIR.contains(&h) || h.starts_with("x-forwarded-"))
        .then_some("is set by weir itself on the request to the endpoint; name a header the client sends")
}

/// Why `h` may not be in `auth.external.copy_headers`: the backend's upgrade request never
/// carries it as copied (weir's own, hop-by-hop, WebSocket and forwarding headers, names with `_`).
fn never_copied_to_the_backend(h: &str) -> Option<&'static str> {
    if h.contains('_') {
        return Some("names with `_` are never forwarded to backends; use `-`");
    }
    (SET_BY_WEIR.contains(&h) || ["x-weir-", "x-forwarded-", "sec-websocket-"].iter().any(|p| h.starts_with(p)))
        .then_some("is a header weir sets or checks itself on the upgrade; copy another header, e.g. x-user-id")
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
        if let Some(e) = &a.external {
            let others = [
                ("api_keys", !a.api_keys.is_empty()),
                ("keys_file", a.keys_file.is_some()),
                ("jwt", a.jwt.is_some()),
                ("client_cert", a.client_cert.is_some()),
                ("header", a.header.is_some()),
                ("query", a.query.is_some()),
                ("subprotocol", a.subprotocol.is_some()),
            ];
            for (key, _) in others.iter().filter(|(_, set)| *set) {
                self.err(
                    format!("{at}.{key}"),
                    "",
                    "does not combine with `external` (the endpoint decides from the headers it is sent); \
                     remove one of them",
                );
            }
            let external = self.external_auth(&format!("{at}.external"), e)?;
            let sources = CredentialSources { header: "authorization".into(), query: None, subprotocol: None };
            return Some(Auth { sources, methods: vec![AuthMethod::External(external)] });
        }
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
        if let Some(c) = &a.client_cert {
            methods.push(AuthMethod::ClientCert(self.client_cert(&format!("{at}.client_cert"), c)));
        }
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
        if a.api_keys.is_empty() && a.keys_file.is_none() && a.jwt.is_none() && a.client_cert.is_none() {
            self.err(
                at,
                "",
                "names no method; add `api_keys: [{sha256: ..., tenant: ...}]`, `keys_file`, `jwt`, `client_cert` \
                 or `external`",
            );
            return None;
        }
        Some(Auth { sources, methods })
    }

    /// `auth.client_cert`: the subject field, the tenants allowed and the objects.
    fn client_cert(&mut self, at: &str, c: &FileClientCertAuth) -> ClientCertAuth {
        let tenant_from = match c.tenant_from.as_deref() {
            None | Some("cn") => TenantFrom::Cn,
            Some("o") => TenantFrom::O,
            Some("ou") => TenantFrom::Ou,
            Some("san_dns") => TenantFrom::SanDns,
            Some(other) => {
                self.err(
                    format!("{at}.tenant_from"),
                    other,
                    "must be cn (the default), o, ou or san_dns (the first DNS subject alternative name)",
                );
                TenantFrom::Cn
            }
        };
        let allow = c.allow.clone().unwrap_or_default();
        for (k, p) in allow.iter().enumerate() {
            if p.is_empty() {
                self.err(
                    format!("{at}.allow[{k}]"),
                    p,
                    "must not be empty; write a tenant or a pattern such as team-*",
                );
            }
        }
        ClientCertAuth { tenant_from, allow, objects: c.objects.clone().unwrap_or_default() }
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
        let text = match std::fs::read_to_string(self.path(path)) {
            Ok(t) => t,
            Err(e) => {
                self.err(
                    at,
                    path,
                    format!("cannot be read ({e}){}; name a file of `SHA256HEX TENANT` lines", self.shown_at(path)),
                );
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
                if !self.path(f).is_file() {
                    self.err(format!("{at}.{key}"), f, format!("is not a readable file{}", self.shown_at(f)));
                }
            }
        }
        Some(JwtSettings {
            algorithms,
            secret: j.secret.clone(),
            public_key_file: j.public_key_file.as_deref().map(|f| self.path(f)),
            jwks_file: j.jwks_file.as_deref().map(|f| self.path(f)),
            issuer: j.issuer.clone(),
            audience: j.audience.clone(),
            leeway,
            tenant_claim: j.tenant_claim.clone().unwrap_or_else(|| "sub".into()),
            objects_claim: j.objects_claim.clone(),
        })
    }

    /// `auth.external`: the endpoint's URL, the headers sent and copied, times and `on_error`.
    fn external_auth(&mut self, at: &str, e: &FileExternalAuth) -> Option<ExternalAuth> {
        let target = parse_http_url(&e.url);
        if let Err(why) = &target {
            self.err(
                format!("{at}.url"),
                &e.url,
                format!("{why}; write it as http://host:port/path, e.g. http://127.0.0.1:9000/check"),
            );
        }
        let names = |v: &mut Validator, key: &str, list: &[String], reserved: fn(&str) -> Option<&'static str>| {
            let mut out: Vec<String> = Vec::new();
            for (k, name) in list.iter().enumerate() {
                let lower = name.trim().to_ascii_lowercase();
                if !is_header_name(&lower) {
                    v.err(format!("{at}.{key}[{k}]"), name, "must be a header name such as authorization or x-user-id");
                } else if let Some(why) = reserved(&lower) {
                    v.err(format!("{at}.{key}[{k}]"), name, why);
                } else if !out.contains(&lower) {
                    out.push(lower);
                }
            }
            out
        };
        let default_headers: Vec<String> = DEFAULT_EXTERNAL_HEADERS.iter().map(|h| h.to_string()).collect();
        let headers =
            names(self, "headers", e.headers.as_deref().unwrap_or(&default_headers), set_by_weir_for_the_endpoint);
        let copy_headers =
            names(self, "copy_headers", e.copy_headers.as_deref().unwrap_or(&[]), never_copied_to_the_backend);
        let tenant_header = e.tenant_header.as_ref().map(|h| h.trim().to_ascii_lowercase());
        if let Some(h) = tenant_header.as_deref().filter(|h| !is_header_name(h)) {
            self.err(format!("{at}.tenant_header"), h, "must be a header name such as x-tenant");
        }
        let timeout = match e.timeout.as_deref().map(humantime::parse_duration) {
            None => DEFAULT_EXTERNAL_TIMEOUT,
            Some(Ok(d)) if !d.is_zero() && d <= MAX_EXTERNAL_TIMEOUT => d,
            Some(_) => {
                self.err(
                    format!("{at}.timeout"),
                    e.timeout.as_deref().unwrap_or(""),
                    "must be a duration from 1ms to 60s, e.g. \"2s\" (the default)",
                );
                DEFAULT_EXTERNAL_TIMEOUT
            }
        };
        let cache_ttl = match e.cache_ttl.as_deref().map(humantime::parse_duration) {
            None => Duration::ZERO,
            Some(Ok(d)) if d <= MAX_EXTERNAL_CACHE_TTL => d,
            Some(_) => {
                self.err(
                    format!("{at}.cache_ttl"),
                    e.cache_ttl.as_deref().unwrap_or(""),
                    "must be a duration from 0s (no cache, the default) to 1h, e.g. \"10s\"",
                );
                Duration::ZERO
            }
        };
        let allow_on_error = match e.on_error.as_deref() {
            None | Some("deny") => false,
            Some("allow") => true,
            Some(other) => {
                self.err(
                    format!("{at}.on_error"),
                    other,
                    "must be deny (503 while the endpoint cannot be asked; the default) or allow",
                );
                false
            }
        };
        let (addr, host, path) = target.ok()?;
        Some(ExternalAuth {
            addr,
            host,
            path,
            url: e.url.clone(),
            headers,
            tenant_header: tenant_header.filter(|h| is_header_name(h)),
            copy_headers,
            timeout,
            cache_ttl,
            allow_on_error,
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

    /// `quotas:`.
    pub(super) fn quotas(&mut self, list: &[FileQuota], units: &[crate::config::UnitRule]) -> Vec<Quota> {
        let mut seen = std::collections::HashSet::new();
        list.iter()
            .enumerate()
            .filter_map(|(i, q)| {
                let of = match q.of.as_str() {
                    "messages" => Some(QuotaOf::Messages),
                    "bytes" => Some(QuotaOf::Bytes),
                    "connection_seconds" => Some(QuotaOf::ConnectionSeconds),
                    other => match other.strip_prefix("unit:") {
                        Some(unit) => match units.iter().position(|u| u.name == unit) {
                            Some(k) => Some(QuotaOf::Unit(k)),
                            None => {
                                let known: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
                                let fix = if known.is_empty() {
                                    "names no unit: billing.units defines none".to_string()
                                } else {
                                    format!("names no unit of billing.units; known: {}", known.join(", "))
                                };
                                self.err(format!("quotas[{i}].of"), other, fix);
                                None
                            }
                        },
                        None => {
                            self.err(
                                format!("quotas[{i}].of"),
                                other,
                                "must be messages, bytes, connection_seconds or unit:<a billing.units name>",
                            );
                            None
                        }
                    },
                };
                let per = match q.per.as_str() {
                    "hour" => Some(QuotaPeriod::Hour),
                    "day" => Some(QuotaPeriod::Day),
                    "month" => Some(QuotaPeriod::Month),
                    other => {
                        self.err(format!("quotas[{i}].per"), other, "must be hour, day or month (UTC)");
                        None
                    }
                };
                if q.limit == 0 {
                    self.err(format!("quotas[{i}].limit"), 0, "must be at least 1 (remove the quota for no cap)");
                }
                let tenant = (q.tenant != "*").then(|| q.tenant.clone());
                if let Some(t) = &tenant {
                    self.tenant_name(&format!("quotas[{i}].tenant"), t);
                }
                let name = format!("{}_per_{}", q.of.strip_prefix("unit:").unwrap_or(&q.of), q.per);
                if !seen.insert((tenant.clone(), name.clone())) {
                    self.err(
                        format!("quotas[{i}]"),
                        &name,
                        "an earlier quota has the same tenant, `of` and `per`; keep one",
                    );
                }
                Some(Quota { name, tenant, of: of?, limit: q.limit, per: per? })
            })
            .collect()
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

    fn external(c: &crate::config::Config) -> &ExternalAuth {
        let AuthMethod::External(e) = &c.routes[0].auth.as_ref().unwrap().methods[0] else { panic!("not external") };
        e
    }

    #[test]
    fn external_auth_parses_with_its_defaults() {
        let c = config(", auth: {external: {url: \"http://127.0.0.1:9000/check\"}}", "").unwrap();
        let e = external(&c);
        assert_eq!((e.addr.as_str(), e.host.as_str(), e.path.as_str()), ("127.0.0.1:9000", "127.0.0.1:9000", "/check"));
        assert_eq!(e.headers, ["authorization", "cookie"]);
        assert_eq!((e.tenant_header.as_deref(), e.copy_headers.len()), (None, 0));
        assert_eq!((e.timeout, e.cache_ttl, e.allow_on_error), (Duration::from_secs(2), Duration::ZERO, false));
        let c = config(
            ", auth: {external: {url: \"http://auth.internal/v1/check?x=1\", headers: [Authorization, cookie, x-api-key], \
             tenant_header: X-Tenant, copy_headers: [x-user-id], timeout: 500ms, cache_ttl: 10s, on_error: allow}}",
            "",
        )
        .unwrap();
        let e = external(&c);
        assert_eq!(
            (e.addr.as_str(), e.host.as_str(), e.path.as_str()),
            ("auth.internal:80", "auth.internal", "/v1/check?x=1")
        );
        assert_eq!(e.headers, ["authorization", "cookie", "x-api-key"]);
        assert_eq!(
            (e.tenant_header.as_deref(), e.copy_headers.as_slice()),
            (Some("x-tenant"), &["x-user-id".to_string()][..])
        );
        assert_eq!(
            (e.timeout, e.cache_ttl, e.allow_on_error),
            (Duration::from_millis(500), Duration::from_secs(10), true)
        );
    }

    #[test]
    fn external_auth_errors_are_all_reported_with_their_key_paths() {
        let e = config(
            ", auth: {jwt: {secret: s}, query: key, external: {url: \"https://a/check\", headers: [host, \"bad name\"], \
             tenant_header: \"x tenant\", copy_headers: [x-weir-tenant, sec-websocket-protocol, x_user], timeout: 0s, \
             cache_ttl: 2h, on_error: maybe}}",
            "",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "routes[0].auth.jwt",
            "routes[0].auth.query",
            "routes[0].auth.external.url",
            "routes[0].auth.external.headers[0]",
            "routes[0].auth.external.headers[1]",
            "routes[0].auth.external.tenant_header",
            "routes[0].auth.external.copy_headers[0]",
            "routes[0].auth.external.copy_headers[1]",
            "routes[0].auth.external.copy_headers[2]",
            "routes[0].auth.external.timeout",
            "routes[0].auth.external.cache_ttl",
            "routes[0].auth.external.on_error",
        ] {
            assert!(e.contains(&format!("{key}:")) || e.contains(&format!("{key} ")), "{key} missing in:\n{e}");
        }
        assert!(e.contains("https is not supported"), "{e}");
        let e = config(", auth: {external: {urll: \"http://127.0.0.1:1/\"}}", "").unwrap_err().to_string();
        assert!(e.contains("routes[0].auth.external.urll") && e.contains("did you mean `url`?"), "{e}");
    }

    #[test]
    fn http_urls() {
        let ok = |u: &str| parse_http_url(u).unwrap();
        assert_eq!(
            ok("http://127.0.0.1:9000/check"),
            ("127.0.0.1:9000".into(), "127.0.0.1:9000".into(), "/check".into())
        );
        assert_eq!(ok("http://[::1]:81"), ("[::1]:81".into(), "[::1]:81".into(), "/".into()));
        assert_eq!(ok("http://auth?a=1"), ("auth:80".into(), "auth".into(), "/?a=1".into()));
        for bad in [
            "127.0.0.1:9000/check",
            "https://127.0.0.1/",
            "http://:80/",
            "http://a:0/",
            "http://a:x/",
            "http://u:p@a/",
            "http://a/b c",
            "http://a/#f",
            "http://[::1/",
            "http://a..b/",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad}");
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
