//! Forward authentication (`routes[].auth.external`): an HTTP endpoint decides about each
//! upgrade, as NGINX `auth_request`, Envoy `ext_authz` and Traefik ForwardAuth do.
//!
//! Owns: the request weir sends to the endpoint (`GET path` with `X-Forwarded-*` and the
//! configured client headers), a minimal HTTP/1.1 exchange over a fresh TCP connection
//! (`Connection: close`; head bounded by `http1::head`, body by `MAX_BODY`), the verdict (2xx
//! admits, with the tenant and the headers to copy from the answer; any other status is passed
//! on; a timeout, connection error or bad answer follows `on_error`), the small TTL cache of
//! verdicts, and the rate-limited warning when the endpoint cannot be asked.
//!
//! Warm path (once per upgrade on a route that uses it): one connect and one exchange within
//! `timeout`, or a cache lookup (one SHA-256 and a short lock, never held across an await).
//! Credentials and the endpoint's answers are never logged or recorded: the cache is keyed by a
//! digest of the forwarded headers, and log lines name the endpoint's address and the kind of
//! failure only.

use crate::config::ExternalAuth;
use crate::http1::head::{read_response_head, RequestHead, ResponseError, ResponseHead};
use crate::http1::Fields;
use crate::sync::lock;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest body of a refusal passed on to the client, bytes; a longer one is cut here.
pub const MAX_BODY: usize = 4096;
/// Most verdicts cached per route.
pub const CACHE_ENTRIES: usize = 10_000;
/// Most bytes of cached verdicts per route (bodies, tenants and copied headers), so that 10 000
/// entries with large answers stay small.
pub const CACHE_BYTES: usize = 8 << 20;
/// Headers of a refusal passed on to the client with its status and body.
const PASSED_HEADERS: [&str; 4] = ["content-type", "www-authenticate", "location", "retry-after"];
/// At most one warning a second about an endpoint that cannot be asked.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// The endpoint's refusal, passed on to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Its status (not 2xx).
    pub status: u16,
    /// Its `Content-Type`, `WWW-Authenticate`, `Location` and `Retry-After` fields.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Its body, at most `MAX_BODY` bytes.
    pub body: Vec<u8>,
}

/// What the endpoint (or the cache, or `on_error`) decided about one upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx answer: admitted.
    Admit {
        /// The value of `tenant_header` in the answer; `None`: the route's tenant.
        tenant: Option<String>,
        /// The `copy_headers` fields of the answer, for the backend's upgrade request.
        copy: Vec<(String, Vec<u8>)>,
    },
    /// Any other status: refused with the endpoint's answer.
    Deny(Denial),
    /// The endpoint could not be asked and `on_error` is `deny`: 503.
    Unavailable,
    /// The endpoint could not be asked and `on_error` is `allow`: admitted with the route's
    /// tenant.
    FailOpen,
}

/// Why the endpoint could not be asked (no answer content in here).
#[derive(Debug)]
enum AskError {
    /// No connection, or it failed before a whole answer.
    Unreachable(String),
    /// Connect and answer took longer than `timeout`.
    TimedOut(Duration),
    /// The answer is not a usable HTTP/1.x response.
    BadAnswer(String),
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AskError::Unreachable(s) => write!(f, "unreachable: {s}"),
            AskError::TimedOut(t) => write!(f, "no answer within {t:?}"),
            AskError::BadAnswer(s) => write!(f, "bad answer: {s}"),
        }
    }
}

/// A route's forward-auth client, built once at startup.
pub struct External {
    cfg: ExternalAuth,
    /// Route name, for log lines.
    route: String,
    /// `None` when `cache_ttl` is zero.
    cache: Option<Mutex<Cache>>,
    /// When the last warning was logged, and how many were left out since.
    warned: Mutex<(Option<Instant>, u64)>,
}

impl External {
    /// The client of `cfg` for route `route`.
    pub fn new(cfg: &ExternalAuth, route: &str) -> External {
        let cache =
            (!cfg.cache_ttl.is_zero()).then(|| Mutex::new(Cache::new(cfg.cache_ttl, CACHE_ENTRIES, CACHE_BYTES)));
        External { cfg: cfg.clone(), route: route.to_string(), cache, warned: Mutex::new((None, 0)) }
    }

    /// Ask about the upgrade `head` from `client` (over TLS when `tls`), or take the cached
    /// verdict for the same forwarded headers.
    pub async fn check(&self, head: &RequestHead, client: Option<IpAddr>, tls: bool) -> Verdict {
        let key = self.cache.as_ref().map(|_| self.cache_key(&head.headers));
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            if let Some(v) = lock(cache).get(key, Instant::now()) {
                return v;
            }
        }
        let request = self.request(head, client, tls);
        let verdict = match self.ask(&request).await.and_then(|answer| self.verdict(answer)) {
            Ok(v) => v,
            Err(e) => {
                self.warn(&e);
                return if self.cfg.allow_on_error { Verdict::FailOpen } else { Verdict::Unavailable };
            }
        };
        let cacheable = match &verdict {
            Verdict::Admit { .. } => true,
            Verdict::Deny(d) => d.status == 401 || d.status == 403,
            Verdict::Unavailable | Verdict::FailOpen => false,
        };
        if let (Some(cache), Some(key), true) = (&self.cache, key, cacheable) {
            lock(cache).put(key, verdict.clone(), Instant::now());
        }
        verdict
    }

    /// Remove every field named in `copy_headers` from `head` (what the client sent under those
    /// names never reaches the backend), then add `copy` (from an admitting answer).
    pub fn apply(&self, head: &mut RequestHead, copy: Vec<(String, Vec<u8>)>) {
        let names = &self.cfg.copy_headers;
        head.headers.retain(|n, _| !names.iter().any(|c| n.eq_ignore_ascii_case(c)));
        for (name, value) in copy {
            head.headers.push(&name, &value);
        }
    }

    /// The request sent to the endpoint for the upgrade `head`.
    fn request(&self, head: &RequestHead, client: Option<IpAddr>, tls: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + head.target.len());
        let proto = if tls { "https" } else { "http" };
        out.extend_from_slice(
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Proto: {proto}\r\n",
                self.cfg.path, self.cfg.host
            )
            .as_bytes(),
        );
        if let Some(host) = head.headers.all("host").next() {
            field(&mut out, "X-Forwarded-Host", host);
        }
        field(&mut out, "X-Forwarded-Uri", head.target.as_bytes());
        if let Some(ip) = client {
            field(&mut out, "X-Forwarded-For", ip.to_string().as_bytes());
        }
        for (name, value) in head.headers.iter() {
            if self.cfg.headers.iter().any(|h| name.eq_ignore_ascii_case(h)) {
                field(&mut out, name, value);
            }
        }
        out.extend_from_slice(b"Connection: close\r\nUser-Agent: weir\r\n\r\n");
        out
    }

    /// The digest the cache is keyed by: every forwarded header's name and values, in the
    /// configured order (length-prefixed, so that no two sets share a key).
    fn cache_key(&self, headers: &Fields) -> [u8; 32] {
        let mut h = Sha256::new();
        for name in &self.cfg.headers {
            h.update((name.len() as u64).to_be_bytes());
            h.update(name.as_bytes());
            for value in headers.all(name) {
                h.update((value.len() as u64).to_be_bytes());
                h.update(value);
            }
            h.update(u64::MAX.to_be_bytes());
        }
        h.finalize().into()
    }

    /// Connect, send `request` and read the answer (the body of a refusal too), all within
    /// `timeout`. A body still arriving at the deadline is passed on as far as it came.
    async fn ask(&self, request: &[u8]) -> Result<(ResponseHead, Vec<u8>), AskError> {
        let timeout = self.cfg.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let exchange = async {
            let mut s = TcpStream::connect(self.cfg.addr.as_str())
                .await
                .map_err(|e| AskError::Unreachable(format!("connect: {e}")))?;
            let _ = s.set_nodelay(true);
            s.write_all(request).await.map_err(|e| AskError::Unreachable(format!("writing: {e}")))?;
            let head = read_response_head(&mut s).await.map_err(|e| match e {
                ResponseError::Unreachable(s) => AskError::Unreachable(s),
                ResponseError::BadResponse(s) => AskError::BadAnswer(s),
            })?;
            Ok::<_, AskError>((s, head))
        };
        let (mut s, head) =
            tokio::time::timeout_at(deadline, exchange).await.map_err(|_| AskError::TimedOut(timeout))??;
        if (200..300).contains(&head.status) || head.status < 200 {
            return Ok((head, Vec::new()));
        }
        let body = read_body(&mut s, &head, deadline).await;
        Ok((head, body))
    }

    /// The verdict of an answer: 2xx admits (with a valid tenant, if named), 1xx is an error,
    /// anything else refuses.
    fn verdict(&self, (head, body): (ResponseHead, Vec<u8>)) -> Result<Verdict, AskError> {
        match head.status {
            200..=299 => {
                let tenant = match self.cfg.tenant_header.as_deref().and_then(|h| head.headers.all(h).next()) {
                    None => None,
                    Some(v) => tenant_of(v)?,
                };
                let copy = fields_named(&head.headers, &self.cfg.copy_headers);
                Ok(Verdict::Admit { tenant, copy })
            }
            100..=199 => Err(AskError::BadAnswer(format!("status {} is not a final answer", head.status))),
            status @ 300..=599 => {
                let headers = fields_named(&head.headers, &PASSED_HEADERS);
                Ok(Verdict::Deny(Denial { status, headers, body }))
            }
            other => Err(AskError::BadAnswer(format!("status {other} is not an HTTP status"))),
        }
    }

    /// Log that the endpoint could not be asked: at most once a second, with how many were
    /// left out since the last line.
    fn warn(&self, e: &AskError) {
        let now = Instant::now();
        let mut w = lock(&self.warned);
        if w.0.is_some_and(|last| now.duration_since(last) < WARN_EVERY) {
            w.1 += 1;
            return;
        }
        let left_out = std::mem::take(&mut w.1);
        w.0 = Some(now);
        drop(w);
        let action = if self.cfg.allow_on_error { "admitting (on_error: allow)" } else { "refusing with 503" };
        tracing::warn!(
            route = %self.route,
            endpoint = %self.cfg.addr,
            error = %e,
            left_out,
            "external auth endpoint could not be asked; {action}"
        );
    }
}

/// Append the header field `name: value`.
fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The tenant named by an admitting answer: `None` when empty, an error when it is not 1 to 128
/// bytes of UTF-8 without control characters (the rule of configured tenants).
fn tenant_of(value: &[u8]) -> Result<Option<String>, AskError> {
    let bad = || AskError::BadAnswer("the tenant header is not 1 to 128 printable characters".into());
    let t = std::str::from_utf8(value).map_err(|_| bad())?.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.len() > 128 || t.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok(Some(t.to_string()))
}

/// The body of a refusal, at most `MAX_BODY` bytes: by `Content-Length`, chunked, or until the
/// endpoint closes; whatever arrived by `deadline`.
async fn read_body(s: &mut TcpStream, head: &ResponseHead, deadline: tokio::time::Instant) -> Vec<u8> {
    if head.status == 204 || head.status == 304 {
        return Vec::new();
    }
    let chunked = head.headers.has_token("transfer-encoding", "chunked");
    let length = if chunked { None } else { head.headers.get("content-length").and_then(|v| v.parse::<usize>().ok()) };
    // Raw bytes wanted: the body up to the cap (chunk framing adds a little).
    let want = match length {
        Some(n) => n.min(MAX_BODY),
        None if chunked => MAX_BODY + 1024,
        None => MAX_BODY,
    };
    let mut raw = head.early().to_vec();
    let mut buf = [0u8; 2048];
    while raw.len() < want && !(chunked && dechunk(&raw).1) {
        let n = match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        raw.extend_from_slice(&buf[..n]);
    }
    let mut body = if chunked { dechunk(&raw).0 } else { raw };
    body.truncate(length.unwrap_or(MAX_BODY).min(MAX_BODY));
    body
}

/// The data of the chunked body `raw` so far (at most `MAX_BODY` bytes), and whether nothing
/// more is needed (its last chunk has arrived, or `MAX_BODY` bytes of data have).
fn dechunk(raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut pos = 0;
    while out.len() < MAX_BODY {
        let Some(rest) = raw.get(pos..) else { break };
        match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete((_, 0))) => return (out, true),
            Ok(httparse::Status::Complete((used, size))) => {
                let start = pos + used;
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                let end = start.saturating_add(size).min(raw.len());
                out.extend_from_slice(raw.get(start..end).unwrap_or(&[]));
                if end < start.saturating_add(size) {
                    break;
                }
                pos = end + 2;
            }
            Ok(httparse::Status::Partial) | Err(_) => break,
        }
    }
    out.truncate(MAX_BODY);
    let enough = out.len() >= MAX_BODY;
    (out, enough)
}

/// Verdicts by digest of the forwarded headers, each kept `ttl`; at most `capacity` entries and
/// `max_bytes` bytes, the oldest evicted first (with one `ttl` for all, the oldest is also the
/// first to expire).
pub struct Cache {
    ttl: Duration,
    capacity: usize,
    max_bytes: usize,
    /// Digest → (insertion number, expiry, verdict).
    entries: HashMap<[u8; 32], (u64, Instant, Verdict)>,
    /// Insertion number → digest, oldest first.
    order: BTreeMap<u64, [u8; 32]>,
    next: u64,
    bytes: usize,
}

impl Cache {
    /// An empty cache.
    pub fn new(ttl: Duration, capacity: usize, max_bytes: usize) -> Cache {
        Cache {
            ttl,
            capacity: capacity.max(1),
            max_bytes,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
            bytes: 0,
        }
    }

    /// The verdict cached for `key`, if it has not expired at `now` (an expired one is dropped).
    pub fn get(&mut self, key: &[u8; 32], now: Instant) -> Option<Verdict> {
        let (_, expires, verdict) = self.entries.get(key)?;
        if now < *expires {
            return Some(verdict.clone());
        }
        self.remove(key);
        None
    }

    /// Cache `verdict` for `key` from `now`, evicting the oldest entries while over a bound.
    pub fn put(&mut self, key: [u8; 32], verdict: Verdict, now: Instant) {
        let size = cost(&verdict);
        if size > self.max_bytes {
            return;
        }
        self.remove(&key);
        while self.entries.len() >= self.capacity || self.bytes + size > self.max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            if let Some((_, _, v)) = self.entries.remove(&oldest) {
                self.bytes -= cost(&v);
            }
        }
        let n = self.next;
        self.next += 1;
        self.order.insert(n, key);
        self.entries.insert(key, (n, now + self.ttl, verdict));
        self.bytes += size;
    }

    /// Entries held (expired ones included until looked up or evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn remove(&mut self, key: &[u8; 32]) {
        if let Some((n, _, v)) = self.entries.remove(key) {
            self.order.remove(&n);
            self.bytes -= cost(&v);
        }
    }
}

/// Bytes an entry holds, roughly: the digest and bookkeeping, and the verdict's data.
fn cost(v: &Verdict) -> usize {
    let fields = |f: &[(String, Vec<u8>)]| f.iter().map(|(n, v)| n.len() + v.len() + 48).sum::<usize>();
    128 + match v {
        Verdict::Admit { tenant, copy } => tenant.as_ref().map_or(0, String::len) + fields(copy),
        Verdict::Deny(d) => d.body.len() + fields(&d.headers),
        Verdict::Unavailable | Verdict::FailOpen => 0,
    }
}

/// The fields of `fields` named in `names` (case-insensitive), in order, as owned pairs (an
/// answer's fields outlive the answer: cached verdicts, the backend's request).
fn fields_named(fields: &Fields, names: &[impl AsRef<str>]) -> Vec<(String, Vec<u8>)> {
    fields
        .iter()
        .filter(|(n, _)| names.iter().any(|c| n.eq_ignore_ascii_case(c.as_ref())))
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(cache_ttl: Duration) -> ExternalAuth {
        ExternalAuth {
            addr: "127.0.0.1:9000".into(),
            host: "127.0.0.1:9000".into(),
            path: "/check?v=1".into(),
            url: "http://127.0.0.1:9000/check?v=1".into(),
            headers: vec!["authorization".into(), "cookie".into(), "x-api-key".into()],
            tenant_header: Some("x-tenant".into()),
            copy_headers: vec!["x-user-id".into()],
            timeout: Duration::from_secs(2),
            cache_ttl,
            allow_on_error: false,
        }
    }

    async fn head(raw: &str) -> RequestHead {
        crate::http1::head::read_head(&mut raw.as_bytes(), Duration::from_secs(1)).await.unwrap()
    }

    #[tokio::test]
    async fn the_request_forwards_the_named_headers_and_the_original_target() {
        let e = External::new(&settings(Duration::ZERO), "r");
        let h = head(
            "GET /ws/room?id=7 HTTP/1.1\r\nHost: app.example.com\r\nAuthorization: Bearer t0k\r\nCookie: a=1\r\nCookie: b=2\r\nX-Other: no\r\nSec-WebSocket-Key: k\r\n\r\n",
        )
        .await;
        let out = String::from_utf8(e.request(&h, Some("10.0.0.9".parse().unwrap()), true)).unwrap();
        assert_eq!(
            out,
            "GET /check?v=1 HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Proto: https\r\n\
             X-Forwarded-Host: app.example.com\r\nX-Forwarded-Uri: /ws/room?id=7\r\nX-Forwarded-For: 10.0.0.9\r\n\
             Authorization: Bearer t0k\r\nCookie: a=1\r\nCookie: b=2\r\nConnection: close\r\nUser-Agent: weir\r\n\r\n"
        );
        let no_ip = String::from_utf8(e.request(&h, None, false)).unwrap();
        assert!(!no_ip.contains("X-Forwarded-For") && no_ip.contains("X-Forwarded-Proto: http\r\n"), "{no_ip}");
    }

    #[tokio::test]
    async fn the_cache_key_depends_on_the_forwarded_headers_only() {
        let e = External::new(&settings(Duration::from_secs(10)), "r");
        let a = e.cache_key(&head("GET /a HTTP/1.1\r\nAuthorization: Bearer t\r\nX-Other: 1\r\n\r\n").await.headers);
        for (raw, same) in [
            ("GET /b?x HTTP/1.1\r\nauthorization: Bearer t\r\nX-Other: 2\r\n\r\n", true),
            ("GET /a HTTP/1.1\r\nAuthorization: Bearer u\r\n\r\n", false),
            // The same bytes under another forwarded name are another key.
            ("GET /a HTTP/1.1\r\nCookie: Bearer t\r\n\r\n", false),
        ] {
            assert_eq!(e.cache_key(&head(raw).await.headers) == a, same, "{raw}");
        }
        // Values split differently are another key.
        let one = e.cache_key(&head("GET / HTTP/1.1\r\nCookie: ab\r\n\r\n").await.headers);
        let two = e.cache_key(&head("GET / HTTP/1.1\r\nCookie: a\r\nCookie: b\r\n\r\n").await.headers);
        assert_ne!(one, two);
    }

    #[tokio::test]
    async fn copy_headers_replace_what_the_client_sent() {
        let e = External::new(&settings(Duration::ZERO), "r");
        let mut h = head("GET / HTTP/1.1\r\nHost: a\r\nX-User-Id: forged\r\nx-user-id: again\r\n\r\n").await;
        e.apply(&mut h, vec![("X-User-Id".into(), b"u-42".to_vec())]);
        let ids: Vec<&[u8]> = h.headers.all("x-user-id").collect();
        assert_eq!(ids, [&b"u-42"[..]]);
        e.apply(&mut h, Vec::new());
        assert_eq!(h.headers.all("x-user-id").count(), 0, "a header the endpoint did not send is removed");
        assert_eq!(h.headers.get("host").as_deref(), Some("a"));
    }

    fn answer(raw: &str) -> ResponseHead {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        let len = match r.parse(raw.as_bytes()).unwrap() {
            httparse::Status::Complete(l) => l,
            httparse::Status::Partial => panic!("partial"),
        };
        ResponseHead {
            status: r.code.unwrap(),
            headers: Fields::from_parsed(r.headers),
            buf: bytes::BytesMut::from(raw),
            head_len: len,
        }
    }

    #[test]
    fn answers_become_verdicts() {
        let e = External::new(&settings(Duration::ZERO), "r");
        let ok = answer("HTTP/1.1 200 OK\r\nX-Tenant: globex\r\nX-User-Id: u1\r\nX-Secret: s\r\n\r\n");
        assert_eq!(
            e.verdict((ok, Vec::new())).unwrap(),
            Verdict::Admit { tenant: Some("globex".into()), copy: vec![("X-User-Id".into(), b"u1".to_vec())] }
        );
        let no_tenant = answer("HTTP/1.1 204 No Content\r\nX-Tenant: \r\n\r\n");
        assert_eq!(e.verdict((no_tenant, Vec::new())).unwrap(), Verdict::Admit { tenant: None, copy: Vec::new() });
        let long = format!("HTTP/1.1 200 OK\r\nX-Tenant: {}\r\n\r\n", "t".repeat(129));
        assert!(e.verdict((answer(&long), Vec::new())).is_err(), "a bad tenant is a bad answer");
        let denied = answer(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nSet-Cookie: s=1\r\nWWW-Authenticate: Basic\r\n\r\n",
        );
        assert_eq!(
            e.verdict((denied, b"no".to_vec())).unwrap(),
            Verdict::Deny(Denial {
                status: 403,
                headers: vec![
                    ("Content-Type".into(), b"text/plain".to_vec()),
                    ("WWW-Authenticate".into(), b"Basic".to_vec())
                ],
                body: b"no".to_vec()
            })
        );
        assert!(e.verdict((answer("HTTP/1.1 101 Switching Protocols\r\n\r\n"), Vec::new())).is_err());
    }

    #[test]
    fn chunked_bodies_are_decoded_and_capped() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), (b"abcde".to_vec(), true));
        assert_eq!(dechunk(b"3\r\nabc\r\n5\r\nde"), (b"abcde".to_vec(), false));
        let big = format!("{:x}\r\n{}\r\n0\r\n\r\n", MAX_BODY + 10, "x".repeat(MAX_BODY + 10));
        let (body, _) = dechunk(big.as_bytes());
        assert_eq!(body.len(), MAX_BODY);
    }

    fn admit(t: &str) -> Verdict {
        Verdict::Admit { tenant: Some(t.into()), copy: Vec::new() }
    }

    #[test]
    fn the_cache_expires_entries_and_evicts_the_oldest() {
        let t0 = Instant::now();
        let mut c = Cache::new(Duration::from_secs(10), 3, usize::MAX);
        let k = |b: u8| [b; 32];
        c.put(k(1), admit("a"), t0);
        assert_eq!(c.get(&k(1), t0 + Duration::from_secs(9)), Some(admit("a")));
        assert_eq!(c.get(&k(1), t0 + Duration::from_secs(10)), None, "expired");
        assert!(c.is_empty(), "an expired entry is dropped when looked up");
        for b in 1..=3 {
            c.put(k(b), admit("x"), t0);
        }
        // Refreshing 1 makes 2 the oldest.
        c.put(k(1), admit("y"), t0);
        c.put(k(4), admit("z"), t0);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&k(2), t0), None, "the oldest went");
        assert_eq!(c.get(&k(1), t0), Some(admit("y")));
        assert!(c.get(&k(3), t0).is_some() && c.get(&k(4), t0).is_some());
        for b in 10..200 {
            c.put(k(b), admit("x"), t0);
            assert!(c.len() <= 3 && c.order.len() == c.entries.len());
        }
    }

    #[test]
    fn the_cache_is_bounded_in_bytes() {
        let t0 = Instant::now();
        let deny = |n: usize| Verdict::Deny(Denial { status: 401, headers: Vec::new(), body: vec![b'x'; n] });
        let mut c = Cache::new(Duration::from_secs(10), 100, 3 * (128 + 1000));
        for b in 0..10u8 {
            c.put([b; 32], deny(1000), t0);
        }
        assert_eq!(c.len(), 3);
        assert!(c.bytes <= c.max_bytes);
        c.put([99; 32], deny(100_000), t0);
        assert_eq!(c.get(&[99; 32], t0), None, "an entry larger than the whole cache is not kept");
        assert_eq!(c.len(), 3);
    }
}
