use super::*;
use prometheus::{IntCounter, IntGauge};
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata};

/// A tracing subscriber that collects the fields of every WARN event as text.
struct Capture(Arc<Mutex<Vec<String>>>);

/// Appends `name=value ` for every field of an event.
struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        if *event.metadata().level() == Level::WARN {
            let mut line = String::new();
            event.record(&mut Fields(&mut line));
            self.0.lock().unwrap().push(line);
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Run `f` with WARN events captured; returns its result and the warnings.
fn with_warnings<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = tracing::subscriber::with_default(Capture(seen.clone()), f);
    let warnings = seen.lock().unwrap().clone();
    (out, warnings)
}

/// Unregistered store metrics, to read back in tests.
fn detached() -> StoreMetrics {
    StoreMetrics {
        bytes: IntGauge::new("bytes", "bytes").unwrap(),
        rooms: IntGauge::new("rooms", "rooms").unwrap(),
        evictions: IntCounter::new("evictions", "evictions").unwrap(),
    }
}

/// A store keeping `keep` messages per room, with no byte or room cap.
fn open_store(dir: &Path, keep: usize) -> io::Result<HistoryStore> {
    HistoryStore::open(dir, Limits { keep, keep_bytes: u64::MAX, max_rooms: usize::MAX }, detached())
}

/// Room files (`*.log`, recursively) under `dir`: their paths and total bytes.
fn on_disk(dir: &Path) -> (Vec<PathBuf>, u64) {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.to_string_lossy().ends_with(".log") {
                found.push(path);
            }
        }
    }
    let bytes = found.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    found.sort();
    (found, bytes)
}

/// The gauges agree with the directory.
fn assert_gauges(dir: &Path, m: &StoreMetrics) {
    let (files, bytes) = on_disk(dir);
    assert_eq!(m.rooms.get(), files.len() as i64, "rooms gauge vs {files:?}");
    assert_eq!(m.bytes.get(), bytes as i64, "bytes gauge vs {files:?}");
}

fn text(s: &str) -> StoredMessage {
    StoredMessage { kind: MessageKind::Text, data: Bytes::copy_from_slice(s.as_bytes()) }
}

fn binary(b: &[u8]) -> StoredMessage {
    StoredMessage { kind: MessageKind::Binary, data: Bytes::copy_from_slice(b) }
}

fn history(log: &RoomLog) -> Vec<StoredMessage> {
    log.history().cloned().collect()
}

/// Independent parse of a version 2 log file: the floor and the records after the header,
/// checksums verified, sequence numbers growing.
fn parse_file_seq(bytes: &[u8]) -> (u64, Vec<(u64, StoredMessage)>) {
    assert_eq!(&bytes[..8], b"WEIRHST2");
    let floor = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    let mut out = Vec::new();
    let mut at = 16;
    let mut last = floor;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = bytes[at + 4];
        let seq = u64::from_le_bytes(bytes[at + 5..at + 13].try_into().unwrap());
        let sum = u32::from_le_bytes(bytes[at + 13..at + 17].try_into().unwrap());
        let payload = &bytes[at + 17..at + 17 + len];
        let mut h: u32 = 0x811c9dc5;
        for &b in std::iter::once(&kind).chain(&bytes[at + 5..at + 13]).chain(payload) {
            h ^= u32::from(b);
            h = h.wrapping_mul(16777619);
        }
        assert_eq!(h, sum, "checksum of record at {at}");
        assert!(seq > last, "seq {seq} after {last}");
        last = seq;
        let kind = match kind {
            0 => MessageKind::Text,
            1 => MessageKind::Binary,
            k => panic!("kind {k}"),
        };
        out.push((seq, StoredMessage { kind, data: Bytes::copy_from_slice(payload) }));
        at += 17 + len;
    }
    assert_eq!(at, bytes.len());
    (floor, out)
}

/// The messages of a version 2 log file.
fn parse_file(bytes: &[u8]) -> Vec<StoredMessage> {
    parse_file_seq(bytes).1.into_iter().map(|(_, m)| m).collect()
}

/// A version 1 log holding `msgs` (the format before sequence numbers).
fn v1_file(msgs: &[StoredMessage]) -> Vec<u8> {
    let mut out = b"WEIRHST1".to_vec();
    for m in msgs {
        let kind = kind_byte(m.kind);
        out.extend_from_slice(&(m.data.len() as u32).to_le_bytes());
        out.push(kind);
        out.extend_from_slice(&checksum(kind, &m.data).to_le_bytes());
        out.extend_from_slice(&m.data);
    }
    out
}

fn seqs(log: &RoomLog) -> Vec<u64> {
    log.kept().entries().map(|(s, _)| *s).collect()
}

#[test]
fn fnv1a_known_values() {
    // FNV-1a 32 of "a" is 0xe40c292c; of "" is the offset basis.
    assert_eq!(checksum(b'a', b""), 0xe40c_292c);
    assert_eq!(checksum(b'f', b"oobar"), 0xbf9c_f968);
}

#[test]
fn round_trip_text_and_binary() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 + 3) as u8).collect();
    let msgs = vec![text("hello"), binary(&[0, 1, 2, 255]), text(""), binary(b""), binary(&big), text("héllo wörld")];
    {
        let store = open_store(&dir.path().join("a/b"), 10).unwrap();
        let mut log = store.load("room-1").unwrap();
        assert!(log.is_empty());
        for m in &msgs {
            log.append(m.clone()).unwrap();
        }
        assert_eq!(history(&log), msgs);
    }
    let store = open_store(&dir.path().join("a/b"), 10).unwrap();
    assert_eq!(store.keep(), 10);
    let log = store.load("room-1").unwrap();
    assert_eq!(log.len(), msgs.len());
    assert_eq!(history(&log), msgs);
    let file = std::fs::read(dir.path().join("a/b").join(format!("{}.log", hex(b"room-1")))).unwrap();
    assert_eq!(parse_file(&file), msgs);
}

#[test]
fn keep_bound_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let keep = 5;
    let store = open_store(dir.path(), keep).unwrap();
    let mut log = store.load("r").unwrap();
    let all: Vec<StoredMessage> = (0..3 * keep + 1).map(|i| text(&format!("m{i}"))).collect();
    for m in &all {
        log.append(m.clone()).unwrap();
        let records = parse_file(&std::fs::read(&log.path).unwrap());
        assert!(records.len() <= 2 * keep, "{} records on disk", records.len());
        assert!(log.len() <= keep);
    }
    let last = all[all.len() - keep..].to_vec();
    assert_eq!(history(&log), last);
    // The on-disk records end with the kept ones.
    let records = parse_file(&std::fs::read(&log.path).unwrap());
    assert_eq!(records[records.len() - keep..].to_vec(), last);
    assert!(!with_suffix(&log.path, ".tmp").exists());
    drop(log);
    let log = open_store(dir.path(), keep).unwrap().load("r").unwrap();
    assert_eq!(history(&log), last);
}

#[test]
fn smaller_keep_compacts_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<StoredMessage> = (0..10).map(|i| binary(&[i])).collect();
    let mut log = open_store(dir.path(), 10).unwrap().load("r").unwrap();
    for m in &all {
        log.append(m.clone()).unwrap();
    }
    drop(log);
    let mut log = open_store(dir.path(), 2).unwrap().load("r").unwrap();
    assert_eq!(history(&log), all[8..].to_vec());
    assert_eq!(parse_file(&std::fs::read(&log.path).unwrap()), all[8..].to_vec());
    log.append(text("x")).unwrap();
    assert_eq!(history(&log), vec![all[9].clone(), text("x")]);
}

#[test]
fn torn_tail_at_every_offset_of_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), 10).unwrap();
    let msgs = vec![text("first"), binary(&[9, 8, 7]), text("third!")];
    let mut log = store.load("orig").unwrap();
    let mut ends = Vec::new();
    for m in &msgs {
        log.append(m.clone()).unwrap();
        ends.push(std::fs::metadata(&log.path).unwrap().len());
    }
    let full = std::fs::read(&log.path).unwrap();
    assert_eq!(full.len() as u64, ends[2]);
    let (end2, end3) = (ends[1] as usize, ends[2] as usize);
    for cut in end2 + 1..end3 {
        let id = format!("cut{cut}");
        let path = room_path(dir.path(), &id);
        std::fs::write(&path, &full[..cut]).unwrap();
        let (log, warnings) = with_warnings(|| store.load(&id).unwrap());
        assert_eq!(history(&log), msgs[..2].to_vec(), "cut at {cut}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end2 as u64, "cut at {cut}");
        let dropped = format!("dropped_bytes={}", cut - end2);
        assert!(
            warnings.iter().any(|w| w.contains(&dropped) && w.contains(&path.display().to_string())),
            "cut at {cut}: {warnings:?}"
        );
        let mut log = log;
        log.append(text("again")).unwrap();
        drop(log);
        let log = store.load(&id).unwrap();
        assert_eq!(history(&log), vec![msgs[0].clone(), msgs[1].clone(), text("again")]);
    }
}

#[test]
fn corrupt_middle_record_drops_it_and_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), 10).unwrap();
    let msgs = vec![text("one"), text("two"), binary(b"three")];
    let mut log = store.load("orig").unwrap();
    for m in &msgs {
        log.append(m.clone()).unwrap();
    }
    let full = std::fs::read(&log.path).unwrap();
    let end1 = 16 + 17 + 3;
    // (what, byte offset in record 2, new value)
    let corruptions: [(&str, usize, u8); 6] = [
        ("checksum", 14, 0x55),
        ("payload", 18, b'X'),
        ("kind flipped to other valid kind", 4, 1),
        ("unknown kind", 4, 7),
        ("length over 64 MiB", 3, 0xff),
        ("length past end of file", 0, 200),
    ];
    for (what, offset, value) in corruptions {
        let mut bytes = full.clone();
        assert_ne!(bytes[end1 + offset], value, "{what}");
        bytes[end1 + offset] = value;
        let id = format!("corrupt-{offset}-{value}");
        let path = room_path(dir.path(), &id);
        std::fs::write(&path, &bytes).unwrap();
        let (log, warnings) = with_warnings(|| store.load(&id).unwrap());
        assert_eq!(history(&log), msgs[..1].to_vec(), "{what}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end1 as u64, "{what}");
        let dropped = format!("dropped_bytes={}", full.len() - end1);
        assert!(warnings.iter().any(|w| w.contains(&dropped)), "{what}: {warnings:?}");
    }
}

#[test]
fn wrong_header_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), 4).unwrap();
    let path = room_path(dir.path(), "room");
    let junk = b"NOTWEIR!\x05\x00\x00\x00\x00garbage";
    std::fs::write(&path, junk).unwrap();
    let (log, warnings) = with_warnings(|| store.load("room").unwrap());
    assert!(log.is_empty());
    assert!(warnings.iter().any(|w| w.contains("corrupt-")), "{warnings:?}");
    let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".log.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(&aside[0]).unwrap(), junk);
    assert_eq!(std::fs::read(&path).unwrap(), header(0));
    let mut log = log;
    log.append(text("fresh")).unwrap();
    drop(log);
    assert_eq!(history(&store.load("room").unwrap()), vec![text("fresh")]);
}

#[test]
fn empty_or_torn_header_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), 4).unwrap();
    for (id, content) in [("empty", &b""[..]), ("torn", &b"WEIR"[..])] {
        let path = room_path(dir.path(), id);
        std::fs::write(&path, content).unwrap();
        let mut log = store.load(id).unwrap();
        assert!(log.is_empty());
        assert_eq!(std::fs::read(&path).unwrap(), header(0));
        log.append(binary(b"z")).unwrap();
        assert_eq!(history(&store.load(id).unwrap()), vec![binary(b"z")]);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "nothing set aside");
}

#[test]
fn odd_ids_map_to_distinct_safe_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), 3).unwrap();
    let long = "x".repeat(256);
    let longer_by_one = "x".repeat(255);
    let ids = ["a/b", "..", ".", "", "ünïcødé-日本", "a", "A", "a.b-c_d", &long, &longer_by_one];
    let mut paths = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut log = store.load(id).unwrap();
        log.append(text(&format!("msg {i}"))).unwrap();
        assert!(log.path.starts_with(dir.path()));
        let rel = log.path.strip_prefix(dir.path()).unwrap().to_string_lossy().into_owned();
        assert!(rel.ends_with(".log"), "{rel}");
        for component in log.path.strip_prefix(dir.path()).unwrap().components() {
            let c = component.as_os_str().to_string_lossy();
            assert!(c.len() <= 255 - 30, "{c}");
            let stem = c.strip_suffix(".log").unwrap_or(&c);
            assert!(stem.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{c}");
        }
        assert_eq!(rel.replace('/', "").trim_end_matches(".log"), hex(id.as_bytes()));
        assert!(log.path.is_file());
        paths.push(log.path.clone());
    }
    assert_eq!(room_path(dir.path(), "a/b"), dir.path().join("612f62.log"));
    let mut unique = paths.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len());
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(history(&store.load(id).unwrap()), vec![text(&format!("msg {i}"))], "{id:?}");
    }
}

#[test]
fn keep_zero_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir.path().join("h"), 0).unwrap();
    let mut log = store.load("room").unwrap();
    for i in 0..5 {
        log.append(text(&format!("m{i}"))).unwrap();
    }
    assert!(log.is_empty());
    assert_eq!(log.history().count(), 0);
    assert_eq!(std::fs::read_dir(dir.path().join("h")).unwrap().count(), 0);
    assert!(store.load("room").unwrap().is_empty());
}

#[test]
fn rooms_are_independent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), 3).unwrap();
    let mut a = store.load("a").unwrap();
    let mut b = store.load("b").unwrap();
    for i in 0..7 {
        a.append(text(&format!("a{i}"))).unwrap();
        if i % 2 == 0 {
            b.append(binary(&[i])).unwrap();
        }
    }
    let a_want: Vec<_> = (4..7).map(|i| text(&format!("a{i}"))).collect();
    let b_want = vec![binary(&[2]), binary(&[4]), binary(&[6])];
    assert_eq!(history(&a), a_want);
    assert_eq!(history(&b), b_want);
    drop((a, b));
    assert_eq!(history(&store.load("a").unwrap()), a_want);
    assert_eq!(history(&store.load("b").unwrap()), b_want);
}

#[test]
fn oversized_message_is_kept_in_memory_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), 4).unwrap();
    let mut log = store.load("r").unwrap();
    log.append(text("before")).unwrap();
    let huge = binary(&vec![0u8; MAX_PAYLOAD + 1]);
    let err = log.append(huge.clone()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(log.len(), 2);
    log.append(text("after")).unwrap();
    drop(log);
    assert_eq!(history(&store.load("r").unwrap()), vec![text("before"), text("after")]);
}

/// The longest suffix of `all` within `keep` messages and `keep_bytes` payload bytes.
fn suffix_within(all: &[StoredMessage], keep: usize, keep_bytes: u64) -> Vec<StoredMessage> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for m in all.iter().rev() {
        if out.len() == keep || bytes + m.data.len() as u64 > keep_bytes {
            break;
        }
        bytes += m.data.len() as u64;
        out.push(m.clone());
    }
    out.reverse();
    out
}

#[test]
fn history_is_bounded_in_bytes_in_memory_and_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (keep, keep_bytes) = (100, 1000u64);
    let metrics = detached();
    let limits = Limits { keep, keep_bytes, max_rooms: 10 };
    let store = HistoryStore::open(dir.path(), limits, metrics.clone()).unwrap();
    let mut log = store.load("r").unwrap();
    let mut all = Vec::new();
    for i in 0..200usize {
        // Sizes 1..=300, and now and then one over the whole bound.
        let len = if i % 37 == 36 { 1001 } else { (i * 61) % 300 + 1 };
        let m = if i % 2 == 0 { binary(&vec![i as u8; len]) } else { text(&"t".repeat(len)) };
        all.push(m.clone());
        log.append(m).unwrap();
        let want = suffix_within(&all, keep, keep_bytes);
        assert_eq!(history(&log), want, "after message {i}");
        assert!(log.bytes() <= keep_bytes, "{} kept bytes after message {i}", log.bytes());
        assert_eq!(log.bytes(), want.iter().map(|m| m.data.len() as u64).sum::<u64>());
        let records = parse_file(&std::fs::read(&log.path).unwrap());
        let payload: u64 = records.iter().map(|m| m.data.len() as u64).sum();
        assert!(payload <= 2 * keep_bytes, "{payload} payload bytes on disk after message {i}");
        assert!(records.ends_with(&want), "the file ends with the kept messages after message {i}");
        assert_gauges(dir.path(), &metrics);
    }
    // A message over the bound empties the history; the next one is kept alone.
    log.append(binary(&[7u8; 1001])).unwrap();
    assert!(log.is_empty());
    log.append(text("small")).unwrap();
    assert_eq!(history(&log), vec![text("small")]);
    drop(log);
    assert_eq!(history(&store.load("r").unwrap()), vec![text("small")]);

    // A smaller byte bound on load keeps the newest messages within it and compacts the file.
    let big: Vec<StoredMessage> = (0..8u8).map(|i| binary(&[i; 100])).collect();
    let mut log = store.load("s").unwrap();
    for m in &big {
        log.append(m.clone()).unwrap();
    }
    drop((log, store));
    let limits = Limits { keep, keep_bytes: 250, max_rooms: 10 };
    let store = HistoryStore::open(dir.path(), limits, metrics.clone()).unwrap();
    let log = store.load("s").unwrap();
    assert_eq!(history(&log), big[6..].to_vec());
    assert_eq!(parse_file(&std::fs::read(&log.path).unwrap()), big[6..].to_vec());
    assert_gauges(dir.path(), &metrics);
}

#[test]
fn least_recently_used_idle_rooms_are_removed_beyond_max_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = detached();
    let limits = Limits { keep: 5, keep_bytes: 1 << 20, max_rooms: 3 };
    let store = HistoryStore::open(dir.path(), limits, metrics.clone()).unwrap();
    let path = |id: &str| room_path(dir.path(), id);
    let touch = |id: &str| {
        let mut log = store.load(id).unwrap();
        log.append(text(&format!("in {id}"))).unwrap();
        log
    };
    for id in ["a", "b", "c"] {
        drop(touch(id));
    }
    assert_gauges(dir.path(), &metrics);
    assert_eq!((metrics.rooms.get(), metrics.evictions.get()), (3, 0));
    // Using `a` again makes `b` the least recently used.
    drop(touch("a"));
    let d = touch("d");
    assert!(!path("b").exists() && path("a").exists() && path("c").exists());
    assert_eq!((metrics.rooms.get(), metrics.evictions.get()), (3, 1));
    assert_gauges(dir.path(), &metrics);
    let e = touch("e");
    assert!(!path("c").exists() && path("a").exists());
    let f = touch("f");
    assert!(!path("a").exists());
    assert_eq!(metrics.evictions.get(), 3);
    // Rooms in use are never removed: a fourth open room goes over the cap until it is idle.
    let g = touch("g");
    assert_eq!(on_disk(dir.path()).0.len(), 4);
    assert_gauges(dir.path(), &metrics);
    drop(g);
    assert!(!path("g").exists(), "the only idle room goes first");
    assert_eq!((metrics.rooms.get(), metrics.evictions.get()), (3, 4));
    drop((d, e, f));
    assert_eq!(on_disk(dir.path()).0, vec![path("d"), path("e"), path("f")]);
    assert_gauges(dir.path(), &metrics);
    assert_eq!(store.rooms_on_disk(), 3);
    // An evicted room starts again empty.
    drop(store);

    // Reopened: gauges come from a scan, leftovers are cleaned, the oldest files go first.
    let old = SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options().write(true).open(path("e")).unwrap().set_modified(old).unwrap();
    std::fs::write(with_suffix(&path("d"), ".tmp"), b"leftover").unwrap();
    std::fs::write(with_suffix(&path("d"), ".corrupt-1"), b"set aside").unwrap();
    let long = "L".repeat(150);
    let metrics = detached();
    let limits = Limits { keep: 5, keep_bytes: 1 << 20, max_rooms: 2 };
    let store = HistoryStore::open(dir.path(), limits, metrics.clone()).unwrap();
    assert!(!path("e").exists(), "the least recently modified file is removed at open");
    assert!(!with_suffix(&path("d"), ".tmp").exists());
    assert!(with_suffix(&path("d"), ".corrupt-1").exists());
    assert_eq!((metrics.rooms.get(), metrics.evictions.get()), (2, 1));
    assert_gauges(dir.path(), &metrics);
    assert_eq!(history(&store.load("d").unwrap()), vec![text("in d")]);
    // A long id's file lives in a directory, removed with it.
    drop(touch_in(&store, &long));
    let long_dir = path(&long).parent().unwrap().to_path_buf();
    assert!(long_dir != dir.path() && long_dir.is_dir());
    drop(touch_in(&store, "h"));
    drop(touch_in(&store, "i"));
    assert!(!long_dir.exists(), "the emptied directory of a long id is removed");
    assert!(store.load("e").unwrap().is_empty(), "an evicted room starts again empty");
    assert_gauges(dir.path(), &metrics);
}

/// Load `id` from `store` and append one message.
fn touch_in(store: &HistoryStore, id: &str) -> RoomLog {
    let mut log = store.load(id).unwrap();
    log.append(text(&format!("in {id}"))).unwrap();
    log
}

#[test]
fn keep_zero_leaves_the_store_untouched_and_counts_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    drop(touch_in(&open_store(dir.path(), 3).unwrap(), "x"));
    let metrics = detached();
    let store =
        HistoryStore::open(dir.path(), Limits { keep: 0, keep_bytes: 10, max_rooms: 5 }, metrics.clone()).unwrap();
    assert_gauges(dir.path(), &metrics);
    assert_eq!(metrics.rooms.get(), 1);
    drop(touch_in(&store, "y"));
    assert_eq!(on_disk(dir.path()).0.len(), 1);
}

#[test]
fn sequence_numbers_grow_across_compaction_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let keep = 3;
    {
        let store = open_store(dir.path(), keep).unwrap();
        let mut log = store.load("r").unwrap();
        assert_eq!(log.last_seq(), 0);
        for i in 1..=10u64 {
            log.append(text(&format!("m{i}"))).unwrap();
            assert_eq!(log.last_seq(), i);
        }
        assert_eq!(seqs(&log), vec![8, 9, 10]);
    }
    let path = room_path(dir.path(), "r");
    let (floor, records) = parse_file_seq(&std::fs::read(&path).unwrap());
    assert!(records.iter().map(|(s, _)| *s).eq(floor + 1..=10), "floor {floor}: {records:?}");
    let store = open_store(dir.path(), keep).unwrap();
    let mut log = store.load("r").unwrap();
    assert_eq!((seqs(&log), log.last_seq()), (vec![8, 9, 10], 10));
    log.append(text("m11")).unwrap();
    assert_eq!(log.last_seq(), 11);
    drop(log);
    // A smaller keep on load compacts; the numbers stay.
    let store = open_store(dir.path(), 1).unwrap();
    let log = store.load("r").unwrap();
    assert_eq!((seqs(&log), log.last_seq()), (vec![11], 11));
    let (floor, records) = parse_file_seq(&std::fs::read(&path).unwrap());
    assert_eq!((floor, records.len()), (10, 1));
}

#[test]
fn a_compaction_that_keeps_nothing_keeps_the_number() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { keep: 4, keep_bytes: 4, max_rooms: 100 };
    {
        let store = HistoryStore::open(dir.path(), limits, detached()).unwrap();
        let mut log = store.load("r").unwrap();
        for m in [text("ab"), text("cd"), binary(&[0; 9]), binary(&[1; 9]), binary(&[2; 9])] {
            log.append(m).unwrap();
        }
        assert!(log.is_empty());
        assert_eq!(log.last_seq(), 5);
    }
    let store = HistoryStore::open(dir.path(), limits, detached()).unwrap();
    let mut log = store.load("r").unwrap();
    assert_eq!((log.len(), log.last_seq()), (0, 5));
    log.append(text("x")).unwrap();
    assert_eq!(seqs(&log), vec![6]);
}

#[test]
fn a_version_1_log_is_read_numbered_from_1_and_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), 3).unwrap();
    let path = room_path(dir.path(), "old");
    let msgs: Vec<StoredMessage> = (1..=5).map(|i| text(&format!("v1-{i}"))).collect();
    std::fs::write(&path, v1_file(&msgs)).unwrap();
    let mut log = store.load("old").unwrap();
    assert_eq!(history(&log), msgs[2..].to_vec());
    assert_eq!((seqs(&log), log.last_seq()), (vec![3, 4, 5], 5));
    let (floor, records) = parse_file_seq(&std::fs::read(&path).unwrap());
    assert_eq!((floor, records.iter().map(|(s, _)| *s).collect::<Vec<_>>()), (2, vec![3, 4, 5]));
    log.append(text("v2")).unwrap();
    drop(log);
    let log = store.load("old").unwrap();
    assert_eq!(seqs(&log), vec![4, 5, 6]);
    // A torn version 1 tail is cut off as before, then the rest rewritten.
    let mut torn = v1_file(&msgs[..2]);
    torn.extend_from_slice(&[7, 0, 0]);
    let path = room_path(dir.path(), "torn1");
    std::fs::write(&path, &torn).unwrap();
    let log = store.load("torn1").unwrap();
    assert_eq!((history(&log), log.last_seq()), (msgs[..2].to_vec(), 2));
    assert_eq!(parse_file(&std::fs::read(&path).unwrap()), msgs[..2].to_vec());
}

#[test]
fn a_record_out_of_sequence_ends_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), 10).unwrap();
    let mut log = store.load("orig").unwrap();
    for m in [text("a"), text("b")] {
        log.append(m).unwrap();
    }
    let mut bytes = std::fs::read(&log.path).unwrap();
    drop(log);
    // A third record numbered 2 again, with a valid checksum.
    let m = text("c");
    bytes.extend_from_slice(&encode(2, &m).unwrap());
    let path = room_path(dir.path(), "dup");
    std::fs::write(&path, &bytes).unwrap();
    let (log, warnings) = with_warnings(|| store.load("dup").unwrap());
    assert_eq!(history(&log), vec![text("a"), text("b")]);
    assert!(warnings.iter().any(|w| w.contains("out of order")), "{warnings:?}");
}
