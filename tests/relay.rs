//! The relay after the 101, seen from real clients and backends: messages and fragments pass
//! intact, control frames and close codes pass both ways, subprotocols and headers are
//! forwarded, extensions pass untouched, ends (backend gone, client gone, protocol errors,
//! SIGTERM) close each side as documented, backpressure bounds memory, early bytes are kept,
//! `http` routes serve both plain HTTP and upgrades, and the demo page is served.

use crate::support::backends::{
    echo_backend, echo_reporting, next_event, raw_backend, recording_echo_backend, ws_backend, ws_config, Event,
};
use crate::support::slow_reader::{flood_until_blocked, slow_reader_stays_bounded, Flood};
use crate::support::wire::{
    accept_for, close_payload, frame, head_header, raw_client, RawConn, RawFrame, BINARY, CLOSE, FIN, MASK, RSV1, TEXT,
};
use crate::support::{connect, drain_until_end, http_get, pool_and_route, raw_request, recv, Weir, DEADLINE};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use weir::relay::pump::{AFTER_SPLICE_READ, SCRATCH_SIZE};

/// Deterministic pseudo-random bytes (xorshift64), so large payloads are not all one value.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() }))
}

/// Close `ws` with 1000 and read until the stream ends.
async fn close_normally(ws: &mut crate::support::Client) {
    ws.send(close_frame(1000, "")).await.expect("send close");
    drain_until_end(ws, DEADLINE).await;
}

/// permessage-deflate payload of `data` (RFC 7692 §7.2.1: raw DEFLATE, sync flush, the trailing
/// 00 00 ff ff removed).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 128);
    c.compress_vec(data, &mut out, flate2::FlushCompress::Sync).expect("deflate");
    assert_eq!(c.total_in() as usize, data.len(), "deflate consumed all input");
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "sync flush ends with 00 00 ff ff");
    out.truncate(out.len() - 4);
    out
}

/// Inverse of `deflate` (RFC 7692 §7.2.2: append 00 00 ff ff, inflate).
fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = flate2::Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(64 * 1024);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync).expect("inflate");
    out
}

#[tokio::test]
async fn text_and_binary_messages_are_echoed_exactly() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let mut ws = connect(&weir, "/ws").await;
    let cases = [
        Message::text("hello, weir"),
        Message::text(""),
        Message::text("ünïcødé ✓ — 日本語"),
        Message::binary((0..=255u8).chain([0, 0, 255]).collect::<Vec<u8>>()),
        Message::binary(Vec::new()),
        Message::binary(noise(70_000, 7)),
        Message::text("x".repeat(126)),
    ];
    for m in cases {
        ws.send(m.clone()).await.unwrap();
        assert_eq!(recv(&mut ws).await, m);
    }
    close_normally(&mut ws).await;
    let r = &weir.records_eventually(1).await[0];
    assert_eq!((r.client_to_backend.messages, r.backend_to_client.messages), (7, 7));
}

#[tokio::test]
async fn sixteen_mib_binary_message_is_echoed_intact() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let mut ws = connect(&weir, "/ws").await;
    let data = noise(16 << 20, 0x5eed);
    ws.send(Message::binary(data.clone())).await.unwrap();
    let got = match recv(&mut ws).await {
        Message::Binary(b) => b,
        other => panic!("expected binary, got {:?}", other.len()),
    };
    assert_eq!(got.len(), data.len());
    let first_diff = got.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "echo differs from what was sent");
    close_normally(&mut ws).await;
    let r = &weir.records_eventually(1).await[0];
    assert_eq!(r.client_to_backend.largest_message_bytes, 16 << 20);
    assert_eq!(r.backend_to_client.largest_message_bytes, 16 << 20);
}

/// Large frames between plain TCP sockets: the rest of each frame of 128 KiB or more after the
/// first read is spliced (`weir_splice_bytes_total`), both ways, and every message still arrives
/// intact and is counted to the byte; small frames between them pass as before.
#[tokio::test]
async fn large_frames_are_spliced_intact_and_counted_to_the_byte() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let mut ws = connect(&weir, "/ws").await;
    let sizes = [3 << 20, 65_535, 5, 200_000, (1 << 20) + 3, 17];
    for (i, &len) in sizes.iter().enumerate() {
        let data = noise(len, 0xfeed + i as u64);
        ws.send(Message::binary(data.clone())).await.unwrap();
        let Message::Binary(got) = recv(&mut ws).await else { panic!("expected the binary echo of {len} bytes") };
        assert!(got.len() == len && got[..] == data[..], "message {i} ({len} bytes) changed on the way");
    }
    close_normally(&mut ws).await;
    let r = &weir.records_eventually(1).await[0];
    let payload: u64 = sizes.iter().map(|&l| l as u64).sum();
    assert_eq!((r.client_to_backend.payload_bytes, r.backend_to_client.payload_bytes), (payload + 2, payload + 2));
    // Headers: 2 bytes, +2 for 126..=65535, +8 above; client frames +4 for the mask key.
    let header = |l: usize| {
        2 + if l < 126 {
            0
        } else if l <= 0xFFFF {
            2
        } else {
            8
        }
    };
    let headers: u64 = sizes.iter().map(|&l| header(l) as u64).sum::<u64>() + 2;
    let n = sizes.len() as u64 + 1;
    assert_eq!(r.client_to_backend.wire_bytes, payload + 2 + headers + 4 * n);
    assert_eq!(r.backend_to_client.wire_bytes, payload + 2 + headers);
    let spliced = crate::support::metric(&weir.metrics().await, "weir_splice_bytes_total", &[]).unwrap_or(0.0);
    let least: u64 = sizes.iter().filter(|&&l| l >= 128 << 10).map(|&l| l as u64 - (64 << 10)).sum();
    assert!(spliced >= (2 * least) as f64, "spliced {spliced} bytes, expected at least {}", 2 * least);
    assert!(spliced <= (2 * payload) as f64, "spliced {spliced} bytes of {} relayed", 2 * payload);
}

/// Large frames back to back: after one was spliced to its end, the next one's header is read
/// with a short read (`AFTER_SPLICE_READ`), so all of each later frame but that read is spliced,
/// not all but a whole scratch buffer (64 KiB) of it.
#[tokio::test]
async fn back_to_back_large_frames_are_spliced_from_their_first_kilobyte() {
    const N: usize = 6;
    const LEN: usize = (1 << 20) + 3;
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let (mut tx, mut rx) = connect(&weir, "/ws").await.split();
    let messages: Vec<Vec<u8>> = (0..N).map(|i| noise(LEN, 0xb0b + i as u64)).collect();
    let to_send = messages.clone();
    // Sent without waiting for the echoes, read while sending (the echoes would otherwise fill
    // the sockets and stop the backend reading).
    let sender = tokio::spawn(async move {
        for m in to_send {
            tx.send(Message::binary(m)).await.unwrap();
        }
        tx
    });
    for (i, want) in messages.iter().enumerate() {
        let got = timeout(DEADLINE, rx.next()).await.expect("echo").expect("a message").unwrap();
        let Message::Binary(got) = got else { panic!("expected the binary echo of message {i}") };
        assert!(got[..] == want[..], "message {i} changed on the way");
    }
    let mut ws = sender.await.unwrap().reunite(rx).unwrap();
    close_normally(&mut ws).await;
    weir.records_eventually(1).await;
    let spliced = crate::support::metric(&weir.metrics().await, "weir_splice_bytes_total", &[]).unwrap_or(0.0);
    // Per direction: the first frame all but one scratch read, every later one all but one short
    // read (header included).
    let least = (LEN - SCRATCH_SIZE + (N - 1) * (LEN - AFTER_SPLICE_READ)) as u64;
    assert!(spliced >= (2 * least) as f64, "spliced {spliced} bytes, expected at least {}", 2 * least);
}

#[tokio::test]
async fn fragmented_message_with_interleaved_ping_arrives_whole() {
    let (backend, mut events) = recording_echo_backend(None).await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let mut ws = connect(&weir, "/ws").await;
    ws.send(Message::Frame(Frame::message("Hel", OpCode::Data(OpData::Text), false))).await.unwrap();
    ws.send(Message::Frame(Frame::message("lo, ", OpCode::Data(OpData::Continue), false))).await.unwrap();
    ws.send(Message::Ping("between fragments".into())).await.unwrap();
    ws.send(Message::Frame(Frame::message("world", OpCode::Data(OpData::Continue), true))).await.unwrap();

    assert_eq!(next_event(&mut events).await, Event::Msg(Message::Ping("between fragments".into())));
    assert_eq!(next_event(&mut events).await, Event::Msg(Message::text("Hello, world")));
    let mut got = vec![recv(&mut ws).await, recv(&mut ws).await];
    got.sort_by_key(|m| m.is_pong()); // the echo first, then the pong
    assert_eq!(got, vec![Message::text("Hello, world"), Message::Pong("between fragments".into())]);
    close_normally(&mut ws).await;

    let r = &weir.records_eventually(1).await[0];
    let c = r.client_to_backend;
    assert_eq!((c.frames, c.messages, c.pings, c.largest_message_bytes), (5, 1, 1, 12), "{c:?}");
}

#[tokio::test]
async fn pings_and_pongs_pass_both_ways() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let backend = ws_backend(None, move |mut ws| {
        let tx = tx.clone();
        async move {
            if ws.send(Message::Ping("from backend".into())).await.is_err() {
                return;
            }
            echo_reporting(ws, |m| {
                let _ = tx.send(Event::Msg(m.clone()));
            })
            .await;
            let _ = tx.send(Event::End);
        }
    })
    .await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let mut ws = connect(&weir, "/ws").await;
    ws.send(Message::Ping("from client".into())).await.unwrap();

    // The client sees the backend's ping and the pong to its own ping, in either order.
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(recv(&mut ws).await);
    }
    assert!(got.contains(&Message::Ping("from backend".into())), "{got:?}");
    assert!(got.contains(&Message::Pong("from client".into())), "{got:?}");

    // A message after the ping makes the client flush its automatic pong.
    ws.send(Message::text("sync")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("sync"));
    let mut seen = Vec::new();
    for _ in 0..10 {
        let e = next_event(&mut events).await;
        let done = e == Event::Msg(Message::text("sync"));
        seen.push(e);
        if done {
            break;
        }
    }
    assert!(seen.contains(&Event::Msg(Message::Ping("from client".into()))), "{seen:?}");
    assert!(seen.contains(&Event::Msg(Message::Pong("from backend".into()))), "{seen:?}");
    close_normally(&mut ws).await;

    let r = &weir.records_eventually(1).await[0];
    assert_eq!((r.client_to_backend.pings, r.client_to_backend.pongs), (1, 1));
    assert_eq!((r.backend_to_client.pings, r.backend_to_client.pongs), (1, 1));
}

#[tokio::test]
async fn close_codes_and_reasons_pass_both_ways() {
    let (backend, mut events) = recording_echo_backend(None).await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;

    // The client closes.
    let mut ws = connect(&weir, "/ws").await;
    ws.send(close_frame(4001, "bye")).await.unwrap();
    let rest = drain_until_end(&mut ws, DEADLINE).await;
    assert_eq!(rest, vec![close_frame(4001, "bye")], "the backend's close reply");
    assert_eq!(next_event(&mut events).await, Event::Msg(close_frame(4001, "bye")));
    assert_eq!(next_event(&mut events).await, Event::End);
    let r = weir.records_eventually(1).await.remove(0);
    let close = r.close.expect("close");
    assert_eq!((close.code, close.initiator.as_ref(), close.clean), (Some(4001), "client", true));
    assert_eq!(r.outcome, "completed");

    // The backend closes.
    let mut ws = connect(&weir, "/ws").await;
    ws.send(Message::text("close:4002:later")).await.unwrap();
    assert_eq!(recv(&mut ws).await, close_frame(4002, "later"));
    drain_until_end(&mut ws, DEADLINE).await;
    assert_eq!(next_event(&mut events).await, Event::Msg(Message::text("close:4002:later")));
    assert_eq!(next_event(&mut events).await, Event::Msg(close_frame(4002, "later")), "the client's close reply");
    let r = weir.records_eventually(2).await.remove(1);
    let close = r.close.expect("close");
    assert_eq!((close.code, close.initiator.as_ref(), close.clean), (Some(4002), "backend", true));
    assert_eq!(r.outcome, "completed");
}

#[tokio::test]
async fn backend_subprotocol_reaches_client_and_headers_are_forwarded() {
    let backend = ws_backend(Some("superchat"), crate::support::backends::echo).await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let mut req = weir.url("/ws?room=1").into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert("sec-websocket-protocol", "chat, superchat".parse().unwrap());
    h.insert("cookie", "session=abc123; theme=dark".parse().unwrap());
    h.insert("authorization", "Bearer t0k3n.with.dots".parse().unwrap());
    h.insert("origin", "http://app.example.test".parse().unwrap());
    let (mut ws, resp) =
        tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async_with_config(req, Some(ws_config()), false))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap()), Some("superchat"));
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("hi"));
    close_normally(&mut ws).await;

    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.subprotocol.as_deref(), Some("superchat"));
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.path, "/ws");
    assert_eq!(s.header("sec-websocket-protocol"), Some("chat, superchat"));
    assert_eq!(s.header("cookie"), Some("session=abc123; theme=dark"));
    assert_eq!(s.header("authorization"), Some("Bearer t0k3n.with.dots"));
    assert_eq!(s.header("origin"), Some("http://app.example.test"));
    assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(s.header("x-forwarded-proto"), Some("http"));
    assert_eq!(s.header("x-weir-connection-id"), Some(r.identity.connection_id.to_string().as_str()));
}

#[tokio::test]
async fn permessage_deflate_frames_pass_byte_for_byte_when_negotiated() {
    let original = b"Hello, Hello, Hello, compressed weir! compressed weir! compressed weir!".to_vec();
    let reply_text = b"reply reply reply reply reply reply, inflated on the client".to_vec();
    let reply_payload = deflate(&reply_text);
    let reply_frame = frame(FIN | RSV1 | TEXT, None, &reply_payload);
    let (head_tx, mut heads) = mpsc::unbounded_channel::<String>();
    let (frame_tx, mut frames) = mpsc::unbounded_channel::<RawFrame>();
    let backend_reply = reply_frame.clone();
    let backend = raw_backend(move |s| {
        let (head_tx, frame_tx, reply) = (head_tx.clone(), frame_tx.clone(), backend_reply.clone());
        async move {
            let mut c = RawConn::new(s);
            let head = c.read_head().await;
            let key = head_header(&head, "sec-websocket-key").unwrap_or("").to_string();
            let _ = head_tx.send(head);
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
                accept_for(&key)
            );
            c.write(answer.as_bytes()).await;
            for _ in 0..10 {
                let Some(f) = c.read_frame().await else { return };
                let _ = frame_tx.send(f.clone());
                match f.opcode() {
                    TEXT => c.write(&reply).await,
                    CLOSE => {
                        c.write(&frame(FIN | CLOSE, None, &f.payload)).await;
                        return; // drop the connection after the close handshake
                    }
                    _ => {}
                }
            }
        }
    })
    .await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let (mut c, head) = raw_client(weir.addr, "/ws", "Sec-WebSocket-Extensions: permessage-deflate\r\n", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(head_header(&head, "sec-websocket-extensions"), Some("permessage-deflate"), "{head}");
    let backend_head = heads.recv().await.unwrap();
    assert_eq!(head_header(&backend_head, "sec-websocket-extensions"), Some("permessage-deflate"), "{backend_head}");

    let compressed = deflate(&original);
    assert!(compressed.len() < original.len());
    let client_frame = frame(FIN | RSV1 | TEXT, Some(MASK), &compressed);
    c.write(&client_frame).await;
    let at_backend = tokio::time::timeout(DEADLINE, frames.recv()).await.unwrap().unwrap();
    assert_eq!(at_backend.raw, client_frame, "the backend gets the client's frame byte for byte");
    assert_eq!(inflate(&at_backend.payload), original);

    let at_client = c.read_frame().await.expect("the backend's compressed reply");
    assert_eq!(at_client.raw, reply_frame, "the client gets the backend's frame byte for byte");
    assert_eq!(inflate(&at_client.payload), reply_text);

    let client_close = frame(FIN | CLOSE, Some(MASK), &close_payload(1000, ""));
    c.write(&client_close).await;
    let reply = c.read_frame().await.expect("close reply");
    assert_eq!(reply.close_code(), Some(1000));
    assert!(c.read_to_end().await.is_empty());

    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.outcome, "completed");
    let c2b = r.client_to_backend;
    assert_eq!((c2b.frames, c2b.messages), (2, 1));
    assert_eq!(c2b.payload_bytes, compressed.len() as u64 + 2);
    assert_eq!(c2b.wire_bytes, (client_frame.len() + client_close.len()) as u64);
    assert_eq!(c2b.largest_message_bytes, compressed.len() as u64);
    let b2c = r.backend_to_client;
    assert_eq!((b2c.frames, b2c.messages), (2, 1));
    assert_eq!(b2c.payload_bytes, reply_payload.len() as u64 + 2);
    assert_eq!(b2c.largest_message_bytes, reply_payload.len() as u64);
    assert_eq!(b2c.wire_bytes, (reply_frame.len() + 4) as u64);
}

#[tokio::test]
async fn rsv1_frame_without_negotiated_extension_is_closed_with_1002() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let (mut c, head) = raw_client(weir.addr, "/ws", "", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(head_header(&head, "sec-websocket-extensions"), None);
    c.write(&frame(FIN | RSV1 | TEXT, Some(MASK), &deflate(b"not negotiated"))).await;
    let f = c.read_frame().await.expect("a close frame");
    assert_eq!((f.opcode(), f.close_code(), f.masked), (CLOSE, Some(1002), false), "{f:?}");
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.outcome, "protocol_error");
    assert!(r.reason.as_deref().unwrap_or("").contains("reserved_bits"), "{:?}", r.reason);
    weir.metric_eventually("weir_protocol_violations_total", &[("route", "p"), ("reason", "reserved_bits")], |v| {
        v == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections_each_get_their_own_messages_in_order() {
    const CONNS: usize = 200;
    const MSGS: usize = 100;
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let mut clients = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        clients.push(connect(&weir, "/ws").await);
    }
    weir.metric_eventually("weir_connections_active", &[("route", "p")], |v| v == CONNS as f64).await;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, ws)| {
            tokio::spawn(async move {
                let (mut tx, mut rx) = ws.split();
                let body = |s: usize| format!("conn {c:03} seq {s:03} {}", "·".repeat(c % 40));
                let send = async {
                    for s in 0..MSGS {
                        tx.send(Message::text(body(s))).await.expect("send");
                    }
                    tx
                };
                let check = async {
                    for s in 0..MSGS {
                        assert_eq!(recv(&mut rx).await, Message::text(body(s)), "connection {c}");
                    }
                };
                let (tx, ()) = tokio::join!(send, check);
                let mut ws = tx.reunite(rx).expect("reunite");
                close_normally(&mut ws).await;
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("connection task timed out")
            .expect("connection task");
    }
    let records = weir.records_eventually(CONNS).await;
    assert_eq!(records.len(), CONNS);
    for r in &records {
        assert_eq!(r.outcome, "completed", "{r:?}");
        assert_eq!((r.client_to_backend.messages, r.backend_to_client.messages), (MSGS as u64, MSGS as u64), "{r:?}");
    }
    let ids: std::collections::HashSet<_> = records.iter().map(|r| r.identity.connection_id).collect();
    assert_eq!(ids.len(), CONNS, "connection ids are unique");
}

#[tokio::test]
async fn backend_gone_mid_stream_gives_client_1011_and_ends() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    // A raw client, to see the exact frame: unmasked, at a frame boundary, code 1011.
    let (mut c, head) = raw_client(weir.addr, "/ws", "", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.write(&frame(FIN | TEXT, Some(MASK), b"before")).await;
    assert_eq!(c.read_frame().await.expect("echo").payload, b"before");
    c.write(&frame(FIN | TEXT, Some(MASK), b"drop")).await;
    let sent = Instant::now();
    let f = tokio::time::timeout(Duration::from_secs(3), c.read_frame())
        .await
        .expect("a close frame within 3 s")
        .expect("a close frame, not EOF");
    assert_eq!((f.opcode(), f.close_code(), f.masked), (CLOSE, Some(1011), false), "{f:?}");
    // A well-behaved client answers the close (weir may already have closed); then the stream ends.
    let _ = c.try_write(&frame(FIN | CLOSE, Some(MASK), &close_payload(1011, ""))).await;
    let rest = tokio::time::timeout(Duration::from_secs(3), c.read_to_end()).await.expect("the stream ends within 3 s");
    assert!(rest.is_empty(), "nothing after the close frame: {rest:?}");
    assert!(sent.elapsed() < Duration::from_secs(6));
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.outcome, "backend_gone", "{r:?}");
    assert_eq!(r.close.as_ref().map(|c| c.initiator.as_ref()), Some("backend"), "the side that went away: {r:?}");
    assert_eq!(r.close.as_ref().and_then(|c| c.code), Some(1011), "the code weir sent: {r:?}");
}

#[tokio::test]
async fn client_vanishing_gives_backend_1001() {
    let (backend, mut events) = recording_echo_backend(None).await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let mut ws = connect(&weir, "/ws").await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("hello"));
    assert_eq!(next_event(&mut events).await, Event::Msg(Message::text("hello")));
    drop(ws.into_inner()); // close the TCP connection without a close frame
    let e = tokio::time::timeout(Duration::from_secs(3), events.recv()).await.expect("backend hears within 3 s");
    assert_eq!(e, Some(Event::Msg(close_frame(1001, ""))));
    assert_eq!(next_event(&mut events).await, Event::End);
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.outcome, "client_gone", "{r:?}");
    assert_eq!(r.close.as_ref().map(|c| c.initiator.as_ref()), Some("client"), "the side that went away: {r:?}");
    assert_eq!(r.close.as_ref().and_then(|c| c.code), Some(1001), "the code weir sent: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_blocks_the_backend_and_weir_memory_stays_bounded() {
    let flood = Arc::new(Flood::default());
    let f = flood.clone();
    let backend = ws_backend(None, move |ws| flood_until_blocked(ws, f.clone())).await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    slow_reader_stays_bounded(&weir, &flood).await;
}

#[tokio::test]
async fn unmasked_client_frame_is_a_protocol_error_closed_with_1002() {
    let (backend, mut events) = recording_echo_backend(None).await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let (mut c, head) = raw_client(weir.addr, "/ws", "", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.write(&frame(FIN | TEXT, Some(MASK), b"valid")).await;
    assert_eq!(c.read_frame().await.expect("echo").payload, b"valid");
    c.write(&frame(FIN | TEXT, None, b"unmasked")).await;
    let f = c.read_frame().await.expect("a close frame");
    assert_eq!((f.opcode(), f.close_code(), f.masked), (CLOSE, Some(1002), false), "{f:?}");
    let rest = c.read_to_end().await;
    assert!(rest.is_empty(), "the stream ends after the close frame: {rest:?}");

    assert_eq!(next_event(&mut events).await, Event::Msg(Message::text("valid")));
    assert_eq!(next_event(&mut events).await, Event::Msg(close_frame(1002, "")), "the backend gets 1002 too");
    weir.metric_eventually(
        "weir_protocol_violations_total",
        &[("route", "p"), ("direction", "client_to_backend"), ("reason", "unmasked_client_frame")],
        |v| v == 1.0,
    )
    .await;
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.outcome, "protocol_error", "{r:?}");
    assert_eq!(r.close.as_ref().map(|c| (c.code, c.initiator.as_ref())), Some((Some(1002), "gateway")), "{r:?}");
    assert_eq!(r.client_to_backend.messages, 1, "the unmasked frame is not relayed or counted");
}

#[tokio::test]
async fn bytes_sent_before_the_101_reach_the_backend() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let early = [frame(FIN | TEXT, Some(MASK), b"early bird"), frame(FIN | BINARY, Some(MASK), &[1, 2, 3])].concat();
    let (mut c, head) = raw_client(weir.addr, "/ws", "", &early).await; // head and frames in one write
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(c.read_frame().await.expect("echo").raw, frame(FIN | TEXT, None, b"early bird"));
    assert_eq!(c.read_frame().await.expect("echo").raw, frame(FIN | BINARY, None, &[1, 2, 3]));
    c.write(&frame(FIN | CLOSE, Some(MASK), &close_payload(1000, ""))).await;
    assert_eq!(c.read_frame().await.expect("close reply").close_code(), Some(1000));
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!((r.client_to_backend.messages, r.outcome.as_ref()), (2, "completed"));
}

/// SIGTERM: each open connection gets 1001 "draining" at its own point of the drain window
/// (here the 1 s grace period), the backend 1001, the record outcome `shutdown`, cause `drained`.
#[tokio::test]
async fn sigterm_closes_open_connections_with_1001_within_the_drain_window() {
    let (backend, mut events) = recording_echo_backend(None).await;
    let mut weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let mut ws = connect(&weir, "/ws").await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("hi"));
    assert_eq!(next_event(&mut events).await, Event::Msg(Message::text("hi")));

    let signalled = Instant::now();
    let stop = tokio::task::spawn_blocking(move || {
        let status = weir.terminate();
        (weir, status)
    });
    // The drain window is the grace period here (1 s): the close comes within it.
    assert_eq!(recv(&mut ws).await, close_frame(1001, "draining"));
    let waited = signalled.elapsed();
    assert!(waited <= Duration::from_millis(1500), "closed after {waited:?}, beyond the 1 s drain window");
    drain_until_end(&mut ws, DEADLINE).await;
    assert_eq!(next_event(&mut events).await, Event::Msg(close_frame(1001, "")), "the backend gets 1001 too");

    let (weir, status) = stop.await.unwrap();
    let status = status.expect("weir exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", weir.log());
    let records = weir.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].outcome, "shutdown");
    let close = records[0].close.as_ref().expect("close");
    assert_eq!((close.code, close.initiator.as_ref(), close.cause.as_ref()), (Some(1001), "gateway", "drained"));
}

/// A backend for `http` routes: plain requests get `200 polling ok`, upgrades are accepted by
/// tokio-tungstenite (after peeking at the head) and echoed.
async fn polling_and_ws_backend() -> crate::support::backends::Backend {
    raw_backend(|s| async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut head = String::new();
        for _ in 0..400 {
            let n = s.peek(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await; // poll interval while the head arrives
        }
        if head.contains("\r\nupgrade: websocket") {
            if let Ok(ws) = tokio_tungstenite::accept_async_with_config(s, Some(ws_config())).await {
                crate::support::backends::echo(ws).await;
            }
            return;
        }
        let mut c = RawConn::new(s);
        let _ = c.read_head().await;
        c.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\npolling ok",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn http_route_proxies_plain_requests_and_upgrades() {
    let backend = polling_and_ws_backend().await;
    let yaml = format!(
        "pools:\n  - name: p\n    backends: [\"{}\"]\n    health_check: {{kind: none}}\nroutes:\n  - {{name: h, path_prefix: /io, kind: http, pool: p}}\n",
        backend.addr
    );
    let weir = Weir::start(&yaml).await;
    let req = format!("GET /io/x?EIO=4&transport=polling HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", weir.addr);
    let (status, head, body) = raw_request(weir.addr, &req).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "polling ok"), "{head}");
    weir.metric_eventually("weir_http_requests_total", &[("route", "h")], |v| v == 1.0).await;

    let mut ws = connect(&weir, "/io/x?EIO=4&transport=websocket").await;
    ws.send(Message::text("upgraded")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("upgraded"));
    close_normally(&mut ws).await;
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!((r.identity.route.as_deref(), r.status, r.outcome.as_ref()), (Some("h"), 101, "completed"));
}

#[tokio::test]
async fn demo_page_is_served_at_root() {
    let backend = echo_backend().await;
    let weir = Weir::start(&format!("demo_page: true\n{}", pool_and_route("p", &[backend.addr], "/echo"))).await;
    let (status, head, body) = http_get(weir.addr, "/").await.unwrap();
    assert_eq!(status, 200, "{head}");
    let ctype = head_header(&head, "content-type").unwrap_or("");
    assert!(ctype.starts_with("text/html"), "{head}");
    assert!(body.contains("weir demo"), "{body}");
    let mut ws = connect(&weir, "/echo").await;
    ws.send(Message::text("from the demo")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("from the demo"));
    close_normally(&mut ws).await;
}
