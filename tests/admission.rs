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
    let clients: Vec<String> = records.iter().map(|r| r.identity.client_addr.clone().unwrap_or_default()).collect();
    assert!(clients[0].starts_with("203.0.113.7:") && clients[1].starts_with("198.51.100.9:"), "{clients:?}");
    // No header: closed without an answer.
    let (status, _, _) = raw_request(weir.addr, &upgrade).await.unwrap_or((0, String::new(), String::new()));
    assert_eq!(status, 0, "no HTTP answer to a connection without a PROXY header");
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
