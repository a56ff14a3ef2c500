//! Mutual TLS on a public listener (issue 16): `listeners[].tls.client_auth` (required and
//! optional), the verified subject as a route's credential (`auth.client_cert`), and a reload
//! that swaps the client CA.

use crate::support::backends::echo_backend;
use crate::support::tls::{ClientCert, TestCa, TestCert};
use crate::support::{eventually, metric, raw_request, recv, Weir};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

type Wss = WebSocketStream<TlsStream<tokio::net::TcpStream>>;

/// A pool of `backend` and two websocket routes: `/cert` admitting verified client certificates
/// (tenant from the CN, `tenant-*` only) and `/open` without auth.
fn routes(backend: SocketAddr) -> String {
    format!(
        "pools:\n  - name: p\n    backends: [\"{backend}\"]\n    health_check: {{kind: none}}\nroutes:\n  - name: cert\n    path_prefix: /cert\n    pool: p\n    auth:\n      client_cert: {{tenant_from: cn, allow: [\"tenant-*\"]}}\n  - name: open\n    path_prefix: /open\n    pool: p\n"
    )
}

/// Open `path` on `addr` over TLS (trusting `server`), presenting `client`; the error is the
/// TLS or HTTP failure as text (an HTTP refusal reads `HTTP <status>`).
async fn open(addr: SocketAddr, server: &TestCert, client: Option<&ClientCert>, path: &str) -> Result<Wss, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    // With TLS 1.3 the server checks the client's certificate after the client finished its
    // side of the handshake: the refusal (an alert) can surface on the first read instead.
    let tls = server.connect_as(tcp, client).await.map_err(|e| format!("TLS: {e}"))?;
    match tokio_tungstenite::client_async(TestCert::url(addr, path), tls).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => Err(format!("HTTP {}", resp.status().as_u16())),
        Err(e) => Err(format!("TLS: {e}")),
    }
}

/// A TLS-level refusal (an alert from weir or a reset), never an HTTP answer.
fn is_tls_refusal(r: &Result<Wss, String>) -> bool {
    matches!(r, Err(e) if e.starts_with("TLS:"))
}

async fn echo_once(ws: &mut Wss, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    assert_eq!(recv(ws).await, Message::text(text));
}

#[tokio::test]
async fn a_required_listener_admits_only_certificates_from_its_ca_and_bills_the_subject() {
    let (server, ca, other_ca) = (TestCert::localhost(), TestCa::new("clients"), TestCa::new("elsewhere"));
    let backend = echo_backend().await;
    let listener = server.mtls_listener_yaml(&ca.cert, "required");
    let weir = Weir::start_listener(&routes(backend.addr), "", &listener).await;
    let label = weir.addr.to_string();

    let none = open(weir.addr, &server, None, "/open").await;
    assert!(is_tls_refusal(&none), "no certificate: {:?}", none.err());
    let wrong = open(weir.addr, &server, Some(&other_ca.client("tenant-a")), "/open").await;
    assert!(is_tls_refusal(&wrong), "another CA's certificate: {:?}", wrong.err());
    assert!(backend.seen().is_empty(), "nothing reached the backend");

    let mut ws = open(weir.addr, &server, Some(&ca.client("tenant-a")), "/cert").await.expect("101");
    echo_once(&mut ws, "billed to tenant-a").await;
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}

    let records = eventually("the connection's record", || async {
        let r = weir.records();
        r.iter().any(|r| r.outcome == "completed").then_some(r)
    })
    .await;
    let done: Vec<_> = records.iter().filter(|r| r.outcome == "completed").collect();
    assert_eq!(done.len(), 1, "{records:?}");
    assert_eq!(done[0].identity.tenant.as_deref(), Some("tenant-a"));
    assert_eq!(done[0].identity.route.as_deref(), Some("cert"));
    assert_eq!(backend.seen()[0].header("x-weir-tenant"), Some("tenant-a"));
    let m = weir.metrics().await;
    let count = |result| metric(&m, "weir_tls_client_auth_total", &[("listener", &label), ("result", result)]);
    assert_eq!(count("verified"), Some(1.0), "{m}");
    assert_eq!(count("rejected"), Some(1.0), "the other CA's certificate; a missing one is not observable");
    assert_eq!(count("none"), Some(0.0));
}

#[tokio::test]
async fn an_optional_listener_admits_without_a_certificate_but_a_client_cert_route_answers_401() {
    let (server, ca) = (TestCert::localhost(), TestCa::new("clients"));
    let backend = echo_backend().await;
    let listener = server.mtls_listener_yaml(&ca.cert, "optional");
    let weir = Weir::start_listener(&routes(backend.addr), "", &listener).await;
    let label = weir.addr.to_string();

    // No certificate: TLS is fine, the route without auth admits, the certificate route does not.
    let mut ws = open(weir.addr, &server, None, "/open").await.expect("no certificate is fine on /open");
    echo_once(&mut ws, "anonymous").await;
    assert_eq!(open(weir.addr, &server, None, "/cert").await.err().as_deref(), Some("HTTP 401"));
    // A header cannot stand in for the certificate.
    let forged = "GET /cert HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                  X-Client-Cert: CN=tenant-a\r\nX-SSL-Client-S-DN: CN=tenant-a\r\nX-Weir-Tenant: tenant-a\r\n\r\n";
    let tcp = tokio::net::TcpStream::connect(weir.addr).await.unwrap();
    let mut tls = server.connect(tcp).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tls, forged.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 64];
    let n = tokio::io::AsyncReadExt::read(&mut tls, &mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 401"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    // A certificate from the CA with a subject `allow` does not match: 401 too.
    let stranger = open(weir.addr, &server, Some(&ca.client("intruder")), "/cert").await;
    assert_eq!(stranger.err().as_deref(), Some("HTTP 401"));
    // The right certificate: admitted and billed to its subject.
    let mut ws2 = open(weir.addr, &server, Some(&ca.client("tenant-a")), "/cert").await.expect("101");
    echo_once(&mut ws2, "billed").await;
    ws2.close(None).await.unwrap();
    while ws2.next().await.is_some() {}
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}

    // Refusals are recorded too: wait for both completed connections.
    let records = eventually("both connections' records", || async {
        let r = weir.records();
        (r.iter().filter(|r| r.outcome == "completed").count() >= 2).then_some(r)
    })
    .await;
    let tenant_of = |route: &str| {
        records
            .iter()
            .find(|r| r.outcome == "completed" && r.identity.route.as_deref() == Some(route))
            .map(|r| r.identity.tenant.as_deref().map(String::from))
    };
    assert_eq!(tenant_of("cert"), Some(Some("tenant-a".to_string())), "{records:?}");
    assert_eq!(tenant_of("open"), Some(None), "{records:?}");
    let m = weir.metrics().await;
    let count = |result| metric(&m, "weir_tls_client_auth_total", &[("listener", &label), ("result", result)]);
    assert!(count("none").unwrap_or(0.0) >= 3.0, "{m}");
    assert_eq!(count("verified"), Some(2.0));
    let rejected = metric(&m, "weir_handshake_rejections_total", &[("route", "cert"), ("reason", "no_credential")]);
    assert!(rejected.unwrap_or(0.0) >= 2.0, "{m}");
}

/// The client CA file is re-read on reload: new handshakes are checked against the new CA, an
/// open connection goes on, and a CA file that does not load is refused with the running one kept.
#[tokio::test]
async fn a_reload_swaps_the_client_ca_without_dropping_connections() {
    let (server, first, second) = (TestCert::localhost(), TestCa::new("first"), TestCa::new("second"));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("clients.pem");
    std::fs::copy(&first.cert, &ca_file).unwrap();
    let backend = echo_backend().await;
    let listener = server.mtls_listener_yaml(&ca_file, "required");
    let weir = Weir::start_listener(&routes(backend.addr), "", &listener).await;
    let (a, b) = (first.client("tenant-a"), second.client("tenant-b"));

    let mut old = open(weir.addr, &server, Some(&a), "/cert").await.expect("the first CA's client");
    echo_once(&mut old, "before").await;
    assert!(is_tls_refusal(&open(weir.addr, &server, Some(&b), "/cert").await));

    std::fs::copy(&second.cert, &ca_file).unwrap();
    let reload = "POST /api/reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n";
    let (status, _, body) = raw_request(weir.admin, reload).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"client_cas\": 1"), "{body}");
    let mut renewed = open(weir.addr, &server, Some(&b), "/cert").await.expect("the second CA's client");
    echo_once(&mut renewed, "new").await;
    assert!(is_tls_refusal(&open(weir.addr, &server, Some(&a), "/cert").await), "the old CA is no longer trusted");
    echo_once(&mut old, "after").await;

    std::fs::write(&ca_file, "not a certificate").unwrap();
    let (status, _, body) = raw_request(weir.admin, reload).await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("clients.pem"), "{body}");
    assert!(open(weir.addr, &server, Some(&b), "/cert").await.is_ok(), "the running CA is kept");
}
