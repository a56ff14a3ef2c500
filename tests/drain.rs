//! The admin listener through a SIGTERM drain: `/metrics`, `/healthz` and `/readyz` answer until
//! the process exits (`/readyz` 503 with the reason), the last scrape holds the final counts, and
//! the listener stays up for `admin.final_scrape` after the last records were written.

use crate::support::backends::echo_backend;
use crate::support::{connect, drain_until_end, http_get, metric, pool_and_route, raw_request, recv, Weir, DEADLINE};
use futures_util::SinkExt;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// Open connections at SIGTERM.
const OPEN: usize = 3;
/// Most polls of the admin listener during one drain (each is a few requests on loopback).
const MAX_POLLS: usize = 20_000;
/// Longest time from a refused admin request to the process's exit that still counts as "the
/// listener closed because the process was exiting".
const EXIT_SLACK: Duration = Duration::from_millis(500);

/// What one poll of the admin listener saw.
struct Poll {
    at: Instant,
    metrics: Option<String>,
    healthz: Option<u16>,
    readyz: Option<(u16, String)>,
    /// weir had logged "weir stopped" (its last flush and delivery done) before this poll.
    stopped: bool,
}

async fn poll(weir_admin: std::net::SocketAddr, log: &std::path::Path) -> Poll {
    let at = Instant::now();
    let stopped = std::fs::read_to_string(log).is_ok_and(|l| l.contains("weir stopped"));
    let metrics = match http_get(weir_admin, "/metrics").await {
        Ok((200, _, body)) => Some(body),
        _ => None,
    };
    let healthz = http_get(weir_admin, "/healthz").await.ok().map(|(s, _, _)| s);
    let readyz = http_get(weir_admin, "/readyz").await.ok().map(|(s, _, b)| (s, b));
    Poll { at, metrics, healthz, readyz, stopped }
}

/// SIGTERM with `OPEN` connections and a 2 s grace period: until the process exits every poll of
/// the admin listener is answered (`/metrics` and `/healthz` 200, `/readyz` 503 "shutting down:
/// draining N connections"), and the last `/metrics` scrape holds the final counts: every
/// connection ended with outcome `shutdown`, none active. The listener stays up for
/// `admin.final_scrape` (default 2 s) after weir's last flush and delivery.
#[tokio::test]
async fn admin_answers_through_the_whole_drain_and_the_last_scrape_has_the_final_counts() {
    let backend = echo_backend().await;
    let weir =
        Weir::start_with(&pool_and_route("p", &[backend.addr], "/ws"), "server:\n  threads: 2\n  grace_period: 2s\n")
            .await;
    let admin = weir.admin;
    let log = weir.dir.path().join("weir.log");
    let mut clients = Vec::new();
    for i in 0..OPEN {
        let mut ws = connect(&weir, "/ws").await;
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(recv(&mut ws).await, Message::text(format!("hello {i}")));
        clients.push(ws);
    }
    let route = [("route", "p"), ("pool", "p")];
    weir.metric_eventually("weir_connections_active", &route, |v| v == OPEN as f64).await;
    // The clients read their 1001 closes on their own, so the relays never wait on them.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { drain_until_end(&mut ws, DEADLINE).await }))
        .collect();

    let signalled = Instant::now();
    let mut weir = weir;
    let stop = tokio::task::spawn_blocking(move || {
        let status = weir.terminate();
        (weir, Instant::now(), status)
    });

    let mut polls: Vec<Poll> = Vec::new();
    let mut refused_at = None;
    for _ in 0..MAX_POLLS {
        if stop.is_finished() {
            break;
        }
        let p = poll(admin, &log).await;
        let answered = p.metrics.is_some() && p.healthz == Some(200) && p.readyz.is_some();
        polls.push(p);
        if !answered {
            refused_at = Some(Instant::now());
            break;
        }
        assert!(signalled.elapsed() < DEADLINE, "weir still running {DEADLINE:?} after SIGTERM");
    }
    let (weir, exited, status) = stop.await.unwrap();
    let status = status.expect("weir exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", weir.log());
    if let Some(at) = refused_at {
        let before_exit = exited.saturating_duration_since(at);
        assert!(
            before_exit <= EXIT_SLACK,
            "the admin listener stopped answering {before_exit:?} before the process exited ({:?} after SIGTERM)\n{}",
            at - signalled,
            weir.log()
        );
    }
    for r in readers {
        r.await.unwrap();
    }

    // /readyz: 200 only before Pingora saw the signal, then 503 with the reason until the end.
    let ready: Vec<&(u16, String)> = polls.iter().filter_map(|p| p.readyz.as_ref()).collect();
    let first_503 = ready.iter().position(|(s, _)| *s == 503).expect("/readyz turned 503 during the drain");
    assert!(ready[..first_503].iter().all(|(s, _)| *s == 200), "{ready:?}");
    // Each 503 names the connections still open. The drain closes them at points of its window
    // spread by connection id, so the first may close before the first poll after the signal
    // (a full suite's load delays the polls): the count may start below OPEN, then only falls.
    let mut counts = Vec::new();
    for (status, body) in &ready[first_503..] {
        assert_eq!(*status, 503, "{body}");
        let count = body.split_once("shutting down: draining ").and_then(|(_, r)| r.split(' ').next()?.parse().ok());
        counts.push(count.unwrap_or_else(|| panic!("/readyz gives the reason and the count: {body}")));
    }
    assert!(
        counts.first().is_some_and(|&n| (1..=OPEN).contains(&n)),
        "/readyz counted the open connections: {counts:?}"
    );
    assert!(counts.windows(2).all(|w| w[1] <= w[0]), "the count only falls: {counts:?}");
    assert_eq!(counts.last(), Some(&0), "the last /readyz saw every connection drained: {ready:?}");

    // The last successful scrape holds the final counts.
    let last = polls.iter().rev().find_map(|p| p.metrics.as_ref().map(|m| (p.at, m))).expect("a /metrics scrape");
    let shutdown = [("route", "p"), ("pool", "p"), ("outcome", "shutdown")];
    assert_eq!(metric(last.1, "weir_connections_total", &shutdown), Some(OPEN as f64), "last scrape:\n{}", last.1);
    assert_eq!(metric(last.1, "weir_connections_active", &route), Some(0.0));
    assert_eq!(metric(last.1, "weir_usage_records_total", &[("kind", "stop")]), Some(OPEN as f64));
    let records = weir.records();
    assert_eq!(records.len(), OPEN, "{records:?}");
    assert!(records.iter().all(|r| r.outcome == "shutdown"), "{records:?}");

    // The final scrape window: the listener kept answering for about `admin.final_scrape` (2 s)
    // after weir's last flush and delivery ("weir stopped" in its log), then the process exited.
    let stopped = polls.iter().find(|p| p.stopped).expect("a poll after weir's last delivery").at;
    let window = last.0.saturating_duration_since(stopped);
    assert!(
        window >= Duration::from_millis(1500),
        "the admin listener answered only {window:?} after the last delivery; admin.final_scrape is 2s"
    );
    let exit_after = exited.saturating_duration_since(stopped);
    assert!(exit_after < Duration::from_secs(5), "exited {exit_after:?} after the last delivery");
}

/// The admin listener is weir's own: a client that never sends its head does not hold up a
/// scrape, and bad requests get their status, not a dropped connection.
#[tokio::test]
async fn admin_listener_serves_around_stalled_and_bad_requests() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(weir.admin).await.unwrap();
        s.write_all(b"GET /metr").await.unwrap();
        stalled.push(s);
    }
    let started = Instant::now();
    let (status, _, body) = http_get(weir.admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("weir_max_fds"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(2), "a scrape waited behind stalled clients");
    assert_eq!(http_get(weir.admin, "/healthz").await.unwrap().0, 200);
    let (status, _, body) = http_get(weir.admin, "/readyz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(http_get(weir.admin, "/nope").await.unwrap().0, 404);
    let (status, head, body) = raw_request(
        weir.admin,
        &format!("HEAD /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", weir.admin),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(body.is_empty(), "HEAD has no body: {body}");
    let post = format!("POST /metrics HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n", weir.admin);
    assert_eq!(raw_request(weir.admin, &post).await.unwrap().0, 405);
    assert_eq!(raw_request(weir.admin, "\x16\x03\x01 not http\r\n\r\n").await.unwrap().0, 400);
    let huge = format!("GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20 * 1024));
    assert_eq!(raw_request(weir.admin, &huge).await.unwrap().0, 431);
    drop(stalled);
}

/// `admin.final_scrape`: a duration, default 2 s, `0s` allowed (exit right after the last
/// delivery); anything else names the key.
#[test]
fn final_scrape_is_a_duration_with_a_default() {
    let base = "listeners: [{address: \"127.0.0.1:8080\"}]\npools: [{name: p, backends: [\"127.0.0.1:1\"], health_check: {kind: none}}]\nroutes: [{path_prefix: /, pool: p}]\n";
    let with = |admin: &str| weir::config::parse(&format!("{base}admin: {admin}\n"), "test");
    let c = with("{address: \"127.0.0.1:9090\"}").unwrap();
    assert_eq!(c.admin_final_scrape, Duration::from_secs(2));
    let c = with("{address: \"127.0.0.1:9090\", final_scrape: 15s}").unwrap();
    assert_eq!(c.admin_final_scrape, Duration::from_secs(15));
    let c = with("{address: \"127.0.0.1:9090\", final_scrape: 0s}").unwrap();
    assert_eq!(c.admin_final_scrape, Duration::ZERO);
    for bad in ["soon", "2h"] {
        let e = with(&format!("{{address: \"127.0.0.1:9090\", final_scrape: {bad}}}")).unwrap_err().to_string();
        assert!(e.contains("admin.final_scrape"), "{bad}: {e}");
    }
}
