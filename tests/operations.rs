//! Live operations (issue 12): the admin API lists, inspects and kicks connections, drains the
//! instance with closes spread over a window, sums up what the status page shows, and refuses
//! requests without its token.

use crate::support::backends::{echo_backend, next_event, recording_echo_backend, Event};
use crate::support::{connect, http_get, raw_request, upgrade_request, Weir, DEADLINE};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "admin-token-0123456789";

/// `method path` on the admin listener with the test token; (status, JSON body).
async fn api(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\n\r\n");
    let (status, _, body) = raw_request(admin, &req).await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn two_routes(backend: SocketAddr) -> String {
    format!(
        "pools:\n  - name: p\n    backends: [\"{backend}\"]\n    health_check: {{kind: none}}\nroutes:\n  - {{name: a, path_prefix: /a, pool: p, tenant: acme}}\n  - {{name: b, path_prefix: /b, pool: p}}\n"
    )
}

#[tokio::test]
async fn connections_are_listed_filtered_and_inspected() {
    let backend = echo_backend().await;
    let weir = Weir::start_with_admin(&two_routes(backend.addr), "", &format!("  token: \"{TOKEN}\"\n")).await;
    let _a1 = connect(&weir, "/a").await;
    let _a2 = connect(&weir, "/a").await;
    let mut b = connect(&weir, "/b").await;
    b.send(Message::text("x")).await.unwrap();
    crate::support::recv(&mut b).await;
    crate::support::eventually("3 connections listed", || async {
        let (_, all) = api(weir.admin, "GET", "/api/connections", Some(TOKEN)).await;
        (all["connections"].as_array()?.len() == 3).then_some(())
    })
    .await;
    let (status, all) = api(weir.admin, "GET", "/api/connections", Some(TOKEN)).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["connections"].as_array().unwrap().len(), 3, "{all}");
    let (_, a) = api(weir.admin, "GET", "/api/connections?route=a&tenant=acme", Some(TOKEN)).await;
    assert_eq!(a["connections"].as_array().unwrap().len(), 2, "{a}");
    let (_, page) = api(weir.admin, "GET", "/api/connections?limit=2", Some(TOKEN)).await;
    assert_eq!(page["connections"].as_array().unwrap().len(), 2);
    let after = page["next_after"].as_str().unwrap();
    let (_, rest) = api(weir.admin, "GET", &format!("/api/connections?limit=2&after={after}"), Some(TOKEN)).await;
    assert_eq!(rest["connections"].as_array().unwrap().len(), 1, "pagination: {rest}");
    let id = a["connections"][0]["id"].as_str().unwrap().to_string();
    let (status, one) = api(weir.admin, "GET", &format!("/api/connections/{id}"), Some(TOKEN)).await;
    assert_eq!((status, one["route"].as_str(), one["tenant"].as_str()), (200, Some("a"), Some("acme")), "{one}");
    assert!(one["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(api(weir.admin, "GET", "/api/connections/not-a-uuid", Some(TOKEN)).await.0, 400);
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(api(weir.admin, "GET", &format!("/api/connections/{unknown}"), Some(TOKEN)).await.0, 404);
    assert_eq!(api(weir.admin, "GET", "/api/connections?limit=many", Some(TOKEN)).await.0, 400);
}

#[tokio::test]
async fn the_api_needs_the_token_and_health_does_not() {
    let backend = echo_backend().await;
    let weir = Weir::start_with_admin(&two_routes(backend.addr), "", &format!("  token: \"{TOKEN}\"\n")).await;
    assert_eq!(api(weir.admin, "GET", "/api/connections", None).await.0, 401);
    assert_eq!(api(weir.admin, "GET", "/api/connections", Some("wrong-token-0123456789")).await.0, 401);
    assert_eq!(api(weir.admin, "GET", "/api/connections", Some(TOKEN)).await.0, 200);
    assert_eq!(http_get(weir.admin, "/metrics").await.unwrap().0, 401, "metrics need the token too");
    assert_eq!(http_get(weir.admin, "/healthz").await.unwrap().0, 200);
    assert_eq!(http_get(weir.admin, "/readyz").await.unwrap().0, 200);
}

#[tokio::test]
async fn a_kick_closes_the_client_with_its_code_and_the_backend_with_1001() {
    let (backend, mut rx) = recording_echo_backend(None).await;
    let weir = Weir::start_with_admin(&two_routes(backend.addr), "", &format!("  token: \"{TOKEN}\"\n")).await;
    let mut ws = connect(&weir, "/a").await;
    // The connection is registered right after its 101 is written.
    let id = crate::support::eventually("the connection in the list", || async {
        let (_, list) = api(weir.admin, "GET", "/api/connections", Some(TOKEN)).await;
        list["connections"][0]["id"].as_str().map(String::from)
    })
    .await;
    let (status, answer) =
        api(weir.admin, "DELETE", &format!("/api/connections/{id}?code=4000&reason=bye%20now"), Some(TOKEN)).await;
    let close = tokio::time::timeout(DEADLINE, ws.next()).await.unwrap();
    let Some(Ok(Message::Close(Some(f)))) = close else { panic!("{close:?}") };
    assert_eq!((u16::from(f.code), f.reason.as_str()), (4000, "bye now"));
    assert_eq!((status, answer["ended"].as_bool()), (200, Some(true)), "{answer}");
    loop {
        match next_event(&mut rx).await {
            Event::Msg(Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 1001);
                break;
            }
            Event::End => panic!("the backend got no close"),
            _ => {}
        }
    }
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.close.unwrap().cause, "kicked");
    let (status, _) = api(weir.admin, "DELETE", &format!("/api/connections/{id}?code=1006"), Some(TOKEN)).await;
    assert_eq!(status, 404, "gone");
}

#[tokio::test]
async fn a_drain_refuses_new_upgrades_and_spreads_the_closes_over_its_window() {
    let backend = echo_backend().await;
    let extra = "server:\n  threads: 2\n  grace_period: 10s\ndrain:\n  window: 2s\n";
    let weir = Weir::start_with_admin(&two_routes(backend.addr), extra, &format!("  token: \"{TOKEN}\"\n")).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let mut ws = connect(&weir, "/a").await;
        tasks.push(tokio::spawn(async move {
            let msg = tokio::time::timeout(DEADLINE, ws.next()).await.expect("closed in time");
            let Some(Ok(Message::Close(Some(f)))) = msg else { panic!("{msg:?}") };
            (Instant::now(), u16::from(f.code), f.reason.to_string())
        }));
    }
    crate::support::eventually("100 connections listed", || async {
        let (_, all) = api(weir.admin, "GET", "/api/connections?limit=1000", Some(TOKEN)).await;
        (all["connections"].as_array()?.len() == 100).then_some(())
    })
    .await;
    let t0 = Instant::now();
    let (status, answer) = api(weir.admin, "POST", "/api/drain", Some(TOKEN)).await;
    assert_eq!((status, answer["connections"].as_u64()), (202, Some(100)), "{answer}");
    assert_eq!(http_get(weir.admin, "/readyz").await.unwrap().0, 503, "not ready at once");
    let (status, _, _) = raw_request(weir.addr, &upgrade_request(weir.addr, "/a", "")).await.unwrap();
    assert_eq!(status, 503, "new upgrades are refused");
    let mut times = Vec::new();
    for t in tasks {
        let (at, code, reason) = t.await.unwrap();
        assert_eq!((code, reason.as_str()), (1001, "draining"));
        times.push(at - t0);
    }
    times.sort();
    assert!(times[99] <= Duration::from_millis(2500), "within the window: {:?}", times[99]);
    assert!(times[99] - times[0] >= Duration::from_millis(1000), "spread: {:?}..{:?}", times[0], times[99]);
    let records = weir.records_eventually(101).await;
    assert_eq!(records.iter().filter(|r| r.close.as_ref().is_some_and(|c| c.cause == "drained")).count(), 100);
}

/// `access_log`: one JSON line per ended connection with the fields operators grep for.
#[tokio::test]
async fn the_access_log_has_a_line_per_connection() {
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.jsonl");
    let weir = Weir::start_with(&two_routes(backend.addr), &format!("access_log: \"{}\"\n", path.display())).await;
    let mut ws = connect(&weir, "/a").await;
    ws.send(Message::text("hello")).await.unwrap();
    crate::support::recv(&mut ws).await;
    ws.close(None).await.unwrap();
    crate::support::drain_until_end(&mut ws, DEADLINE).await;
    let record = weir.records_eventually(1).await.remove(0);
    let line: Value = crate::support::eventually("an access-log line", || async {
        let text = std::fs::read_to_string(&path).ok()?;
        serde_json::from_str(text.lines().next()?).ok()
    })
    .await;
    assert_eq!(line["id"].as_str(), Some(record.identity.connection_id.to_string().as_str()), "{line}");
    assert_eq!(
        (line["route"].as_str(), line["tenant"].as_str(), line["cause"].as_str()),
        (Some("a"), Some("acme"), Some("client_close"))
    );
    assert_eq!(line["client_to_backend"]["messages"].as_u64(), Some(1));
    // `close(None)` sends a close frame without a code.
    assert_eq!((line["status"].as_u64(), line["close_code"].as_u64()), (Some(101), None));
    assert_eq!(line["close_code"].as_u64().map(|c| c as u16), record.close.unwrap().code);
}

/// Check `value` against an OpenAPI `schema` (resolving `#/components/schemas/` refs): types,
/// `required`, `nullable`, array items and object properties.
fn conforms(doc: &serde_yaml::Value, schema: &serde_yaml::Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(|r| r.as_str()) {
        let name = r.trim_start_matches("#/components/schemas/");
        return conforms(doc, &doc["components"]["schemas"][name], value, at);
    }
    if value.is_null() {
        return if schema.get("nullable").and_then(|n| n.as_bool()) == Some(true) {
            Ok(())
        } else {
            Err(format!("{at}: null where the schema does not allow it"))
        };
    }
    let ty = schema.get("type").and_then(|t| t.as_str()).unwrap_or("");
    let ok = match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !ok {
        return Err(format!("{at}: {value} is not {ty}"));
    }
    if let Some(required) = schema.get("required").and_then(|r| r.as_sequence()) {
        for key in required.iter().filter_map(|k| k.as_str()) {
            if value.get(key).is_none() {
                return Err(format!("{at}: missing required `{key}` in {value}"));
            }
        }
    }
    if let (Some(props), Some(obj)) = (schema.get("properties").and_then(|p| p.as_mapping()), value.as_object()) {
        for (k, s) in props {
            let k = k.as_str().unwrap_or("");
            if let Some(v) = obj.get(k) {
                conforms(doc, s, v, &format!("{at}.{k}"))?;
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            conforms(doc, items, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Every path and method of `docs/admin-api.yaml` is called (with a real id, an unknown one and
/// a malformed one where it takes an id): each status is one the document lists, and each JSON
/// body fits the documented schema.
#[tokio::test]
async fn the_server_answers_as_its_openapi_document_says() {
    let doc: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/admin-api.yaml")).unwrap(),
    )
    .unwrap();
    let backend = echo_backend().await;
    let weir = Weir::start_with_admin(&two_routes(backend.addr), "", &format!("  token: \"{TOKEN}\"\n")).await;
    let _ws = connect(&weir, "/a").await;
    let mut kicked = connect(&weir, "/b").await;
    let ids = crate::support::eventually("2 connections listed", || async {
        let (_, all) = api(weir.admin, "GET", "/api/connections", Some(TOKEN)).await;
        let ids: Vec<String> =
            all["connections"].as_array()?.iter().filter_map(|c| c["id"].as_str().map(String::from)).collect();
        (ids.len() == 2).then_some(ids)
    })
    .await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let mut calls: Vec<(String, String, Option<&str>)> = Vec::new();
    for (path, item) in doc["paths"].as_mapping().unwrap() {
        let path = path.as_str().unwrap();
        for method in ["get", "delete", "post"] {
            if item.get(method).is_none() || path == "/api/drain" {
                continue;
            }
            let targets: Vec<String> = if path.contains("{id}") {
                let real = if method == "delete" { &ids[1] } else { &ids[0] };
                vec![path.replace("{id}", real), path.replace("{id}", &unknown), path.replace("{id}", "nope")]
            } else if path.contains("{pool}") && !path.contains("{backend}") {
                vec![path.replace("{pool}", "p"), path.to_string()]
            } else if path == "/api/connections" {
                vec![path.to_string(), format!("{path}?route=a&limit=1"), format!("{path}?limit=x")]
            } else {
                vec![path.to_string()]
            };
            for t in targets {
                calls.push((method.to_uppercase(), t, Some(TOKEN)));
            }
            calls.push((method.to_uppercase(), path.replace("{id}", &ids[0]), None));
        }
    }
    calls.push(("POST".into(), "/api/drain".into(), Some(TOKEN)));
    for page in ["/", "/api/summary"] {
        assert!(calls.iter().any(|(_, t, _)| t == page), "{page} is documented and called");
    }
    for (method, target, token) in calls {
        let (status, body) = api(weir.admin, &method, &target, token).await;
        let template = doc["paths"]
            .as_mapping()
            .unwrap()
            .keys()
            .filter_map(|k| k.as_str())
            .find(|p| {
                // `{...}` stands for any one segment.
                let t: Vec<&str> = target.split('?').next().unwrap().split('/').collect();
                let p: Vec<&str> = p.split('/').collect();
                p.len() == t.len() && p.iter().zip(&t).all(|(p, t)| p == t || p.starts_with('{'))
            })
            .unwrap();
        let op = &doc["paths"][template][method.to_lowercase().as_str()];
        let response = op["responses"].get(status.to_string().as_str());
        assert!(response.is_some(), "{method} {target}: status {status} is not in the document ({body})");
        if let Some(schema) =
            response.unwrap().get("content").and_then(|c| c.get("application/json")).map(|c| &c["schema"])
        {
            conforms(&doc, schema, &body, &format!("{method} {target}")).unwrap();
        }
    }
    let _ = tokio::time::timeout(DEADLINE, kicked.next()).await;
}

/// `POST /api/backends/{pool}/{backend}/drain`: the backend gets no new connection and its open
/// ones get 1012 over the window; `GET /api/backends` shows it; `undrain` reverses it.
#[tokio::test]
async fn a_drained_backend_gets_no_new_connections_and_its_open_ones_move() {
    let (a, b) = (echo_backend().await, echo_backend().await);
    let routes = format!(
        "pools:\n  - name: p\n    backends: [\"{}\", \"{}\"]\n    health_check: {{kind: none}}\nroutes:\n  - {{name: ws, path_prefix: /ws, pool: p}}\n",
        a.addr, b.addr
    );
    let extra = "server:\n  threads: 2\n  grace_period: 5s\ndrain:\n  window: 500ms\n";
    let weir = Weir::start_with_admin(&routes, extra, &format!("  token: \"{TOKEN}\"\n")).await;
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(connect(&weir, "/ws").await);
    }
    assert_eq!((a.seen().len(), b.seen().len()), (2, 2), "round robin");
    let (status, body) = api(weir.admin, "POST", &format!("/api/backends/p/{}/drain", a.addr), Some(TOKEN)).await;
    assert_eq!((status, body["closing"].as_u64()), (200, Some(2)), "{body}");
    let mut moved = 0;
    for mut ws in conns {
        if let Ok(Some(Ok(Message::Close(Some(f))))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (1012, "backend draining"));
            moved += 1;
        }
    }
    assert_eq!(moved, 2, "the drained backend's two connections were closed, the others were not");
    for _ in 0..4 {
        let _ws = connect(&weir, "/ws").await;
    }
    assert_eq!((a.seen().len(), b.seen().len()), (2, 6), "every new connection went to the other backend");
    let (_, all) = api(weir.admin, "GET", "/api/backends", Some(TOKEN)).await;
    let list = all["pools"][0]["backends"].as_array().unwrap();
    let drained = list.iter().find(|x| x["address"] == a.addr.to_string()).unwrap();
    assert_eq!((drained["draining"].as_bool(), drained["healthy"].as_bool()), (Some(true), Some(true)), "{all}");
    let (status, _) = api(weir.admin, "POST", &format!("/api/backends/p/{}/undrain", a.addr), Some(TOKEN)).await;
    assert_eq!(status, 200);
    let _c1 = connect(&weir, "/ws").await;
    let _c2 = connect(&weir, "/ws").await;
    assert_eq!(a.seen().len(), 3, "it takes connections again");
    assert_eq!(api(weir.admin, "POST", "/api/backends/p/10.9.9.9:1/drain", Some(TOKEN)).await.0, 404);
    let records = weir.records_eventually(2).await;
    assert!(records.iter().filter(|r| r.close.as_ref().is_some_and(|c| c.cause == "drained")).count() >= 2);
}

/// A pool backend that starts failing its health check gets its open relays closed with 1012
/// (as object hosts' are), so clients reconnect to a healthy one.
#[tokio::test]
async fn a_backend_failing_its_health_check_gets_its_connections_closed_with_1012() {
    let (a, b) = (echo_backend().await, echo_backend().await);
    let routes = format!(
        "pools:\n  - name: p\n    backends: [\"{}\", \"{}\"]\n    health_check: {{kind: tcp, interval: 200ms}}\nroutes:\n  - {{name: ws, path_prefix: /ws, pool: p}}\n",
        a.addr, b.addr
    );
    let weir = Weir::start_with(&routes, "server:\n  threads: 2\n  grace_period: 5s\ndrain:\n  window: 200ms\n").await;
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(connect(&weir, "/ws").await);
    }
    assert_eq!(a.seen().len(), 2);
    a.stop(); // its listener closes: the next probe fails; open connections keep running
    let mut closed = 0;
    for mut ws in conns {
        if let Ok(Some(Ok(Message::Close(Some(f))))) =
            tokio::time::timeout(Duration::from_millis(1500), ws.next()).await
        {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (1012, "backend unhealthy"));
            closed += 1;
        }
    }
    assert_eq!(closed, 2, "only the failing backend's connections");
}

/// With `close_unhealthy: false` a backend that fails its health check gets no new connection,
/// but its open ones keep running.
#[tokio::test]
async fn close_unhealthy_false_leaves_a_failing_backends_connections_open() {
    let (a, b) = (echo_backend().await, echo_backend().await);
    let routes = format!(
        "pools:\n  - name: p\n    backends: [\"{}\", \"{}\"]\n    health_check: {{kind: tcp, interval: 200ms}}\n    close_unhealthy: false\nroutes:\n  - {{name: ws, path_prefix: /ws, pool: p}}\n",
        a.addr, b.addr
    );
    let weir = Weir::start_with(&routes, "drain:\n  window: 200ms\n").await;
    let mut conns = Vec::new();
    for _ in 0..2 {
        conns.push(connect(&weir, "/ws").await);
    }
    assert_eq!((a.seen().len(), b.seen().len()), (1, 1));
    a.stop();
    let backend = a.addr.to_string();
    weir.metric_eventually("weir_backend_healthy", &[("backend", backend.as_str())], |v| v == 0.0).await;
    // The health change has been handled: both connections still echo.
    for (i, ws) in conns.iter_mut().enumerate() {
        ws.send(Message::text(format!("still {i}"))).await.unwrap();
        assert_eq!(crate::support::recv(ws).await, Message::text(format!("still {i}")));
    }
    let _fresh = connect(&weir, "/ws").await;
    assert_eq!(b.seen().len(), 2, "new connections avoid the unhealthy backend");
}

/// `GET /api/summary`: open connections by route and tenant, closes by cause, and today's usage
/// per tenant with each connection counted once (the ended one from its stop record, the open one
/// with its counts so far).
#[tokio::test]
async fn the_summary_counts_each_connection_once() {
    let backend = echo_backend().await;
    let weir = Weir::start_with_admin(&two_routes(backend.addr), "", &format!("  token: \"{TOKEN}\"\n")).await;
    let mut open = connect(&weir, "/a").await;
    open.send(Message::text("one")).await.unwrap();
    crate::support::recv(&mut open).await;
    let mut ended = connect(&weir, "/a").await;
    ended.send(Message::text("two")).await.unwrap();
    crate::support::recv(&mut ended).await;
    ended.close(None).await.unwrap();
    crate::support::drain_until_end(&mut ended, DEADLINE).await;
    let _untenanted = connect(&weir, "/b").await;
    // The open connection's counts are observed right after its relay moved the bytes.
    let acme_messages =
        |s: &Value| s["today"]["tenants"].as_array()?.iter().find(|t| t["tenant"] == "acme")?["messages"].as_u64();
    let summary = crate::support::eventually("one ended, two open, four messages", || async {
        let (status, s) = api(weir.admin, "GET", "/api/summary", Some(TOKEN)).await;
        assert_eq!(status, 200, "{s}");
        let done = s["open"] == 2 && s["ended_total"] == 1 && s["newest"].as_array()?.len() == 2;
        (done && acme_messages(&s) == Some(4)).then_some(s)
    })
    .await;
    assert_eq!(
        summary["routes"],
        serde_json::json!([{"route": "a", "connections": 1}, {"route": "b", "connections": 1}])
    );
    assert_eq!(
        summary["tenants"],
        serde_json::json!([{"tenant": null, "connections": 1}, {"tenant": "acme", "connections": 1}])
    );
    assert_eq!(summary["started_total"], 3, "{summary}");
    assert_eq!(summary["closes"], serde_json::json!([{"cause": "client_close", "count": 1}]));
    assert_eq!(summary["newest"][0]["route"], "b", "newest first: {summary}");
    let today = &summary["today"];
    let acme = today["tenants"].as_array().unwrap().iter().find(|t| t["tenant"] == "acme").unwrap();
    assert_eq!((acme["connections"].as_u64(), acme["messages"].as_u64()), (Some(2), Some(4)), "{today}");
    let record = weir.records_eventually(1).await.remove(0);
    let (up, down) = (record.client_to_backend.wire_bytes, record.backend_to_client.wire_bytes);
    assert!(
        acme["client_to_backend_bytes"].as_u64().unwrap() > up,
        "the ended one's bytes plus the open one's: {today}"
    );
    assert!(acme["backend_to_client_bytes"].as_u64().unwrap() > down, "{today}");
    let untenanted = today["tenants"].as_array().unwrap().iter().find(|t| t["tenant"].is_null()).unwrap();
    assert_eq!(untenanted["connections"], 1, "{today}");
    assert_eq!((today["other"].clone(), today["max_tenants"].as_u64()), (Value::Null, Some(1000)));
    assert_eq!(api(weir.admin, "GET", "/api/summary", None).await.0, 401);
}

// ---- pushes, objects and rebalance (issue 12) -------------------------------------------------

/// `method path` on the admin listener with the test token, a `content_type` and a raw body;
/// (status, JSON body).
async fn api_send(admin: SocketAddr, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let io = async {
        let mut s = tokio::net::TcpStream::connect(admin).await?;
        s.write_all(head.as_bytes()).await?;
        // A body over the limit is answered before it is read: the write may then fail.
        let _ = s.write_all(body).await;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(DEADLINE, io).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The id of the only open connection, once it is listed.
async fn only_connection(weir: &Weir) -> String {
    crate::support::eventually("the connection in the list", || async {
        let (_, list) = api(weir.admin, "GET", "/api/connections", Some(TOKEN)).await;
        list["connections"][0]["id"].as_str().map(String::from)
    })
    .await
}

#[tokio::test]
async fn a_push_reaches_the_client_only_and_is_metered_as_the_gateways() {
    let (backend, mut rx) = recording_echo_backend(None).await;
    let weir = Weir::start_with_admin(&two_routes(backend.addr), "", &format!("  token: \"{TOKEN}\"\n")).await;
    let mut ws = connect(&weir, "/a").await;
    let id = only_connection(&weir).await;
    let path = format!("/api/connections/{id}/messages");
    let (status, answer) = api_send(weir.admin, "POST", &path, "text/plain", b"hello from weir").await;
    assert_eq!((status, answer["queued"].as_bool()), (200, Some(true)), "{answer}");
    assert_eq!(crate::support::recv(&mut ws).await, Message::text("hello from weir"));
    let (status, _) = api_send(weir.admin, "POST", &format!("{path}?type=binary"), "text/plain", &[0, 1, 2]).await;
    assert_eq!(status, 200);
    assert_eq!(crate::support::recv(&mut ws).await, Message::binary(vec![0u8, 1, 2]));
    // Bad inputs.
    let unknown = uuid::Uuid::now_v7().to_string();
    let (status, _) =
        api_send(weir.admin, "POST", &format!("/api/connections/{unknown}/messages"), "text/plain", b"x").await;
    assert_eq!(status, 404);
    assert_eq!(api_send(weir.admin, "POST", &path, "text/plain", &[0xff, 0xfe]).await.0, 400, "not UTF-8");
    assert_eq!(api_send(weir.admin, "POST", &path, "text/plain", &vec![b'a'; 64 * 1024 + 1]).await.0, 413);
    assert_eq!(api_send(weir.admin, "POST", &path, "image/png", b"x").await.0, 415);
    ws.close(None).await.unwrap();
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!((r.gateway.messages, r.gateway.payload_bytes), (2, 15 + 3), "{r:?}");
    assert_eq!((r.client_to_backend.messages, r.backend_to_client.messages), (0, 0), "{r:?}");
    loop {
        match next_event(&mut rx).await {
            Event::Msg(Message::Text(t)) => panic!("the backend saw the push: {t}"),
            Event::Msg(Message::Binary(b)) => panic!("the backend saw the push: {b:?}"),
            Event::End => break,
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_push_waits_for_the_backends_fragmented_message_to_end() {
    use crate::support::wire::{accept_for, frame, head_header, RawConn};
    let (to_backend, from_test) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let from_test = std::sync::Arc::new(tokio::sync::Mutex::new(Some(from_test)));
    let backend = crate::support::backends::raw_backend(move |stream| {
        let from_test = from_test.clone();
        async move {
            let Some(mut frames) = from_test.lock().await.take() else { return };
            let mut conn = RawConn::new(stream);
            let head = conn.read_head().await;
            let key = head_header(&head, "sec-websocket-key").unwrap().to_string();
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                accept_for(&key)
            );
            conn.write(answer.as_bytes()).await;
            while let Some(bytes) = frames.recv().await {
                conn.write(&bytes).await;
            }
            let _ = conn.read_to_end().await;
        }
    })
    .await;
    let weir = Weir::start_with_admin(&two_routes(backend.addr), "", &format!("  token: \"{TOKEN}\"\n")).await;
    let (mut client, _) = crate::support::wire::raw_client(weir.addr, "/a", "", b"").await;
    let id = only_connection(&weir).await;
    let first = frame(0x01, None, b"first half, ");
    to_backend.send(first.clone()).unwrap();
    assert_eq!(client.read_frame().await.unwrap().raw, first);
    let path = format!("/api/connections/{id}/messages");
    let (status, answer) = api_send(weir.admin, "POST", &path, "text/plain", b"pushed").await;
    assert_eq!(status, 200, "{answer}");
    // The push is queued until the backend's message ends: then it is the next frame.
    let waiting = api(weir.admin, "GET", &format!("/api/connections/{id}"), Some(TOKEN)).await.1;
    assert_eq!(waiting["pushes_waiting"], 1, "{waiting}");
    let last = frame(0x80, None, b"second half");
    to_backend.send(last.clone()).unwrap();
    assert_eq!(client.read_frame().await.unwrap().raw, last, "the final fragment comes first");
    let pushed = client.read_frame().await.unwrap();
    assert_eq!((pushed.b0, pushed.masked, pushed.payload.as_slice()), (0x81, false, &b"pushed"[..]));
}

fn room_config() -> String {
    "objects:\n  - {name: rooms, id: {path: \"/rooms/{id}\"}, builtin: room}\nroutes:\n  - {name: rooms, path_prefix: /rooms, object: rooms}\n".to_string()
}

/// The next message of a room member that is not a weir event.
async fn room_message(ws: &mut crate::support::Client) -> Message {
    loop {
        let m = crate::support::recv(ws).await;
        if !matches!(&m, Message::Text(t) if t.as_str().contains("\"weir\"")) {
            return m;
        }
    }
}

#[tokio::test]
async fn a_push_to_a_room_reaches_every_member_and_stays_in_history() {
    let weir = Weir::start_with_admin(&room_config(), "", &format!("  token: \"{TOKEN}\"\n")).await;
    let mut a = connect(&weir, "/rooms/lobby").await;
    let mut b = connect(&weir, "/rooms/lobby").await;
    let (status, all) = crate::support::eventually("the room listed with 2 connections", || async {
        let (status, all) = api(weir.admin, "GET", "/api/objects", Some(TOKEN)).await;
        (all["objects"][0]["connections"] == 2).then_some((status, all))
    })
    .await;
    assert_eq!(status, 200);
    let room = &all["objects"][0];
    assert_eq!(
        (room["namespace"].as_str(), room["id"].as_str(), room["host"].as_str()),
        (Some("rooms"), Some("lobby"), Some("builtin:room")),
        "{all}"
    );
    assert_eq!(room["connection_ids"].as_array().unwrap().len(), 2);
    assert!(room["occupied_seconds"].as_f64().unwrap() >= 0.0 && room["occupied_since"].is_string());
    let (status, one) = api(weir.admin, "GET", "/api/objects/rooms/lobby", Some(TOKEN)).await;
    assert_eq!((status, one["id"].as_str()), (200, Some("lobby")), "{one}");
    assert_eq!(api(weir.admin, "GET", "/api/objects/rooms/empty", Some(TOKEN)).await.0, 404);
    assert_eq!(api(weir.admin, "GET", "/api/objects/nope/lobby", Some(TOKEN)).await.0, 404);

    let (status, answer) =
        api_send(weir.admin, "POST", "/api/objects/rooms/lobby/messages", "text/plain", b"announcement").await;
    assert_eq!((status, answer["room_members"].as_u64()), (200, Some(2)), "{answer}");
    assert_eq!(room_message(&mut a).await, Message::text("announcement"));
    assert_eq!(room_message(&mut b).await, Message::text("announcement"));
    let mut c = connect(&weir, "/rooms/lobby").await;
    assert_eq!(room_message(&mut c).await, Message::text("announcement"), "in the history");
    let (status, _) = api_send(weir.admin, "POST", "/api/objects/rooms/empty/messages", "text/plain", b"x").await;
    assert_eq!(status, 404, "an unoccupied object");
    // A push to one member's connection reaches that member only.
    let ids: Vec<String> = api(weir.admin, "GET", "/api/connections", Some(TOKEN)).await.1["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    let first = ids.first().unwrap();
    let (status, _) =
        api_send(weir.admin, "POST", &format!("/api/connections/{first}/messages"), "text/plain", b"just you").await;
    assert_eq!(status, 200);
    assert_eq!(room_message(&mut a).await, Message::text("just you"), "the oldest connection is a's");
}

#[tokio::test]
async fn a_rebalance_evens_out_a_least_connections_pool() {
    let (a, b) = (echo_backend().await, echo_backend().await);
    let config = format!(
        "pools:\n  - name: p\n    selection: least_connections\n    backends: [\"{}\", \"{}\"]\n    health_check: {{kind: none}}\nroutes:\n  - {{name: a, path_prefix: /a, pool: p}}\n",
        a.addr, b.addr
    );
    let extra = "drain:\n  window: 1s\n";
    let weir = Weir::start_with_admin(&config, extra, &format!("  token: \"{TOKEN}\"\n")).await;
    let b_label = b.addr.to_string();
    assert_eq!(api(weir.admin, "POST", &format!("/api/backends/p/{b_label}/drain"), Some(TOKEN)).await.0, 200);
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(connect(&weir, "/a").await);
    }
    let per_backend = |all: &Value| {
        let backends = all["pools"][0]["backends"].as_array().unwrap().clone();
        backends.iter().map(|b| b["connections"].as_u64().unwrap()).collect::<Vec<_>>()
    };
    crate::support::eventually("20 on a", || async {
        let (_, all) = api(weir.admin, "GET", "/api/backends", Some(TOKEN)).await;
        (per_backend(&all) == [20, 0]).then_some(())
    })
    .await;
    assert_eq!(api(weir.admin, "POST", &format!("/api/backends/p/{b_label}/undrain"), Some(TOKEN)).await.0, 200);
    let (status, answer) = api(weir.admin, "POST", "/api/pools/p/rebalance", Some(TOKEN)).await;
    assert_eq!(
        (status, answer["closing"].as_u64(), answer["evens_out"].as_bool()),
        (200, Some(10), Some(true)),
        "{answer}"
    );
    assert_eq!(answer["per_backend"][a.addr.to_string()], 10, "{answer}");
    // Each closed client reconnects, as a real one would.
    let mut tasks = Vec::new();
    for mut ws in clients {
        let url = weir.url("/a");
        tasks.push(tokio::spawn(async move {
            // The clients not closed wait here, open, until the test aborts them.
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => {
                    assert_eq!(u16::from(f.code), 1012);
                    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                    let _open = ws;
                    std::future::pending::<()>().await;
                }
                other => panic!("{other:?}"),
            }
        }));
    }
    crate::support::eventually("10 and 10", || async {
        let (_, all) = api(weir.admin, "GET", "/api/backends", Some(TOKEN)).await;
        let n = per_backend(&all);
        (n.iter().sum::<u64>() == 20 && n.iter().all(|c| (9..=11).contains(c))).then_some(())
    })
    .await;
    for t in tasks {
        t.abort();
    }
}

/// Built-in objects obey the same orders as relayed connections: a kick closes a room member
/// with its code (the room sees it leave), a push reaches an echo object's client, and a drain
/// closes an echo object's connection with 1001.
#[tokio::test]
async fn built_in_objects_take_kicks_pushes_and_drains() {
    let config = "objects:\n  - {name: rooms, id: {path: \"/rooms/{id}\"}, builtin: room}\n  - {name: eo, id: {path: \"/obj/{id}\"}, builtin: echo}\nroutes:\n  - {name: rooms, path_prefix: /rooms, object: rooms}\n  - {name: eo, path_prefix: /obj, object: eo}\n";
    let weir = Weir::start_with_admin(config, "drain:\n  window: 200ms\n", &format!("  token: \"{TOKEN}\"\n")).await;
    let mut a = connect(&weir, "/rooms/lobby").await;
    let mut b = connect(&weir, "/rooms/lobby").await;
    let mut e = connect(&weir, "/obj/x").await;
    let ids = crate::support::eventually("3 connections listed", || async {
        let (_, all) = api(weir.admin, "GET", "/api/connections", Some(TOKEN)).await;
        let list = all["connections"].as_array()?.clone();
        (list.len() == 3).then_some(list)
    })
    .await;
    let id_of = |route: &str, nth: usize| {
        ids.iter().filter(|c| c["route"] == route).nth(nth).and_then(|c| c["id"].as_str()).unwrap().to_string()
    };
    // The oldest room connection is `a`.
    let (status, body) =
        api(weir.admin, "DELETE", &format!("/api/connections/{}?code=4000&reason=bye", id_of("rooms", 0)), Some(TOKEN))
            .await;
    assert_eq!((status, body["ended"].as_bool()), (200, Some(true)), "{body}");
    let end = crate::support::drain_until_end(&mut a, DEADLINE).await;
    let code = end.iter().find_map(|m| match m {
        Message::Close(Some(f)) => Some((u16::from(f.code), f.reason.to_string())),
        _ => None,
    });
    assert_eq!(code, Some((4000, "bye".to_string())), "{end:?}");
    // b hears a's leave (its events are JSON text; bounded by the deadline).
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        assert!(std::time::Instant::now() < until, "b never saw a leave");
        if let Message::Text(t) = crate::support::recv(&mut b).await {
            if t.as_str().contains("leave") {
                break;
            }
        }
    }
    // A push to the echo object's client.
    let path = format!("/api/connections/{}/messages", id_of("eo", 0));
    let (status, answer) = api_send(weir.admin, "POST", &path, "text/plain", b"from the operator").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(crate::support::recv(&mut e).await, Message::text("from the operator"));
    // The echo still echoes, then a drain closes it with 1001.
    e.send(Message::text("still")).await.unwrap();
    assert_eq!(crate::support::recv(&mut e).await, Message::text("still"));
    assert_eq!(api(weir.admin, "POST", "/api/drain", Some(TOKEN)).await.0, 202);
    let end = crate::support::drain_until_end(&mut e, DEADLINE).await;
    assert!(end.iter().any(|m| matches!(m, Message::Close(Some(f)) if u16::from(f.code) == 1001)), "{end:?}");
    let records = weir.records_eventually(3).await;
    let causes: Vec<_> = records.iter().filter_map(|r| r.close.as_ref().map(|c| c.cause.to_string())).collect();
    assert!(causes.contains(&"kicked".to_string()) && causes.contains(&"drained".to_string()), "{causes:?}");
}
