//! TLS termination on a public listener (rustls): a `wss://` client reaches a plain backend.

use crate::support::backends::echo_backend;
use crate::support::tls::TestCert;
use crate::support::{pool_and_route, Weir};
use futures_util::{SinkExt, StreamExt};
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
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}

    let seen = backend.seen();
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
    let records = weir.records_eventually(1).await;
    assert_eq!(records[0].outcome, "completed");
    assert_eq!(records[0].client_to_backend.messages, 1);
    assert_eq!(records[0].backend_to_client.messages, 1);
}
