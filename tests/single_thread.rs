//! `server.threads: 1` (issue 14, sixteenth part): every service then runs on a single-threaded
//! scheduler (tokio's current-thread runtime, Pingora's "no steal" flavour) instead of a
//! work-stealing one. The rest of the suite runs with two threads; this runs the whole life of
//! connections on the one thread: many at once, large frames spliced, records written and
//! delivered by the background services, and a graceful drain on SIGTERM.

use crate::support::backends::echo_backend;
use crate::support::{connect, drain_until_end, metric, pool_and_route, recv, Weir, DEADLINE};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Clients relayed at once.
const CLIENTS: usize = 32;
/// Text messages each client sends (sizes 1, 8, 64, … bytes), then one spliced binary message.
const TEXTS: usize = 12;
/// The binary message: large enough that most of it is spliced both ways.
const LARGE: usize = (1 << 20) + 3;
/// Connections open when SIGTERM comes.
const AT_SIGTERM: usize = 4;

#[tokio::test]
async fn one_thread_relays_splices_bills_and_drains() {
    let backend = echo_backend().await;
    let weir =
        Weir::start_with(&pool_and_route("p", &[backend.addr], "/ws"), "server:\n  threads: 1\n  grace_period: 1s\n")
            .await;
    let started = weir.log();
    let line = started.lines().find(|l| l.contains("weir started")).unwrap_or_default();
    assert!(line.contains("threads=1") && line.contains("single-threaded"), "startup line: {line}\n{started}");

    // Every client's messages interleave with the others' on the one thread.
    let text = |i: usize, k: usize| format!("{i:03}:{}", "x".repeat((1 << (k % 12)) - 1));
    let large = |i: usize| (0..LARGE).map(|b| (b * 31 + i) as u8).collect::<Vec<u8>>();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut ws = connect(&weir, "/ws").await;
        clients.push(tokio::spawn(async move {
            for k in 0..TEXTS {
                ws.send(Message::text(text(i, k))).await.unwrap();
                assert_eq!(recv(&mut ws).await, Message::text(text(i, k)), "client {i}, message {k}");
            }
            let data = large(i);
            ws.send(Message::binary(data.clone())).await.unwrap();
            let Message::Binary(got) = recv(&mut ws).await else { panic!("client {i}: expected the binary echo") };
            assert!(got[..] == data[..], "client {i}: the large message changed on the way");
            ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await.unwrap();
            drain_until_end(&mut ws, DEADLINE).await;
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let records = weir.records_eventually(CLIENTS).await;
    let payload = (0..TEXTS).map(|k| text(0, k).len() as u64).sum::<u64>() + LARGE as u64 + 2;
    for r in &records {
        assert_eq!(r.outcome, "completed", "{r:?}");
        assert_eq!((r.client_to_backend.payload_bytes, r.backend_to_client.payload_bytes), (payload, payload), "{r:?}");
        assert_eq!(r.client_to_backend.messages, TEXTS as u64 + 1, "{r:?}");
    }
    let spliced = metric(&weir.metrics().await, "weir_splice_bytes_total", &[]).unwrap_or(0.0);
    let least = (CLIENTS * 2 * (LARGE - (64 << 10))) as f64;
    assert!(spliced >= least, "spliced {spliced} bytes, expected at least {least}");

    // SIGTERM with connections open: each gets its 1001 after the grace period, a stop record
    // says so, and the process exits cleanly.
    let mut open = Vec::new();
    for i in 0..AT_SIGTERM {
        let mut ws = connect(&weir, "/ws").await;
        ws.send(Message::text(format!("open {i}"))).await.unwrap();
        assert_eq!(recv(&mut ws).await, Message::text(format!("open {i}")));
        open.push(tokio::spawn(async move { drain_until_end(&mut ws, DEADLINE).await }));
    }
    let mut weir = weir;
    let (weir, status) = tokio::task::spawn_blocking(move || {
        let status = weir.terminate();
        (weir, status)
    })
    .await
    .unwrap();
    let status = status.expect("weir exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", weir.log());
    for ws in open {
        let end = ws.await.unwrap();
        let close = end.iter().find_map(|m| match m {
            Message::Close(Some(f)) => Some(u16::from(f.code)),
            _ => None,
        });
        assert_eq!(close, Some(1001), "the drain's close: {end:?}");
    }
    let records = weir.records();
    let shutdown = records.iter().filter(|r| r.outcome == "shutdown").count();
    assert_eq!((records.len(), shutdown), (CLIENTS + AT_SIGTERM, AT_SIGTERM), "{records:?}");
}
