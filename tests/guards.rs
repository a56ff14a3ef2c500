//! Guards on open connections (issue 10): idle timeout, keepalive pings (dead peers, swallowed
//! pongs), close timeout, size limits, message rates (close and throttle) and lifetime with
//! jitter, each against the real binary with real peers. Durations are milliseconds; waits are
//! on events (frames, EOF, records), never sleeps.

use crate::support::backends::{next_event, raw_backend, recording_echo_backend, Event};
use crate::support::wire::{accept_for, frame, raw_client, RawConn, RawFrame, BINARY, CLOSE, FIN, MASK, TEXT};
use crate::support::{connect, metric, pool_and_route, recv, Weir, DEADLINE};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Pool `p` with `backend` on route `/ws`, and `limits:` (a YAML flow map) for everything.
fn config(backend: std::net::SocketAddr, limits: &str) -> String {
    format!("{}limits: {limits}\n", pool_and_route("p", &[backend], "/ws"))
}

/// Frames until EOF (or a reset).
async fn frames_until_eof(c: &mut RawConn) -> Vec<RawFrame> {
    let mut out = Vec::new();
    while let Some(f) = c.read_frame().await {
        out.push(f);
    }
    out
}

/// The backend's events up to and including `End`.
async fn events_until_end(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let e = next_event(rx).await;
        let end = e == Event::End;
        out.push(e);
        if end {
            return out;
        }
    }
}

fn close_code(events: &[Event]) -> Option<u16> {
    events.iter().find_map(|e| match e {
        Event::Msg(Message::Close(Some(f))) => Some(u16::from(f.code)),
        _ => None,
    })
}

/// An idle client is closed at the timeout with 1001 "idle timeout" (both sides), and its record
/// says why.
#[tokio::test]
async fn an_idle_connection_is_closed_with_1001_and_cause_idle_timeout() {
    let (backend, mut rx) = recording_echo_backend(None).await;
    let weir = Weir::start(&config(backend.addr, "{idle_timeout: 300ms, keepalive: {interval: 0s}}")).await;
    let (mut c, head) = raw_client(weir.addr, "/ws", "", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.write(&frame(FIN | TEXT, Some(MASK), b"hi")).await;
    let echo = c.read_frame().await.unwrap();
    assert_eq!(echo.payload, b"hi");
    let started = Instant::now();
    let close = c.read_frame().await.expect("a close frame");
    assert_eq!(close.close_code(), Some(1001));
    assert_eq!(&close.payload[2..], b"idle timeout");
    assert!(started.elapsed() >= Duration::from_millis(250), "not before the timeout: {:?}", started.elapsed());
    let events = events_until_end(&mut rx).await;
    assert_eq!(close_code(&events), Some(1001), "the backend gets 1001 too: {events:?}");
    let r = weir.records_eventually(1).await.remove(0);
    let close = r.close.unwrap();
    assert_eq!((close.cause.as_ref(), close.code, close.initiator.as_ref()), ("idle_timeout", Some(1001), "gateway"));
    let m = weir.metrics().await;
    let n = metric(&m, "weir_closes_total", &[("route", "p"), ("cause", "idle_timeout"), ("code_class", "going_away")]);
    assert_eq!(n, Some(1.0), "{m}");
}

/// A client that reads but never answers weir's pings is dead: weir drops it, the backend gets
/// 1011 "peer not responding", the record says dead_peer.
#[tokio::test]
async fn a_peer_that_never_answers_pings_is_closed_as_dead() {
    let (backend, mut rx) = recording_echo_backend(None).await;
    let limits = "{keepalive: {interval: 200ms, timeout: 200ms}}";
    let weir = Weir::start(&config(backend.addr, limits)).await;
    let (mut c, _) = raw_client(weir.addr, "/ws", "", b"").await;
    let ping = c.read_frame().await.expect("weir's ping");
    assert_eq!((ping.opcode(), ping.masked), (PING, false));
    assert!(ping.payload.starts_with(b"weir"), "{:?}", ping.payload);
    // Never answered: the connection ends (EOF) without anything else.
    let rest = frames_until_eof(&mut c).await;
    assert!(rest.iter().all(|f| f.opcode() == PING), "nothing but pings before the drop: {rest:?}");
    let events = events_until_end(&mut rx).await;
    assert_eq!(close_code(&events), Some(1011), "{events:?}");
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.close.unwrap().cause, "dead_peer");
}

/// weir's pongs are swallowed: the backend never sees them, the record does not count them, and
/// the connection stays open while the client answers; the RTT histogram gets them.
#[tokio::test]
async fn keepalive_pongs_are_not_relayed_nor_billed() {
    let (backend, mut rx) = recording_echo_backend(None).await;
    let limits = "{keepalive: {interval: 100ms, timeout: 300ms}}";
    let weir = Weir::start(&config(backend.addr, limits)).await;
    let (mut c, _) = raw_client(weir.addr, "/ws", "", b"").await;
    for _ in 0..3 {
        let ping = c.read_frame().await.expect("weir's ping");
        assert_eq!(ping.opcode(), PING);
        c.write(&frame(FIN | PONG, Some(MASK), &ping.payload)).await;
    }
    // A client's own ping still reaches the backend (tungstenite answers it; weir relays that pong).
    c.write(&frame(FIN | PING, Some(MASK), b"mine")).await;
    loop {
        let f = c.read_frame().await.expect("the backend's pong");
        if f.opcode() == PONG {
            assert_eq!(f.payload, b"mine");
            break;
        }
        assert_eq!(f.opcode(), PING, "only weir's pings in between");
        c.write(&frame(FIN | PONG, Some(MASK), &f.payload)).await;
    }
    c.write(&frame(FIN | CLOSE, Some(MASK), &1000u16.to_be_bytes())).await;
    let events = events_until_end(&mut rx).await;
    let pongs = events.iter().filter(|e| matches!(e, Event::Msg(Message::Pong(_)))).count();
    let pings = events.iter().filter(|e| matches!(e, Event::Msg(Message::Ping(_)))).count();
    assert_eq!((pongs, pings), (0, 1), "weir's pongs never reach the backend: {events:?}");
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!((r.client_to_backend.pongs, r.client_to_backend.pings), (0, 1), "{r:?}");
    assert_eq!(r.client_to_backend.frames, 2, "the client's ping and close only");
    assert_eq!(r.close.unwrap().cause, "client_close");
    let m = weir.metrics().await;
    let rtts = metric(&m, "weir_peer_rtt_seconds_count", &[("route", "p"), ("side", "client")]).unwrap_or(0.0);
    assert!(rtts >= 3.0, "every answered ping is measured: {rtts}");
}

/// A backend that never answers a close: after `close_timeout` both sockets are closed.
#[tokio::test]
async fn an_unanswered_close_is_cut_after_the_close_timeout() {
    // A backend that completes the handshake, then reads forever without answering anything.
    let backend = raw_backend(|stream| async move {
        let mut conn = RawConn::new(stream);
        let head = conn.read_head().await;
        let key = crate::support::wire::head_header(&head, "sec-websocket-key").unwrap_or("").to_string();
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_for(&key)
        );
        conn.stream.write_all(answer.as_bytes()).await.unwrap();
        let _ = conn.read_to_end().await;
    })
    .await;
    let weir = Weir::start(&config(backend.addr, "{close_timeout: 300ms}")).await;
    let (mut c, head) = raw_client(weir.addr, "/ws", "", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.write(&frame(FIN | CLOSE, Some(MASK), &1000u16.to_be_bytes())).await;
    let started = Instant::now();
    let got = frames_until_eof(&mut c).await;
    assert!(got.is_empty(), "no answer came: {got:?}");
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    let r = weir.records_eventually(1).await.remove(0);
    let close = r.close.unwrap();
    assert_eq!((close.cause.as_ref(), close.initiator.as_ref(), close.clean), ("close_timeout", "client", false));
}

/// A frame over `max_frame`: 1009 before its payload is forwarded; the backend never sees it.
#[tokio::test]
async fn an_oversize_frame_gets_1009_and_never_reaches_the_backend() {
    let (backend, mut rx) = recording_echo_backend(None).await;
    let weir = Weir::start(&config(backend.addr, "{max_frame: 1000}")).await;
    let (mut c, _) = raw_client(weir.addr, "/ws", "", b"").await;
    c.write(&frame(FIN | BINARY, Some(MASK), &[7u8; 1000])).await;
    assert_eq!(c.read_frame().await.unwrap().payload.len(), 1000, "at the limit passes");
    c.write(&frame(FIN | BINARY, Some(MASK), &[7u8; 1001])).await;
    let close = c.read_frame().await.unwrap();
    assert_eq!(close.close_code(), Some(1009), "{close:?}");
    assert_eq!(&close.payload[2..], b"message too big");
    let events = events_until_end(&mut rx).await;
    let sizes: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::Msg(Message::Binary(b)) => Some(b.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, vec![1000], "the oversize frame was not forwarded: {events:?}");
    assert_eq!(close_code(&events), Some(1009));
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.close.unwrap().cause, "message_too_big");
    assert_eq!(r.client_to_backend.messages, 1);
}

/// A fragmented message whose fragments go over `max_message`: 1009 at the fragment that goes
/// over, which is not forwarded; the backend never gets the message.
#[tokio::test]
async fn an_oversize_fragmented_message_gets_1009() {
    let (backend, mut rx) = recording_echo_backend(None).await;
    let weir = Weir::start(&config(backend.addr, "{max_message: 1500}")).await;
    let (mut c, _) = raw_client(weir.addr, "/ws", "", b"").await;
    c.write(&frame(TEXT, Some(MASK), &[b'a'; 1000])).await;
    c.write(&frame(FIN, Some(MASK), &[b'b'; 1000])).await;
    let close = c.read_frame().await.unwrap();
    assert_eq!(close.close_code(), Some(1009), "{close:?}");
    let events = events_until_end(&mut rx).await;
    assert!(!events.iter().any(|e| matches!(e, Event::Msg(Message::Text(_)))), "{events:?}");
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.close.unwrap().cause, "message_too_big");
    assert_eq!(r.client_to_backend.payload_bytes, 1000, "only the first fragment");
}

/// Over `message_rate` with `action: close`: 1008 "rate limit" once the burst is spent. Rates are
/// charged per read (up to 64 KiB), so the client sends one message per read here.
#[tokio::test]
async fn a_flood_over_the_message_rate_is_closed_with_1008() {
    let (backend, _rx) = recording_echo_backend(None).await;
    let limits = "{message_rate: {per_second: 5, burst: 5, action: close}}";
    let weir = Weir::start(&config(backend.addr, limits)).await;
    let (mut c, _) = raw_client(weir.addr, "/ws", "", b"").await;
    let mut echoed = 0;
    let close = loop {
        assert!(echoed < 200, "never closed");
        c.write(&frame(FIN | TEXT, Some(MASK), format!("m{echoed}").as_bytes())).await;
        let f = c.read_frame().await.expect("an echo or a close");
        if f.opcode() == CLOSE {
            break f;
        }
        echoed += 1;
    };
    assert_eq!((close.close_code(), &close.payload[2..]), (Some(1008), &b"rate limit"[..]));
    assert!((5..=7).contains(&echoed), "the burst passes, then the sender is closed: {echoed}");
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.close.unwrap().cause, "rate_limited");
}

/// Over `message_rate` with `action: throttle`: every message arrives, slower; nothing closed.
#[tokio::test]
async fn throttling_delivers_every_message_later_and_closes_nothing() {
    let (backend, _rx) = recording_echo_backend(None).await;
    let limits = "{message_rate: {per_second: 20, burst: 5, action: throttle}}";
    let weir = Weir::start(&config(backend.addr, limits)).await;
    let mut ws = connect(&weir, "/ws").await;
    let started = Instant::now();
    for i in 0..30 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(recv(&mut ws).await, Message::text(format!("m{i}")));
    }
    let elapsed = started.elapsed();
    ws.close(None).await.unwrap();
    crate::support::drain_until_end(&mut ws, DEADLINE).await;
    let r = weir.records_eventually(1).await.remove(0);
    // 25 messages over the burst at 20 per second: about a second and a quarter of pauses. On
    // failure the record says whether this weir relayed the 30 messages (a run under full-suite
    // load once saw 513 ms; not reproduced since: this message is what the next one must show).
    assert!(elapsed >= Duration::from_millis(1000), "throttled: {elapsed:?}; record: {r:?}; addr {}", weir.addr);
    assert_eq!((r.close.unwrap().cause.as_ref(), r.client_to_backend.messages), ("client_close", 30));
}

/// `max_lifetime` with jitter: 50 connections all closed with 1001 "max lifetime", spread over the
/// jitter window instead of at one instant.
#[tokio::test]
async fn lifetimes_are_spread_by_jitter() {
    let (backend, _rx) = recording_echo_backend(None).await;
    let limits = "{max_lifetime: 1200ms, lifetime_jitter: 600ms, keepalive: {interval: 0s}}";
    let weir = Weir::start(&config(backend.addr, limits)).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut ws = connect(&weir, "/ws").await;
        tasks.push(tokio::spawn(async move {
            let opened = Instant::now();
            let msg = tokio::time::timeout(DEADLINE, ws.next()).await.expect("closed in time");
            let Some(Ok(Message::Close(Some(f)))) = msg else { panic!("expected a close, got {msg:?}") };
            (opened.elapsed(), u16::from(f.code), f.reason.to_string())
        }));
    }
    let mut lives = Vec::new();
    for t in tasks {
        let (life, code, reason) = t.await.unwrap();
        assert_eq!((code, reason.as_str()), (1001, "max lifetime"));
        lives.push(life);
    }
    lives.sort();
    let (first, last) = (lives[0], lives[49]);
    assert!(first >= Duration::from_millis(550), "none before lifetime - jitter: {first:?}");
    assert!(last - first >= Duration::from_millis(200), "spread over the window: {first:?}..{last:?}");
    let records = weir.records_eventually(50).await;
    let causes = records.iter().filter(|r| r.close.as_ref().is_some_and(|c| c.cause == "max_lifetime")).count();
    assert_eq!(causes, 50);
}
