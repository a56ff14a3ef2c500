//! Hardening (issue 9): see tests/tests.rs. Headers and paths on the upgrade and `http` paths:
//! two `Host` headers, headers named in `Connection`, forged forwarding headers, paths with dot
//! segments and encoded slashes, pipelined requests. Each test failed before its fix.

use crate::support::backends::{echo_backend, raw_backend, Backend};
use crate::support::wire::{accept_for, head_header, RawConn};
use crate::support::{pool_and_route, raw_request, upgrade_request, Weir, DEADLINE};
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A raw WebSocket backend that sends every upgrade head it receives on the channel, then
/// answers 101 (or 400 without a key) and holds the connection until weir closes it.
async fn recording_ws_backend() -> (Backend, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backend = raw_backend(move |s| {
        let tx = tx.clone();
        async move {
            let mut c = RawConn::new(s);
            let head = c.read_head().await;
            let key = head_header(&head, "sec-websocket-key").map(str::to_string);
            let _ = tx.send(head);
            match key {
                Some(key) => {
                    let answer = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                        accept_for(&key)
                    );
                    c.write(answer.as_bytes()).await;
                    let _ = c.read_to_end().await;
                }
                None => c.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 6\r\nConnection: close\r\n\r\nno key").await,
            }
        }
    })
    .await;
    (backend, rx)
}

/// A keep-alive HTTP/1.1 backend: answers every request on a connection, in order, with
/// `200` and the body `METHOD TARGET BODY`, and sends every request head on the channel as
/// soon as it has it (before reading the body).
async fn recording_http_backend() -> (Backend, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backend = raw_backend(move |s| {
        let tx = tx.clone();
        async move {
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            for _request in 0..100 {
                let mut head = String::new();
                for _line in 0..200 {
                    let mut line = String::new();
                    match r.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let _ = tx.send(head.clone());
                let len: usize = head_header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                let mut body = vec![0u8; len];
                if r.read_exact(&mut body).await.is_err() {
                    return;
                }
                let line = head.lines().next().unwrap_or("").trim_end_matches(" HTTP/1.1").to_string();
                let answer = format!("{line} {}", String::from_utf8_lossy(&body));
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                if w.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (backend, rx)
}

/// YAML for one pool `p` with `backend` and an `http` route `h` at `prefix`.
fn http_route(backend: SocketAddr, prefix: &str) -> String {
    format!(
        "pools:\n  - name: p\n    backends: [\"{backend}\"]\n    health_check: {{kind: none}}\nroutes:\n  - {{name: h, path_prefix: {prefix}, kind: http, pool: p}}\n"
    )
}

/// Send `request` on a fresh connection and read the response head.
async fn send_head(addr: SocketAddr, request: &str) -> (RawConn, String) {
    let mut c = RawConn::new(TcpStream::connect(addr).await.unwrap());
    c.write(request.as_bytes()).await;
    let head = c.read_head().await;
    (c, head)
}

/// Send `request` on a fresh connection: (status, head, body). A 101 is returned at once (the
/// connection stays open); any other answer is read until weir closes.
async fn answer(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let (mut c, head) = send_head(addr, request).await;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = if status == 101 { Vec::new() } else { c.read_to_end().await };
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

/// The next head a backend received, within `DEADLINE`.
async fn next_head(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(DEADLINE, rx.recv()).await.expect("no head at the backend").expect("backend gone")
}

/// Header names of a head, lower-cased.
fn names(head: &str) -> Vec<String> {
    head.split("\r\n").skip(1).filter_map(|l| l.split_once(':')).map(|(n, _)| n.trim().to_ascii_lowercase()).collect()
}

/// Every value of header `name` in a head.
fn values<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// Split a byte stream of HTTP/1.1 responses framed by Content-Length into (status, body).
fn responses(bytes: &[u8]) -> Vec<(u16, String)> {
    let text = String::from_utf8_lossy(bytes).to_string();
    let mut rest = text.as_str();
    let mut out = Vec::new();
    for _ in 0..100 {
        let Some((head, after)) = rest.split_once("\r\n\r\n") else { break };
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let len: usize = head_header(head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(after.len());
        out.push((status, after[..len.min(after.len())].to_string()));
        rest = &after[len.min(after.len())..];
    }
    out
}

/// Everything weir sends until it closes (or resets) the connection, within `DEADLINE`.
async fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for _ in 0..10_000 {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await.expect("weir did not close") {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    panic!("more than 10000 reads");
}

/// Write `bytes` in one write, optionally half-close, and read every answer until weir closes.
async fn pipeline(addr: SocketAddr, bytes: &str, half_close: bool) -> Vec<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes.as_bytes()).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    let got = read_all(&mut s).await;
    responses(&got)
}

// Item 12: RFC 9112 §3.2.
#[tokio::test]
async fn two_host_headers_on_an_upgrade_are_400_duplicate_host() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let req = upgrade_request(weir.addr, "/ws", "Host: other.example\r\n");
    let (status, head, body) = answer(weir.addr, &req).await;
    assert_eq!((status, body.as_str()), (400, "More than one Host header"), "{head}");
    let records = weir.records_eventually(1).await;
    assert_eq!((records[0].status, records[0].reason.as_deref()), (400, Some("duplicate_host")));
    weir.metric_eventually("weir_handshake_rejections_total", &[("reason", "duplicate_host")], |v| v == 1.0).await;
    assert!(backend.seen().is_empty(), "the backend must not see the request");
}

// Item 13.
#[tokio::test]
async fn headers_named_in_connection_keep_host_and_the_end_to_end_websocket_headers() {
    let (backend, mut heads) = recording_ws_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let host = weir.addr.to_string();
    // `Connection: Upgrade, Host` alone.
    let req = upgrade_request(weir.addr, "/ws", "").replace("Connection: Upgrade\r\n", "Connection: Upgrade, Host\r\n");
    let (_client, head) = send_head(weir.addr, &req).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let at_backend = next_head(&mut heads).await;
    assert_eq!(values(&at_backend, "host"), [host.as_str()], "{at_backend}");
    // Every end-to-end WebSocket header named at once.
    let named = "Upgrade, Host, Sec-WebSocket-Key, Sec-WebSocket-Version, Sec-WebSocket-Protocol, Sec-WebSocket-Extensions, Origin, Authorization, Cookie, X-Hop";
    let extra = "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: x-test\r\nOrigin: http://app.test\r\nAuthorization: Bearer t\r\nCookie: s=1\r\nX-Hop: 1\r\n";
    let req = upgrade_request(weir.addr, "/ws", extra)
        .replace("Connection: Upgrade\r\n", &format!("Connection: {named}\r\n"));
    let (_client, head) = send_head(weir.addr, &req).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let at_backend = next_head(&mut heads).await;
    for (name, value) in [
        ("host", host.as_str()),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
        ("sec-websocket-protocol", "chat"),
        ("sec-websocket-extensions", "x-test"),
        ("origin", "http://app.test"),
        ("authorization", "Bearer t"),
        ("cookie", "s=1"),
    ] {
        assert_eq!(values(&at_backend, name), [value], "{name}: {at_backend}");
    }
    assert!(values(&at_backend, "x-hop").is_empty(), "a header named in Connection is hop-by-hop: {at_backend}");
}

const FORGED: &str = "Forwarded: for=6.6.6.6;host=evil.example\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX_Forwarded_For: 6.6.6.6\r\nX-Weir-Connection-Id: spoof\r\nX-Weir-Object-Namespace: spoof\r\nX-Weir-Object-Id: spoof\r\n";

/// What every backend must see instead of `FORGED`.
fn assert_forwarding_headers_are_weirs(head: &str) {
    assert!(!head.contains("6.6.6.6") && !head.contains("evil") && !head.contains("spoof"), "{head}");
    let names = names(head);
    for gone in ["forwarded", "x-forwarded-host", "x-weir-object-namespace", "x-weir-object-id"] {
        assert!(!names.iter().any(|n| n == gone), "{gone}: {head}");
    }
    assert!(!names.iter().any(|n| n.contains('_')), "names with '_' are dropped: {head}");
    assert_eq!(values(head, "x-forwarded-for"), ["127.0.0.1"], "{head}");
    assert_eq!(values(head, "x-real-ip"), ["127.0.0.1"], "{head}");
    assert_eq!(values(head, "x-forwarded-proto"), ["http"], "{head}");
}

// Item 14, upgrades.
#[tokio::test]
async fn forged_forwarding_headers_never_reach_the_backend_of_an_upgrade() {
    let (backend, mut heads) = recording_ws_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let (_client, head) = send_head(weir.addr, &upgrade_request(weir.addr, "/ws", FORGED)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let at_backend = next_head(&mut heads).await;
    assert_forwarding_headers_are_weirs(&at_backend);
    assert_eq!(values(&at_backend, "x-weir-connection-id").len(), 1, "{at_backend}");
}

// Item 14, `http` routes.
#[tokio::test]
async fn forged_forwarding_and_weir_headers_never_reach_the_backend_of_an_http_route() {
    let (backend, mut heads) = recording_http_backend().await;
    let weir = Weir::start(&http_route(backend.addr, "/io")).await;
    let req = format!("GET /io/x HTTP/1.1\r\nHost: {}\r\n{FORGED}Connection: close\r\n\r\n", weir.addr);
    let (status, head, body) = raw_request(weir.addr, &req).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "GET /io/x "), "{head}");
    let at_backend = next_head(&mut heads).await;
    assert_forwarding_headers_are_weirs(&at_backend);
    assert!(values(&at_backend, "x-weir-connection-id").is_empty(), "{at_backend}");
}

/// Paths that must be refused, one per form.
const BAD_PATHS: [&str; 9] = [
    "/raw/../admin",
    "/raw/./admin",
    "/raw/%2e%2e/admin",
    "/raw/.%2E/admin",
    "/raw%2f..%2fadmin",
    "/raw/a%2Fb",
    "/raw/a%5cb",
    "/raw/a\\..\\admin",
    "/raw/a%00.txt",
];

const BAD_PATH_BODY: &str = "Path with a dot segment, an encoded slash or backslash, a backslash or NUL";

// Item 15, upgrades.
#[tokio::test]
async fn upgrades_with_dot_segments_encoded_slashes_backslashes_or_nul_are_400_bad_path() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/raw")).await;
    for path in BAD_PATHS {
        let (status, head, body) = answer(weir.addr, &upgrade_request(weir.addr, path, "")).await;
        assert_eq!((status, body.as_str()), (400, BAD_PATH_BODY), "{path}: {head}");
    }
    let records = weir.records_eventually(BAD_PATHS.len()).await;
    assert!(records.iter().all(|r| (r.status, r.reason.as_deref()) == (400, Some("bad_path"))), "{records:?}");
    weir.metric_eventually("weir_handshake_rejections_total", &[("reason", "bad_path")], |v| {
        v == BAD_PATHS.len() as f64
    })
    .await;
    // A raw NUL never parses as a request target at all.
    let nul = upgrade_request(weir.addr, "/raw/a\0b", "");
    assert_eq!(raw_request(weir.addr, &nul).await.unwrap().0, 400);
    assert!(backend.seen().is_empty(), "{:?}", backend.seen());
    // Dots inside a name, and dot segments in the query, are fine.
    let (_client, head) = send_head(weir.addr, &upgrade_request(weir.addr, "/raw/a..b/.well/x?next=/../", "")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

// Item 15, plain requests on `http` routes.
#[tokio::test]
async fn plain_requests_with_dot_segments_encoded_slashes_backslashes_or_nul_are_400_bad_path() {
    let (backend, mut heads) = recording_http_backend().await;
    let weir = Weir::start(&http_route(backend.addr, "/raw")).await;
    for path in BAD_PATHS {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", weir.addr);
        let (status, head, body) = raw_request(weir.addr, &req).await.unwrap();
        assert_eq!((status, body.as_str()), (400, BAD_PATH_BODY), "{path}: {head}");
    }
    weir.metric_eventually("weir_handshake_rejections_total", &[("reason", "bad_path")], |v| {
        v == BAD_PATHS.len() as f64
    })
    .await;
    assert!(heads.try_recv().is_err(), "the backend must see none of them");
}

// Item 16: two and three requests in one write, each answered, in order.
#[tokio::test]
async fn pipelined_requests_on_an_http_route_are_all_answered_in_order() {
    let (backend, _heads) = recording_http_backend().await;
    let weir = Weir::start(&http_route(backend.addr, "/io")).await;
    let host = weir.addr;
    let two = format!(
        "GET /io/1 HTTP/1.1\r\nHost: {host}\r\n\r\nGET /io/2 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    let got = pipeline(weir.addr, &two, false).await;
    assert_eq!(got, [(200, "GET /io/1 ".to_string()), (200, "GET /io/2 ".to_string())], "{}", weir.log());

    let three = format!(
        "GET /io/1 HTTP/1.1\r\nHost: {host}\r\n\r\nPOST /io/2 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhelloGET /io/3 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    let got = pipeline(weir.addr, &three, false).await;
    let want = [(200, "GET /io/1 "), (200, "POST /io/2 hello"), (200, "GET /io/3 ")];
    assert_eq!(got, want.map(|(s, b)| (s, b.to_string())), "{}", weir.log());
    weir.metric_eventually("weir_http_requests_total", &[("route", "h")], |v| v == 5.0).await;
}

// Item 16: a client that half-closes after pipelining still gets every answer.
#[tokio::test]
async fn pipelined_requests_then_half_close_are_all_answered_before_weir_closes() {
    let (backend, _heads) = recording_http_backend().await;
    let weir = Weir::start(&http_route(backend.addr, "/io")).await;
    let host = weir.addr;
    let three = format!(
        "GET /io/1 HTTP/1.1\r\nHost: {host}\r\n\r\nGET /io/2 HTTP/1.1\r\nHost: {host}\r\n\r\nGET /io/3 HTTP/1.1\r\nHost: {host}\r\n\r\n"
    );
    let got = pipeline(weir.addr, &three, true).await;
    let want = [(200, "GET /io/1 "), (200, "GET /io/2 "), (200, "GET /io/3 ")];
    assert_eq!(got, want.map(|(s, b)| (s, b.to_string())), "{}", weir.log());
}

// Item 16: the next request arrives in the same write as the end of a body Pingora reads
// from the socket itself (the gateway had only the head): what Pingora reads past the body is
// replayed, not lost.
#[tokio::test]
async fn a_request_pipelined_behind_a_body_still_in_flight_is_answered_too() {
    let (backend, mut heads) = recording_http_backend().await;
    let weir = Weir::start(&http_route(backend.addr, "/io")).await;
    let host = weir.addr;
    let mut s = TcpStream::connect(weir.addr).await.unwrap();
    s.write_all(format!("POST /io/1 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\n").as_bytes()).await.unwrap();
    // The backend has the head: weir handed the request on and Pingora reads the body itself.
    assert!(next_head(&mut heads).await.starts_with("POST /io/1 "));
    s.write_all(format!("helloGET /io/2 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let got = read_all(&mut s).await;
    let want = [(200, "POST /io/1 hello"), (200, "GET /io/2 ")];
    assert_eq!(responses(&got), want.map(|(s, b)| (s, b.to_string())), "{}", weir.log());
}
