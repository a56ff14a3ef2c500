//! Durable message history of the built-in `room` object: one append-only log file per room.
//!
//! It owns the history directory of one namespace (`HistoryStore`) and, per joined room, the open
//! log file plus the in-memory copy of the last `keep` messages (`RoomLog`).
//!
//! Warm path: `RoomLog::append` runs once per room message, under the room's lock;
//! `HistoryStore::load` runs once when a room is first joined (it reads the whole log).
//!
//! File format: the file of room `id` is `<lowercase hex of id's bytes>.log` in the store's
//! directory, so any id is a safe file name (ids longer than 100 bytes are split into
//! directories of 200 hex digits each, `<hex>/<hex>.log`, to stay under the 255-byte name limit).
//! The file starts with the 8-byte header `WEIRHST1`, followed by records:
//! `u32 LE payload length | u8 kind (0 text, 1 binary) | u32 LE checksum | payload`, where the
//! checksum is FNV-1a 32-bit over the kind byte followed by the payload. On load, a record that is
//! partial, longer than 64 MiB, of unknown kind or with a bad checksum ends the log: the file is
//! truncated to the end of the last valid record (with a warning). A file with a wrong header is
//! renamed to `<name>.corrupt-<unix-seconds>` (with a warning) and a fresh log is started.
//!
//! Durability: every append is a single `write(2)` of the whole record to a file opened with
//! `O_APPEND`, without fsync. A message whose append returned is therefore kept if the process
//! crashes or is killed (the kernel has it), but may be lost if the machine crashes or loses
//! power; a record torn by such a crash is cut off on the next load.
//!
//! Compaction: when the log holds more than `2 * keep` records, the kept messages are written to
//! `<file>.tmp`, which is fsynced and renamed over the log (then the directory is fsynced), and
//! the log is reopened for appending. So a log never holds more than `2 * keep` records.

use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// First bytes of every history log.
const HEADER: &[u8; 8] = b"WEIRHST1";
/// Bytes before a record's payload: length, kind, checksum.
const RECORD_HEAD: usize = 9;
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

/// Where all rooms of one namespace keep their history: one file per room id in `dir`.
#[derive(Debug)]
pub struct HistoryStore {
    dir: PathBuf,
    keep: usize,
}

impl HistoryStore {
    /// Create `dir` (and parents) if missing; `keep` is the number of messages kept per room.
    pub fn open(dir: &Path, keep: usize) -> io::Result<HistoryStore> {
        std::fs::create_dir_all(dir)?;
        Ok(HistoryStore { dir: dir.to_path_buf(), keep })
    }

    /// Open (creating if missing) the log of room `id` and load its last `keep` messages.
    pub fn load(&self, id: &str) -> io::Result<RoomLog> {
        let path = room_path(&self.dir, id);
        let mut log = RoomLog { file: None, path, history: VecDeque::new(), records: 0, disk_len: 0, keep: self.keep };
        if self.keep == 0 {
            return Ok(log);
        }
        if let Some(parent) = log.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        log.open_and_scan()?;
        if log.records > log.limit() {
            if let Err(e) = log.compact() {
                tracing::warn!(path = %log.path.display(), error = %e, "room history: compaction on load failed");
            }
        }
        Ok(log)
    }

    /// Messages kept per room.
    pub fn keep(&self) -> usize {
        self.keep
    }
}

/// One room's open log plus its in-memory history (the last `keep` messages, oldest first).
#[derive(Debug)]
pub struct RoomLog {
    /// The log opened for reading and appending; `None` if it must be reopened (or `keep` is 0).
    file: Option<File>,
    path: PathBuf,
    history: VecDeque<StoredMessage>,
    /// Valid records in the file.
    records: u64,
    /// Length of the file up to the end of the last valid record.
    disk_len: u64,
    keep: usize,
}

impl RoomLog {
    /// The kept messages, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &StoredMessage> + '_ {
        self.history.iter()
    }

    /// Number of kept messages.
    pub fn len(&self) -> usize {
        self.history.len()
    }

    /// Whether no message is kept.
    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }

    /// Append one message to the log and the in-memory history; compacts the log when due.
    pub fn append(&mut self, msg: StoredMessage) -> io::Result<()> {
        if self.keep == 0 {
            return Ok(());
        }
        let record = encode(&msg);
        self.push(msg);
        self.write_record(&record?)?;
        if self.records > self.limit() {
            self.compact()?;
        }
        Ok(())
    }

    /// Most records the file may hold before it is compacted.
    fn limit(&self) -> u64 {
        u64::try_from(self.keep).unwrap_or(u64::MAX).saturating_mul(2)
    }

    /// Push `msg` to the in-memory history, dropping the oldest beyond `keep`.
    fn push(&mut self, msg: StoredMessage) {
        self.history.push_back(msg);
        while self.history.len() > self.keep {
            self.history.pop_front();
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
        self.records += 1;
        Ok(())
    }

    /// Reopen the log in append mode if an earlier compaction left it closed.
    fn ensure_open(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            let file = open_append(&self.path, false)?;
            self.disk_len = file.metadata()?.len();
            self.file = Some(file);
        }
        Ok(())
    }

    /// Open (creating if missing) the log, check its header and load its valid records.
    fn open_and_scan(&mut self) -> io::Result<()> {
        let mut file = open_append(&self.path, true)?;
        let file_len = file.metadata()?.len();
        let mut header = Vec::with_capacity(HEADER.len());
        (&mut file).take(HEADER.len() as u64).read_to_end(&mut header)?;
        if header.as_slice() != HEADER.as_slice() {
            let mut torn_len = file_len;
            if !HEADER.starts_with(&header) {
                drop(file);
                file = self.set_aside()?;
                torn_len = 0;
            }
            start_fresh(&file, &self.path, torn_len)?;
            self.disk_len = HEADER.len() as u64;
            self.file = Some(file);
            return Ok(());
        }
        let scan = scan_records(&file, file_len, self.keep)?;
        if scan.valid_end < file_len {
            tracing::warn!(
                path = %self.path.display(),
                dropped_bytes = file_len - scan.valid_end,
                reason = scan.stop,
                "room history: cutting off torn or corrupt tail"
            );
            file.set_len(scan.valid_end)?;
        }
        self.history = scan.messages;
        self.records = scan.records;
        self.disk_len = scan.valid_end;
        self.file = Some(file);
        Ok(())
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
        let len = match write_compacted(&tmp, &self.history) {
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
        self.records = self.history.len() as u64;
        self.disk_len = len;
        sync_parent(&self.path)?;
        self.ensure_open()
    }
}

/// Valid records found by a scan of a log.
struct Scan {
    /// The last `keep` messages, oldest first.
    messages: VecDeque<StoredMessage>,
    /// Number of valid records.
    records: u64,
    /// File offset just past the last valid record.
    valid_end: u64,
    /// Why the scan stopped before the end of the file, if it did.
    stop: &'static str,
}

/// Read the records after the header of `file` (`file_len` bytes), keeping the last `keep`.
fn scan_records(file: &File, file_len: u64, keep: usize) -> io::Result<Scan> {
    let mut reader = BufReader::with_capacity(64 << 10, file);
    let mut scan = Scan { messages: VecDeque::new(), records: 0, valid_end: HEADER.len() as u64, stop: "" };
    loop {
        match read_record(&mut reader, file_len.saturating_sub(scan.valid_end))? {
            Ok(None) => return Ok(scan),
            Ok(Some(msg)) => {
                scan.valid_end += (RECORD_HEAD + msg.data.len()) as u64;
                scan.records += 1;
                scan.messages.push_back(msg);
                if scan.messages.len() > keep {
                    scan.messages.pop_front();
                }
            }
            Err(reason) => {
                scan.stop = reason;
                return Ok(scan);
            }
        }
    }
}

/// Read one record with `remaining` bytes left in the file: `Ok(None)` at a clean end,
/// `Err(reason)` for a torn or corrupt record.
fn read_record(reader: &mut impl Read, remaining: u64) -> io::Result<Result<Option<StoredMessage>, &'static str>> {
    let mut head = [0u8; RECORD_HEAD];
    let got = read_full(reader, &mut head)?;
    if got == 0 {
        return Ok(Ok(None));
    }
    if got < RECORD_HEAD {
        return Ok(Err("partial record header"));
    }
    let [l0, l1, l2, l3, kind, c0, c1, c2, c3] = head;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    if len > MAX_PAYLOAD {
        return Ok(Err("record length over 64 MiB"));
    }
    let Some(kind) = kind_of(kind) else {
        return Ok(Err("unknown record kind"));
    };
    if (RECORD_HEAD + len) as u64 > remaining {
        return Ok(Err("partial record payload"));
    }
    let mut payload = vec![0u8; len];
    if read_full(reader, &mut payload)? < len {
        return Ok(Err("partial record payload"));
    }
    if checksum(head[4], &payload) != u32::from_le_bytes([c0, c1, c2, c3]) {
        return Ok(Err("record checksum mismatch"));
    }
    Ok(Ok(Some(StoredMessage { kind, data: Bytes::from(payload) })))
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
fn kind_byte(kind: MessageKind) -> u8 {
    match kind {
        MessageKind::Text => KIND_TEXT,
        MessageKind::Binary => KIND_BINARY,
    }
}

/// FNV-1a 32-bit over the kind byte followed by the payload.
fn checksum(kind: u8, payload: &[u8]) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    std::iter::once(&kind).chain(payload).fold(OFFSET, |hash, &b| (hash ^ u32::from(b)).wrapping_mul(PRIME))
}

/// The head (length, kind, checksum) of the record of `msg`; errors if the payload is too long.
fn record_head(msg: &StoredMessage) -> io::Result<[u8; RECORD_HEAD]> {
    let len = u32::try_from(msg.data.len()).ok().filter(|&l| l as usize <= MAX_PAYLOAD).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("room history: message of {} bytes is over 64 MiB, not stored", msg.data.len()),
        )
    })?;
    let kind = kind_byte(msg.kind);
    let mut head = [0u8; RECORD_HEAD];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4] = kind;
    head[5..].copy_from_slice(&checksum(kind, &msg.data).to_le_bytes());
    Ok(head)
}

/// The whole encoded record of `msg`, ready for a single write.
fn encode(msg: &StoredMessage) -> io::Result<Vec<u8>> {
    let head = record_head(msg)?;
    let mut record = Vec::with_capacity(RECORD_HEAD + msg.data.len());
    record.extend_from_slice(&head);
    record.extend_from_slice(&msg.data);
    Ok(record)
}

/// Write a complete log holding `messages` to `tmp` and fsync it; returns its length.
fn write_compacted(tmp: &Path, messages: &VecDeque<StoredMessage>) -> io::Result<u64> {
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(tmp)?;
    let mut out = BufWriter::with_capacity(64 << 10, file);
    out.write_all(HEADER)?;
    let mut len = HEADER.len() as u64;
    for msg in messages {
        out.write_all(&record_head(msg)?)?;
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
    let written = writer.write(HEADER)?;
    if written != HEADER.len() {
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
