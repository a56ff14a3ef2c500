//! Durable message history of the built-in `room` object: one append-only log file per room.
//!
//! It owns the history directory of one namespace (`HistoryStore`) and, per joined room, the open
//! log file plus the in-memory copy of the last messages (`RoomLog`): at most `keep` messages and
//! at most `keep_bytes` payload bytes (the longest suffix of the room's messages within both; a
//! message larger than `keep_bytes` empties the history).
//!
//! Warm path: `RoomLog::append` runs once per room message, under the room's lock (it updates the
//! store's size gauge with one atomic swap); `HistoryStore::load` runs once when a room is first
//! joined (it reads the whole log).
//!
//! Store cap: the store keeps an index of every room file in its directory (built at `open` from
//! a scan, oldest modification first), with the rooms whose log is open (rooms with members)
//! apart. When there are more than `max_rooms` files, the least recently used rooms without an
//! open log have their file removed (counted in the evictions counter) until there are
//! `max_rooms`, or no idle room is left (rooms with members are never removed). This runs when a
//! new room file is created and when a room's log is closed, under the index's mutex (held only
//! for index updates and those removals, never across room locks). The gauges (`StoreMetrics`)
//! hold the number of room files and their total bytes, kept current on every change.
//!
//! File format: the file of room `id` is `<lowercase hex of id's bytes>.log` in the store's
//! directory, so any id is a safe file name (ids longer than 100 bytes are split into
//! directories of 200 hex digits each, `<hex>/<hex>.log`, to stay under the 255-byte name limit).
//! The file starts with the 16-byte header `WEIRHST2` + `u64 LE floor` (every record's sequence
//! number is above the floor: a compaction that keeps nothing still knows the room's newest
//! number), followed by records:
//! `u32 LE payload length | u8 kind (0 text, 1 binary) | u64 LE seq | u32 LE checksum | payload`,
//! where the checksum is FNV-1a 32-bit over the kind byte, the 8 seq bytes and the payload, and
//! each record's seq is larger than the one before (and than the floor). On load, a record that
//! is partial, longer than 64 MiB, of unknown kind, out of sequence or with a bad checksum ends
//! the log: the file is truncated to the end of the last valid record (with a warning). A file
//! with a wrong header is renamed to `<name>.corrupt-<unix-seconds>` (with a warning) and a fresh
//! log is started (its numbers start again at 1). A version 1 file (`WEIRHST1`, records without
//! seq: `u32 len | u8 kind | u32 checksum over kind and payload | payload`) is read with numbers
//! 1, 2, … and rewritten as version 2 at once (like a compaction; if that fails, the load fails).
//!
//! Sequence numbers: the next message of a room is numbered one above the newest record (or the
//! floor). A message whose append failed keeps its number in memory (it is delivered), so after
//! a restart that number is missing, never reused.
//!
//! Durability: every append is a single `write(2)` of the whole record to a file opened with
//! `O_APPEND`, without fsync. A message whose append returned is therefore kept if the process
//! crashes or is killed (the kernel has it), but may be lost if the machine crashes or loses
//! power; a record torn by such a crash is cut off on the next load.
//!
//! Compaction: when the log holds more than `2 * keep` records or more than `2 * keep_bytes` payload
//! bytes, the kept messages are written to `<file>.tmp`, which is fsynced and renamed over the log
//! (then the directory is fsynced), and the log is reopened for appending. So a log never holds
//! more than `2 * keep` records nor more than `2 * keep_bytes` payload bytes plus one message
//! (plus 9 bytes per record and the header). A `.tmp` left by a crash is removed at `open`.

use super::kept::Kept;
use crate::sync::lock;
use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// First bytes of every history log (version 2), before the floor.
const MAGIC: &[u8; 8] = b"WEIRHST2";
/// First bytes of a version 1 log (read, then rewritten as version 2).
const MAGIC_V1: &[u8; 8] = b"WEIRHST1";
/// Bytes of the version 2 header: magic and floor.
const HEADER_LEN: usize = 16;
/// Bytes before a record's payload: length, kind, seq, checksum.
const RECORD_HEAD: usize = 17;
/// Bytes before a version 1 record's payload: length, kind, checksum.
const RECORD_HEAD_V1: usize = 9;
/// Largest payload a record may hold, bytes.
const MAX_PAYLOAD: usize = 64 << 20;
/// Id bytes per path component (200 hex digits, leaving room for the suffixes).
const ID_CHUNK: usize = 100;
/// Kind byte of a text message.
const KIND_TEXT: u8 = 0;
/// Kind byte of a binary message.
const KIND_BINARY: u8 = 1;

/// Whether a stored message was a text or a binary WebSocket message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A text message (the caller only stores valid UTF-8).
    Text,
    /// A binary message.
    Binary,
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Text or binary.
    pub kind: MessageKind,
    /// The message payload.
    pub data: Bytes,
}

/// What one namespace's store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Messages kept per room (0: nothing is stored and no file is created).
    pub keep: usize,
    /// Payload bytes kept per room.
    pub keep_bytes: u64,
    /// Room files kept on disk; beyond it the least recently used idle rooms are removed.
    pub max_rooms: usize,
}

/// Where a store reports its size (already labelled with the namespace).
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// Bytes of room files on disk.
    pub bytes: IntGauge,
    /// Room files on disk.
    pub rooms: IntGauge,
    /// Room files removed to keep the store within `max_rooms`.
    pub evictions: IntCounter,
}

/// Where all rooms of one namespace keep their history: one file per room id in `dir`.
#[derive(Debug)]
pub struct HistoryStore {
    shared: Arc<Shared>,
}

/// The store's state shared with its open logs.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    limits: Limits,
    metrics: StoreMetrics,
    index: Mutex<Index>,
}

/// Every room file of the store.
#[derive(Debug, Default)]
struct Index {
    files: HashMap<PathBuf, FileEntry>,
    /// Files with no open log, by last use (oldest first).
    idle: BTreeMap<u64, PathBuf>,
    /// The next use stamp.
    tick: u64,
}

/// One room file.
#[derive(Debug)]
struct FileEntry {
    /// Open logs of this file (more than one only while a room's old copy is being dropped).
    open: usize,
    /// Use stamp (its key in `Index::idle` while `open` is 0).
    used: u64,
    /// Its bytes as counted in the bytes gauge; shared with its open logs.
    size: Arc<AtomicU64>,
}

impl HistoryStore {
    /// Create `dir` (and parents) if missing and index the room files in it (removing compaction
    /// leftovers, then the least recently modified files beyond `limits.max_rooms`).
    pub fn open(dir: &Path, limits: Limits, metrics: StoreMetrics) -> io::Result<HistoryStore> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        scan_dir(dir, &mut found)?;
        found.sort();
        let mut index = Index::default();
        let mut total = 0u64;
        for (_, len, path) in found {
            total += len;
            let used = index.tick;
            index.tick += 1;
            index.idle.insert(used, path.clone());
            index.files.insert(path, FileEntry { open: 0, used, size: Arc::new(AtomicU64::new(len)) });
        }
        metrics.rooms.set(gauge_value(index.files.len() as u64));
        metrics.bytes.set(gauge_value(total));
        let shared = Shared { dir: dir.to_path_buf(), limits, metrics, index: Mutex::new(Index::default()) };
        shared.evict(&mut index);
        *lock(&shared.index) = index;
        Ok(HistoryStore { shared: Arc::new(shared) })
    }

    /// Open (creating if missing) the log of room `id` and load its kept messages (a version 1
    /// log is rewritten as version 2 here).
    pub fn load(&self, id: &str) -> io::Result<RoomLog> {
        let path = room_path(&self.shared.dir, id);
        let limits = self.shared.limits;
        let mut log = RoomLog {
            file: None,
            path,
            kept: Kept::new(limits.keep, limits.keep_bytes, 0),
            records: 0,
            disk_len: 0,
            disk_payload: 0,
            limits,
            store: None,
        };
        if limits.keep == 0 {
            return Ok(log);
        }
        log.store = Some((self.shared.clone(), self.shared.opened(&log.path)));
        if let Some(parent) = log.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let version = log.open_and_scan()?;
        log.account();
        if version == 1 {
            log.compact()?;
        } else if log.over_limit() {
            if let Err(e) = log.compact() {
                tracing::warn!(path = %log.path.display(), error = %e, "room history: compaction on load failed");
            }
        }
        Ok(log)
    }

    /// Messages kept per room.
    pub fn keep(&self) -> usize {
        self.shared.limits.keep
    }

    /// Room files on disk, as the store counts them.
    pub fn rooms_on_disk(&self) -> usize {
        lock(&self.shared.index).files.len()
    }
}

impl Shared {
    /// A log of `path` is being opened: it is in use (never removed while open); a new file is
    /// counted and may push the least recently used idle ones out. Returns its size cell.
    fn opened(&self, path: &Path) -> Arc<AtomicU64> {
        let mut guard = lock(&self.index);
        let index = &mut *guard;
        if let Some(e) = index.files.get_mut(path) {
            if e.open == 0 {
                index.idle.remove(&e.used);
            }
            e.open += 1;
            return e.size.clone();
        }
        let size = Arc::new(AtomicU64::new(0));
        index.files.insert(path.to_path_buf(), FileEntry { open: 1, used: index.tick, size: size.clone() });
        index.tick += 1;
        self.metrics.rooms.inc();
        self.evict(index);
        size
    }

    /// A log of `path` was closed: its size is taken from the file; once no log has it open it
    /// is the most recently used idle room (or forgotten, if its file does not exist).
    fn closed(&self, path: &Path) {
        let mut guard = lock(&self.index);
        let index = &mut *guard;
        let Some(e) = index.files.get_mut(path) else { return };
        e.open = e.open.saturating_sub(1);
        match std::fs::metadata(path) {
            Ok(meta) => {
                let old = e.size.swap(meta.len(), Ordering::Relaxed);
                self.metrics.bytes.add(gauge_value(meta.len()) - gauge_value(old));
            }
            Err(_) if e.open == 0 => {
                let old = e.size.swap(0, Ordering::Relaxed);
                self.metrics.bytes.sub(gauge_value(old));
                self.metrics.rooms.dec();
                index.files.remove(path);
                return;
            }
            Err(_) => {}
        }
        if e.open == 0 {
            e.used = index.tick;
            index.tick += 1;
            index.idle.insert(e.used, path.to_path_buf());
        }
        self.evict(index);
    }

    /// Remove the least recently used idle room files while there are more than `max_rooms`
    /// (a file that cannot be removed stays, idle, and the next one is tried).
    fn evict(&self, index: &mut Index) {
        let mut kept = Vec::new();
        while index.files.len() > self.limits.max_rooms {
            let Some((used, path)) = index.idle.pop_first() else { break };
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "room history: cannot remove a room file over max_rooms_on_disk");
                    kept.push((used, path));
                    continue;
                }
            }
            if let Some(e) = index.files.remove(&path) {
                self.metrics.bytes.sub(gauge_value(e.size.load(Ordering::Relaxed)));
            }
            self.metrics.rooms.dec();
            self.metrics.evictions.inc();
            remove_empty_parents(&path, &self.dir);
            tracing::debug!(path = %path.display(), "room history: removed the least recently used room file");
        }
        index.idle.extend(kept);
    }
}

/// `n` as a gauge value (saturating).
fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Collect `(modified, length, path)` of every room file under `dir` (recursively, for long ids);
/// compaction leftovers (`.log.tmp`) are removed, set-aside files are left alone. Only an
/// unreadable `dir` is an error; an entry that cannot be read is skipped with a warning.
fn scan_dir(dir: &Path, found: &mut Vec<(SystemTime, u64, PathBuf)>) -> io::Result<()> {
    std::fs::read_dir(dir)?;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(path = %d.display(), error = %e, "room history: cannot read a store directory; its files are not counted");
                continue;
            }
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let Ok(kind) = entry.file_type() else { continue };
            let path = entry.path();
            if kind.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".log.tmp") {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "room history: cannot remove a compaction leftover");
                }
            } else if kind.is_file() && name.ends_with(".log") {
                match entry.metadata() {
                    Ok(meta) => found.push((meta.modified().unwrap_or(UNIX_EPOCH), meta.len(), path)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "room history: cannot stat a room file; it is not counted")
                    }
                }
            }
        }
    }
    Ok(())
}

/// Remove the now empty directories between `path` and `dir` (long ids), best effort.
fn remove_empty_parents(path: &Path, dir: &Path) {
    let mut at = path.parent();
    while let Some(d) = at {
        if d == dir || !d.starts_with(dir) || std::fs::remove_dir(d).is_err() {
            return;
        }
        at = d.parent();
    }
}

/// One room's open log plus its in-memory history (the kept messages, oldest first, numbered).
#[derive(Debug)]
pub struct RoomLog {
    /// The log opened for reading and appending; `None` if it must be reopened (or `keep` is 0).
    file: Option<File>,
    path: PathBuf,
    /// The kept messages and the newest sequence number.
    kept: Kept,
    /// Valid records in the file.
    records: u64,
    /// Length of the file up to the end of the last valid record.
    disk_len: u64,
    /// Payload bytes of the valid records in the file.
    disk_payload: u64,
    limits: Limits,
    /// The store and this file's size cell (`None` when `keep` is 0: nothing on disk).
    store: Option<(Arc<Shared>, Arc<AtomicU64>)>,
}

impl Drop for RoomLog {
    fn drop(&mut self) {
        if let Some((shared, _)) = self.store.take() {
            self.file = None;
            shared.closed(&self.path);
        }
    }
}

impl RoomLog {
    /// The kept messages, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &StoredMessage> + '_ {
        self.kept.messages()
    }

    /// The kept messages with their sequence numbers.
    pub fn kept(&self) -> &Kept {
        &self.kept
    }

    /// Sequence number of the newest message (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.kept.last()
    }

    /// Number of kept messages.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Whether no message is kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Payload bytes of the kept messages.
    pub fn bytes(&self) -> u64 {
        self.kept.bytes()
    }

    /// Append one message, numbered `last_seq() + 1`, to the log and the in-memory history;
    /// compacts the log when due. On an error the message keeps its number (and stays in
    /// memory): `last_seq()` is its number either way.
    pub fn append(&mut self, msg: StoredMessage) -> io::Result<()> {
        let seq = self.kept.last() + 1;
        if self.limits.keep == 0 {
            self.kept.push(seq, msg);
            return Ok(());
        }
        let record = encode(seq, &msg);
        self.kept.push(seq, msg);
        self.write_record(&record?)?;
        if self.over_limit() {
            self.compact()?;
        }
        Ok(())
    }

    /// Whether the file holds more than twice what is kept (records or payload bytes).
    fn over_limit(&self) -> bool {
        let keep = u64::try_from(self.limits.keep).unwrap_or(u64::MAX);
        self.records > keep.saturating_mul(2) || self.disk_payload > self.limits.keep_bytes.saturating_mul(2)
    }

    /// Count the file's current length in the store's bytes gauge.
    fn account(&self) {
        if let Some((shared, size)) = &self.store {
            let old = size.swap(self.disk_len, Ordering::Relaxed);
            shared.metrics.bytes.add(gauge_value(self.disk_len) - gauge_value(old));
        }
    }

    /// Write one encoded record with a single `write(2)`; a short write is cut back off.
    fn write_record(&mut self, record: &[u8]) -> io::Result<()> {
        self.ensure_open()?;
        let Some(mut file) = self.file.as_ref() else {
            return Err(io::Error::other("room history: log not open"));
        };
        let written = file.write(record)?;
        if written != record.len() {
            let _ = file.set_len(self.disk_len);
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write to {}: {written} of {} bytes", self.path.display(), record.len()),
            ));
        }
        self.disk_len += record.len() as u64;
        self.disk_payload += (record.len() - RECORD_HEAD) as u64;
        self.records += 1;
        self.account();
        Ok(())
    }

    /// Reopen the log in append mode if an earlier compaction left it closed.
    fn ensure_open(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            let file = open_append(&self.path, false)?;
            self.disk_len = file.metadata()?.len();
            self.file = Some(file);
            self.account();
        }
        Ok(())
    }

    /// Open (creating if missing) the log, check its header and load its valid records;
    /// returns the file's format version (1 must be rewritten before appending).
    fn open_and_scan(&mut self) -> io::Result<u8> {
        let mut file = open_append(&self.path, true)?;
        let file_len = file.metadata()?.len();
        let mut header = Vec::with_capacity(HEADER_LEN);
        (&mut file).take(HEADER_LEN as u64).read_to_end(&mut header)?;
        let version = match header.get(..MAGIC.len()) {
            Some(m) if m == MAGIC_V1 => Some((1, MAGIC.len() as u64, 0)),
            Some(m) if m == MAGIC && header.len() == HEADER_LEN => {
                let mut floor = [0u8; 8];
                floor.copy_from_slice(&header[MAGIC.len()..]);
                Some((2, HEADER_LEN as u64, u64::from_le_bytes(floor)))
            }
            _ => None,
        };
        let Some((version, start, floor)) = version else {
            let torn = MAGIC.starts_with(&header[..header.len().min(MAGIC.len())])
                || MAGIC_V1.starts_with(&header[..header.len().min(MAGIC.len())]);
            let mut torn_len = file_len;
            if !torn {
                drop(file);
                file = self.set_aside()?;
                torn_len = 0;
            }
            start_fresh(&file, &self.path, torn_len)?;
            self.disk_len = HEADER_LEN as u64;
            self.file = Some(file);
            return Ok(2);
        };
        // The header was read: the reader goes on from `start` (a v1 header is 8 bytes).
        let mut reader = BufReader::with_capacity(64 << 10, &file);
        reader.seek(io::SeekFrom::Start(start))?;
        let scan = scan_records(reader, version, start, file_len, floor, self.limits)?;
        if scan.valid_end < file_len {
            tracing::warn!(
                path = %self.path.display(),
                dropped_bytes = file_len - scan.valid_end,
                reason = scan.stop,
                "room history: cutting off torn or corrupt tail"
            );
            file.set_len(scan.valid_end)?;
        }
        self.kept = scan.kept;
        self.records = scan.records;
        self.disk_len = scan.valid_end;
        self.disk_payload = scan.payload;
        self.file = Some(file);
        Ok(version)
    }

    /// Rename a log with a wrong header to `<name>.corrupt-<unix-seconds>`; open a new empty one.
    fn set_aside(&self) -> io::Result<File> {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let aside = with_suffix(&self.path, &format!(".corrupt-{secs}"));
        std::fs::rename(&self.path, &aside)?;
        tracing::warn!(
            path = %self.path.display(),
            moved_to = %aside.display(),
            "room history: log has a wrong header; set aside, starting a fresh log"
        );
        open_append(&self.path, true)
    }

    /// Rewrite the log to hold only the kept messages (tmp file, fsync, rename, fsync dir).
    fn compact(&mut self) -> io::Result<()> {
        let tmp = with_suffix(&self.path, ".tmp");
        let len = match write_compacted(&tmp, &self.kept) {
            Ok(len) => len,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(&tmp, &self.path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.file = None;
        self.records = self.kept.len() as u64;
        self.disk_len = len;
        self.disk_payload = self.kept.bytes();
        self.account();
        sync_parent(&self.path)?;
        self.ensure_open()
    }
}

/// Valid records found by a scan of a log.
struct Scan {
    /// The kept messages (within `keep` and `keep_bytes`), oldest first, and the newest number.
    kept: Kept,
    /// Number of valid records.
    records: u64,
    /// Payload bytes of the valid records.
    payload: u64,
    /// File offset just past the last valid record.
    valid_end: u64,
    /// Why the scan stopped before the end of the file, if it did.
    stop: &'static str,
}

/// Read the records of a log of format `version` from `reader` (at offset `start` of a file of
/// `file_len` bytes), keeping the last ones within `limits`. Version 1 records are numbered 1,
/// 2, …; version 2 records carry their number, which must grow (above `floor`).
fn scan_records(
    mut reader: impl Read,
    version: u8,
    start: u64,
    file_len: u64,
    floor: u64,
    limits: Limits,
) -> io::Result<Scan> {
    let mut scan = Scan {
        kept: Kept::new(limits.keep, limits.keep_bytes, floor),
        records: 0,
        payload: 0,
        valid_end: start,
        stop: "",
    };
    let head_len = if version == 1 { RECORD_HEAD_V1 } else { RECORD_HEAD };
    loop {
        let remaining = file_len.saturating_sub(scan.valid_end);
        let record = if version == 1 {
            read_record_v1(&mut reader, remaining)?.map(|m| m.map(|m| (scan.kept.last() + 1, m)))
        } else {
            read_record(&mut reader, remaining)?
        };
        match record {
            Ok(None) => return Ok(scan),
            Ok(Some((seq, _))) if seq <= scan.kept.last() => {
                scan.stop = "record sequence number out of order";
                return Ok(scan);
            }
            Ok(Some((seq, msg))) => {
                let len = msg.data.len() as u64;
                scan.valid_end += head_len as u64 + len;
                scan.records += 1;
                scan.payload += len;
                scan.kept.push(seq, msg);
            }
            Err(reason) => {
                scan.stop = reason;
                return Ok(scan);
            }
        }
    }
}

/// Read one version 2 record with `remaining` bytes left in the file: `Ok(None)` at a clean
/// end, `Err(reason)` for a torn or corrupt record.
#[allow(clippy::type_complexity)]
fn read_record(
    reader: &mut impl Read,
    remaining: u64,
) -> io::Result<Result<Option<(u64, StoredMessage)>, &'static str>> {
    let mut head = [0u8; RECORD_HEAD];
    let got = read_full(reader, &mut head)?;
    if got == 0 {
        return Ok(Ok(None));
    }
    if got < RECORD_HEAD {
        return Ok(Err("partial record header"));
    }
    let [l0, l1, l2, l3, kind, s0, s1, s2, s3, s4, s5, s6, s7, c0, c1, c2, c3] = head;
    let seq = [s0, s1, s2, s3, s4, s5, s6, s7];
    let (kind_v, payload) = match read_body(reader, RECORD_HEAD, [l0, l1, l2, l3], kind, remaining)? {
        Ok(body) => body,
        Err(reason) => return Ok(Err(reason)),
    };
    if checksum_v2(kind, &seq, &payload) != u32::from_le_bytes([c0, c1, c2, c3]) {
        return Ok(Err("record checksum mismatch"));
    }
    Ok(Ok(Some((u64::from_le_bytes(seq), StoredMessage { kind: kind_v, data: Bytes::from(payload) }))))
}

/// Read one version 1 record (no seq) with `remaining` bytes left in the file.
fn read_record_v1(reader: &mut impl Read, remaining: u64) -> io::Result<Result<Option<StoredMessage>, &'static str>> {
    let mut head = [0u8; RECORD_HEAD_V1];
    let got = read_full(reader, &mut head)?;
    if got == 0 {
        return Ok(Ok(None));
    }
    if got < RECORD_HEAD_V1 {
        return Ok(Err("partial record header"));
    }
    let [l0, l1, l2, l3, kind, c0, c1, c2, c3] = head;
    let (kind_v, payload) = match read_body(reader, RECORD_HEAD_V1, [l0, l1, l2, l3], kind, remaining)? {
        Ok(body) => body,
        Err(reason) => return Ok(Err(reason)),
    };
    if checksum(kind, &payload) != u32::from_le_bytes([c0, c1, c2, c3]) {
        return Ok(Err("record checksum mismatch"));
    }
    Ok(Ok(Some(StoredMessage { kind: kind_v, data: Bytes::from(payload) })))
}

/// A record's body after its head (`head_len` bytes, both versions): its length (`len`, little
/// endian) and kind checked, then its payload read, with `remaining` bytes left in the file
/// before the head. `Err(reason)` for a torn or corrupt record.
fn read_body(
    reader: &mut impl Read,
    head_len: usize,
    len: [u8; 4],
    kind: u8,
    remaining: u64,
) -> io::Result<Result<(MessageKind, Vec<u8>), &'static str>> {
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_PAYLOAD {
        return Ok(Err("record length over 64 MiB"));
    }
    let Some(kind) = kind_of(kind) else {
        return Ok(Err("unknown record kind"));
    };
    if (head_len + len) as u64 > remaining {
        return Ok(Err("partial record payload"));
    }
    let mut payload = vec![0u8; len];
    if read_full(reader, &mut payload)? < len {
        return Ok(Err("partial record payload"));
    }
    Ok(Ok((kind, payload)))
}

/// Read into `buf` until it is full or the reader ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The message kind of a kind byte, if it is a known one.
fn kind_of(byte: u8) -> Option<MessageKind> {
    match byte {
        KIND_TEXT => Some(MessageKind::Text),
        KIND_BINARY => Some(MessageKind::Binary),
        _ => None,
    }
}

/// The kind byte of a message kind.
pub(crate) fn kind_byte(kind: MessageKind) -> u8 {
    match kind {
        MessageKind::Text => KIND_TEXT,
        MessageKind::Binary => KIND_BINARY,
    }
}

/// The message kind of a stored kind value (`kind_byte`), if known.
pub(crate) fn kind_of_value(value: i16) -> Option<MessageKind> {
    u8::try_from(value).ok().and_then(kind_of)
}

/// FNV-1a 32-bit over `bytes`, continuing from `hash`.
fn fnv1a<'a>(hash: u32, bytes: impl IntoIterator<Item = &'a u8>) -> u32 {
    const PRIME: u32 = 0x0100_0193;
    bytes.into_iter().fold(hash, |hash, &b| (hash ^ u32::from(b)).wrapping_mul(PRIME))
}

/// FNV-1a offset basis.
const FNV_OFFSET: u32 = 0x811c_9dc5;

/// FNV-1a 32-bit over the kind byte followed by the payload (version 1 records).
fn checksum(kind: u8, payload: &[u8]) -> u32 {
    fnv1a(FNV_OFFSET, std::iter::once(&kind).chain(payload))
}

/// FNV-1a 32-bit over the kind byte, the seq bytes and the payload (version 2 records).
fn checksum_v2(kind: u8, seq: &[u8; 8], payload: &[u8]) -> u32 {
    fnv1a(FNV_OFFSET, std::iter::once(&kind).chain(seq).chain(payload))
}

/// The version 2 header with `floor`.
fn header(floor: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..MAGIC.len()].copy_from_slice(MAGIC);
    h[MAGIC.len()..].copy_from_slice(&floor.to_le_bytes());
    h
}

/// The head (length, kind, seq, checksum) of the record of message `seq`; errors if the payload
/// is too long.
fn record_head(seq: u64, msg: &StoredMessage) -> io::Result<[u8; RECORD_HEAD]> {
    let len = u32::try_from(msg.data.len()).ok().filter(|&l| l as usize <= MAX_PAYLOAD).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("room history: message of {} bytes is over 64 MiB, not stored", msg.data.len()),
        )
    })?;
    let kind = kind_byte(msg.kind);
    let seq = seq.to_le_bytes();
    let mut head = [0u8; RECORD_HEAD];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4] = kind;
    head[5..13].copy_from_slice(&seq);
    head[13..].copy_from_slice(&checksum_v2(kind, &seq, &msg.data).to_le_bytes());
    Ok(head)
}

/// The whole encoded record of message `seq`, ready for a single write.
fn encode(seq: u64, msg: &StoredMessage) -> io::Result<Vec<u8>> {
    let head = record_head(seq, msg)?;
    let mut record = Vec::with_capacity(RECORD_HEAD + msg.data.len());
    record.extend_from_slice(&head);
    record.extend_from_slice(&msg.data);
    Ok(record)
}

/// Write a complete log holding the `kept` messages to `tmp` and fsync it; returns its length.
fn write_compacted(tmp: &Path, kept: &Kept) -> io::Result<u64> {
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(tmp)?;
    let mut out = BufWriter::with_capacity(64 << 10, file);
    out.write_all(&header(kept.first() - 1))?;
    let mut len = HEADER_LEN as u64;
    for (seq, msg) in kept.entries() {
        out.write_all(&record_head(*seq, msg)?)?;
        out.write_all(&msg.data)?;
        len += (RECORD_HEAD + msg.data.len()) as u64;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(len)
}

/// Make a log with a missing or torn header (a prefix of it, `file_len` bytes) a fresh empty log.
fn start_fresh(file: &File, path: &Path, file_len: u64) -> io::Result<()> {
    if file_len > 0 {
        tracing::warn!(path = %path.display(), dropped_bytes = file_len, "room history: torn header, starting a fresh log");
        file.set_len(0)?;
    }
    let mut writer: &File = file;
    let written = writer.write(&header(0))?;
    if written != HEADER_LEN {
        let _ = file.set_len(0);
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write of history header"));
    }
    Ok(())
}

/// Open `path` for reading and appending (`O_APPEND`), creating it if `create`.
fn open_append(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new().read(true).append(true).create(create).open(path)
}

/// Fsync the directory holding `path`, so a rename in it is durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// The log path of room `id` in `dir`: lowercase hex of the id's bytes plus `.log`, split into
/// directories of `ID_CHUNK` id bytes so no path component exceeds the file-name limit.
fn room_path(dir: &Path, id: &str) -> PathBuf {
    let chunks: Vec<&[u8]> = id.as_bytes().chunks(ID_CHUNK).collect();
    let mut path = dir.to_path_buf();
    let Some((last, dirs)) = chunks.split_last() else {
        path.push(".log");
        return path;
    };
    for chunk in dirs {
        path.push(hex(chunk));
    }
    path.push(format!("{}.log", hex(last)));
    path
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests;
