//! Hardening (issue 9): see tests/tests.rs. The spool under corruption: a damaged tail under a
//! sink's cursor, a damaged record in the middle (checksums, quarantine), and `weir usage` on a
//! file with junk in it. Each test failed before its fix.

use crate::billing::{file_sink, routes};
use crate::support::backends::{dead_addr, echo_backend};
use crate::support::{connect, eventually, metric, recv, Weir, DEADLINE};
use futures_util::SinkExt;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio_tungstenite::tungstenite::Message;

/// `usage:` YAML with the spool in `dir/spool`, no interim records, and `sinks` (YAML list items).
fn usage_yaml(dir: &Path, sinks: &str) -> String {
    crate::billing::usage_yaml(dir, "1h", sinks)
}

fn http_sink(collector: SocketAddr) -> String {
    format!("    - {{kind: http, url: \"http://{collector}/events\", batch: 3}}\n")
}

/// `n` short sessions (start + stop records each), one after the other.
async fn sessions(weir: &Weir, n: usize) {
    for i in 0..n {
        let mut ws = connect(weir, "/a").await;
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        recv(&mut ws).await;
        ws.close(None).await.unwrap();
        crate::support::drain_until_end(&mut ws, DEADLINE).await;
    }
}

/// Every complete line the file sink at `path` wrote (rotated files included), as raw text (a
/// last line still being written is left out: a fragment the sink leaves behind shows up as a
/// missing record, or as a bad line once more is appended after it).
fn sink_lines(path: &Path) -> Vec<String> {
    weir::billing::sinks::file::files(path).iter().flat_map(|p| crate::support::complete_lines(p)).collect()
}

/// The idempotency keys of the file sink's lines, each line checked to be a whole record (a
/// JSON object with a key): a fragment fails the test.
fn sink_keys(path: &Path) -> Vec<String> {
    sink_lines(path)
        .iter()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("a fragment reached the file sink: {l}: {e}"));
            v["idempotency_key"].as_str().unwrap_or_else(|| panic!("a sink line without a key: {l}")).to_string()
        })
        .collect()
}

/// The idempotency key written in a spool line, whatever the line's framing.
fn key_in(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let (_, rest) = text.split_once("\"idempotency_key\":\"").unwrap_or_else(|| panic!("no key in {text}"));
    rest.split('"').next().unwrap().to_string()
}

/// The spool's first segment and its lines as (offset, bytes without the newline).
fn spool_lines(dir: &Path) -> (PathBuf, Vec<(usize, Vec<u8>)>) {
    let seg = dir.join("spool").join(format!("seg-{:020}.jsonl", 0));
    let bytes = std::fs::read(&seg).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    for piece in bytes.split_inclusive(|&b| b == b'\n') {
        if piece.ends_with(b"\n") {
            out.push((at, piece[..piece.len() - 1].to_vec()));
        }
        at += piece.len();
    }
    (seg, out)
}

/// A CloudEvents collector that keeps every event by id (the billing tests' collector, never
/// failing, answering at once).
async fn collector() -> (SocketAddr, Arc<Mutex<HashMap<String, Value>>>) {
    let (addr, events, _) = crate::billing::collector(false, std::time::Duration::ZERO).await;
    (addr, events)
}

/// Item 10. A damaged tail under the file sink's cursor (its last record cut in half after the
/// sink had it), plus damage in the middle the HTTP sink had not delivered yet (a flipped byte,
/// a flipped newline). After a restart: no fragment reaches the file sink, it holds every record
/// once, and everything written after the repair is delivered to both sinks.
#[tokio::test]
async fn a_damaged_tail_under_a_cursor_is_repaired_without_fragments_or_losses() {
    let dir = tempfile::tempdir().unwrap();
    let backend = echo_backend().await;
    let path = dir.path().join("usage.jsonl");
    let usage = |http: SocketAddr| usage_yaml(dir.path(), &format!("{}{}", file_sink(dir.path()), http_sink(http)));

    // Phase 1: the file sink gets everything; the HTTP sink (its collector down) nothing.
    let mut weir = Weir::start_with(&routes(backend.addr), &usage(dead_addr())).await;
    sessions(&weir, 6).await;
    let first: BTreeSet<String> = eventually("12 records in the file sink", || async {
        let keys: BTreeSet<String> = sink_keys(&path).into_iter().collect();
        (keys.len() == 12).then_some(keys)
    })
    .await;
    // The sink writes its file before it persists its cursor: kill only once the cursor is durable
    // at the spool's end, or the restart rightly delivers the last batch again.
    eventually("the file sink's cursor at the end of the spool", || async {
        let end = std::fs::metadata(spool_lines(dir.path()).0).ok()?.len();
        let cursor = std::fs::read_to_string(dir.path().join("spool").join("cursor-file")).ok()?;
        (cursor.trim().parse::<u64>().ok()? == end).then_some(())
    })
    .await;
    weir.kill9();

    // Damage the spool: a byte in the middle of record 1, the newline after record 3 (merging 3
    // and 4), and the last record cut in half although the file sink's cursor is past it.
    let (seg, lines) = spool_lines(dir.path());
    assert_eq!(lines.len(), 12, "start + stop for 6 sessions");
    let mut bytes = std::fs::read(&seg).unwrap();
    let (at1, l1) = &lines[1];
    bytes[at1 + l1.len() / 2] = 0x01;
    let (at3, l3) = &lines[3];
    bytes[at3 + l3.len()] = b'#';
    let (at_last, last) = &lines[11];
    bytes.truncate(at_last + last.len() / 2);
    std::fs::write(&seg, &bytes).unwrap();
    let damaged: BTreeSet<String> = [1, 3, 4, 11].iter().map(|&i| key_in(&lines[i].1)).collect();
    assert!(damaged.is_subset(&first));

    // Phase 2: weir repairs the spool, more records are written, the collector is up.
    let (addr, events) = collector().await;
    let weir = Weir::start_with(&routes(backend.addr), &usage(addr)).await;
    sessions(&weir, 3).await;
    weir.metric_eventually("weir_sink_records_pending", &[("sink", "file")], |v| v == 0.0).await;
    let keys = eventually("18 records in the file sink", || async {
        let keys = sink_keys(&path);
        (keys.iter().collect::<BTreeSet<_>>().len() >= 18).then_some(keys)
    })
    .await;
    let unique: BTreeSet<String> = keys.iter().cloned().collect();
    assert_eq!(keys.len(), unique.len(), "each record once in the file sink: {keys:?}");
    assert!(unique.is_superset(&first), "every record of phase 1 is still there");
    let later: BTreeSet<String> = unique.difference(&first).cloned().collect();
    assert_eq!(later.len(), 6, "start + stop for the 3 sessions after the repair: {later:?}");
    // The collector got every intact record of phase 1 and every later one.
    let want: BTreeSet<String> = first.difference(&damaged).chain(later.iter()).cloned().collect();
    // Bounded wait: a pending count of 0 can be read before the last records were durable.
    eventually("the collector has every intact record", || async {
        let got: BTreeSet<String> = events.lock().unwrap().keys().cloned().collect();
        (got == want).then_some(())
    })
    .await;
    // The damaged records are kept aside, not dropped silently.
    let quarantine = std::fs::read_to_string(dir.path().join("spool").join("quarantine.jsonl")).unwrap();
    assert_eq!(quarantine.lines().count(), 3, "record 1, records 3+4, the cut tail: {quarantine}");
    let quarantined = metric(&weir.metrics().await, "weir_spool_quarantined_total", &[]);
    assert_eq!(quarantined, Some(3.0));
}

/// Item 11. One damaged record in the middle, not yet delivered to any sink: it is quarantined
/// (once, although two sinks meet it), and both sinks get every other record.
#[tokio::test]
async fn a_damaged_record_is_quarantined_and_every_sink_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let backend = echo_backend().await;
    let path = dir.path().join("usage.jsonl");

    // Phase 1: only the HTTP sink, its collector down: every record stays in the spool.
    let mut weir = Weir::start_with(&routes(backend.addr), &usage_yaml(dir.path(), &http_sink(dead_addr()))).await;
    sessions(&weir, 6).await;
    eventually("12 records in the spool", || async { (spool_lines(dir.path()).1.len() == 12).then_some(()) }).await;
    weir.kill9();

    let (seg, lines) = spool_lines(dir.path());
    let all: BTreeSet<String> = lines.iter().map(|(_, l)| key_in(l)).collect();
    assert_eq!(all.len(), 12);
    // Flip a byte in record 5, after its key.
    let (at, line) = &lines[5];
    let bad_key = key_in(line);
    let key_end = String::from_utf8_lossy(line).find(&bad_key).unwrap() + bad_key.len();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[at + key_end + (line.len() - key_end) / 2] = 0x01;
    std::fs::write(&seg, &bytes).unwrap();

    // Phase 2: a file sink too (it starts at the beginning of the spool), the collector is up.
    let (addr, events) = collector().await;
    let sinks = format!("{}{}", file_sink(dir.path()), http_sink(addr));
    let weir = Weir::start_with(&routes(backend.addr), &usage_yaml(dir.path(), &sinks)).await;
    sessions(&weir, 1).await;
    weir.metric_eventually("weir_sink_records_pending", &[("sink", "file")], |v| v == 0.0).await;
    weir.metric_eventually("weir_sink_records_pending", &[("sink", "http")], |v| v == 0.0).await;
    let want: BTreeSet<String> = all.iter().filter(|k| **k != bad_key).cloned().collect();
    let file = eventually("13 records in the file sink", || async {
        let keys: BTreeSet<String> = sink_keys(&path).into_iter().collect();
        (keys.len() >= 13).then_some(keys)
    })
    .await;
    assert!(file.is_superset(&want) && !file.contains(&bad_key), "{file:?}");
    // The last session's records may reach the collector a moment after the file (a pending
    // count of 0 can be read before they were durable): wait for it, bounded.
    eventually("the collector has what the file sink has", || async {
        let got: BTreeSet<String> = events.lock().unwrap().keys().cloned().collect();
        (got == file).then_some(())
    })
    .await;
    assert_eq!(weir.metric_eventually("weir_spool_quarantined_total", &[], |v| v >= 1.0).await, 1.0);
    // The quarantine file names the record: where it was, why, and its bytes.
    let quarantine = std::fs::read_to_string(dir.path().join("spool").join("quarantine.jsonl")).unwrap();
    let entries: Vec<Value> = quarantine.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(entries.len(), 1, "{quarantine}");
    assert_eq!(entries[0]["offset"].as_u64(), Some(*at as u64));
    assert!(entries[0]["reason"].as_str().unwrap().contains("checksum"), "{}", entries[0]);
    assert!(entries[0]["line"].as_str().unwrap().contains(&bad_key), "{}", entries[0]);
    let log = weir.log();
    assert_eq!(log.matches("spool: quarantined a damaged record").count(), 1, "logged once:\n{log}");
}

/// Item 11. `weir usage --file` skips lines it cannot read, says how many on stderr, and prints
/// the totals of the rest.
#[test]
fn weir_usage_skips_malformed_lines_and_reports_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let record = |kind: &str, seq: u64, at: &str, ms: u64| {
        format!(
            r#"{{"record":"{kind}","idempotency_key":"c1:{seq}","seq":{seq},"at":"{at}","connection_id":"c1","tenant":"acme","status":101,"duration_ms":{ms},"active_ms":{ms},"idle_ms":0,"client_to_backend":{{"messages":{seq},"payload_bytes":3}},"backend_to_client":{{"messages":{seq},"payload_bytes":3}}}}"#
        )
    };
    let mut text = record("start", 0, "2026-11-22T10:00:00.000Z", 0) + "\n";
    text.push_str("ages\":1,\"payload_bytes\":3},\"close\":{\"code\":1000\n");
    text.push_str(&(record("stop", 1, "2026-11-22T10:00:02.500Z", 2500) + "\n"));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(b"\x00\xff{\"record\":\n");
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["usage", "--format", "csv", "--file"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tenant,connections,rejected,connection_seconds,active_seconds,idle_seconds,messages_in,messages_out,bytes_in,bytes_out\n\
         acme,1,0,2.500,2.500,0.000,1,1,3,3\n"
    );
    assert!(stderr.contains("skipped 2 malformed lines"), "{stderr}");
    assert!(stderr.contains("usage.jsonl:2:") && stderr.contains("usage.jsonl:4:"), "{stderr}");
}
