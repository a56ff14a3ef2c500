//! The usage record against ground truth: one connection with a scripted mix of frames, and
//! every counter of the record compared with what the client sent and received, frame by frame.

use crate::support::backends::{next_event, recording_echo_backend, Event};
use crate::support::wire::header_len;
use crate::support::{connect, drain_until_end, pool_and_route, recv, Weir, DEADLINE};
use futures_util::SinkExt;
use std::time::{Duration, SystemTime};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use weir::billing::DirectionUsage;

/// Ground-truth counters of one direction, built frame by frame.
#[derive(Default)]
struct Truth(DirectionUsage);

impl Truth {
    /// A frame with `len` payload bytes; `masked` for client frames.
    fn frame(&mut self, len: usize, masked: bool) {
        let len = len as u64;
        self.0.frames += 1;
        self.0.payload_bytes += len;
        self.0.wire_bytes += header_len(len, masked) + len;
    }

    /// A complete data message of `len` payload bytes (its frames counted separately).
    fn message(&mut self, len: usize) {
        self.0.messages += 1;
        self.0.largest_message_bytes = self.0.largest_message_bytes.max(len as u64);
    }

    /// A whole message as received (one frame each: tungstenite sends messages unfragmented).
    fn received(&mut self, m: &Message) {
        match m {
            Message::Text(t) => {
                self.frame(t.len(), false);
                self.message(t.len());
            }
            Message::Binary(b) => {
                self.frame(b.len(), false);
                self.message(b.len());
            }
            Message::Ping(p) => {
                self.frame(p.len(), false);
                self.0.pings += 1;
            }
            Message::Pong(p) => {
                self.frame(p.len(), false);
                self.0.pongs += 1;
            }
            Message::Close(c) => self.frame(c.as_ref().map_or(0, |c| 2 + c.reason.len()), false),
            Message::Frame(_) => unreachable!("clients do not read raw frames"),
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn millis_since_epoch(rfc3339: &str) -> u128 {
    let t = humantime::parse_rfc3339(rfc3339).unwrap_or_else(|e| panic!("{rfc3339} is not RFC 3339: {e}"));
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis()
}

#[tokio::test]
async fn usage_record_equals_ground_truth_for_a_scripted_mix() {
    let (backend, mut events) = recording_echo_backend(None).await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let before = SystemTime::now();
    let mut ws = connect(&weir, "/ws").await;
    let mut up = Truth::default(); // what the client sent
    let mut down = Truth::default(); // what the client received
    let mut received = Vec::new();

    // A text message in three fragments with a ping between the first two.
    let parts = ["frag-one ", "frag-two ", "end"];
    ws.send(Message::Frame(Frame::message(parts[0], OpCode::Data(OpData::Text), false))).await.unwrap();
    up.frame(parts[0].len(), true);
    ws.send(Message::Ping("p1".into())).await.unwrap();
    up.frame(2, true);
    up.0.pings += 1;
    ws.send(Message::Frame(Frame::message(parts[1], OpCode::Data(OpData::Continue), false))).await.unwrap();
    up.frame(parts[1].len(), true);
    ws.send(Message::Frame(Frame::message(parts[2], OpCode::Data(OpData::Continue), true))).await.unwrap();
    up.frame(parts[2].len(), true);
    let whole = parts.concat();
    up.message(whole.len());
    for _ in 0..2 {
        received.push(recv(&mut ws).await);
    }
    assert!(received.contains(&Message::text(whole.clone())), "{received:?}");
    assert!(received.contains(&Message::Pong("p1".into())), "{received:?}");

    // Text and binary messages at every length-encoding boundary.
    let mut sent_data = vec![Message::text(whole.clone())];
    for size in [0usize, 1, 125, 126, 65535, 65536] {
        let text = Message::text("a".repeat(size));
        let binary = Message::binary(pattern(size, size as u8));
        for m in [text, binary] {
            ws.send(m.clone()).await.unwrap();
            up.frame(size, true);
            up.message(size);
            let echo = recv(&mut ws).await;
            assert_eq!(echo, m);
            received.push(echo);
            sent_data.push(m);
        }
    }

    // A 16 MiB binary message.
    let big = Message::binary(pattern(16 << 20, 7));
    ws.send(big.clone()).await.unwrap();
    up.frame(16 << 20, true);
    up.message(16 << 20);
    let echo = recv(&mut ws).await;
    assert!(echo == big, "16 MiB echo differs");
    received.push(echo);
    sent_data.push(big);

    // The client closes.
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::from(4001), reason: "done".into() }))).await.unwrap();
    up.frame(2 + 4, true);
    let rest = drain_until_end(&mut ws, DEADLINE).await;
    assert_eq!(rest, vec![Message::Close(Some(CloseFrame { code: CloseCode::from(4001), reason: "done".into() }))]);
    received.extend(rest);
    for m in &received {
        down.received(m);
    }

    // What the backend counted on receipt agrees with what the client sent.
    let mut at_backend = Vec::new();
    for _ in 0..100 {
        match next_event(&mut events).await {
            Event::Msg(m) => at_backend.push(m),
            Event::End => break,
        }
    }
    let backend_data: Vec<&Message> = at_backend.iter().filter(|m| m.is_text() || m.is_binary()).collect();
    assert_eq!(backend_data.len(), sent_data.len());
    assert!(backend_data.iter().zip(&sent_data).all(|(a, b)| *a == b), "the backend got every message intact");
    assert_eq!(at_backend.iter().filter(|m| m.is_ping()).count(), 1);
    assert_eq!(at_backend.iter().filter(|m| m.is_close()).count(), 1);

    let r = weir.records_eventually(1).await.remove(0);
    let after = SystemTime::now();
    assert_eq!(r.client_to_backend, up.0, "client_to_backend");
    assert_eq!(r.backend_to_client, down.0, "backend_to_client");
    // Sanity of the truth itself: 18 frames up (4 + 12 + 1 + close), 16 down (2 + 12 + 1 + close).
    assert_eq!((up.0.frames, up.0.messages, down.0.frames, down.0.messages), (18, 14, 16, 14));
    let close = r.close.as_ref().expect("close");
    assert_eq!((close.code, close.initiator.as_ref(), close.clean), (Some(4001), "client", true));
    assert_eq!((r.outcome.as_ref(), r.status, r.requests, r.reason.as_deref()), ("completed", 101, 1, None));
    assert_eq!((r.identity.route.as_deref(), r.identity.pool.as_deref()), (Some("p"), Some("p")));
    // Identity and time, as the record's JSON has them (text).
    let lines = weir.usage_lines();
    let json = lines.iter().find(|v| v["record"] == "stop").expect("the stop record's line");
    let text = |k: &str| json[k].as_str().unwrap_or_else(|| panic!("{k} is text: {json}")).to_string();
    assert_eq!(text("backend"), backend.addr.to_string());
    assert!(text("client_addr").starts_with("127.0.0.1:"), "{json}");
    assert_eq!(r.subprotocol, None);
    let id = uuid::Uuid::parse_str(&text("connection_id")).expect("connection_id is a UUID");
    assert_eq!(id.get_version_num(), 7, "UUIDv7");
    assert_eq!(text("connection_id"), id.hyphenated().to_string(), "lower-case, hyphenated");
    assert_eq!(r.ended_at, Some(r.at), "a stop record is made when the connection ends");
    assert_eq!(text("at"), text("ended_at"));
    let ended_at = text("ended_at");
    let started_at = text("started_at");
    for t in [&started_at, &ended_at] {
        assert!(t.ends_with('Z') && t.len() == "2026-11-22T14:05:06.123Z".len(), "RFC 3339 ms UTC: {t}");
    }
    let (start, end) = (millis_since_epoch(&started_at), millis_since_epoch(&ended_at));
    let span = end - start;
    assert!(
        span.abs_diff(r.duration_ms as u128) <= 1,
        "ended_at - started_at = {span} ms, duration_ms = {}",
        r.duration_ms
    );
    let window = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis();
    assert!(start + 1 >= window(before) && end <= window(after) + 1, "timestamps within the test's own clock window");
    assert!(r.duration_ms < Duration::from_secs(120).as_millis() as u64);
}
