//! Billing against a real PostgreSQL (a private cluster per test, `support::postgres`): the file
//! and postgres sinks end up with the same records, a 30 s PostgreSQL outage under load loses and
//! duplicates nothing, and `weir usage` gives the same totals from either sink.

use crate::support::backends::{echo_backend, ws_config};
use crate::support::postgres::Postgres;
use crate::support::tls::TestCert;
use crate::support::{eventually, metric, Weir, DEADLINE};
use futures_util::{SinkExt, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Two routes to one echo pool, billed to two tenants.
fn routes(echo: SocketAddr) -> String {
    format!(
        "pools:\n  - name: p\n    backends: [\"{echo}\"]\n    health_check: {{kind: none}}\nroutes:\n  - name: chat\n    path_prefix: /chat\n    pool: p\n    tenant: acme\n  - name: feed\n    path_prefix: /feed\n    pool: p\n    tenant: globex\n"
    )
}

/// A `usage:` section with a file sink at `file` and a postgres sink at `url`, interims every 1s.
fn usage(dir: &Path, file: &Path, url: &str) -> String {
    format!(
        "usage:\n  spool_dir: \"{}\"\n  fsync_interval: 20ms\n  interim_interval: 1s\n  sinks:\n    - {{kind: file, path: \"{}\"}}\n    - {{kind: postgres, url: \"{url}\"}}\n",
        dir.join("spool").display(),
        file.display()
    )
}

/// Every record the file sink wrote (rotated files included), as JSON, duplicates kept.
fn file_records(file: &Path) -> Vec<serde_json::Value> {
    weir::billing::sinks::file::files(file)
        .iter()
        .flat_map(|p| crate::support::complete_lines(p))
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
        .collect()
}

/// The distinct idempotency keys in the file sink.
fn file_keys(file: &Path) -> BTreeSet<String> {
    file_records(file).iter().map(|r| r["idempotency_key"].as_str().expect("idempotency_key").to_string()).collect()
}

/// Connections with a `stop` record in the file sink.
fn file_stops(file: &Path) -> usize {
    file_records(file)
        .iter()
        .filter(|r| r["record"] == "stop")
        .map(|r| r["connection_id"].to_string())
        .collect::<BTreeSet<_>>()
        .len()
}

/// `weir_sink_records_pending{sink}` now.
async fn pending(weir: &Weir, sink: &str) -> Option<f64> {
    metric(&weir.metrics().await, "weir_sink_records_pending", &[("sink", sink)])
}

/// Poll `f` every 100 ms until it returns `Some`, or panic with `what` after `within`.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < within, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval; the loop re-checks
    }
}

/// Wait (bounded by `within`) until both sinks have every record: `stops` connections have a
/// `stop` in the file, nothing is pending for either sink, and the table holds as many keys as
/// the file.
async fn wait_delivered(weir: &Weir, pg: &Postgres, file: &Path, stops: usize, within: Duration) {
    wait_for("both sinks to have every record", within, || async {
        if file_stops(file) < stops {
            return None;
        }
        if pending(weir, "file").await != Some(0.0) || pending(weir, "postgres").await != Some(0.0) {
            return None;
        }
        let keys = file_keys(file).len() as i64;
        let rows = pg.try_query("SELECT count(*) FROM weir_usage").await.ok()?;
        (rows.first()?.first()?.parse::<i64>().ok()? == keys).then_some(())
    })
    .await;
}

/// The table holds each key once, and exactly the file's (deduplicated) keys; every connection's
/// records are numbered 0..=n without a gap and end with its `stop`.
async fn assert_same_records(pg: &Postgres, file: &Path) {
    let file_keys = file_keys(file);
    let rows = pg.query("SELECT idempotency_key FROM weir_usage").await;
    let table: Vec<String> = rows.into_iter().map(|r| r[0].clone()).collect();
    let table_keys: BTreeSet<String> = table.iter().cloned().collect();
    assert_eq!(table.len(), table_keys.len(), "no key twice in the table");
    let (total, distinct) = {
        let r = pg.query("SELECT count(*), count(DISTINCT idempotency_key) FROM weir_usage").await;
        (r[0][0].parse::<usize>().unwrap(), r[0][1].parse::<usize>().unwrap())
    };
    assert_eq!(
        (total, distinct),
        (file_keys.len(), file_keys.len()),
        "count(*) = count(distinct key) = distinct keys in the file"
    );
    let missing: Vec<&String> = file_keys.difference(&table_keys).take(5).collect();
    let extra: Vec<&String> = table_keys.difference(&file_keys).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "keys in the file only: {missing:?}; in the table only: {extra:?}");
    let gaps = pg
        .count(
            "SELECT count(*) FROM (
                SELECT max((body->>'seq')::bigint) AS last, count(*) AS n,
                       max((body->>'seq')::bigint) FILTER (WHERE record = 'stop') AS stop_seq
                FROM weir_usage WHERE record IN ('start', 'interim', 'stop') GROUP BY connection_id) c
             WHERE last + 1 <> n OR stop_seq IS DISTINCT FROM last",
        )
        .await;
    assert_eq!(gaps, 0, "every connection's records are 0..=n with its stop last");
}

/// One client session on `url`: connect, `messages` echoes, close. Returns false if weir
/// refused or broke it.
async fn session(url: &str, messages: usize) -> bool {
    let Ok(Ok((mut ws, _))) =
        tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), false))
            .await
    else {
        return false;
    };
    for i in 0..messages {
        if ws.send(Message::text(format!("m{i}"))).await.is_err() {
            return false;
        }
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => {}
            _ => return false,
        }
    }
    let _ = ws.close(None).await;
    // Read to the end (bounded) so weir sees a clean close before the session counts as done.
    for _ in 0..100 {
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
    true
}

/// Run `weir usage` with `args`; returns stdout, panicking with stderr on failure.
fn weir_usage(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("usage")
        .args(args)
        .output()
        .expect("run weir usage");
    assert!(out.status.success(), "weir usage {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[tokio::test]
async fn file_and_postgres_sinks_hold_the_same_records_and_weir_usage_agrees() {
    let pg = Postgres::start_new().await;
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("usage.jsonl");
    let weir = Weir::start_with(&routes(echo.addr), &usage(dir.path(), &file, &pg.url())).await;

    // Two long-lived connections (one per tenant) that live through interim records.
    let mut long = Vec::new();
    for path in ["/chat/long", "/feed/long"] {
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(weir.url(path), Some(ws_config()), false).await.unwrap();
        ws.send(Message::text("hello")).await.unwrap();
        assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
        long.push(ws);
    }
    // Short sessions: 6 × 3 messages for acme, 4 × 5 for globex.
    for _ in 0..6 {
        assert!(session(&weir.url("/chat"), 3).await);
    }
    for _ in 0..4 {
        assert!(session(&weir.url("/feed"), 5).await);
    }
    eventually("two interim records per long connection", || async {
        let interims = file_records(&file).iter().filter(|r| r["record"] == "interim").count();
        (interims >= 4).then_some(())
    })
    .await;
    for mut ws in long {
        ws.close(None).await.unwrap();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, ws.next()).await {}
    }
    wait_delivered(&weir, &pg, &file, 12, DEADLINE).await;
    assert_same_records(&pg, &file).await;
    let interims = pg.count("SELECT count(*) FROM weir_usage WHERE record = 'interim'").await;
    assert!(interims >= 4, "interim records reached the table: {interims}");

    // `weir usage` gives the same totals from either sink, for every grouping and format.
    let url = pg.url();
    let path = file.display().to_string();
    for by in ["tenant", "route", "object", "day"] {
        for format in ["json", "csv", "table"] {
            let from_file = weir_usage(&["--file", &path, "--by", by, "--format", format]);
            let from_pg = weir_usage(&["--postgres", &url, "--by", by, "--format", format]);
            assert_eq!(from_file, from_pg, "--by {by} --format {format}");
        }
    }
    // A range cut inside connections, with records exactly at both ends.
    let mut times: Vec<String> = file_records(&file).iter().map(|r| r["at"].as_str().unwrap().to_string()).collect();
    times.sort();
    let (from, to) = (&times[times.len() / 3], &times[times.len() * 3 / 4]);
    assert!(from < to, "records at distinct times: {times:?}");
    for by in ["tenant", "day"] {
        let from_file = weir_usage(&["--file", &path, "--from", from, "--to", to, "--by", by, "--format", "json"]);
        let from_pg = weir_usage(&["--postgres", &url, "--from", from, "--to", to, "--by", by, "--format", "json"]);
        assert_eq!(from_file, from_pg, "--from {from} --to {to} --by {by}");
        assert_ne!(from_file, "[]\n", "the range holds records");
    }
    let json = weir_usage(&["--postgres", &url, "--table", "weir_usage", "--by", "tenant", "--format", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let by_tenant: BTreeMap<&str, &serde_json::Value> =
        rows.iter().map(|r| (r["tenant"].as_str().unwrap(), r)).collect();
    assert_eq!(by_tenant.keys().copied().collect::<Vec<_>>(), vec!["acme", "globex"], "{json}");
    let (acme, globex) = (by_tenant["acme"], by_tenant["globex"]);
    assert_eq!((acme["connections"].as_u64(), globex["connections"].as_u64()), (Some(7), Some(5)), "{json}");
    assert_eq!(
        (acme["messages_in"].as_u64(), acme["messages_out"].as_u64()),
        (Some(6 * 3 + 1), Some(6 * 3 + 1)),
        "{json}"
    );
    assert_eq!(
        (globex["messages_in"].as_u64(), globex["messages_out"].as_u64()),
        (Some(4 * 5 + 1), Some(4 * 5 + 1)),
        "{json}"
    );
    // "m0".."m4" and "hello" are 2 and 5 bytes.
    assert_eq!(
        (acme["bytes_in"].as_u64(), globex["bytes_out"].as_u64()),
        (Some(6 * 3 * 2 + 5), Some(4 * 5 * 2 + 5)),
        "{json}"
    );
    assert!(
        acme["connection_seconds"].as_f64().unwrap() >= 2.0,
        "the long connection lived through two interims: {json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_30s_under_load_loses_and_duplicates_nothing() {
    let mut pg = Postgres::start_new().await;
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("usage.jsonl");
    let weir = Weir::start_with(&routes(echo.addr), &usage(dir.path(), &file, &pg.url())).await;

    // The load: 10 clients cycling short sessions (paced, so it stays bounded), and 3 long-lived
    // connections sending a message every 200 ms (they get an interim record every second).
    let stop = Arc::new(AtomicBool::new(false));
    let sessions = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for i in 0..10 {
        let (stop, sessions) = (stop.clone(), sessions.clone());
        let url = weir.url(if i % 2 == 0 { "/chat" } else { "/feed" });
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                assert!(session(&url, 3).await, "a session through weir failed");
                sessions.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await; // pacing, not synchronisation
            }
        }));
    }
    for i in 0..3 {
        let stop = stop.clone();
        let url = weir.url(if i % 2 == 0 { "/chat/long" } else { "/feed/long" });
        load.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), false)
                .await
                .expect("long connection");
            while !stop.load(Ordering::Relaxed) {
                ws.send(Message::text("tick")).await.expect("send");
                assert!(matches!(tokio::time::timeout(DEADLINE, ws.next()).await, Ok(Some(Ok(Message::Text(_))))));
                tokio::time::sleep(Duration::from_millis(200)).await; // pacing
            }
            ws.close(None).await.expect("close");
            while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, ws.next()).await {}
        }));
    }
    eventually("records in the table", || async {
        // The sink creates the table on its first delivery.
        let rows = pg.try_query("SELECT count(*) FROM weir_usage").await.ok()?;
        (rows.first()?.first()?.parse::<i64>().ok()? > 0).then_some(())
    })
    .await;

    // PostgreSQL goes away for 30 s while the load goes on.
    let errors = |text: &str| metric(text, "weir_sink_delivery_errors_total", &[("sink", "postgres")]).unwrap_or(0.0);
    let errors_before = errors(&weir.metrics().await);
    pg.stop();
    let down_at = Instant::now();
    let outage = Duration::from_secs(30);
    wait_for("postgres delivery errors and pending records", outage, || async {
        let text = weir.metrics().await;
        let pending = metric(&text, "weir_sink_records_pending", &[("sink", "postgres")]).unwrap_or(0.0);
        (errors(&text) > errors_before && pending > 0.0).then_some(())
    })
    .await;
    tokio::time::sleep_until((down_at + outage).into()).await; // the outage's length, not a wait for an event
    let pending_at_end = pending(&weir, "postgres").await.unwrap_or(0.0);
    assert!(pending_at_end > 0.0, "records wait for PostgreSQL after 30 s down");
    let sessions_during = sessions.load(Ordering::Relaxed);
    pg.start().await;

    // Stop the load; every connection ends cleanly.
    stop.store(true, Ordering::Relaxed);
    for task in load {
        tokio::time::timeout(DEADLINE, task).await.expect("load task ends").expect("load task did not fail");
    }
    let connections = sessions.load(Ordering::Relaxed) as usize + 3;
    assert!(sessions_during > 100, "the load ran: {sessions_during} sessions");

    // Delivery resumes after its backoff (up to 30 s) and catches up.
    wait_delivered(&weir, &pg, &file, connections, Duration::from_secs(90)).await;
    assert_same_records(&pg, &file).await;
    let stops = pg.count("SELECT count(*) FROM weir_usage WHERE record = 'stop'").await;
    assert_eq!(stops as usize, connections, "one stop per connection in the table");
    let records = pg.count("SELECT count(*) FROM weir_usage").await;
    let failed = errors(&weir.metrics().await) - errors_before;
    eprintln!("{connections} connections, {records} records, {failed} failed postgres deliveries, {pending_at_end} pending after 30 s down");
}

/// `usage:` with one postgres sink at `url` (no file sink).
fn pg_only(dir: &Path, url: &str) -> String {
    format!(
        "usage:\n  spool_dir: \"{}\"\n  fsync_interval: 20ms\n  sinks:\n    - {{kind: postgres, name: pg, url: \"{url}\"}}\n",
        dir.join("spool").display()
    )
}

#[tokio::test]
async fn records_reach_a_tls_only_postgres_with_verify_full() {
    let cert = TestCert::for_names(&["localhost", "127.0.0.1"]);
    let pg = Postgres::start_new_tls(&cert).await;
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{} sslmode=verify-full sslrootcert={}", pg.url(), cert.cert.display());
    let weir = Weir::start_with(&routes(echo.addr), &pg_only(dir.path(), &url)).await;
    assert!(session(&weir.url("/chat"), 2).await, "the session failed:\n{}", weir.log());
    eventually("the stop record in PostgreSQL", || async {
        let n = pg.try_query("SELECT count(*) FROM weir_usage WHERE record = 'stop'").await.ok()?;
        (n.first()?.first()? == "1").then_some(())
    })
    .await;
    let rows =
        pg.query("SELECT tenant, (body->'client_to_backend'->>'messages') FROM weir_usage WHERE record = 'stop'").await;
    assert_eq!(rows, vec![vec!["acme".to_string(), "2".to_string()]]);
    // The server saw the session over TLS (it accepts no other TCP session).
    assert!(pg.count("SELECT count(*) FROM pg_stat_ssl WHERE ssl").await >= 1, "weir's session is over TLS");
}

#[tokio::test]
async fn sslmode_require_against_a_server_without_tls_fails_and_keeps_the_records() {
    let pg = Postgres::start_new().await;
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{} sslmode=require", pg.url());
    let weir = Weir::start_with(&routes(echo.addr), &pg_only(dir.path(), &url)).await;
    assert!(session(&weir.url("/chat"), 1).await);
    weir.metric_eventually("weir_sink_delivery_errors_total", &[("sink", "pg")], |v| v >= 1.0).await;
    weir.metric_eventually("weir_sink_records_pending", &[("sink", "pg")], |v| v >= 2.0).await;
    eventually("the log to say the server has no TLS", || async {
        weir.log().lines().any(|l| l.contains("usage sink failed") && l.contains("TLS")).then_some(())
    })
    .await;
    let tables = pg.query("SELECT count(*) FROM pg_tables WHERE tablename = 'weir_usage'").await;
    assert_eq!(tables, vec![vec!["0".to_string()]], "nothing reached the server in plaintext");
}
