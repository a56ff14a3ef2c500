//! Admission before the 101 (issue 11): API keys from a header, the query and a subprotocol
//! entry (removed before the backend), JWTs, tenants from credentials in records and in
//! `X-Weir-Tenant`, object restrictions, origins, per-address caps and rates with `Retry-After`.
//! Real binary, real backends, raw and tungstenite clients.

use crate::support::backends::{echo_backend, ws_backend, Backend};
use crate::support::wire::{head_header, raw_client};
use crate::support::{connect, metric, pool_and_route, raw_request, recv, upgrade_request, Weir};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "k-acme-0123456789";

fn sha(key: &str) -> String {
    weir::admission::auth::key_digest_hex(key)
}

/// Pool `p` with `backend` at `/ws`, the route given `route_extra` (YAML flow-map entries).
fn config(backend: &Backend, route_extra: &str, extra: &str) -> String {
    format!(
        "pools:\n  - name: p\n    backends: [\"{}\"]\n    health_check: {{kind: none}}\nroutes:\n  - {{name: ws, path_prefix: /ws, pool: p, {route_extra}}}\n{extra}",
        backend.addr
    )
}

fn keyed(query: bool) -> String {
    let q = if query { ", query: key" } else { "" };
    format!("auth: {{api_keys: [{{sha256: \"{}\", tenant: acme}}]{q}}}", sha(KEY))
}

#[tokio::test]
async fn a_key_in_the_authorization_header_admits_and_bills_its_tenant() {
    let backend = echo_backend().await;
    let weir = Weir::start(&config(&backend, &keyed(false), "")).await;
    let mut req = weir.url("/ws").into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("hi"));
    ws.close(None).await.unwrap();
    let seen = backend.seen().remove(0);
    assert_eq!(seen.header("authorization"), None, "the credential is not forwarded");
    assert_eq!(seen.header("x-weir-tenant"), Some("acme"));
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.identity.tenant.as_deref(), Some("acme"));
    assert!(!std::fs::read_to_string(&weir.usage).unwrap().contains(KEY), "never in a record");
    assert!(!weir.log().contains(KEY), "never in the log");
}

#[tokio::test]
async fn a_key_in_the_query_is_taken_out_of_the_forwarded_target() {
    let backend = echo_backend().await;
    let weir = Weir::start(&config(&backend, &keyed(true), "")).await;
    let mut ws = connect(&weir, &format!("/ws?room=1&key={KEY}")).await;
    ws.send(Message::text("q")).await.unwrap();
    recv(&mut ws).await;
    let seen = backend.seen().remove(0);
    assert_eq!((seen.path.as_str(), seen.query.as_str()), ("/ws", "room=1"));
    // Without `query:` in the config, a key in the URL does not count.
    let backend2 = echo_backend().await;
    let weir2 = Weir::start(&config(&backend2, &keyed(false), "")).await;
    let (status, head, _) =
        raw_request(weir2.addr, &upgrade_request(weir2.addr, &format!("/ws?key={KEY}"), "")).await.unwrap();
    assert_eq!(status, 401, "{head}");
    assert_eq!(head_header(&(head.clone() + "\r\n"), "www-authenticate"), Some("Bearer realm=\"weir\""), "{head}");
}

#[tokio::test]
async fn a_key_in_a_subprotocol_entry_is_removed_and_the_backend_picks_among_the_rest() {
    let backend = ws_backend(Some("chat"), crate::support::backends::echo).await;
    let weir = Weir::start(&config(&backend, &keyed(false), "")).await;
    let extra = format!("Sec-WebSocket-Protocol: weir.key.{KEY}, chat\r\n");
    let (_c, head) = raw_client(weir.addr, "/ws", &extra, b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(head_header(&head, "sec-websocket-protocol"), Some("chat"));
    assert_eq!(backend.seen()[0].header("sec-websocket-protocol"), Some("chat"), "the key entry is gone");
    // The key entry alone (a browser that only has the key): the 101 names that entry.
    let plain = echo_backend().await;
    let weir2 = Weir::start(&config(&plain, &keyed(false), "")).await;
    let (_c2, head) = raw_client(weir2.addr, "/ws", &format!("Sec-WebSocket-Protocol: weir.key.{KEY}\r\n"), b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(head_header(&head, "sec-websocket-protocol"), Some(format!("weir.key.{KEY}").as_str()));
    assert_eq!(plain.seen()[0].header("sec-websocket-protocol"), None);
}

#[tokio::test]
async fn missing_and_unknown_keys_get_401_and_a_record_that_says_why() {
    let backend = echo_backend().await;
    let weir = Weir::start(&config(&backend, &keyed(false), "")).await;
    let (status, _, body) = raw_request(weir.addr, &upgrade_request(weir.addr, "/ws", "")).await.unwrap();
    assert_eq!((status, body.as_str()), (401, "Credentials required"));
    let bad = upgrade_request(weir.addr, "/ws", "Authorization: Bearer wrong-key-123\r\n");
    let (status, _, body) = raw_request(weir.addr, &bad).await.unwrap();
    assert_eq!((status, body.as_str()), (401, "Invalid credentials"));
    assert!(backend.seen().is_empty(), "no backend was touched");
    let records = weir.records_eventually(2).await;
    let got: Vec<(u16, &str)> = records.iter().map(|r| (r.status, r.reason.as_deref().unwrap_or(""))).collect();
    assert_eq!(got, [(401, "no_credential"), (401, "bad_credential: unknown_key")]);
    assert!(!std::fs::read_to_string(&weir.usage).unwrap().contains("wrong-key-123"));
    let m = weir.metrics().await;
    assert_eq!(
        metric(&m, "weir_handshake_rejections_total", &[("route", "ws"), ("reason", "bad_credential")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_jwt_admits_with_the_tenant_of_its_claim_and_an_expired_one_does_not() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let backend = echo_backend().await;
    let auth = "auth: {jwt: {secret: s3cret, audience: weir, tenant_claim: tenant}}";
    let weir = Weir::start(&config(&backend, auth, "")).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let token = |exp: u64, aud: &str| {
        let claims = serde_json::json!({"sub": "u1", "tenant": "globex", "aud": aud, "exp": exp});
        encode(&Header::default(), &claims, &EncodingKey::from_secret(b"s3cret").unwrap()).unwrap()
    };
    let (mut c, head) =
        raw_client(weir.addr, "/ws", &format!("Authorization: Bearer {}\r\n", token(now + 60, "weir")), b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(backend.seen()[0].header("x-weir-tenant"), Some("globex"));
    let _ = c.try_write(&[0x88, 0x80, 0, 0, 0, 0]).await;
    for (tok, want) in [
        (token(now - 120, "weir"), "bad_credential: expired"),
        (token(now + 60, "other"), "bad_credential: wrong_audience"),
    ] {
        let req = upgrade_request(weir.addr, "/ws", &format!("Authorization: Bearer {tok}\r\n"));
        let (status, _, _) = raw_request(weir.addr, &req).await.unwrap();
        assert_eq!(status, 401, "{want}");
    }
    let records = weir.records_eventually(3).await;
    let reasons: Vec<Option<&str>> = records.iter().filter(|r| r.status == 401).map(|r| r.reason.as_deref()).collect();
    assert_eq!(reasons, [Some("bad_credential: expired"), Some("bad_credential: wrong_audience")]);
}

#[tokio::test]
async fn a_key_limited_to_some_objects_gets_403_for_others() {
    let sha = sha(KEY);
    let weir = Weir::start(&format!(
        "objects:\n  - {{name: rooms, id: {{path: \"/rooms/{{id}}\"}}, builtin: echo}}\n\
         routes:\n  - {{path_prefix: /rooms, object: rooms, auth: {{api_keys: [{{sha256: \"{sha}\", tenant: acme, objects: [lobby, \"team-*\"]}}]}}}}\n"
    ))
    .await;
    for (path, status) in [("/rooms/lobby", 101), ("/rooms/team-7", 101), ("/rooms/other", 403)] {
        let (mut c, head) = raw_client(weir.addr, path, &format!("Authorization: Bearer {KEY}\r\n"), b"").await;
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{path}: {head}");
        let _ = c.try_write(&[0x88, 0x80, 0, 0, 0, 0]).await;
    }
}

#[tokio::test]
async fn origins_on_the_list_pass_others_get_403() {
    let backend = echo_backend().await;
    let route = "origins: [\"https://app.example.com\", \"https://*.example.com\"], allow_no_origin: false";
    let weir = Weir::start(&config(&backend, route, "")).await;
    for (origin, status) in [
        (Some("https://app.example.com"), 101),
        (Some("https://eu.example.com"), 101),
        (Some("https://evil.example.net"), 403),
        (None, 403),
    ] {
        let extra = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
        let (mut c, head) = raw_client(weir.addr, "/ws", &extra, b"").await;
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{origin:?}: {head}");
        let _ = c.try_write(&[0x88, 0x80, 0, 0, 0, 0]).await;
    }
    let m = weir.metrics().await;
    assert_eq!(metric(&m, "weir_handshake_rejections_total", &[("reason", "origin_not_allowed")]), Some(2.0));
}

#[tokio::test]
async fn the_per_address_cap_and_rate_refuse_with_429_and_retry_after() {
    let backend = echo_backend().await;
    let weir = Weir::start(&format!(
        "{}admission: {{max_connections_per_ip: 2}}\n",
        pool_and_route("p", &[backend.addr], "/ws")
    ))
    .await;
    let a = connect(&weir, "/ws").await;
    let _b = connect(&weir, "/ws").await;
    let (status, head, _) = raw_request(weir.addr, &upgrade_request(weir.addr, "/ws", "")).await.unwrap();
    assert_eq!(status, 429, "{head}");
    assert_eq!(head_header(&(head + "\r\n"), "retry-after"), Some("1"));
    drop(a);
    // The closed connection gives its place back once weir has seen it end.
    let _c = crate::support::eventually("a place freed", || async {
        let (c, head) = raw_client(weir.addr, "/ws", "", b"").await;
        head.starts_with("HTTP/1.1 101").then_some(c)
    })
    .await;

    let backend2 = echo_backend().await;
    let weir2 = Weir::start(&format!(
        "{}admission: {{ip_rate: {{per_second: 1, burst: 2}}}}\n",
        pool_and_route("p", &[backend2.addr], "/ws")
    ))
    .await;
    let _c = connect(&weir2, "/ws").await;
    let _d = connect(&weir2, "/ws").await;
    let (status, head, body) = raw_request(weir2.addr, &upgrade_request(weir2.addr, "/ws", "")).await.unwrap();
    assert_eq!((status, body.as_str()), (429, "Too many new connections from this address; retry later"), "{head}");
    assert_eq!(head_header(&(head + "\r\n"), "retry-after"), Some("1"));
}

/// A `proxy_protocol` listener: the client address of a v1 and a v2 header is the one in the
/// record and in `X-Forwarded-For` at the backend; a connection without the header is closed.
#[tokio::test]
async fn proxy_protocol_headers_name_the_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = echo_backend().await;
    let weir =
        Weir::start_listener(&pool_and_route("p", &[backend.addr], "/ws"), "", "    proxy_protocol: true\n").await;
    let upgrade = upgrade_request(weir.addr, "/ws", "");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 9, 127, 0, 0, 1, 0x10, 0x92, 0x1f, 0x90]);
    for (header, ip) in
        [(b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 8080\r\n".to_vec(), "203.0.113.7"), (v2, "198.51.100.9")]
    {
        let mut s = tokio::net::TcpStream::connect(weir.addr).await.unwrap();
        s.write_all(&[header, upgrade.clone().into_bytes()].concat()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&buf[..n]));
        let seen = crate::support::eventually("the backend saw it", || async {
            backend.seen().into_iter().find(|s| s.header("x-forwarded-for") == Some(ip))
        })
        .await;
        assert_eq!(seen.header("x-real-ip"), Some(ip));
        s.write_all(&[0x88, 0x80, 0, 0, 0, 0]).await.unwrap();
    }
    let records = weir.records_eventually(2).await;
    // Records are written as connections end, and the two may end in either order.
    let clients: Vec<String> =
        records.iter().map(|r| r.identity.client_addr.map(|a| a.to_string()).unwrap_or_default()).collect();
    for ip in ["203.0.113.7:", "198.51.100.9:"] {
        assert_eq!(clients.iter().filter(|c| c.starts_with(ip)).count(), 1, "{ip} in {clients:?}");
    }
    // No header: closed without an answer.
    let (status, _, _) = raw_request(weir.addr, &upgrade).await.unwrap_or((0, String::new(), String::new()));
    assert_eq!(status, 0, "no HTTP answer to a connection without a PROXY header");
}

/// A stream whose first write goes out together with `prefix` (one segment: a PROXY header and
/// the TLS ClientHello arrive in one read, so weir must give back what follows the header).
struct Prefixed {
    inner: tokio::net::TcpStream,
    prefix: Vec<u8>,
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if !self.prefix.is_empty() {
            // Taken as written; `poll_flush` sends it with the prefix in one write.
            self.prefix.extend_from_slice(buf);
            return std::task::Poll::Ready(Ok(buf.len()));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        while !self.prefix.is_empty() {
            let this = &mut *self;
            let n = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_write(cx, &this.prefix))?;
            this.prefix.drain(..n);
        }
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A `proxy_protocol` TLS listener: the PROXY header comes before the TLS handshake (v1 sent on
/// its own, v2 in one segment with the ClientHello); its address is the record's and the
/// backend's `X-Forwarded-For`. A TLS client without the header is closed before the handshake.
#[tokio::test]
async fn proxy_protocol_headers_before_tls_name_the_client() {
    use crate::support::tls::TestCert;
    use tokio::io::AsyncWriteExt;
    let cert = TestCert::localhost();
    let backend = echo_backend().await;
    let listener = format!("{}    proxy_protocol: true\n", cert.listener_yaml());
    let weir = Weir::start_listener(&pool_and_route("p", &[backend.addr], "/ws"), "", &listener).await;
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 9, 127, 0, 0, 1, 0x10, 0x92, 0x1f, 0x90]);
    let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 8443\r\n".to_vec();
    for (header, ip, joined) in [(v1, "203.0.113.7", false), (v2, "198.51.100.9", true)] {
        let mut tcp = tokio::net::TcpStream::connect(weir.addr).await.unwrap();
        let io = if joined {
            Prefixed { inner: tcp, prefix: header }
        } else {
            tcp.write_all(&header).await.unwrap();
            Prefixed { inner: tcp, prefix: Vec::new() }
        };
        let tls = cert.connect(io).await.unwrap_or_else(|e| panic!("TLS after {ip}: {e}\n{}", weir.log()));
        let (mut ws, resp) = tokio_tungstenite::client_async(TestCert::url(weir.addr, "/ws"), tls).await.unwrap();
        assert_eq!(resp.status(), 101);
        ws.send(Message::text(ip)).await.unwrap();
        assert_eq!(recv(&mut ws).await, Message::text(ip));
        ws.close(None).await.unwrap();
        let seen = crate::support::eventually("the backend saw it", || async {
            backend.seen().into_iter().find(|s| s.header("x-forwarded-for") == Some(ip))
        })
        .await;
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
        let records = weir.records_eventually(if joined { 2 } else { 1 }).await;
        let r = records.last().unwrap();
        assert!(r.identity.client_addr.is_some_and(|a| a.to_string().starts_with(&format!("{ip}:"))), "{r:?}");
    }
    // No header: the ClientHello is not a PROXY header; closed before the handshake.
    let tcp = tokio::net::TcpStream::connect(weir.addr).await.unwrap();
    assert!(cert.connect(tcp).await.is_err(), "a TLS client without a PROXY header is closed");
    weir.metric_eventually("weir_handshake_rejections_total", &[("reason", "bad_proxy_header")], |v| v == 1.0).await;
}

/// `trusted_proxies`: behind a trusted peer the client is the rightmost untrusted address of
/// `X-Forwarded-For`; from anyone else the header is ignored (and not forwarded).
#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let backend = echo_backend().await;
    let routes = pool_and_route("p", &[backend.addr], "/ws");
    let weir = Weir::start_with(&routes, "trusted_proxies: [\"127.0.0.0/8\"]").await;
    let (_c, head) = raw_client(weir.addr, "/ws", "X-Forwarded-For: 6.6.6.6, 203.0.113.5, 127.0.0.2\r\n", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(backend.seen()[0].header("x-forwarded-for"), Some("203.0.113.5"));
    let other = echo_backend().await;
    let weir2 = Weir::start_with(&pool_and_route("p", &[other.addr], "/ws"), "trusted_proxies: [\"10.0.0.0/8\"]").await;
    let (_c2, _) = raw_client(weir2.addr, "/ws", "X-Forwarded-For: 203.0.113.5\r\n", b"").await;
    assert_eq!(other.seen()[0].header("x-forwarded-for"), Some("127.0.0.1"));
}

// --- `auth.external`: forward authentication (issue 11) ---

/// A forward-auth endpoint on 127.0.0.1:0: records each request head and writes `answer(head)`
/// (a raw HTTP response), or never answers when it gives `None`.
struct AuthEndpoint {
    addr: std::net::SocketAddr,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AuthEndpoint {
    async fn start(answer: fn(&str) -> Option<String>) -> AuthEndpoint {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    seen.lock().unwrap().push(head.clone());
                    match answer(&head) {
                        Some(a) => {
                            let _ = s.write_all(a.as_bytes()).await;
                            let _ = s.shutdown().await;
                        }
                        None => tokio::time::sleep(std::time::Duration::from_secs(60)).await,
                    }
                });
            }
        });
        AuthEndpoint { addr, heads, task }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// `auth:` YAML (flow) for a route checked by this endpoint, with more `external` keys.
    fn auth(&self, more: &str) -> String {
        format!("auth: {{external: {{url: \"http://{}/check\"{more}}}}}", self.addr)
    }
}

impl Drop for AuthEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of header `name` in a raw request head (case-insensitive name).
fn request_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}

#[tokio::test]
async fn an_external_endpoint_admits_with_its_tenant_and_copied_headers() {
    let endpoint = AuthEndpoint::start(|_| {
        Some("HTTP/1.1 200 OK\r\nX-Tenant: globex\r\nX-User-Id: u-42\r\nContent-Length: 0\r\n\r\n".into())
    })
    .await;
    let backend = echo_backend().await;
    let route = format!("tenant: acme, {}", endpoint.auth(", tenant_header: x-tenant, copy_headers: [x-user-id]"));
    let weir = Weir::start(&config(&backend, &route, "")).await;
    let extra = "Authorization: Bearer ext-secret-token-1\r\nX-User-Id: admin\r\nCookie: sid=ext-cookie-2\r\n";
    let (mut c, head) = raw_client(weir.addr, "/ws/room?id=7", extra, b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let _ = c.try_write(&[0x88, 0x80, 0, 0, 0, 0]).await;

    // What the endpoint was asked.
    let asked = endpoint.heads();
    assert_eq!(asked.len(), 1);
    let h = &asked[0];
    assert!(h.starts_with("GET /check HTTP/1.1\r\n"), "{h}");
    assert_eq!(request_header(h, "host"), Some(endpoint.addr.to_string().as_str()));
    assert_eq!(request_header(h, "x-forwarded-method"), Some("GET"));
    assert_eq!(request_header(h, "x-forwarded-uri"), Some("/ws/room?id=7"));
    assert_eq!(request_header(h, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(request_header(h, "authorization"), Some("Bearer ext-secret-token-1"));
    assert_eq!(request_header(h, "cookie"), Some("sid=ext-cookie-2"));
    assert_eq!(request_header(h, "x-user-id"), None, "only the named headers are forwarded");

    // What the backend got: the tenant and the endpoint's X-User-Id, not the client's.
    let seen = backend.seen().remove(0);
    assert_eq!(seen.header("x-weir-tenant"), Some("globex"));
    let ids: Vec<&str> = seen.headers.iter().filter(|(n, _)| n == "x-user-id").map(|(_, v)| v.as_str()).collect();
    assert_eq!(ids, ["u-42"]);
    assert_eq!(seen.header("authorization"), Some("Bearer ext-secret-token-1"), "forwarded as sent (forward auth)");

    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!((r.status, r.identity.tenant.as_deref()), (101, Some("globex")));
    let usage = std::fs::read_to_string(&weir.usage).unwrap();
    for secret in ["ext-secret-token-1", "ext-cookie-2", "u-42"] {
        assert!(!usage.contains(secret) && !weir.log().contains(secret), "{secret} in a record or the log");
    }
}

#[tokio::test]
async fn an_external_refusal_reaches_the_client_with_its_status_and_body() {
    let endpoint = AuthEndpoint::start(|head| {
        Some(if head.contains("Bearer big") {
            format!("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"sso\"\r\nContent-Length: 10000\r\n\r\n{}", "x".repeat(10_000))
        } else {
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nX-Internal: hidden\r\nContent-Length: 16\r\n\r\nno entry for you".into()
        })
    })
    .await;
    let backend = echo_backend().await;
    let weir = Weir::start(&config(&backend, &endpoint.auth(""), "")).await;
    let req = upgrade_request(weir.addr, "/ws", "Authorization: Bearer ext-denied-3\r\n");
    let (status, head, body) = raw_request(weir.addr, &req).await.unwrap();
    assert_eq!((status, body.as_str()), (403, "no entry for you"), "{head}");
    let head = head + "\r\n";
    assert_eq!(head_header(&head, "content-type"), Some("text/plain"));
    assert_eq!(head_header(&head, "x-internal"), None, "only a few of the endpoint's headers are passed on");
    // A body over 4 KiB is cut there.
    let req = upgrade_request(weir.addr, "/ws", "Authorization: Bearer big\r\n");
    let (status, head, body) = raw_request(weir.addr, &req).await.unwrap();
    assert_eq!((status, body.len()), (401, 4096), "{head}");
    assert_eq!(head_header(&(head + "\r\n"), "www-authenticate"), Some("Bearer realm=\"sso\""));
    assert!(backend.seen().is_empty(), "no backend was touched");

    let records = weir.records_eventually(2).await;
    let got: Vec<(u16, &str, &str)> =
        records.iter().map(|r| (r.status, r.outcome.as_ref(), r.reason.as_deref().unwrap_or(""))).collect();
    assert_eq!(got, [(403, "rejected", "external_auth: 403"), (401, "rejected", "external_auth: 401")]);
    let m = weir.metrics().await;
    assert_eq!(
        metric(&m, "weir_handshake_rejections_total", &[("route", "ws"), ("reason", "external_auth")]),
        Some(2.0)
    );
    let usage = std::fs::read_to_string(&weir.usage).unwrap();
    assert!(!usage.contains("no entry for you") && !weir.log().contains("no entry for you"), "the answer is not kept");
    assert!(!usage.contains("ext-denied-3") && !weir.log().contains("ext-denied-3"));
}

#[tokio::test]
async fn an_external_endpoint_that_does_not_answer_in_time_follows_on_error() {
    let endpoint = AuthEndpoint::start(|_| None).await;
    let backend = echo_backend().await;
    let deny = config(&backend, &endpoint.auth(", timeout: 200ms"), "");
    let weir = Weir::start(&deny).await;
    let started = std::time::Instant::now();
    let (status, _, body) = raw_request(weir.addr, &upgrade_request(weir.addr, "/ws", "")).await.unwrap();
    assert_eq!((status, body.as_str()), (503, "Authentication is unavailable right now; retry"));
    assert!(started.elapsed() >= std::time::Duration::from_millis(200), "{:?}", started.elapsed());
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!((r.status, r.reason.as_deref()), (503, Some("external_auth_unavailable")));

    // on_error: allow admits with the route's tenant, and warns at most once a second.
    let backend2 = echo_backend().await;
    let route =
        format!("tenant: acme, {}", endpoint.auth(", timeout: 100ms, on_error: allow, copy_headers: [x-user-id]"));
    let weir2 = Weir::start(&config(&backend2, &route, "")).await;
    for _ in 0..2 {
        let (mut c, head) = raw_client(weir2.addr, "/ws", "X-User-Id: admin\r\n", b"").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let _ = c.try_write(&[0x88, 0x80, 0, 0, 0, 0]).await;
    }
    let seen = backend2.seen();
    assert_eq!(seen[0].header("x-weir-tenant"), Some("acme"));
    assert_eq!(seen[0].header("x-user-id"), None, "a client's copy_headers never pass unchecked");
    let records = weir2.records_eventually(2).await;
    assert!(records.iter().all(|r| r.status == 101 && r.identity.tenant.as_deref() == Some("acme")));
    let log = weir2.log();
    assert_eq!(log.matches("external auth endpoint could not be asked").count(), 1, "{log}");
}

#[tokio::test]
async fn external_answers_are_cached_for_cache_ttl() {
    let endpoint = AuthEndpoint::start(|head| {
        Some(if head.contains("Bearer good") {
            "HTTP/1.1 204 No Content\r\nX-Tenant: initech\r\n\r\n".into()
        } else {
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope".into()
        })
    })
    .await;
    let backend = echo_backend().await;
    let weir = Weir::start(&config(&backend, &endpoint.auth(", tenant_header: x-tenant, cache_ttl: 10s"), "")).await;
    for _ in 0..2 {
        let (mut c, head) = raw_client(weir.addr, "/ws", "Authorization: Bearer good\r\n", b"").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let _ = c.try_write(&[0x88, 0x80, 0, 0, 0, 0]).await;
    }
    assert_eq!(endpoint.heads().len(), 1, "the second upgrade within the TTL is answered from the cache");
    for _ in 0..2 {
        let req = upgrade_request(weir.addr, "/ws", "Authorization: Bearer bad\r\n");
        let (status, _, body) = raw_request(weir.addr, &req).await.unwrap();
        assert_eq!((status, body.as_str()), (401, "nope"));
    }
    assert_eq!(endpoint.heads().len(), 2, "a 401 is cached too, under its own key");
    let tenants: Vec<String> =
        backend.seen().iter().map(|s| s.header("x-weir-tenant").unwrap_or("").to_string()).collect();
    assert_eq!(tenants, ["initech", "initech"]);
}

/// One pool of `backend` and route `/ws` billed to tenant `acme` (the quota tests').
fn acme_route(backend: &Backend) -> String {
    format!(
        "pools:\n  - name: p\n    backends: [\"{}\"]\n    health_check: {{kind: none}}\nroutes:\n  - {{name: ws, path_prefix: /ws, pool: p, tenant: acme}}\n",
        backend.addr
    )
}

/// A quota crossed while connected: the connection is closed with 1008 "quota exceeded" (cause
/// `quota`), the next upgrade gets 429 naming the quota, and that holds after a restart.
#[tokio::test]
async fn a_quota_crossed_closes_with_1008_refuses_with_429_and_survives_a_restart() {
    let backend = echo_backend().await;
    let data = tempfile::tempdir().unwrap();
    let routes = acme_route(&backend);
    let extra = format!(
        "data_dir: \"{}\"\nquotas:\n  - {{tenant: acme, of: messages, limit: 10, per: day}}\n",
        data.path().display()
    );
    let mut weir = Weir::start_with(&routes, &extra).await;
    let mut ws = connect(&weir, "/ws").await;
    // Each echo is two messages; the sixth round trip goes over 10.
    for i in 0..6 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(recv(&mut ws).await, Message::text(format!("m{i}")));
    }
    let closed = crate::support::next_close(&mut ws).await;
    assert_eq!(closed, (1008, "quota exceeded".to_string()));
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.close.unwrap().cause, "quota");
    let (status, head, body) = raw_request(weir.addr, &upgrade_request(weir.addr, "/ws", "")).await.unwrap();
    assert_eq!((status, body.as_str()), (429, "quota messages_per_day exceeded for tenant acme"), "{head}");
    assert!(head_header(&(head + "\r\n"), "retry-after").is_some());
    let m = weir.metrics().await;
    let used = metric(&m, "weir_quota_utilisation", &[("tenant", "acme"), ("quota", "messages_per_day")]).unwrap();
    assert!(used >= 1.0, "{used}");
    // A graceful restart keeps the day's usage.
    weir.terminate();
    let again = Weir::start_with(&routes, &extra).await;
    let (status, _, body) = raw_request(again.addr, &upgrade_request(again.addr, "/ws", "")).await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (429, "quota messages_per_day exceeded for tenant acme"),
        "from the first upgrade"
    );
}

/// A quota over a pricing unit (`of: unit:<name>`): the units of open connections count within
/// a tick, so crossing it while connected closes with 1008 and the next upgrade gets 429.
#[tokio::test]
async fn a_quota_over_a_pricing_unit_is_enforced_while_connected() {
    let backend = echo_backend().await;
    let routes = acme_route(&backend);
    // One credit per 4 bytes of a message, each way: an 8-byte message is 2 credits.
    let extra = "billing:\n  units:\n    - name: credits\n      terms: [{of: messages_in, chunk: 4}, {of: messages_out, chunk: 4}]\nquotas:\n  - {tenant: acme, of: \"unit:credits\", limit: 20, per: day}\n";
    let weir = Weir::start_with(&routes, extra).await;
    let mut ws = connect(&weir, "/ws").await;
    // Each round trip: 2 credits in, 2 out. The fifth reaches 20 (the quota's next tick may
    // close the connection from then on), the sixth passes it.
    for i in 0..6 {
        if ws.send(Message::text(format!("message{i}"))).await.is_err() {
            break;
        }
    }
    let closed = crate::support::next_close(&mut ws).await;
    assert_eq!(closed, (1008, "quota exceeded".to_string()));
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.close.unwrap().cause, "quota");
    assert!(r.units["credits"] >= 20.0, "{:?}", r.units);
    let (status, _, body) = raw_request(weir.addr, &upgrade_request(weir.addr, "/ws", "")).await.unwrap();
    assert_eq!((status, body.as_str()), (429, "quota credits_per_day exceeded for tenant acme"));
    let m = weir.metrics().await;
    let used = metric(&m, "weir_quota_utilisation", &[("tenant", "acme"), ("quota", "credits_per_day")]).unwrap();
    assert!(used >= 1.0, "{used}");
}

/// `weir usage --quotas`: after a graceful stop (which saves the usage file), each tenant's
/// standing is read from `data_dir/quotas.json` under the config's quotas, no process running.
#[tokio::test]
async fn weir_usage_quotas_prints_a_tenants_standing_from_the_saved_file() {
    let backend = echo_backend().await;
    let data = tempfile::tempdir().unwrap();
    let routes = acme_route(&backend);
    let extra = format!(
        "data_dir: \"{}\"\nquotas:\n  - {{tenant: acme, of: messages, limit: 100, per: day}}\n  - {{tenant: \"*\", of: connection_seconds, limit: 3600, per: hour}}\n",
        data.path().display()
    );
    let mut weir = Weir::start_with(&routes, &extra).await;
    let mut ws = connect(&weir, "/ws").await;
    for i in 0..3 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(recv(&mut ws).await, Message::text(format!("m{i}")));
    }
    ws.close(None).await.unwrap();
    weir.records_eventually(1).await;
    assert!(weir.terminate().is_some_and(|s| s.success()), "{}", weir.log());

    let config = weir.config.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir")).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let json: serde_json::Value =
        serde_json::from_str(&run(&["usage", "--quotas", "--config", config, "--tenant", "acme", "--format", "json"]))
            .unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{json}");
    let messages = &rows[0];
    assert_eq!(
        (&messages["tenant"], &messages["quota"], &messages["limit"], &messages["used"], &messages["over"]),
        (&"acme".into(), &"messages_per_day".into(), &100.into(), &6.into(), &false.into()),
        "three round trips are six messages: {json}"
    );
    assert_eq!(messages["share"], 0.06);
    let today = weir::billing::report::day_label(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64,
    );
    assert_eq!(messages["period_start"], format!("{today}T00:00:00Z"));
    assert_eq!(rows[1]["quota"], "connection_seconds_per_hour");
    assert!(rows[1]["used"].as_u64().unwrap() <= 60, "{json}");
    let table = run(&["usage", "--quotas", "-c", config]);
    assert!(table.starts_with("tenant  quota"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("acme    messages_per_day") && l.ends_with("no")), "{table}");
}
