//! TLS termination on a public listener (rustls): a `wss://` client reaches a plain backend.

use crate::support::backends::echo_backend;
use crate::support::{pool_and_route, Weir};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn wss_is_terminated_and_relayed() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();

    let backend = echo_backend().await;
    let weir = Weir::start_tls(&pool_and_route("p", &[backend.addr], "/ws"), &cert_path, &key_path).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(weir.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let url = format!("wss://localhost:{}/ws", weir.addr.port());
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(resp.status(), 101);

    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over tls"));
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}

    let seen = backend.seen();
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
    let records = weir.records_eventually(1).await;
    assert_eq!(records[0].outcome, "completed");
    assert_eq!(records[0].client_to_backend.messages, 1);
    assert_eq!(records[0].backend_to_client.messages, 1);
}
