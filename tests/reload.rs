//! Config reload (issue 12): `POST /api/reload` and SIGHUP swap routes, pools, backends and
//! limits while open WebSockets keep running on what they started with; an invalid file is
//! rejected with every error and changes nothing; a removed backend's connections are closed
//! with 1012 over the drain window.

use crate::support::backends::echo_backend;
use crate::support::{connect, metric, raw_request, signal, Weir, DEADLINE};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "reload-token-0123456789";

async fn api(admin: SocketAddr, method: &str, path: &str) -> (u16, Value) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
    );
    let (status, _, body) = raw_request(admin, &req).await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The `admin:` lines: the token, and `/metrics` open to the harness.
fn admin() -> String {
    format!("  token: \"{TOKEN}\"\n  metrics_public: true\n")
}

/// Replace everything from `pools:` on in weir's config file with `tail`.
fn rewrite(weir: &Weir, tail: &str) {
    let text = std::fs::read_to_string(&weir.config).unwrap();
    let head = &text[..text.find("pools:").unwrap()];
    std::fs::write(&weir.config, format!("{head}{tail}")).unwrap();
}

/// Send `text` on `ws` and expect it echoed.
async fn echoes<S>(ws: &mut S, text: &str) -> bool
where
    S: futures_util::Sink<Message>
        + futures_util::Stream<Item = tokio_tungstenite::tungstenite::Result<Message>>
        + Unpin,
{
    if ws.send(Message::text(text)).await.is_err() {
        return false;
    }
    matches!(tokio::time::timeout(DEADLINE, ws.next()).await, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text)
}

/// The close code `ws` gets next (within the deadline).
async fn close_code<S>(ws: &mut S) -> Option<u16>
where
    S: futures_util::Stream<Item = tokio_tungstenite::tungstenite::Result<Message>> + Unpin,
{
    let until = Instant::now() + DEADLINE;
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until.into(), ws.next()).await {
        if let Message::Close(f) = m {
            return f.map(|f| u16::from(f.code));
        }
    }
    None
}

#[tokio::test]
async fn a_reload_adds_a_route_and_a_backend_and_changes_a_limit_while_50_connections_keep_echoing() {
    let (a, b) = (echo_backend().await, echo_backend().await);
    let before = format!(
        "pools:\n  - name: p\n    backends: [\"{}\"]\n    health_check: {{kind: none}}\nroutes:\n  - {{name: ws, path_prefix: /ws, pool: p}}\n",
        a.addr
    );
    let extra = "drain:\n  window: 200ms\n";
    let weir = Weir::start_with_admin(&before, extra, &admin()).await;
    let mut open = Vec::new();
    for _ in 0..50 {
        open.push(connect(&weir, "/ws").await);
    }
    let big = "x".repeat(2000);
    // After: pool p gains backend b, a new pool q (b) behind a new route, and /ws a message limit.
    let after = format!(
        "pools:\n  - name: p\n    backends: [\"{a}\", \"{b}\"]\n    health_check: {{kind: none}}\n  - name: q\n    backends: [\"{b}\"]\n    health_check: {{kind: none}}\nroutes:\n  - {{name: ws, path_prefix: /ws, pool: p, limits: {{max_message: 1000}}}}\n  - {{name: new, path_prefix: /new, pool: q}}\n",
        a = a.addr,
        b = b.addr
    );
    rewrite(&weir, &after);
    let (status, body) = api(weir.admin, "POST", "/api/reload").await;
    assert_eq!(status, 200, "{body}\n{}", weir.log());
    let changes = &body["changes"];
    assert_eq!(changes["routes"]["added"], serde_json::json!(["new"]), "{body}");
    assert_eq!(changes["routes"]["changed"], serde_json::json!(["ws"]), "{body}");
    assert_eq!(changes["pools"]["added"], serde_json::json!(["q"]), "{body}");
    assert_eq!(changes["pools"]["changed"], serde_json::json!(["p"]), "{body}");
    assert_eq!(changes["restart_needed"], serde_json::json!([]), "{body}");
    // Every open connection kept running, on the snapshot it started with (no limit).
    for (i, ws) in open.iter_mut().enumerate() {
        assert!(echoes(ws, &format!("{i}{big}")).await, "connection {i} stopped echoing after the reload");
    }
    // New connections get the new config: the new route, the new backend, the new limit.
    let mut fresh = connect(&weir, "/new").await;
    assert!(echoes(&mut fresh, "hello").await);
    assert_eq!(b.seen().len(), 1, "the new route reaches the new pool's backend");
    let mut limited = connect(&weir, "/ws").await;
    assert!(echoes(&mut limited, "small").await);
    limited.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(close_code(&mut limited).await, Some(1009), "the new limit applies to new connections");
    let metrics = weir.metrics().await;
    assert_eq!(metric(&metrics, "weir_config_reloads_total", &[("result", "applied")]), Some(1.0));
    let hash = changes["hash"].as_str().unwrap();
    assert_eq!(metric(&metrics, "weir_config_info", &[("hash", hash)]), Some(1.0), "{metrics}");
    for (i, ws) in open.iter_mut().enumerate() {
        assert!(echoes(ws, &format!("still {i}")).await, "connection {i} stopped echoing");
    }
    assert!(weir.log().contains("config reloaded"));
}

#[tokio::test]
async fn an_invalid_reload_is_rejected_with_every_error_and_changes_nothing() {
    let a = echo_backend().await;
    let routes = format!(
        "pools:\n  - name: p\n    backends: [\"{}\"]\n    health_check: {{kind: none}}\nroutes:\n  - {{name: ws, path_prefix: /ws, pool: p}}\n",
        a.addr
    );
    let weir = Weir::start_with_admin(&routes, "", &admin()).await;
    let mut ws = connect(&weir, "/ws").await;
    let bad = format!(
        "pools:\n  - name: p\n    backends: [\"{}\"]\n    health_check: {{kind: none}}\n    selection: fastest\nroutes:\n  - {{name: ws, path_prefix: /ws, pool: nowhere}}\n  - {{name: x, path_prefix: /x, pool: p}}\n",
        a.addr
    );
    rewrite(&weir, &bad);
    let (status, body) = api(weir.admin, "POST", "/api/reload").await;
    assert_eq!(status, 422, "{body}");
    let errors: Vec<&str> = body["errors"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(errors.len() >= 2, "every error at once: {errors:?}");
    assert!(errors.iter().any(|e| e.contains("selection")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("nowhere")), "{errors:?}");
    // Nothing changed: the route that would have been added does not exist, the old one works.
    let (status, _, _) = raw_request(weir.addr, &crate::support::upgrade_request(weir.addr, "/x", "")).await.unwrap();
    assert_eq!(status, 404);
    assert!(echoes(&mut ws, "still here").await);
    let mut again = connect(&weir, "/ws").await;
    assert!(echoes(&mut again, "new").await);
    let metrics = weir.metrics().await;
    assert_eq!(metric(&metrics, "weir_config_reloads_total", &[("result", "rejected")]), Some(1.0));
    assert_eq!(metric(&metrics, "weir_config_reloads_total", &[("result", "applied")]), Some(0.0));
}

#[tokio::test]
async fn sighup_reloads_and_a_removed_backend_has_its_connections_closed_with_1012() {
    let (a, b) = (echo_backend().await, echo_backend().await);
    let both = format!(
        "pools:\n  - name: p\n    backends: [\"{}\", \"{}\"]\n    health_check: {{kind: none}}\nroutes:\n  - {{name: ws, path_prefix: /ws, pool: p}}\n",
        a.addr, b.addr
    );
    let weir = Weir::start_with_admin(&both, "drain:\n  window: 300ms\n", &admin()).await;
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(connect(&weir, "/ws").await);
    }
    assert_eq!((a.seen().len(), b.seen().len()), (2, 2), "round robin");
    let only_a = format!(
        "pools:\n  - name: p\n    backends: [\"{}\"]\n    health_check: {{kind: none}}\nroutes:\n  - {{name: ws, path_prefix: /ws, pool: p}}\n  - {{name: ws2, path_prefix: /two, pool: p}}\n",
        a.addr
    );
    rewrite(&weir, &only_a);
    signal(weir.pid(), "HUP");
    crate::support::eventually("the SIGHUP reload", || async {
        let m = weir.metrics().await;
        (metric(&m, "weir_config_reloads_total", &[("result", "applied")]) == Some(1.0)).then_some(())
    })
    .await;
    // The two connections on b get 1012 (reconnect) within the drain window; the two on a
    // keep running.
    let records = weir.records_eventually(2).await;
    let drained: Vec<_> = records.iter().filter_map(|r| r.close.as_ref()).filter(|c| c.cause == "drained").collect();
    assert_eq!(drained.len(), 2, "{records:?}");
    assert!(records.iter().all(|r| r.identity.backend == Some(b.addr)));
    let mut codes = Vec::new();
    for ws in conns.iter_mut() {
        // A closed connection's send may still succeed (the close is on its way): the next
        // message tells.
        let _ = ws.send(Message::text("alive?")).await;
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "alive?" => {}
            Ok(Some(Ok(Message::Close(f)))) => codes.push(f.map(|f| u16::from(f.code))),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(codes, [Some(1012), Some(1012)], "exactly b's connections were closed\n{}", weir.log());
    for _ in 0..3 {
        let mut ws = connect(&weir, "/two").await;
        assert!(echoes(&mut ws, "new route").await);
    }
    assert_eq!(b.seen().len(), 2, "no new connection reached the removed backend");
    assert!(weir.log().contains("backend removed by a reload"));
}
