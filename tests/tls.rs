//! TLS on both sides: termination on a public listener (a `wss://` client reaches a plain
//! backend), `wss://` backends (relay, usage, probes, untrusted or misnamed certificates, a slow
//! reader) and the HTTP sink to an `https://` collector.

use crate::support::backends::{echo, echo_backend};
use crate::support::slow_reader::{flood_until_blocked, slow_reader_stays_bounded, Flood};
use crate::support::tls::{wss_backend, TestCert};
use crate::support::{
    connect, drain_until_end, eventually, metric, pool_and_route, raw_request, recv, upgrade_request, Weir, DEADLINE,
};
use futures_util::{SinkExt, StreamExt};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn wss_is_terminated_and_relayed() {
    let cert = TestCert::localhost();
    let backend = echo_backend().await;
    let weir = Weir::start_tls(&pool_and_route("p", &[backend.addr], "/ws"), &cert.cert, &cert.key).await;

    let tcp = tokio::net::TcpStream::connect(weir.addr).await.unwrap();
    let tls = cert.connect(tcp).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(TestCert::url(weir.addr, "/ws"), tls).await.unwrap();
    assert_eq!(resp.status(), 101);

    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over tls"));
    // A large frame over TLS is never spliced (weir must decrypt it), yet arrives intact.
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 31 + i / 257) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert!(ws.next().await.unwrap().unwrap().into_data()[..] == big[..], "the 1 MiB echo changed");
    assert_eq!(metric(&weir.metrics().await, "weir_splice_bytes_total", &[]), Some(0.0));
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}

    let seen = backend.seen();
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
    let records = weir.records_eventually(1).await;
    assert_eq!(records[0].outcome, "completed");
    assert_eq!(records[0].client_to_backend.messages, 2);
    assert_eq!(records[0].backend_to_client.messages, 2);
}

/// A pool of one `wss://` backend (`backend`) trusting `ca`, and a websocket route `/ws`; the
/// backend is probed with `health` (YAML flow map).
fn wss_pool(backend: std::net::SocketAddr, ca: &std::path::Path, health: &str) -> String {
    format!(
        "pools:\n  - name: p\n    backends: [\"{backend}\"]\n    health_check: {health}\n    tls: {{ca_file: \"{}\", sni: localhost}}\nroutes:\n  - name: p\n    path_prefix: /ws\n    pool: p\n",
        ca.display()
    )
}

#[tokio::test]
async fn a_wss_backend_is_relayed_and_probed_over_tls() {
    let cert = TestCert::localhost();
    let backend = wss_backend(&cert, echo).await;
    let health = "{kind: handshake, interval: 200ms, path: /probe}";
    let weir = Weir::start(&wss_pool(backend.addr, &cert.cert, health)).await;

    let mut ws = connect(&weir, "/ws").await;
    ws.send(Message::text("to a wss backend")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("to a wss backend"));
    ws.send(Message::binary(vec![7u8; 1000])).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::binary(vec![7u8; 1000]));
    ws.close(None).await.unwrap();
    drain_until_end(&mut ws, DEADLINE).await;

    let records = weir.records_eventually(1).await;
    let r = &records[0];
    assert_eq!(r.outcome, "completed");
    assert_eq!(r.identity.backend, Some(backend.addr));
    assert_eq!((r.client_to_backend.messages, r.backend_to_client.messages), (2, 2));
    assert_eq!(r.client_to_backend.payload_bytes, 1016);

    // The handshake probe reached the backend's WebSocket server: it spoke TLS.
    eventually("a handshake probe over TLS", || async {
        backend.seen().iter().any(|s| s.path == "/probe").then_some(())
    })
    .await;
    let labels = [("pool", "p"), ("backend", &backend.addr.to_string() as &str)];
    assert_eq!(metric(&weir.metrics().await, "weir_backend_healthy", &labels), Some(1.0));
}

#[tokio::test]
async fn a_wss_backend_with_an_untrusted_certificate_gets_502_backend_tls() {
    let cert = TestCert::localhost();
    let other_ca = TestCert::localhost();
    let backend = wss_backend(&cert, echo).await;
    let weir = Weir::start(&wss_pool(backend.addr, &other_ca.cert, "{kind: none}")).await;

    let (status, _, body) = raw_request(weir.addr, &upgrade_request(weir.addr, "/ws", "")).await.unwrap();
    assert_eq!((status, body.as_str()), (502, "Backend TLS handshake failed"));
    weir.metric_eventually("weir_handshake_rejections_total", &[("route", "p"), ("reason", "backend_tls")], |v| {
        v >= 1.0
    })
    .await;
    let records = weir.records_eventually(1).await;
    assert_eq!(records[0].outcome, "backend_tls");
    let log = weir.log();
    let line = log
        .lines()
        .find(|l| l.contains("cannot connect to backend") && l.contains(&backend.addr.to_string()))
        .unwrap_or_else(|| panic!("no log line naming the backend:\n{log}"));
    assert!(line.contains("not signed by a trusted CA") && line.contains("invalid peer certificate"), "{line}");
    assert!(backend.seen().is_empty(), "nothing reached the backend in plaintext");
}

#[tokio::test]
async fn a_wss_backend_with_the_wrong_name_gets_502_backend_tls() {
    let cert = TestCert::localhost();
    let backend = wss_backend(&cert, echo).await;
    let pools = wss_pool(backend.addr, &cert.cert, "{kind: none}").replace("sni: localhost", "sni: other.example");
    let weir = Weir::start(&pools).await;
    let (status, _, _) = raw_request(weir.addr, &upgrade_request(weir.addr, "/ws", "")).await.unwrap();
    assert_eq!(status, 502);
    let log = weir.log();
    let line = log
        .lines()
        .find(|l| l.contains("cannot connect to backend") && l.contains(&backend.addr.to_string()))
        .unwrap_or_else(|| panic!("no log line naming the backend:\n{log}"));
    assert!(line.contains("not valid for the server name") && line.contains("other.example"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_backpressures_a_wss_backend_and_weir_memory_stays_bounded() {
    let cert = TestCert::localhost();
    let flood = Arc::new(Flood::default());
    let f = flood.clone();
    let backend = wss_backend(&cert, move |ws| flood_until_blocked(ws, f.clone())).await;
    let weir = Weir::start(&wss_pool(backend.addr, &cert.cert, "{kind: none}")).await;
    slow_reader_stays_bounded(&weir, &flood).await;
}

/// What the HTTPS collector received: each request's head and body.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A tiny HTTPS collector serving `cert`: reads one request per connection (head and
/// Content-Length body), records it and answers 200.
async fn https_collector(cert: &TestCert) -> (std::net::SocketAddr, Received, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let (got, acceptor) = (received.clone(), cert.acceptor());
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (got, acceptor) = (got.clone(), acceptor.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head, body) = loop {
                    let Ok(n) = s.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break (head, buf[end + 4..end + 4 + len].to_vec());
                    }
                };
                got.lock().unwrap().push((head, body));
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, received, task)
}

/// `usage:` with one http sink to `https://localhost:<port>/events` trusting `ca`, with a token
/// from a file (a `${file:}` secret).
fn https_sink(dir: &std::path::Path, port: u16, ca: &std::path::Path) -> String {
    let token = dir.join("sink.token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    format!(
        "usage:\n  spool_dir: \"{}\"\n  fsync_interval: 20ms\n  sinks:\n    - kind: http\n      name: meter\n      url: \"https://localhost:{port}/events\"\n      ca_file: \"{}\"\n      auth_header: \"Bearer ${{file:{}}}\"\n      timeout: 2s\n",
        dir.join("spool").display(),
        ca.display(),
        token.display()
    )
}

#[tokio::test]
async fn the_http_sink_posts_cloudevents_to_an_https_collector_with_its_token() {
    let cert = TestCert::localhost();
    let (collector, received, _task) = https_collector(&cert).await;
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start_with(
        &pool_and_route("p", &[backend.addr], "/ws"),
        &https_sink(dir.path(), collector.port(), &cert.cert),
    )
    .await;
    let mut ws = connect(&weir, "/ws").await;
    ws.send(Message::text("billed")).await.unwrap();
    recv(&mut ws).await;
    ws.close(None).await.unwrap();
    drain_until_end(&mut ws, DEADLINE).await;

    let stop = eventually("a stop event at the collector", || async {
        let got = received.lock().unwrap().clone();
        got.iter().find_map(|(head, body)| {
            let events: serde_json::Value = serde_json::from_slice(body).ok()?;
            let stop = events.as_array()?.iter().find(|e| e["type"] == "dev.weir.usage.stop")?.clone();
            Some((head.clone(), stop))
        })
    })
    .await;
    let (head, event) = stop;
    assert!(head.starts_with("POST /events HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nAuthorization: Bearer s3cret-token\r\n"), "{head}");
    assert!(head.contains("\r\nContent-Type: application/cloudevents-batch+json\r\n"), "{head}");
    assert_eq!(event["data"]["client_to_backend"]["messages"], 1);
    assert!(!weir.log().contains("s3cret-token"), "the token is never logged");
    weir.metric_eventually("weir_sink_records_pending", &[("sink", "meter")], |v| v == 0.0).await;
}

#[tokio::test]
async fn an_https_collector_with_an_untrusted_certificate_gets_nothing_and_the_records_wait() {
    let cert = TestCert::localhost();
    let other_ca = TestCert::localhost();
    let (collector, received, _task) = https_collector(&cert).await;
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start_with(
        &pool_and_route("p", &[backend.addr], "/ws"),
        &https_sink(dir.path(), collector.port(), &other_ca.cert),
    )
    .await;
    let mut ws = connect(&weir, "/ws").await;
    ws.close(None).await.unwrap();
    drain_until_end(&mut ws, DEADLINE).await;

    weir.metric_eventually("weir_sink_delivery_errors_total", &[("sink", "meter")], |v| v >= 1.0).await;
    weir.metric_eventually("weir_sink_records_pending", &[("sink", "meter")], |v| v >= 2.0).await;
    assert!(received.lock().unwrap().is_empty(), "nothing was delivered");
    eventually("the log to name the cause", || async {
        weir.log().lines().any(|l| l.contains("meter") && l.contains("not signed by a trusted CA")).then_some(())
    })
    .await;
}

/// A renewed listener certificate is taken on reload: new handshakes get it, an open `wss`
/// connection goes on, and a certificate that does not load is refused with the running one kept.
#[tokio::test]
async fn a_reload_serves_a_renewed_listener_certificate_without_dropping_connections() {
    let (first, second) = (TestCert::localhost(), TestCert::localhost());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("listener.pem"), dir.path().join("listener.key"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let backend = echo_backend().await;
    let weir = Weir::start_tls(&pool_and_route("p", &[backend.addr], "/ws"), &cert, &key).await;
    async fn wss(
        c: &TestCert,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>
    {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let tls = c.connect(tcp).await?;
        let (ws, _) =
            tokio_tungstenite::client_async(TestCert::url(addr, "/ws"), tls).await.map_err(std::io::Error::other)?;
        Ok(ws)
    }
    let open = |c| wss(c, weir.addr);
    let mut old = open(&first).await.unwrap();
    old.send(Message::text("before")).await.unwrap();
    assert_eq!(recv(&mut old).await, Message::text("before"));
    // Renew: the same paths, a new certificate.
    std::fs::copy(&second.cert, &cert).unwrap();
    std::fs::copy(&second.key, &key).unwrap();
    let reload = "POST /api/reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n";
    let (status, _, body) = raw_request(weir.admin, reload).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"certificates\": 1"), "{body}");
    let mut renewed = open(&second).await.expect("a client trusting the new certificate connects");
    renewed.send(Message::text("new")).await.unwrap();
    assert_eq!(recv(&mut renewed).await, Message::text("new"));
    assert!(open(&first).await.is_err(), "new handshakes no longer get the old certificate");
    old.send(Message::text("after")).await.unwrap();
    assert_eq!(recv(&mut old).await, Message::text("after"), "the open connection went on");
    // A key that does not load: the reload is refused and the renewed certificate stays.
    std::fs::write(&key, "not a key").unwrap();
    let (status, _, body) = raw_request(weir.admin, reload).await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("listener.pem") && body.contains("private key"), "{body}");
    assert!(open(&second).await.is_ok());
}
