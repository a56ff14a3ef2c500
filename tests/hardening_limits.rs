//! Hardening (issue 9): descriptors, accept errors, rejection floods, built-in object
//! violations, defaults. Each test failed before its fix.

use crate::support::wire::{frame, raw_client, CLOSE, FIN, MASK, TEXT};
use crate::support::{connect, eventually, recv, Weir};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const ROOMS: &str = "objects:\n  - {name: rooms, id: {path: \"/rooms/{id}\"}, builtin: room}\nroutes:\n  - {name: rooms, path_prefix: /rooms, object: rooms}\n";

/// A masked text frame whose 5-byte length is encoded in the 16-bit form: RFC 6455 §5.2 says
/// the minimal form must be used; tungstenite accepts it, weir's scanner does not.
fn non_minimal_text(payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u16;
    let mut out = vec![FIN | TEXT, 0x80 | 126];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// Issue 9, item 9: a frame the scanner refuses but tungstenite accepts used to switch metering
/// off for the rest of the connection while its messages were still delivered. Now the room
/// never sees it: the sender is closed with 1002, the other member gets none of its messages,
/// and the records agree with what was delivered.
#[tokio::test]
async fn a_frame_only_the_scanner_refuses_closes_a_room_member_before_delivery() {
    let weir = Weir::start(ROOMS).await;
    let mut b = connect(&weir, "/rooms/r").await;
    recv(&mut b).await; // welcome
    let (mut a, head) = raw_client(weir.addr, "/rooms/r", "", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    a.read_frame().await.expect("welcome");
    recv(&mut b).await; // a joined
    a.write(&frame(FIN | TEXT, Some(MASK), b"fine")).await;
    assert_eq!(recv(&mut b).await, Message::text("fine"));
    let mut evil = non_minimal_text(b"evil!");
    for i in 0..20 {
        evil.extend(frame(FIN | TEXT, Some(MASK), format!("after {i}").as_bytes()));
    }
    a.write(&evil).await;
    let mut code = None;
    while let Some(f) = a.read_frame().await {
        if f.opcode() == CLOSE {
            code = f.close_code();
            break;
        }
    }
    assert_eq!(code, Some(1002), "the sender is closed with 1002, as on a relayed connection");
    // The other member sees the sender leave and none of the refused messages.
    let left = loop {
        match tokio::time::timeout(Duration::from_secs(10), b.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"leave\"") => break t.to_string(),
            Ok(Some(Ok(m))) => panic!("delivered after the violation: {m:?}"),
            other => panic!("no leave event: {other:?}"),
        }
    };
    assert!(left.contains("\"closed\""), "{left}");
    let r = eventually("the sender's stop record", || async {
        weir.records().into_iter().find(|r| r.status == 101 && r.record.as_str() == "stop" && r.reason.is_some())
    })
    .await;
    assert_eq!(
        (r.outcome.as_str(), r.reason.as_deref()),
        ("protocol_error", Some("client_to_backend: non_minimal_length")),
        "{r:?}"
    );
    assert_eq!(r.client_to_backend.messages, 1, "only the message that was delivered is billed: {r:?}");
    b.close(None).await.unwrap();
}
