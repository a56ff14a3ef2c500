//! The slow-reader case, for plain and TLS backends: a backend floods 64 KiB messages until its
//! sends block (`flood_until_blocked`), a client that stopped reading checks that weir's memory
//! stayed bounded, then reads everything in order (`slow_reader_stays_bounded`).

use super::{connect, drain_until_end, eventually, recv, rss_kib, Weir, DEADLINE};
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Size of each flooded message.
const CHUNK: usize = 64 * 1024;
/// Most bytes the backend sends.
const LIMIT: u64 = 256 << 20;

/// What the flooding backend reports.
#[derive(Default)]
pub struct Flood {
    bytes: AtomicU64,
    messages: AtomicU64,
    bytes_when_blocked: AtomicU64,
    blocked: AtomicBool,
}

fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() }))
}

/// The backend handler: numbered 64 KiB messages until a send blocks for 2 s (then that one
/// completes and it closes with 1000 "flood over"), or 256 MiB are sent.
pub async fn flood_until_blocked<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>, f: Arc<Flood>) {
    let mut seq = 0u64;
    while f.bytes.load(Ordering::SeqCst) < LIMIT {
        let mut payload = vec![0xA5u8; CHUNK];
        payload[..8].copy_from_slice(&seq.to_be_bytes());
        let blocked = {
            let send = ws.send(Message::binary(payload));
            tokio::pin!(send);
            match tokio::time::timeout(Duration::from_secs(2), &mut send).await {
                Ok(r) => {
                    if r.is_err() {
                        return;
                    }
                    false
                }
                Err(_) => {
                    f.bytes_when_blocked.store(f.bytes.load(Ordering::SeqCst), Ordering::SeqCst);
                    f.blocked.store(true, Ordering::SeqCst);
                    if send.await.is_err() {
                        return;
                    }
                    true
                }
            }
        };
        seq += 1;
        f.bytes.fetch_add(CHUNK as u64, Ordering::SeqCst);
        f.messages.store(seq, Ordering::SeqCst);
        if blocked {
            break;
        }
    }
    let _ = ws.send(close_frame(1000, "flood over")).await;
    while let Some(Ok(_)) = ws.next().await {}
}

/// The client side: connect to `/ws`, read one message, stop reading until the backend is
/// blocked, check weir's RSS, then read every message in order and the close.
pub async fn slow_reader_stays_bounded(weir: &Weir, flood: &Flood) {
    let rss_before = rss_kib(weir.pid());
    let mut ws = connect(weir, "/ws").await;
    let first = recv(&mut ws).await.into_data();
    assert_eq!(&first[..8], &0u64.to_be_bytes());

    // Stop reading until the backend's sends block.
    eventually("the backend to be blocked", || async { flood.blocked.load(Ordering::SeqCst).then_some(()) }).await;
    let sent = flood.bytes_when_blocked.load(Ordering::SeqCst);
    let rss_blocked = rss_kib(weir.pid());
    let grew = rss_blocked.saturating_sub(rss_before);
    eprintln!("slow reader: backend blocked after {} KiB; weir RSS {rss_before} → {rss_blocked} KiB", sent >> 10);
    assert!(sent < 64 << 20, "backend sent {} MiB before blocking; expected far less than 256 MiB", sent >> 20);
    assert!(grew < 48 << 10, "weir RSS grew by {grew} KiB (from {rss_before} to {rss_blocked})");

    // Now read everything, in order.
    let mut next = 1u64;
    let close = loop {
        assert!(next <= LIMIT / CHUNK as u64 + 1, "more messages than the backend can send");
        match recv(&mut ws).await {
            Message::Binary(b) => {
                assert_eq!(b.len(), CHUNK);
                assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), next, "sequence");
                next += 1;
            }
            other => break other,
        }
    };
    assert_eq!(close, close_frame(1000, "flood over"));
    assert_eq!(next, flood.messages.load(Ordering::SeqCst), "every message the backend sent arrived");
    drain_until_end(&mut ws, DEADLINE).await;
}
