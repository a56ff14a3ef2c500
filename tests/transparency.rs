//! Transparency under protocol errors (issue 10): what a client sees through weir equals what it
//! sees talking to a conformant backend (tokio-tungstenite) directly.

use crate::support::backends::echo_backend;
use crate::support::wire::{frame, raw_client, CLOSE, FIN, MASK, TEXT};
use crate::support::{pool_and_route, Weir};

fn close_payload(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

/// Everything the client reads until weir (or the backend) closes the connection, as frames.
async fn frames_until_eof(c: &mut crate::support::wire::RawConn) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(f) = c.read_frame().await {
        out.push((f.raw[0], f.payload.clone()));
    }
    out
}

/// 1. A close, then a text frame: the backend ignores the text and answers the close with 1000;
/// the client gets that answer, not weir's 1002.
#[tokio::test]
async fn data_after_a_close_gets_the_backends_answer() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let (mut c, head) = raw_client(weir.addr, "/ws", "", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let bytes =
        [frame(FIN | CLOSE, Some(MASK), &close_payload(1000)), frame(FIN | TEXT, Some(MASK), b"after")].concat();
    c.write(&bytes).await;
    let got = frames_until_eof(&mut c).await;
    assert_eq!(got, vec![(FIN | CLOSE, close_payload(1000))], "the backend's own close, nothing else");
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!((r.outcome.as_str(), r.reason.as_deref()), ("completed", None), "{r:?}");
}

/// 2. A first fragment, a close (legal between fragments), then the last fragment: the same.
#[tokio::test]
async fn a_close_between_fragments_gets_the_backends_answer() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let (mut c, _) = raw_client(weir.addr, "/ws", "", b"").await;
    let bytes = [
        frame(TEXT & 0x0f, Some(MASK), b"half "),
        frame(FIN | CLOSE, Some(MASK), &close_payload(1000)),
        frame(FIN, Some(MASK), b"message"),
    ]
    .concat();
    c.write(&bytes).await;
    let got = frames_until_eof(&mut c).await;
    assert_eq!(got, vec![(FIN | CLOSE, close_payload(1000))]);
}

/// 3. A valid text, a frame with RSV2 (no extension), a ping: the echo of the text reaches the
/// client before any close, as it does directly; then the backend's answer to weir's 1002.
#[tokio::test]
async fn the_echo_of_a_valid_message_comes_before_the_close_of_a_violation() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let (mut c, _) = raw_client(weir.addr, "/ws", "", b"").await;
    let bytes = [
        frame(FIN | TEXT, Some(MASK), b"echo me"),
        frame(FIN | TEXT | 0x20, Some(MASK), b"bad bits"),
        frame(FIN | 0x09, Some(MASK), b"ping"),
    ]
    .concat();
    c.write(&bytes).await;
    let got = frames_until_eof(&mut c).await;
    assert_eq!(got.first(), Some(&(FIN | TEXT, b"echo me".to_vec())), "the echo first: {got:?}");
    assert_eq!(got.get(1).map(|f| f.0), Some(FIN | CLOSE), "then a close: {got:?}");
    assert_eq!(got.get(1).map(|f| f.1[..2].to_vec()), Some(close_payload(1002)), "{got:?}");
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.outcome, "protocol_error", "{r:?}");
}
