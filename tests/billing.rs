//! The billing pipeline: start/interim/stop records, tenants and active time; the spool's
//! behaviour under kill -9, a flaky HTTP collector and a full disk.

use crate::support::backends::echo_backend;
use crate::support::{connect, eventually, raw_request, recv, upgrade_request, Weir, DEADLINE};
use futures_util::SinkExt;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// `usage:` YAML with the spool in `dir` and the given sinks (YAML list items, indented 4).
pub(crate) fn usage_yaml(dir: &Path, interim: &str, sinks: &str) -> String {
    format!(
        "usage:\n  spool_dir: \"{}\"\n  fsync_interval: 20ms\n  interim_interval: {interim}\n  idle_threshold: 300ms\n  default_tenant: nobody\n  sinks:\n{sinks}",
        dir.join("spool").display()
    )
}

pub(crate) fn file_sink(dir: &Path) -> String {
    format!("    - {{kind: file, path: \"{}\"}}\n", dir.join("usage.jsonl").display())
}

/// Routes `/a` (tenant acme) and `/b` (no tenant: the default) to `backend`.
pub(crate) fn routes(backend: SocketAddr) -> String {
    format!(
        "pools:\n  - {{name: p, backends: [\"{backend}\"], health_check: {{kind: none}}}}\nroutes:\n  - {{name: a, path_prefix: /a, pool: p, tenant: acme}}\n  - {{name: b, path_prefix: /b, pool: p}}\n"
    )
}

/// Every record in the file sink (rotated files included), deduplicated by idempotency key.
pub(crate) fn sink_records(path: &Path) -> Vec<Value> {
    let mut seen = HashSet::new();
    weir::billing::sinks::file::files(path)
        .iter()
        .flat_map(|p| crate::support::complete_lines(p))
        .map(|l| serde_json::from_str::<Value>(&l).unwrap_or_else(|e| panic!("corrupt sink line {l}: {e}")))
        .filter(|v| seen.insert(v["idempotency_key"].as_str().unwrap_or_default().to_string()))
        .collect()
}

/// Connection records grouped by connection id, ordered by seq.
fn by_connection(records: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in records.iter().filter(|r| ["start", "interim", "stop"].contains(&r["record"].as_str().unwrap_or(""))) {
        out.entry(r["connection_id"].as_str().unwrap().to_string()).or_default().push(r.clone());
    }
    for rs in out.values_mut() {
        rs.sort_by_key(|r| r["seq"].as_u64().unwrap());
    }
    out
}

/// Sequence numbers are 0, 1, 2, … without gaps, keys are `<id>:<seq>`, counters never go back.
fn assert_well_formed(id: &str, rs: &[Value]) {
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r["seq"].as_u64(), Some(i as u64), "{id}: seq gap in {rs:?}");
        assert_eq!(r["idempotency_key"].as_str(), Some(format!("{id}:{i}").as_str()));
    }
    for w in rs.windows(2) {
        for d in ["client_to_backend", "backend_to_client"] {
            for f in ["frames", "messages", "payload_bytes", "wire_bytes"] {
                assert!(w[0][d][f].as_u64() <= w[1][d][f].as_u64(), "{id}: {d}.{f} went back");
            }
        }
        assert!(w[0]["duration_ms"].as_u64() <= w[1]["duration_ms"].as_u64());
    }
    assert_eq!(rs[0]["record"], "start");
}

#[tokio::test]
async fn records_start_interim_stop_with_cumulative_counts_tenants_and_active_time() {
    let dir = tempfile::tempdir().unwrap();
    let backend = echo_backend().await;
    let weir = Weir::start_with(&routes(backend.addr), &usage_yaml(dir.path(), "1s", &file_sink(dir.path()))).await;
    // One connection that talks at first, then idles for 2.5 s (several interim intervals).
    let mut ws = connect(&weir, "/a").await;
    for i in 0..5 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        recv(&mut ws).await;
    }
    let path = dir.path().join("usage.jsonl");
    eventually("two interim records", || async {
        let recs = sink_records(&path);
        (recs.iter().filter(|r| r["record"] == "interim").count() >= 2).then_some(())
    })
    .await;
    ws.close(None).await.unwrap();
    crate::support::drain_until_end(&mut ws, DEADLINE).await;
    let mut other = connect(&weir, "/b").await;
    other.close(None).await.unwrap();
    crate::support::drain_until_end(&mut other, DEADLINE).await;
    let conns = eventually("two stopped connections", || async {
        let c = by_connection(&sink_records(&path));
        (c.values().filter(|rs| rs.last().is_some_and(|r| r["record"] == "stop")).count() == 2).then_some(c)
    })
    .await;
    let (a, b): (Vec<_>, Vec<_>) = conns.values().partition(|rs| rs[0]["route"] == "a");
    let (a, b) = (a[0], b[0]);
    let id = a[0]["connection_id"].as_str().unwrap();
    assert_well_formed(id, a);
    assert!(a.len() >= 4, "start, ≥ 2 interims, stop: {a:?}");
    let stop = a.last().unwrap();
    assert_eq!((stop["record"].as_str(), stop["outcome"].as_str()), (Some("stop"), Some("completed")));
    assert!(a[1..a.len() - 1]
        .iter()
        .all(|r| r["record"] == "interim" && r["outcome"] == "open" && r["ended_at"].is_null()));
    assert_eq!(stop["client_to_backend"]["messages"], 5);
    assert_eq!(a[a.len() - 2]["client_to_backend"]["messages"], 5, "the last interim already had all 5 messages");
    // Tenant from the route, else the default; every record carries it.
    assert!(a.iter().all(|r| r["tenant"] == "acme"));
    assert!(b.iter().all(|r| r["tenant"] == "nobody"));
    // Active time: the 5 round trips keep it active for about 300 ms; the rest is idle.
    let (active, idle, duration) =
        (stop["active_ms"].as_u64().unwrap(), stop["idle_ms"].as_u64().unwrap(), stop["duration_ms"].as_u64().unwrap());
    assert_eq!(active + idle, duration);
    assert!((300..1000).contains(&active), "active {active} ms of {duration}");
    assert!(idle >= 1500, "idle {idle} ms");
    // The metrics agree.
    weir.metric_eventually("weir_sink_records_delivered_total", &[("sink", "file")], |v| {
        v >= (a.len() + b.len()) as f64
    })
    .await;
    weir.metric_eventually("weir_sink_records_pending", &[("sink", "file")], |v| v == 0.0).await;
}

#[tokio::test]
async fn kill_9_with_100_connections_loses_at_most_one_interim_interval() {
    let dir = tempfile::tempdir().unwrap();
    let backend = echo_backend().await;
    let config = routes(backend.addr);
    let usage = usage_yaml(dir.path(), "1s", &file_sink(dir.path()));
    let mut weir = Weir::start_with(&config, &usage).await;
    let mut clients = Vec::new();
    for i in 0..100 {
        let mut ws = connect(&weir, "/a").await;
        for k in 0..(i % 7 + 1) {
            ws.send(Message::text(format!("{i}-{k}"))).await.unwrap();
            recv(&mut ws).await;
        }
        clients.push(ws);
    }
    // Wait until every connection has an interim made after its last message.
    let path = dir.path().join("usage.jsonl");
    eventually("an interim with all traffic for all 100 connections", || async {
        let conns = by_connection(&sink_records(&path));
        let complete = conns.values().filter(|rs| {
            let last = rs.last().unwrap();
            let sent = last["client_to_backend"]["messages"].as_u64().unwrap_or(0);
            last["record"] == "interim" && sent >= 1 && last["backend_to_client"]["messages"].as_u64() == Some(sent)
        });
        (complete.count() == 100).then_some(())
    })
    .await;
    let before: HashSet<String> =
        sink_records(&path).iter().map(|r| r["idempotency_key"].as_str().unwrap().to_string()).collect();
    weir.kill9();
    drop(clients);

    // A new process with the same spool delivers whatever was spooled and not yet delivered.
    let weir = Weir::start_with(&config, &usage).await;
    weir.metric_eventually("weir_sink_records_pending", &[("sink", "file")], |v| v == 0.0).await;
    let records = sink_records(&path);
    let after: HashSet<String> = records.iter().map(|r| r["idempotency_key"].as_str().unwrap().to_string()).collect();
    assert!(after.is_superset(&before));
    let conns = by_connection(&records);
    assert_eq!(conns.len(), 100);
    for (id, rs) in &conns {
        assert_well_formed(id, rs);
        let last = rs.last().unwrap();
        // The connection sent i % 7 + 1 messages; its last record has all of them.
        let sent = last["client_to_backend"]["messages"].as_u64().unwrap();
        assert!((1..=7).contains(&sent), "{id}: {sent}");
        assert_eq!(last["backend_to_client"]["messages"].as_u64(), Some(sent), "{id}");
        assert!(last["record"] != "stop", "a killed process writes no stop");
    }
    let total: u64 =
        conns.values().map(|rs| rs.last().unwrap()["client_to_backend"]["messages"].as_u64().unwrap()).sum();
    assert_eq!(total, (0..100).map(|i| i % 7 + 1).sum::<u64>());
}

/// A CloudEvents collector that answers 500 to about a third of the batches (some after storing
/// them, as if the answer was lost); keeps every event by id.
async fn flaky_collector() -> (SocketAddr, Arc<Mutex<HashMap<String, Value>>>, Arc<Mutex<usize>>) {
    collector(true, Duration::ZERO).await
}

/// A CloudEvents collector that keeps every event by id; `flaky`: it answers 500 to about a
/// third of the batches (some after storing them); every answer waits `delay`.
pub(crate) async fn collector(
    flaky: bool,
    delay: Duration,
) -> (SocketAddr, Arc<Mutex<HashMap<String, Value>>>, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let events: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
    let failures: Arc<Mutex<usize>> = Arc::default();
    let (ev, fails) = (events.clone(), failures.clone());
    tokio::spawn(async move {
        let mut n: u64 = 0x9e37_79b9_7f4a_7c15;
        while let Ok((mut s, _)) = listener.accept().await {
            n ^= n << 13;
            n ^= n >> 7;
            n ^= n << 17;
            let roll = if flaky { n % 6 } else { 5 };
            let (ev, fails) = (ev.clone(), fails.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 64 * 1024];
                let body = loop {
                    let Ok(k) = s.read(&mut chunk).await else { return };
                    if k == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap();
                        assert!(head.to_ascii_lowercase().contains("content-type: application/cloudevents-batch+json"));
                        if rest.len() >= len {
                            break rest[..len].to_string();
                        }
                    }
                };
                let store = roll != 0; // 0: fail before storing
                let fail = roll <= 1; // 1: store, then fail (the answer is "lost")
                if store {
                    let batch: Vec<Value> = serde_json::from_str(&body).unwrap();
                    let mut ev = ev.lock().unwrap();
                    for e in batch {
                        assert_eq!(e["specversion"], "1.0");
                        assert!(e["data"].is_object(), "an event without a record: {e}");
                        ev.insert(e["id"].as_str().unwrap().to_string(), e);
                    }
                }
                tokio::time::sleep(delay).await;
                let status = if fail {
                    *fails.lock().unwrap() += 1;
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
                    )
                    .await;
            });
        }
    });
    (addr, events, failures)
}

#[tokio::test]
async fn an_http_collector_answering_500_at_random_gets_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let backend = echo_backend().await;
    let (collector, events, failures) = flaky_collector().await;
    let sinks =
        format!("{}    - {{kind: http, url: \"http://{collector}/events\", batch: 7}}\n", file_sink(dir.path()));
    let weir = Weir::start_with(&routes(backend.addr), &usage_yaml(dir.path(), "1s", &sinks)).await;
    for i in 0..40 {
        let mut ws = connect(&weir, if i % 2 == 0 { "/a" } else { "/b" }).await;
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        recv(&mut ws).await;
        ws.close(None).await.unwrap();
        crate::support::drain_until_end(&mut ws, DEADLINE).await;
    }
    let (status, _, _) = raw_request(weir.addr, &upgrade_request(weir.addr, "/nowhere", "")).await.unwrap();
    assert_eq!(status, 404);
    // Bounded waits: a pending count of 0 can be read before the last records were durable.
    let file: HashSet<String> = crate::support::eventually("81 records in the file sink", || async {
        let keys: HashSet<String> = sink_records(&dir.path().join("usage.jsonl"))
            .iter()
            .map(|r| r["idempotency_key"].as_str().unwrap().to_string())
            .collect();
        (keys.len() >= 81).then_some(keys)
    })
    .await;
    assert_eq!(file.len(), 81, "40 × (start + stop) + 1 rejection");
    crate::support::eventually("the collector has every record, each once by id", || async {
        let got: HashSet<String> = events.lock().unwrap().keys().cloned().collect();
        (got == file).then_some(())
    })
    .await;
    assert!(*failures.lock().unwrap() > 0, "the collector failed some batches");
    let errors = crate::support::metric(&weir.metrics().await, "weir_sink_delivery_errors_total", &[("sink", "http")])
        .unwrap_or(0.0);
    assert!(errors > 0.0);
    let e = events.lock().unwrap().values().find(|e| e["data"]["record"] == "stop").cloned().unwrap();
    assert_eq!(e["type"], "dev.weir.usage.stop");
    assert_eq!(e["id"], e["data"]["idempotency_key"]);
}

/// A small tmpfs the test mounts itself (the test runs as root, as CI does).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "mounting a tmpfs failed: this test needs root (CI runs as root)");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_new_upgrades_keeps_relaying_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount("512k");
    let backend = echo_backend().await;
    let usage = format!(
        "usage:\n  spool_dir: \"{}\"\n  fsync_interval: 20ms\n  interim_interval: 1s\n  sinks:\n{}",
        disk.0.path().join("spool").display(),
        file_sink(dir.path())
    );
    let weir = Weir::start_with(&routes(backend.addr), &usage).await;
    let mut open = connect(&weir, "/a").await;
    // Fill the disk.
    let filler = disk.0.path().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 600 * 1024]);
    // The next records cannot be written: the spool turns unhealthy, new upgrades get 503.
    for i in 0..20 {
        open.send(Message::text(format!("still relayed {i}"))).await.unwrap();
        assert_eq!(recv(&mut open).await, Message::text(format!("still relayed {i}")));
    }
    weir.metric_eventually("weir_spool_healthy", &[], |v| v == 0.0).await;
    let (status, _, body) = raw_request(weir.addr, &upgrade_request(weir.addr, "/a", "")).await.unwrap();
    assert_eq!((status, body.as_str()), (503, "Usage cannot be recorded right now; retry"));
    assert!(weir.log().contains("spool: cannot write usage records"), "a clear log line");
    weir.metric_eventually("weir_spool_waiting_records", &[], |v| v >= 1.0).await;
    // The open connection keeps working all along.
    open.send(Message::text("after")).await.unwrap();
    assert_eq!(recv(&mut open).await, Message::text("after"));
    // Space returns: everything waiting is written in order, upgrades are accepted again.
    std::fs::remove_file(&filler).unwrap();
    weir.metric_eventually("weir_spool_healthy", &[], |v| v == 1.0).await;
    let mut again = connect(&weir, "/b").await;
    again.close(None).await.unwrap();
    open.close(None).await.unwrap();
    crate::support::drain_until_end(&mut open, DEADLINE).await;
    // No corruption: every spooled line parses, and each connection's records are whole.
    let path = dir.path().join("usage.jsonl");
    let records = eventually("both connections' stop records", || async {
        let records = sink_records(&path);
        let stops = records.iter().filter(|r| r["record"] == "stop" && r["status"] == 101).count();
        (stops == 2).then_some(records)
    })
    .await;
    let conns = by_connection(&records);
    for (id, rs) in &conns {
        if rs[0]["record"] == "start" {
            assert_well_formed(id, rs);
        }
    }
    let first = conns
        .values()
        .find(|rs| rs[0]["route"] == "a" && rs[0]["record"] == "start")
        .expect("the open connection's records");
    assert_eq!(first.last().unwrap()["record"], "stop");
    assert_eq!(first.last().unwrap()["client_to_backend"]["messages"], 21);
    assert!(records.iter().any(|r| r["reason"] == "spool_unavailable"), "the 503 itself is recorded");
    for seg in std::fs::read_dir(disk.0.path().join("spool")).unwrap() {
        let p = seg.unwrap().path();
        if p.extension().is_some_and(|e| e == "jsonl") {
            for l in std::fs::read_to_string(&p).unwrap().lines() {
                serde_json::from_str::<Value>(l)
                    .unwrap_or_else(|e| panic!("corrupt spool line in {}: {e}", p.display()));
            }
        }
    }
}

#[tokio::test]
async fn records_carry_the_vendor_pricing_units() {
    let dir = tempfile::tempdir().unwrap();
    let backend = echo_backend().await;
    let examples =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/billing-examples.yaml")).unwrap();
    let extra = format!("{}{examples}", usage_yaml(dir.path(), "1s", &file_sink(dir.path())));
    let weir = Weir::start_with(&routes(backend.addr), &extra).await;
    let mut ws = connect(&weir, "/a").await;
    for i in 0..40 {
        ws.send(Message::text(format!("message {i:02}"))).await.unwrap();
        recv(&mut ws).await;
    }
    ws.send(Message::binary(vec![1u8; 33 * 1024])).await.unwrap();
    recv(&mut ws).await;
    ws.close(None).await.unwrap();
    crate::support::drain_until_end(&mut ws, DEADLINE).await;
    let path = dir.path().join("usage.jsonl");
    let stop =
        eventually("the stop record", || async { sink_records(&path).into_iter().find(|r| r["record"] == "stop") })
            .await;
    let units = &stop["units"];
    // Cloudflare: 1 request + 41 incoming messages / 20.
    assert!((units["do_requests"].as_f64().unwrap() - 3.05).abs() < 1e-9, "{units}");
    // AWS: 40 small messages + one 33 KB message (2 increments), each way.
    assert_eq!(units["apigw_messages"].as_f64(), Some(84.0), "{units}");
    assert_eq!(units["apigw_connection_minutes"].as_f64(), Some(1.0), "{units}");
    // Azure: outbound 40 + ceil(33792 / 2048) = 40 + 17.
    assert_eq!(units["azure_outbound_units"].as_f64(), Some(57.0), "{units}");
    let start = sink_records(&path).into_iter().find(|r| r["record"] == "start").unwrap();
    assert_eq!(start["units"]["do_requests"].as_f64(), Some(1.0), "the upgrade request is billed from the start");
}

/// SIGTERM with connections open: after the grace period every connection gets its stop record,
/// and before the process exits every record is fsynced and delivered to a sink that is up, even
/// one too slow to take them all within Pingora's shutdown margin.
#[tokio::test]
async fn sigterm_delivers_every_stop_record_before_exit() {
    const CONNS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let backend = echo_backend().await;
    // Every batch of 5 waits 700 ms: the 30 stop records take about 4 s, longer than Pingora
    // keeps its runtimes after the grace period.
    let (collector, events, _) = collector(false, Duration::from_millis(700)).await;
    let sinks =
        format!("{}    - {{kind: http, url: \"http://{collector}/events\", batch: 5}}\n", file_sink(dir.path()));
    let mut weir = Weir::start_with(&routes(backend.addr), &usage_yaml(dir.path(), "1h", &sinks)).await;
    let mut clients = Vec::new();
    for i in 0..CONNS {
        let mut ws = connect(&weir, "/a").await;
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        recv(&mut ws).await;
        clients.push(ws);
    }
    crate::support::eventually("the collector has every start record", || async {
        (events.lock().unwrap().len() == CONNS).then_some(())
    })
    .await;

    let stop = tokio::task::spawn_blocking(move || {
        let status = weir.terminate();
        (weir, status)
    });
    for ws in &mut clients {
        crate::support::drain_until_end(ws, DEADLINE).await;
    }
    let (weir, status) = stop.await.unwrap();
    let status = status.expect("weir exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", weir.log());

    let events = events.lock().unwrap();
    let stops: Vec<&Value> = events.values().filter(|e| e["data"]["record"] == "stop").collect();
    assert_eq!(stops.len(), CONNS, "the collector has every stop record before weir exited");
    assert!(stops.iter().all(|e| e["data"]["outcome"] == "shutdown"), "{stops:?}");
    let file = by_connection(&sink_records(&dir.path().join("usage.jsonl")));
    assert_eq!(file.len(), CONNS);
    for (id, rs) in &file {
        assert_well_formed(id, rs);
        assert_eq!(rs.last().unwrap()["record"], "stop", "{id}: the file sink has the stop too");
    }
}
