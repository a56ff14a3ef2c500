//! Live operations (issue 12): the admin API lists, inspects and kicks connections, drains the
//! instance with closes spread over a window, and refuses requests without its token.

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
