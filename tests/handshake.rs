//! Handshake outcomes seen by a client: what weir answers, what it records, what it counts.

use crate::support::backends::{dead_addr, echo_backend, raw_backend};
use crate::support::wire::trickle_until_closed;
use crate::support::{pool_and_route, raw_request, upgrade_request, Weir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn plain_get_on_websocket_route_is_400_expected_websocket() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let (status, _, body) =
        raw_request(weir.addr, &format!("GET /ws HTTP/1.1\r\nHost: {}\r\n\r\n", weir.addr)).await.unwrap();
    assert_eq!((status, body.as_str()), (400, "Expected websocket"));
    let records = weir.records_eventually(1).await;
    assert_eq!((records[0].status, records[0].reason.as_deref()), (400, Some("not_websocket")));
    weir.metric_eventually("weir_handshake_rejections_total", &[("route", "p"), ("reason", "not_websocket")], |v| {
        v == 1.0
    })
    .await;
}

#[tokio::test]
async fn wrong_version_is_426_naming_13() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let req = upgrade_request(weir.addr, "/ws", "").replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let (status, head, _) = raw_request(weir.addr, &req).await.unwrap();
    assert_eq!(status, 426, "{head}");
    assert!(head.contains("\r\nSec-WebSocket-Version: 13"), "{head}");
    assert!(backend.seen().is_empty(), "the backend must not see a rejected upgrade");
}

#[tokio::test]
async fn malformed_handshakes_are_400_with_a_reason() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let good = upgrade_request(weir.addr, "/ws", "");
    let cases = [
        (good.replace("GET /ws", "POST /ws"), "WebSocket upgrade requires GET"),
        (good.replace("Connection: Upgrade", "Connection: keep-alive"), "Connection header must contain upgrade"),
        (
            good.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
            "Sec-WebSocket-Key must be the base64 encoding of 16 bytes",
        ),
        (good.replace("HTTP/1.1", "HTTP/1.0"), "WebSocket upgrade requires HTTP/1.1"),
        ("NOT HTTP AT ALL\r\n\r\n".to_string(), "Malformed request"),
    ];
    for (req, reason) in cases {
        let (status, head, body) = raw_request(weir.addr, &req).await.unwrap();
        assert_eq!((status, body.as_str()), (400, reason), "{head}");
    }
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn unknown_route_is_404() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let (status, _, body) = raw_request(weir.addr, &upgrade_request(weir.addr, "/nope", "")).await.unwrap();
    assert_eq!((status, body.as_str()), (404, "No route"));
    let records = weir.records_eventually(1).await;
    assert_eq!((records[0].status, records[0].outcome.as_ref()), (404, "rejected"));
}

#[tokio::test]
async fn backend_down_is_502_and_recorded() {
    let weir = Weir::start(&pool_and_route("p", &[dead_addr()], "/ws")).await;
    let (status, _, body) = raw_request(weir.addr, &upgrade_request(weir.addr, "/ws", "")).await.unwrap();
    assert_eq!((status, body.as_str()), (502, "Backend unreachable"));
    let records = weir.records_eventually(1).await;
    assert_eq!((records[0].status, records[0].outcome.as_ref()), (502, "backend_unreachable"));
    weir.metric_eventually("weir_handshake_rejections_total", &[("reason", "backend_unreachable")], |v| v == 1.0).await;
}

#[tokio::test]
async fn backend_403_is_passed_through_unchanged() {
    const ANSWER: &str = "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nX-Backend: yes\r\n\r\nnot for you!\n";
    let backend = raw_backend(|mut s| async move {
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let _ = s.write_all(ANSWER.as_bytes()).await;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await; // keep the connection open until weir closes it
    })
    .await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let req = upgrade_request(weir.addr, "/ws", "");
    let mut s = tokio::net::TcpStream::connect(weir.addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(crate::support::DEADLINE, s.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&got), ANSWER);
    let records = weir.records_eventually(1).await;
    assert_eq!((records[0].status, records[0].outcome.as_ref()), (403, "backend_refused"));
}

#[tokio::test]
async fn no_healthy_backend_is_503() {
    let dead = dead_addr();
    let yaml = format!(
        "pools:\n  - name: p\n    backends: [\"{dead}\"]\n    health_check: {{kind: tcp, interval: 100ms}}\nroutes:\n  - {{name: p, path_prefix: /ws, pool: p}}\n"
    );
    let weir = Weir::start(&yaml).await;
    weir.metric_eventually("weir_backend_healthy", &[("pool", "p")], |v| v == 0.0).await;
    let (status, _, body) = raw_request(weir.addr, &upgrade_request(weir.addr, "/ws", "")).await.unwrap();
    assert_eq!((status, body.as_str()), (503, "No healthy backend"));
}

#[tokio::test]
async fn backend_that_never_answers_is_504() {
    let backend = raw_backend(|mut s| async move {
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await; // read the upgrade, never answer
    })
    .await;
    let weir = Weir::start_with(
        &pool_and_route("p", &[backend.addr], "/ws"),
        "timeouts:\n  request_head: 5s\n  backend_connect: 2s\n  backend_handshake: 300ms\n",
    )
    .await;
    let (status, _, body) = raw_request(weir.addr, &upgrade_request(weir.addr, "/ws", "")).await.unwrap();
    assert_eq!((status, body.as_str()), (504, "Backend timed out"));
}

/// A client that does not finish its request head within `timeouts.request_head` is closed without
/// an answer (it asked nothing yet), not before the timeout, and bytes trickling in do not extend
/// it: the head's wait is bounded as a whole (by the connection's handshake deadline, which the
/// backend's connect and answer share after it).
#[tokio::test]
async fn a_request_head_not_finished_in_time_is_closed() {
    use std::time::{Duration, Instant};
    let backend = echo_backend().await;
    let weir = Weir::start_with(
        &pool_and_route("p", &[backend.addr], "/ws"),
        "timeouts:\n  request_head: 400ms\n  backend_connect: 2s\n  backend_handshake: 3s\n",
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(weir.addr).await.unwrap();
    let start = Instant::now();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // A header name's bytes, no line end.
    let trickled = trickle_until_closed(&mut s, b'X').await;
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(400), "closed after {took:?}, before the head's 400 ms");
    assert!(took < Duration::from_secs(5), "closed after {took:?}, long after the head's 400 ms");
    assert!(trickled >= 2, "the trickle ran ({trickled} bytes)");
    assert!(backend.seen().is_empty(), "the backend must not see an unfinished head");
}

#[tokio::test]
async fn backend_connect_timeout_is_504() {
    // A listener that never accepts, with its accept queue filled: the kernel drops further SYNs,
    // so connecting to it hangs until the connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..64 {
        match tokio::time::timeout(std::time::Duration::from_millis(300), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            _ => break,
        }
    }
    assert!(held.len() < 64, "the accept queue never filled");
    let weir = Weir::start_with(
        &pool_and_route("p", &[addr], "/ws"),
        "timeouts:\n  request_head: 5s\n  backend_connect: 300ms\n  backend_handshake: 3s\n",
    )
    .await;
    let (status, _, body) = raw_request(weir.addr, &upgrade_request(weir.addr, "/ws", "")).await.unwrap();
    assert_eq!((status, body.as_str()), (504, "Backend timed out"));
    let records = weir.records_eventually(1).await;
    assert_eq!((records[0].status, records[0].outcome.as_ref()), (504, "backend_timeout"));
}
