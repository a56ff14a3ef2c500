//! `/metrics` while a connection is open and after it ends.

use crate::support::backends::echo_backend;
use crate::support::{connect, drain_until_end, pool_and_route, recv, Weir, DEADLINE};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn metrics_count_during_and_after_a_connection() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let mut ws = connect(&weir, "/ws").await;
    let messages = ["one", "two two", &"three".repeat(40)]; // 3, 7 and 200 bytes (a 16-bit length)
    for m in messages {
        ws.send(Message::text(m)).await.unwrap();
        assert_eq!(recv(&mut ws).await, Message::text(m));
    }
    let payload: usize = messages.iter().map(|m| m.len()).sum();
    let wire_up: usize = messages.iter().map(|m| m.len() + if m.len() < 126 { 6 } else { 8 }).sum();
    let wire_down: usize = messages.iter().map(|m| m.len() + if m.len() < 126 { 2 } else { 4 }).sum();
    let up = [("route", "p"), ("direction", "client_to_backend")];
    let down = [("route", "p"), ("direction", "backend_to_client")];

    // While the connection is open.
    weir.metric_eventually("weir_connections_active", &[("route", "p"), ("pool", "p")], |v| v == 1.0).await;
    weir.metric_eventually("weir_messages_total", &up, |v| v == 3.0).await;
    weir.metric_eventually("weir_messages_total", &down, |v| v == 3.0).await;
    weir.metric_eventually("weir_payload_bytes_total", &up, |v| v == payload as f64).await;
    weir.metric_eventually("weir_payload_bytes_total", &down, |v| v == payload as f64).await;
    weir.metric_eventually("weir_wire_bytes_total", &up, |v| v == wire_up as f64).await;
    weir.metric_eventually("weir_wire_bytes_total", &down, |v| v == wire_down as f64).await;
    weir.metric_eventually("weir_frames_total", &[up[0], up[1], ("kind", "data")], |v| v == 3.0).await;
    weir.metric_eventually("weir_frames_total", &[down[0], down[1], ("kind", "data")], |v| v == 3.0).await;
    let text = weir.metrics().await;
    assert_eq!(
        crate::support::metric(&text, "weir_connections_total", &[("route", "p")]).unwrap_or(0.0),
        0.0,
        "nothing ended yet"
    );

    // After the client closes with 1000.
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await.unwrap();
    drain_until_end(&mut ws, DEADLINE).await;
    weir.metric_eventually("weir_connections_active", &[("route", "p"), ("pool", "p")], |v| v == 0.0).await;
    weir.metric_eventually("weir_connections_total", &[("route", "p"), ("pool", "p"), ("outcome", "completed")], |v| {
        v == 1.0
    })
    .await;
    weir.metric_eventually(
        "weir_closes_total",
        &[("route", "p"), ("initiator", "client"), ("code_class", "normal")],
        |v| v == 1.0,
    )
    .await;
    weir.metric_eventually("weir_connection_duration_seconds_count", &[("route", "p"), ("pool", "p")], |v| v == 1.0)
        .await;
    // Per tenant (no tenant here: `none`), counted when the connection ends.
    let none = [("tenant", "none")];
    weir.metric_eventually("weir_tenant_connections_total", &none, |v| v == 1.0).await;
    weir.metric_eventually("weir_tenant_connections_active", &none, |v| v == 0.0).await;
    let tenant_up = [("tenant", "none"), ("direction", "client_to_backend")];
    weir.metric_eventually("weir_tenant_messages_total", &tenant_up, |v| v == 3.0).await;
    weir.metric_eventually("weir_tenant_wire_bytes_total", &tenant_up, |v| v >= wire_up as f64).await;
    weir.metric_eventually("weir_frames_total", &[up[0], up[1], ("kind", "close")], |v| v == 1.0).await;
    weir.metric_eventually("weir_frames_total", &[down[0], down[1], ("kind", "close")], |v| v == 1.0).await;
    weir.metric_eventually("weir_messages_total", &up, |v| v == 3.0).await;
    let text = weir.metrics().await;
    assert_eq!(
        crate::support::metric(&text, "weir_connections_total", &[("route", "p")]),
        Some(1.0),
        "exactly one outcome"
    );
}

/// Issue 15 (part): counters labelled by closed sets exist at 0 from startup, so Prometheus sees
/// their first event; failure-only counters too; and the build and a started-connections counter
/// are exported.
#[tokio::test]
async fn closed_label_sets_start_at_zero_and_the_build_is_exported() {
    let backend = crate::support::backends::echo_backend().await;
    let weir = Weir::start(&crate::support::pool_and_route("p", &[backend.addr], "/ws")).await;
    let text = weir.metrics().await;
    let zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(crate::support::metric(&text, name, labels), Some(0.0), "{name}{labels:?} at 0 before any event");
    };
    zero("weir_connections_total", &[("route", "p"), ("pool", "p"), ("outcome", "completed")]);
    zero("weir_connections_total", &[("route", "p"), ("pool", "p"), ("outcome", "protocol_error")]);
    zero(
        "weir_closes_total",
        &[("route", "p"), ("initiator", "client"), ("code_class", "normal"), ("cause", "client_close")],
    );
    zero("weir_handshake_rejections_total", &[("route", "none"), ("reason", "unknown_route")]);
    zero("weir_handshake_rejections_total", &[("route", "p"), ("reason", "bad_key")]);
    zero(
        "weir_protocol_violations_total",
        &[("route", "p"), ("direction", "client_to_backend"), ("reason", "unmasked_client_frame")],
    );
    zero("weir_usage_write_errors_total", &[("kind", "stop")]);
    zero("weir_connections_started_total", &[("route", "p"), ("pool", "p")]);
    let build = crate::support::metric(&text, "weir_build_info", &[("version", env!("CARGO_PKG_VERSION"))]);
    assert_eq!(build, Some(1.0), "weir_build_info");
    weir.metric_eventually("weir_resident_memory_bytes", &[], |v| v > 1e6).await;
    // The allocator's own figures (jemalloc's statistics), sampled with it: what weir holds
    // fits in the pages that hold it, and those in what stays resident.
    weir.metric_eventually("weir_heap_allocated_bytes", &[], |v| v > 1e5).await;
    let text = weir.metrics().await;
    let figure = |name| crate::support::metric(&text, name, &[]).unwrap_or_else(|| panic!("{name} missing"));
    let [allocated, active, resident] =
        ["weir_heap_allocated_bytes", "weir_heap_active_bytes", "weir_heap_resident_bytes"].map(figure);
    assert!(allocated <= active && active <= resident, "{allocated} ≤ {active} ≤ {resident}");
    let mut ws = connect(&weir, "/ws").await;
    weir.metric_eventually("weir_connections_started_total", &[("route", "p"), ("pool", "p")], |v| v == 1.0).await;
    ws.close(None).await.unwrap();
}

/// Issue 15 (part): the built-in echo backend's `backend` label is `builtin:echo`, as configured,
/// not its loopback port (new at every start).
#[tokio::test]
async fn the_builtin_echo_backend_is_labelled_as_configured() {
    let weir = Weir::start(
        "pools:\n  - {name: demo, backends: [\"builtin:echo\"], health_check: {kind: handshake, interval: 200ms}}\nroutes:\n  - {path_prefix: /echo, pool: demo}\n",
    )
    .await;
    weir.metric_eventually("weir_backend_healthy", &[("pool", "demo"), ("backend", "builtin:echo")], |v| v == 1.0)
        .await;
    let text = weir.metrics().await;
    let by_port = text.lines().filter(|l| l.starts_with("weir_backend_healthy") && l.contains("127.0.0.1:")).count();
    assert_eq!(by_port, 0, "no series by loopback port:\n{text}");
}
