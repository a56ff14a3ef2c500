use super::*;
use serde_json::json;

const HOUR: i64 = 3_600_000;

fn at(s: &str) -> i64 {
    parse_time(s).unwrap()
}

fn rfc(ms: i64) -> String {
    humantime::format_rfc3339_millis(system_time(ms)).to_string()
}

/// A connection record line: `hours` of cumulative lifetime, 10 messages and 100 bytes per
/// hour each way, 2.5 `requests` units per hour.
fn line(conn: &str, seq: u64, kind: &str, at_ms: i64, hours: u64, extra: serde_json::Value) -> Vec<u8> {
    let mut v = json!({
        "record": kind, "idempotency_key": format!("{conn}:{seq}"), "seq": seq, "at": rfc(at_ms),
        "connection_id": conn, "tenant": "acme", "route": "chat", "object": null, "status": 101,
        "duration_ms": hours * 3_600_000, "active_ms": hours * 1_800_000, "idle_ms": hours * 1_800_000,
        "client_to_backend": {"messages": hours * 10, "payload_bytes": hours * 100},
        "backend_to_client": {"messages": hours * 10, "payload_bytes": hours * 100},
        "units": {"requests": hours as f64 * 2.5},
    });
    if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        v.extend(extra.clone());
    }
    serde_json::to_vec(&v).unwrap()
}

fn points(lines: &[Vec<u8>]) -> Vec<Point> {
    lines.iter().filter_map(|l| parse_record(l).unwrap()).collect()
}

/// Start at 2026-11-20T12:00Z, an interim every hour (so at every midnight), stop 66 h later.
fn three_days() -> Vec<Vec<u8>> {
    let start = at("2026-11-20T12:00:00Z");
    (0..=66u64)
        .map(|h| {
            let kind = match h {
                0 => "start",
                66 => "stop",
                _ => "interim",
            };
            line("c1", h, kind, start + h as i64 * HOUR, h, json!({}))
        })
        .collect()
}

fn hours(row: &Row) -> u64 {
    row.usage.duration_ms / 3_600_000
}

#[test]
fn a_three_day_connection_is_split_by_utc_day_and_the_days_add_up() {
    let all = totals(points(&three_days()), Range::default(), By::Tenant).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].group.as_str(), all[0].connections, hours(&all[0])), ("acme", 1, 66));
    let days = totals(points(&three_days()), Range::default(), By::Day).unwrap();
    let got: Vec<(&str, u64, u64)> = days.iter().map(|r| (r.group.as_str(), hours(r), r.connections)).collect();
    // The interim at midnight belongs to the day it starts: 12:00→23:00 is 11 h on the 20th.
    assert_eq!(got, vec![("2026-11-20", 11, 1), ("2026-11-21", 24, 1), ("2026-11-22", 24, 1), ("2026-11-23", 7, 1)]);
    let mut sum = Counters::default();
    for d in &days {
        sum.add(&d.usage);
    }
    assert_eq!(sum, all[0].usage, "the days add up to the whole");
    assert_eq!((sum.messages_in, sum.bytes_out, sum.units["requests"]), (660, 6600, 165.0));
    // One day given explicitly.
    let range = Range { from: Some(at("2026-11-22")), to: Some(at("2026-11-23")) };
    let day = totals(points(&three_days()), range, By::Tenant).unwrap();
    assert_eq!((hours(&day[0]), day[0].usage.messages_out, day[0].usage.units["requests"]), (24, 240, 60.0));
}

#[test]
fn a_record_exactly_at_a_boundary_counts_after_it() {
    let t = at("2026-11-21T00:00:00Z");
    let lines = vec![
        line("c", 0, "start", t - HOUR, 0, json!({})),
        line("c", 1, "interim", t, 1, json!({})),
        line("c", 2, "stop", t + HOUR, 2, json!({})),
    ];
    let before = totals(points(&lines), Range { from: None, to: Some(t) }, By::Tenant).unwrap();
    assert_eq!(hours(&before[0]), 0, "the record at `to` is not in [from, to)");
    let after = totals(points(&lines), Range { from: Some(t), to: None }, By::Tenant).unwrap();
    assert_eq!(hours(&after[0]), 2, "the record at `from` is in [from, to)");
    let just = totals(points(&lines), Range { from: Some(t), to: Some(t + 1) }, By::Tenant).unwrap();
    assert_eq!((just[0].connections, hours(&just[0])), (1, 1));
    // A range with no record of the connection lists nothing.
    assert!(totals(points(&lines), Range { from: Some(t + 1), to: Some(t + 2) }, By::Tenant).unwrap().is_empty());
}

#[test]
fn duplicates_count_once() {
    let mut lines = three_days();
    lines.extend(three_days().into_iter().step_by(3));
    let twice = totals(points(&lines), Range::default(), By::Route).unwrap();
    let once = totals(points(&three_days()), Range::default(), By::Route).unwrap();
    assert_eq!(twice, once);
    assert_eq!((twice[0].group.as_str(), twice[0].connections), ("chat", 1));
}

#[test]
fn connections_group_by_object_and_rejections_carry_no_usage() {
    let t = at("2026-11-22T10:00:00Z");
    let room = |id: &str| json!({"object": {"namespace": "rooms", "id": id}});
    let lines = vec![
        line("a", 0, "start", t, 0, room("lobby")),
        line("a", 1, "stop", t + 10, 1, room("lobby")),
        line("b", 0, "start", t, 0, room("lobby")),
        line("b", 1, "stop", t + 20, 2, room("lobby")),
        line("c", 0, "start", t, 0, room("den")),
        line("c", 1, "stop", t + 5, 3, room("den")),
        line("d", 0, "start", t, 0, json!({})),
        line("d", 1, "stop", t + 5, 4, json!({})),
        line("r", 0, "stop", t, 0, json!({"status": 403, "outcome": "rejected"})),
        br#"{"record":"object","idempotency_key":"object:rooms:lobby:x","at":"2026-11-22T10:00:01.000Z","namespace":"rooms","object_id":"lobby"}"#.to_vec(),
    ];
    let rows = totals(points(&lines), Range::default(), By::Object).unwrap();
    let got: Vec<(&str, u64, u64, u64)> =
        rows.iter().map(|r| (r.group.as_str(), r.connections, r.rejected, hours(r))).collect();
    assert_eq!(got, vec![("-", 1, 1, 4), ("rooms/den", 1, 0, 3), ("rooms/lobby", 2, 0, 3)]);
}

fn sample() -> Vec<Row> {
    let t = at("2026-11-22T10:00:00Z");
    let lines = vec![
        line("a", 0, "start", t, 0, json!({})),
        line("a", 1, "stop", t + 1, 1, json!({"duration_ms": 1234, "active_ms": 1000, "idle_ms": 234})),
        line("b", 0, "stop", t, 0, json!({"tenant": "Big, \"Co\"", "status": 429, "units": {}})),
    ];
    totals(points(&lines), Range::default(), By::Tenant).unwrap()
}

#[test]
fn csv_json_and_table_output() {
    let rows = sample();
    assert_eq!(
        render(&rows, By::Tenant, Format::Csv),
        "tenant,connections,rejected,connection_seconds,active_seconds,idle_seconds,messages_in,messages_out,bytes_in,bytes_out,units.requests\n\
         \"Big, \"\"Co\"\"\",0,1,0.000,0.000,0.000,0,0,0,0,0\n\
         acme,1,0,1.234,1.000,0.234,10,10,100,100,2.5\n"
    );
    let json = render(&rows, By::Tenant, Format::Json);
    assert_eq!(
        json,
        "[\n  {\"tenant\":\"Big, \\\"Co\\\"\",\"connections\":0,\"rejected\":1,\"connection_seconds\":0.000,\"active_seconds\":0.000,\"idle_seconds\":0.000,\"messages_in\":0,\"messages_out\":0,\"bytes_in\":0,\"bytes_out\":0,\"units\":{\"requests\":0}},\n  \
         {\"tenant\":\"acme\",\"connections\":1,\"rejected\":0,\"connection_seconds\":1.234,\"active_seconds\":1.000,\"idle_seconds\":0.234,\"messages_in\":10,\"messages_out\":10,\"bytes_in\":100,\"bytes_out\":100,\"units\":{\"requests\":2.5}}\n]\n"
    );
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed[1]["connection_seconds"], 1.234);
    assert_eq!(render(&[], By::Day, Format::Json), "[]\n");
    assert_eq!(
        render(&rows, By::Tenant, Format::Table),
        "tenant     connections  rejected  connection_seconds  active_seconds  idle_seconds  messages_in  messages_out  bytes_in  bytes_out  units.requests\n\
         Big, \"Co\"            0         1               0.000           0.000         0.000            0             0         0          0               0\n\
         acme                 1         0               1.234           1.000         0.234           10            10       100        100             2.5\n"
    );
}

#[test]
fn amounts_and_times_parse_and_print_deterministically() {
    assert_eq!(
        (amount(1.5), amount(2.0), amount(-0.0), amount(1.0 / 3.0), amount(f64::NAN)),
        ("1.5".into(), "2".into(), "0".into(), "0.333333".into(), "0".into())
    );
    assert_eq!(seconds(61_005), "61.005");
    assert_eq!(parse_time("2026-11-22").unwrap(), parse_time("2026-11-22T00:00:00Z").unwrap());
    assert_eq!(parse_time("2026-11-22T00:00:00.250Z").unwrap() % 1000, 250);
    assert!(parse_time("yesterday").unwrap_err().contains("write e.g. 2026-11-22T00:00:00Z"));
    assert_eq!(day_label(at("2026-11-22T23:59:59.999Z")), "2026-11-22");
    assert!(totals(Vec::new(), Range { from: Some(5), to: Some(5) }, By::Day).is_err());
}

#[test]
fn files_are_read_with_their_rotated_siblings() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("usage.jsonl");
    let lines = three_days();
    let (old, new) = lines.split_at(30);
    let join = |ls: &[Vec<u8>]| ls.iter().map(|l| format!("{}\n", String::from_utf8_lossy(l))).collect::<String>();
    std::fs::write(d.path().join("usage.jsonl.2026-11-21T00-00-00.000Z"), join(old)).unwrap();
    // The newest file repeats a delivered batch (at-least-once).
    std::fs::write(&path, join(&lines[25..30]) + &join(new)).unwrap();
    let (rows, skipped) = report(&Source::File(path.clone()), Range::default(), By::Day).unwrap();
    assert_eq!(rows, totals(points(&lines), Range::default(), By::Day).unwrap());
    assert_eq!(skipped, Skipped::default());
    std::fs::write(&path, "{\"record\":\"connection\"}\n").unwrap();
    let (_, skipped) = load_file(&path).unwrap();
    assert_eq!(skipped.count, 1);
    assert!(skipped.first[0].ends_with("usage.jsonl:1: record kind `connection` is not start, interim, stop, object or rejections (was it written by an older weir?)"), "{skipped:?}");
    assert!(load_file(&d.path().join("none.jsonl")).unwrap_err().contains("no such file"));
}

/// Item 11: junk lines (a fragment, bytes that are not UTF-8, a record without a key) are
/// skipped and counted; the totals are those of the records around them.
#[test]
fn malformed_lines_are_skipped_and_counted_not_fatal() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("usage.jsonl");
    let lines = three_days();
    let mut text = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        text.extend_from_slice(l);
        text.push(b'\n');
        match i {
            3 => text.extend_from_slice(b"payload_bytes\":300},\"units\":{\"requests\":7.5}}\n"),
            10 => text.extend_from_slice(b"\x00\xff\xfe{\n"),
            20 => text.extend_from_slice(b"{\"record\":\"stop\",\"seq\":1}\n"),
            _ => {}
        }
    }
    for n in 0..12 {
        text.extend_from_slice(format!("junk {n}\n").as_bytes());
    }
    std::fs::write(&path, &text).unwrap();
    let (rows, skipped) = report(&Source::File(path.clone()), Range::default(), By::Day).unwrap();
    assert_eq!(rows, totals(points(&lines), Range::default(), By::Day).unwrap());
    assert_eq!((skipped.count, skipped.first.len()), (15, SKIPPED_SHOWN));
    assert!(skipped.first[0].contains("usage.jsonl:5: not a usage record"), "{:?}", skipped.first);
    assert!(skipped.first[1].contains("usage.jsonl:13: not a usage record"), "{:?}", skipped.first);
    assert!(skipped.first[2].contains("usage.jsonl:24: the record has no `idempotency_key`"), "{:?}", skipped.first);
}
