//! The spool: every usage record goes here first, as one checksummed JSON line in an
//! append-only segment file, before any sink sees it.
//!
//! Warm path (`append`, once per record): the line is framed (see "Line format") before the
//! lock, then added to the lines waiting for their write; the lines appended in one pass of a
//! tokio scheduler are written together, with one `write(2)` under a mutex (never held across an
//! await), by a task that runs once every task ready in that pass has run (off a runtime, at
//! once). So a record waits in memory for microseconds, not for a timer, and a burst of
//! connection ends costs one system call instead of one each (issue 14).
//! Background (`Flusher`, a service): every `fsync_interval` (≤ 200 ms) it fsyncs what was
//! written and publishes the new *durable* offset; sinks only read up to it. On the shutdown
//! signal it flushes at once and goes on while connections drain; the last flush runs after every
//! service has stopped (`server::run`), so every record made before exit is durable.
//! Offsets are global byte positions: segment `seg-<start>.jsonl` holds the bytes from `start`.
//!
//! Nothing is dropped. When a write fails (a full disk), the file is cut back to the end of its
//! last whole line, the spool turns *unhealthy* (the gateway then refuses new upgrades with 503
//! unless `usage.on_spool_error: fail_open`), and the record waits in memory, in order, with
//! every later one, until the flusher manages to write them.
//!
//! # Line format
//! `{"crc32c":"<8 hex digits>","data":<record>}` and a newline: `<record>` is the record's JSON
//! exactly as sinks get it, and the checksum (CRC-32C, lowercase hex) covers exactly those bytes,
//! so reading a record back is a slice, never a re-serialisation. The frame is itself JSON, so
//! the segments stay JSON lines for any tool. A line without the frame was written by an older
//! weir: it is read *unchecked*, and delivered only if it parses as a JSON object with string
//! `record`, `idempotency_key` and an RFC 3339 `at` (what every sink needs).
//!
//! # Reading back
//! Sinks read what is durable after their cursor (`Spool::read`). The lines this process wrote
//! are also kept in memory (`tail.rs`, at most `tail::TAIL_BYTES` of records, dropped once every
//! sink has them), and a sink that keeps up gets them from there: the very bytes written, with no
//! read, checksum or parse. Anything else (lines an earlier process wrote, a sink far behind) is
//! read from the segments, checked as below. So damage done on disk to a line this process still
//! holds is found by the next process to read it (its sinks get the intact bytes from memory).
//!
//! # Damage
//! - Reading (`read_batch`): a line that fails its checksum or does not parse is not a record: it
//!   comes back as `Bad` (its offset, length, bytes and why), and the delivery loop moves it to
//!   the quarantine file (`quarantine.jsonl`, `Spool::quarantine`, once per line even when every
//!   sink meets it) and goes on with the next line. So are bytes without a newline at the end of a
//!   segment a later one follows, or at the durable end (neither happens unless the disk was
//!   damaged), and a line longer than the read buffer. Nothing is ever forwarded in pieces.
//! - Opening (`open`): a torn last line (a crash mid-write, or a damaged tail) is cut off and its
//!   bytes quarantined; a torn line that is a whole checked record which lost only its newline
//!   gets it back instead. Then every sink cursor (`cursor-<sink>`) past the end, or inside a
//!   line, is moved back to the end of the last whole line before it: repair never leaves a
//!   cursor pointing at data that moved, and the line it was inside is delivered again (sinks
//!   drop duplicates by idempotency key). A segment is deleted once every sink has delivered all
//!   of it.
//!
//! # One writer per spool, two slots
//! A process holds an exclusive lock (`flock` on `LOCK`) on the spool it writes for as long as
//! it runs: a second weir on the same directory cannot interleave its lines. The spool
//! directory has two slots, the directory itself and `handover/` inside it (`open_slot`): a
//! process takes the first that is free, so during a binary upgrade (`weir run --upgrade`) the
//! new process writes to the other slot while the old one drains. Whatever is left undelivered in
//! the slot a process does not write is delivered by it once that slot is free (`Adopter`), so a
//! record is never stranded in the slot of a process that exited.

use super::sinks::Lines;
use super::tail::Tail;
use crate::sync::lock;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Largest segment before a new one starts, bytes.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// Largest record the spool reads back in one piece, bytes (a usage record is about 1 KB).
pub const MAX_RECORD: usize = 4 << 20;
/// Bytes of appended lines that are written at once rather than with the next batch (bounds
/// what waits in memory between an append and its write).
const PENDING_BYTES: usize = 1 << 20;
/// Capacity the pending buffer keeps between batches, bytes (larger ones are freed).
const PENDING_KEEP: usize = 256 << 10;
/// The quarantine file in the spool directory: one JSON line per damaged spool line.
pub const QUARANTINE_FILE: &str = "quarantine.jsonl";
/// The lock file a spool's writer holds (`flock`), with its pid.
pub const LOCK_FILE: &str = "LOCK";
/// The second slot, inside the spool directory (see "One writer per spool, two slots").
pub const HANDOVER_DIR: &str = "handover";
/// Most bytes of one damaged line kept in the quarantine file (its length is kept in full).
pub const QUARANTINE_SAMPLE: usize = 64 << 10;

/// Start of a checked line, up to the checksum.
const CHECKED_HEAD: &[u8] = b"{\"crc32c\":\"";
/// Between the checksum and the record.
const CHECKED_MID: &[u8] = b"\",\"data\":";
/// Bytes a checked line adds to its record (the newline not counted).
pub const CHECKED_OVERHEAD: usize = CHECKED_HEAD.len() + 8 + CHECKED_MID.len() + 1;

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) tables for slicing by 8: `[0]` is the
/// classic byte table, `[k]` advances a byte's contribution by `k` more bytes.
const CRC32C_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

/// CRC-32C of `data`: with the CPU's `crc32` instruction where it has one (x86-64 with SSE4.2;
/// about 0.1 µs for a 700-byte record), else by tables (about 1 GB/s).
pub fn crc32c(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        #[allow(unsafe_code)]
        // SAFETY: `crc32c_sse42` needs SSE4.2, which the CPU was just found to have.
        return unsafe { crc32c_sse42(data) };
    }
    crc32c_by_tables(data)
}

/// `crc32c` with SSE4.2's `crc32` instruction, 8 bytes per step (it computes exactly this
/// polynomial, reflected, as the tables do).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn crc32c_sse42(data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut chunks = data.chunks_exact(8);
    let mut c = u64::from(!0u32);
    for b in &mut chunks {
        c = _mm_crc32_u64(c, u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
    }
    // The instruction leaves the upper half zero.
    let mut c = c as u32;
    for &b in chunks.remainder() {
        c = _mm_crc32_u8(c, b);
    }
    !c
}

/// `crc32c` by tables, for CPUs without the instruction (8 bytes per step).
fn crc32c_by_tables(data: &[u8]) -> u32 {
    let t = &CRC32C_TABLES;
    let mut c = !0u32;
    let mut chunks = data.chunks_exact(8);
    for b in &mut chunks {
        let lo = c ^ u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        c = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][usize::from(b[4])]
            ^ t[2][usize::from(b[5])]
            ^ t[1][usize::from(b[6])]
            ^ t[0][usize::from(b[7])];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// The spool line of `record` (its JSON, without a newline), newline included.
pub fn encode_line(record: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(record.len() + CHECKED_OVERHEAD + 1);
    let Ok(()) = frame_into(&mut line, |buf| {
        buf.extend_from_slice(record);
        Ok::<(), std::convert::Infallible>(())
    });
    line
}

/// Append a spool line to `line` in one pass: the frame's head, the record `write` appends
/// (its JSON, without a newline), then the checksum is filled in over exactly those bytes and
/// the frame closed, newline included. The same bytes as `encode_line`, without a second buffer
/// or a copy of the record (issue 14: a record is encoded once, into a buffer that is reused).
pub fn frame_into<E>(line: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
    let begin = line.len();
    line.extend_from_slice(CHECKED_HEAD);
    let hex = line.len();
    line.extend_from_slice(b"00000000");
    line.extend_from_slice(CHECKED_MID);
    let record = line.len();
    if let Err(e) = write(line) {
        line.truncate(begin);
        return Err(e);
    }
    let crc = crc32c(&line[record..]);
    for (i, b) in line[hex..hex + 8].iter_mut().enumerate() {
        *b = b"0123456789abcdef"[((crc >> (28 - 4 * i)) & 0xf) as usize];
    }
    line.extend_from_slice(b"}\n");
    Ok(())
}

/// The lines of `bytes`, back to back, of the lengths `lens` (the pending lines of one write).
fn lines_of<'a>(bytes: &'a [u8], lens: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    lens.iter().scan(bytes, |rest, &len| {
        let (line, after) = rest.split_at_checked(len)?;
        *rest = after;
        Some(line)
    })
}

/// The record in a line `frame_into` made (newline included), by its shape alone: for a line
/// this process has just written, whose checksum it computed itself.
fn framed_record(line: &[u8]) -> Option<&[u8]> {
    line.strip_prefix(CHECKED_HEAD)?.get(8..)?.strip_prefix(CHECKED_MID)?.strip_suffix(b"}\n")
}

/// The record in a checked spool line (without its newline), or why it is not one.
fn decode_checked(line: &[u8]) -> Result<&[u8], String> {
    let rest = line.strip_prefix(CHECKED_HEAD).ok_or("not a checked line")?;
    let (hex, rest) = rest.split_at_checked(8).ok_or("checked line cut short")?;
    let record = rest
        .strip_prefix(CHECKED_MID)
        .and_then(|r| r.strip_suffix(b"}"))
        .ok_or("checked line with a damaged frame (checksum unverifiable)")?;
    let want = std::str::from_utf8(hex)
        .ok()
        .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("checked line with a damaged checksum field")?;
    let got = crc32c(record);
    if got != want {
        return Err(format!("checksum mismatch: the line says {want:08x}, its record hashes to {got:08x}"));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(record).map_err(|e| format!("not JSON: {e}"))?;
    Ok(record)
}

/// The record a spool line (without its newline) carries, exactly as sinks get it, or why the
/// line is not deliverable. Lines without the checksum frame (an older weir's) are unchecked.
pub fn decode_line(line: &[u8]) -> Result<&[u8], String> {
    if line.starts_with(CHECKED_HEAD) {
        return decode_checked(line);
    }
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("unchecked line (no checksum) is not JSON: {e}"))?;
    let o = v.as_object().ok_or("unchecked line (no checksum) is not a JSON object")?;
    let text = |k: &str| o.get(k).and_then(|x| x.as_str());
    if text("record").is_none() || text("idempotency_key").is_none() {
        return Err("unchecked line (no checksum) has no string `record` and `idempotency_key`".into());
    }
    if text("at").is_none_or(|at| humantime::parse_rfc3339(at).is_err()) {
        return Err("unchecked line (no checksum) has no RFC 3339 `at`".into());
    }
    Ok(line)
}

/// A spooled line that is not a deliverable record, found by a read or on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    /// Global offset of its first byte.
    pub offset: u64,
    /// Start offset of its segment.
    pub segment: u64,
    /// Its length in the spool, newline included.
    pub len: u64,
    /// Its bytes (at most `QUARANTINE_SAMPLE` of them), without the newline.
    pub bytes: Vec<u8>,
    /// Why it is not delivered.
    pub reason: String,
}

/// What one read found, in spool order.
#[derive(Debug, Default)]
pub struct Batch {
    /// Records to deliver, each exactly as it was appended.
    pub records: Lines,
    /// Lines that are not records (to quarantine, never to deliver).
    pub bad: Vec<Bad>,
    /// Newline-terminated lines read (records and bad ones).
    pub lines: usize,
    /// Offset after the last byte read: where the next read starts.
    pub next: u64,
}

impl Batch {
    fn push_line(&mut self, offset: u64, segment: u64, line: &[u8]) {
        self.lines += 1;
        match decode_line(line) {
            Ok(record) => self.records.push(record),
            Err(reason) => {
                self.bad.push(Bad { offset, segment, len: line.len() as u64 + 1, bytes: sample(line), reason })
            }
        }
    }
}

fn sample(bytes: &[u8]) -> Vec<u8> {
    bytes.get(..QUARANTINE_SAMPLE).unwrap_or(bytes).to_vec()
}

/// One line of the quarantine file.
#[derive(Serialize)]
struct QuarantineEntry<'a> {
    quarantined_at: String,
    offset: u64,
    len: u64,
    segment: String,
    segment_offset: u64,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line_base64: Option<String>,
}

/// What identifies a quarantined line (read back on open, so a restart does not repeat it).
#[derive(Deserialize)]
struct QuarantinedAt {
    offset: u64,
    len: u64,
}

/// Append `bad` to the quarantine file in `dir` and fsync it.
fn write_quarantine(dir: &Path, bad: &Bad) -> io::Result<()> {
    let text = std::str::from_utf8(&bad.bytes).ok();
    let entry = QuarantineEntry {
        quarantined_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        offset: bad.offset,
        len: bad.len,
        segment: segment_name(bad.segment),
        segment_offset: bad.offset.saturating_sub(bad.segment),
        reason: &bad.reason,
        line: text,
        line_base64: match text {
            Some(_) => None,
            None => {
                use base64::Engine;
                Some(base64::engine::general_purpose::STANDARD.encode(&bad.bytes))
            }
        },
    };
    let mut line = serde_json::to_vec(&entry).map_err(io::Error::other)?;
    line.push(b'\n');
    let path = dir.join(QUARANTINE_FILE);
    let created = !path.exists();
    let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
    f.write_all(&line)?;
    f.sync_data()?;
    if created {
        sync_dir(dir);
    }
    Ok(())
}

/// The (offset, length) of every line already in the quarantine file of `dir` (unreadable
/// entries are ignored).
fn load_quarantined(dir: &Path) -> HashSet<(u64, u64)> {
    let Ok(f) = File::open(dir.join(QUARANTINE_FILE)) else { return HashSet::new() };
    BufReader::new(f)
        .split(b'\n')
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_slice::<QuarantinedAt>(&l).ok())
        .map(|q| (q.offset, q.len))
        .collect()
}

/// The spool of one process.
pub struct Spool {
    dir: PathBuf,
    writer: Mutex<Writer>,
    /// Lines that could not be written yet, oldest first.
    backlog: Mutex<VecDeque<Vec<u8>>>,
    healthy: AtomicBool,
    /// End offset of everything written (not necessarily synced).
    written: AtomicU64,
    /// End offset of everything fsynced: what sinks may read.
    durable: watch::Sender<u64>,
    /// Records appended (written or waiting) since start.
    appended: AtomicU64,
    /// Failed writes and fsyncs since start (for metrics).
    write_errors: AtomicU64,
    /// (offset, length) of every line in the quarantine file.
    quarantined: Mutex<HashSet<(u64, u64)>>,
    /// Lines `open` quarantined, not yet counted in a metric.
    quarantined_on_open: AtomicU64,
    /// A task is on its way to write the pending lines (`append_line`).
    write_scheduled: AtomicBool,
    /// The newest lines written, in memory: what sinks that keep up read (`tail.rs`).
    tail: Mutex<Tail>,
    /// The locked `LOCK` file: this process is the spool's only writer while it is open.
    _lock: File,
}

/// Take the writer's lock of the spool in `dir` (`WouldBlock` when another process holds it).
fn lock_dir(dir: &Path) -> io::Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut f = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another weir process (pid {holder})", dir.display()),
            ));
        }
        Err(fs::TryLockError::Error(e)) => return Err(e),
    }
    f.set_len(0)?;
    f.write_all(std::process::id().to_string().as_bytes())?;
    Ok(f)
}

/// Open the first free slot of the spool rooted at `root` (the directory, then its
/// `handover/`), waiting up to `wait` for one to be free; returns the spool and the other slot.
pub fn open_slot(root: &Path, wait: Duration) -> io::Result<(Arc<Spool>, PathBuf)> {
    let handover = root.join(HANDOVER_DIR);
    let deadline = std::time::Instant::now() + wait;
    loop {
        let mut last = None;
        for (slot, other) in [(root.to_path_buf(), handover.clone()), (handover.clone(), root.to_path_buf())] {
            match Spool::open(&slot) {
                Ok(s) => return Ok((s, other)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(last.unwrap_or_else(|| io::Error::other("no free spool slot")));
        }
        // Cold path: a process in an upgrade waits for the old one to free a slot.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the spool in `dir` holds records some of `sinks` have not got (read from its files,
/// without opening it: cheap enough to poll).
pub fn has_undelivered(dir: &Path, sinks: &[&str]) -> bool {
    let Ok(segs) = segments(dir) else { return false };
    let (Some((first, _)), Some((start, last))) = (segs.first(), segs.last()) else { return false };
    let end = start + fs::metadata(last).map(|m| m.len()).unwrap_or(0);
    sinks.iter().any(|s| Cursor::load(dir, s, *first).offset < end)
}

struct Writer {
    file: File,
    seg_start: u64,
    seg_len: u64,
    dirty: bool,
    /// Lines appended since the last write, back to back: the next `write_pending` writes them
    /// with one `write(2)`.
    pending: Vec<u8>,
    /// The length of each line in `pending`, in order, bytes.
    pending_lens: Vec<usize>,
}

impl Writer {
    fn new(file: File, seg_start: u64, seg_len: u64) -> Writer {
        Writer { file, seg_start, seg_len, dirty: false, pending: Vec::new(), pending_lens: Vec::new() }
    }
}

fn segment_name(start: u64) -> String {
    format!("seg-{start:020}.jsonl")
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(segment_name(start))
}

/// The segments in `dir` as (start offset, path), oldest first.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(start) =
            name.strip_prefix("seg-").and_then(|n| n.strip_suffix(".jsonl")).and_then(|n| n.parse::<u64>().ok())
        {
            out.push((start, path));
        }
    }
    out.sort();
    Ok(out)
}

impl Spool {
    /// Open (or create) the spool in `dir`: repair a torn last line (see "Damage" above), fsync,
    /// move back every cursor the repair left past the end or inside a line, and start writing
    /// at the end.
    pub fn open(dir: &Path) -> io::Result<Arc<Spool>> {
        fs::create_dir_all(dir)?;
        let lock = lock_dir(dir)?;
        let segs = segments(dir)?;
        let (seg_start, path) = match segs.last() {
            Some((start, path)) => (*start, path.clone()),
            None => (0, segment_path(dir, 0)),
        };
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        let mut quarantined = load_quarantined(dir);
        let mut on_open = 0;
        let len = file.metadata()?.len();
        let whole = whole_lines_len(&mut file, len)?;
        let mut seg_len = whole;
        if whole < len {
            // Enough of the tail to recognise a whole checked record that lost its newline.
            let keep = (len - whole).min((MAX_RECORD + CHECKED_OVERHEAD + 1) as u64);
            let mut tail = vec![0u8; usize::try_from(keep).unwrap_or(0)];
            file.seek(SeekFrom::Start(whole))?;
            let n = read_full(&mut file, &mut tail)?;
            tail.truncate(n);
            match salvageable(&tail).filter(|_| (n as u64) == len - whole) {
                Some(record_len) => {
                    file.set_len(whole + record_len as u64)?;
                    file.write_all(b"\n")?;
                    seg_len = whole + record_len as u64 + 1;
                    tracing::warn!(segment = %path.display(), offset = seg_start + whole, "spool: the last record had lost its newline; its checksum holds, so the newline was written back");
                }
                None => {
                    let bad = Bad {
                        offset: seg_start + whole,
                        segment: seg_start,
                        len: len - whole,
                        bytes: sample(&tail),
                        reason: "torn last record (no newline): weir stopped mid-write, or the tail was damaged; cut on open".into(),
                    };
                    let key = (bad.offset, bad.len);
                    // Already there if an earlier open stopped between quarantining and cutting.
                    let saved = if quarantined.contains(&key) { Ok(()) } else { write_quarantine(dir, &bad) };
                    match saved {
                        Ok(()) => {
                            on_open += u64::from(quarantined.insert(key));
                            tracing::warn!(segment = %path.display(), offset = bad.offset, dropped = bad.len, quarantine = %dir.join(QUARANTINE_FILE).display(), "spool: cut a torn last record and moved its bytes to quarantine");
                        }
                        Err(e) => {
                            tracing::error!(segment = %path.display(), offset = bad.offset, dropped = bad.len, error = %e, "spool: cut a torn last record; cannot write the quarantine file, so its bytes are lost");
                        }
                    }
                    file.set_len(whole)?;
                }
            }
        }
        file.sync_all()?;
        sync_dir(dir);
        let end = seg_start + seg_len;
        repair_cursors(dir, end);
        let (durable, _) = watch::channel(end);
        Ok(Arc::new(Spool {
            dir: dir.to_path_buf(),
            writer: Mutex::new(Writer::new(file, seg_start, seg_len)),
            write_scheduled: AtomicBool::new(false),
            backlog: Mutex::new(VecDeque::new()),
            healthy: AtomicBool::new(true),
            written: AtomicU64::new(end),
            durable,
            appended: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            quarantined: Mutex::new(quarantined),
            quarantined_on_open: AtomicU64::new(on_open),
            tail: Mutex::new(Tail::new(end)),
            _lock: lock,
        }))
    }

    /// Lines `open` moved to quarantine, once (for the `weir_spool_quarantined_total` metric).
    pub fn take_quarantined_on_open(&self) -> u64 {
        self.quarantined_on_open.swap(0, Ordering::Relaxed)
    }

    /// Move `bad` to the quarantine file, unless it is there already (another sink, an earlier
    /// attempt or an earlier process met it). True when it was added now: count and log it then.
    pub fn quarantine(&self, bad: &Bad) -> io::Result<bool> {
        let mut seen = lock(&self.quarantined);
        if seen.contains(&(bad.offset, bad.len)) {
            return Ok(false);
        }
        write_quarantine(&self.dir, bad)?;
        seen.insert((bad.offset, bad.len));
        Ok(true)
    }

    /// Bytes free for an unprivileged writer on the spool's file system (`statvfs`), if known.
    pub fn disk_free(&self) -> Option<u64> {
        let s = rustix::fs::statvfs(&self.dir).ok()?;
        Some(s.f_bavail.saturating_mul(s.f_frsize))
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// False while records wait in memory because the spool cannot be written.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// A receiver of the durable end offset.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// End offset of everything written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Records appended since start (written or waiting in memory).
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// Failed writes since start.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    /// Records waiting in memory.
    pub fn backlog_len(&self) -> usize {
        lock(&self.backlog).len()
    }

    /// Append one record (its JSON, without a newline; framed with its checksum here). Never
    /// fails: a record that cannot be written now waits in memory and is written, in order, when
    /// the spool can take it.
    pub fn append(self: &Arc<Self>, record: Vec<u8>) {
        self.append_line(&encode_line(&record));
    }

    /// Append one whole spool line (`frame_into`'s, newline included). Never fails, as `append`.
    ///
    /// On a tokio runtime the line joins the lines appended before it in the same scheduler pass
    /// and they are written together, with one `write(2)`, by a task that runs once the runtime
    /// has polled every task ready now (`tokio::task::yield_now`): microseconds later, not a
    /// timer. Off a runtime (or when `PENDING_BYTES` wait) it is written at once.
    pub fn append_line(self: &Arc<Self>, line: &[u8]) {
        self.appended.fetch_add(1, Ordering::Relaxed);
        let mut w = lock(&self.writer);
        let mut backlog = lock(&self.backlog);
        if !backlog.is_empty() {
            backlog.push_back(line.to_vec());
            return;
        }
        drop(backlog);
        w.pending.extend_from_slice(line);
        w.pending_lens.push(line.len());
        if w.pending.len() >= PENDING_BYTES {
            self.write_pending(&mut w);
            return;
        }
        drop(w);
        if self.write_scheduled.swap(true, Ordering::AcqRel) {
            return; // a write is on its way and takes this line too
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let spool = Arc::clone(self);
                runtime.spawn(async move {
                    tokio::task::yield_now().await;
                    spool.write_pending(&mut lock(&spool.writer));
                });
            }
            Err(_) => self.write_pending(&mut lock(&self.writer)),
        }
    }

    /// Write the lines waiting in `w.pending` with one `write(2)`; if that fails they join the
    /// backlog, in order, for the flusher to retry. Clears the scheduled-write flag first, so a
    /// line appended after this takes its own write.
    fn write_pending(&self, w: &mut Writer) {
        self.write_scheduled.store(false, Ordering::Release);
        if w.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut w.pending);
        let lens = std::mem::take(&mut w.pending_lens);
        if let Err(e) = self.write_lines(w, &pending, &lens) {
            self.failed(&e);
            lock(&self.backlog).extend(lines_of(&pending, &lens).map(<[u8]>::to_vec));
        }
        // Keep the buffers for the next lines unless one burst made them large.
        if pending.capacity() <= PENDING_KEEP {
            w.pending = pending;
            w.pending.clear();
            w.pending_lens = lens;
            w.pending_lens.clear();
        }
    }

    /// Write `bytes`, whole lines of the lengths `lens`, at the end of the current segment
    /// (rotating first if it is full), and note each line in the tail; on error, cut the segment
    /// back so it still ends with a whole line.
    fn write_lines(&self, w: &mut Writer, bytes: &[u8], lens: &[usize]) -> io::Result<()> {
        if w.seg_len >= SEGMENT_BYTES {
            self.rotate(w)?;
        }
        if let Err(e) = w.file.write_all(bytes) {
            // A short write leaves part of a line: cut it off (truncating frees space, so this
            // works on a full disk too).
            let _ = w.file.set_len(w.seg_len);
            return Err(e);
        }
        let mut offset = w.seg_start + w.seg_len;
        w.seg_len += bytes.len() as u64;
        w.dirty = true;
        self.written.store(w.seg_start + w.seg_len, Ordering::Relaxed);
        let mut tail = lock(&self.tail);
        for line in lines_of(bytes, lens) {
            match framed_record(line) {
                Some(record) => tail.push(offset, line.len() as u64, record),
                // Not a line `frame_into` made (not expected): sinks read it from disk, checked.
                None => tail.clear(offset + line.len() as u64),
            }
            offset += line.len() as u64;
        }
        Ok(())
    }

    fn rotate(&self, w: &mut Writer) -> io::Result<()> {
        w.file.sync_all()?;
        let start = w.seg_start + w.seg_len;
        let file = OpenOptions::new().create(true).read(true).append(true).open(segment_path(&self.dir, start))?;
        sync_dir(&self.dir);
        (w.file, w.seg_start, w.seg_len, w.dirty) = (file, start, 0, false);
        self.durable.send_if_modified(|d| {
            let moved = start > *d;
            *d = (*d).max(start);
            moved
        });
        Ok(())
    }

    fn failed(&self, e: &io::Error) {
        self.write_errors.fetch_add(1, Ordering::Relaxed);
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::error!(dir = %self.dir.display(), error = %e, "spool: cannot write usage records; they wait in memory and new WebSocket upgrades are refused (503) until the spool can be written again");
        }
    }

    /// One flusher step: write waiting records, then fsync what is new and publish it.
    pub fn flush(&self) {
        let (file, end) = {
            let mut w = lock(&self.writer);
            self.write_pending(&mut w);
            let mut backlog = lock(&self.backlog);
            while let Some(line) = backlog.front() {
                match self.write_lines(&mut w, line, &[line.len()]) {
                    Ok(()) => {
                        backlog.pop_front();
                    }
                    Err(e) => {
                        self.failed(&e);
                        break;
                    }
                }
            }
            if backlog.is_empty() && !self.healthy.swap(true, Ordering::Relaxed) {
                tracing::info!(dir = %self.dir.display(), "spool: writable again; every waiting record is written and upgrades are accepted");
            }
            if !w.dirty {
                return;
            }
            w.dirty = false;
            (w.file.try_clone(), w.seg_start + w.seg_len)
        };
        // fsync outside the lock: appends go on meanwhile and are synced next time.
        match file.and_then(|f| f.sync_data()) {
            Ok(()) => {
                self.durable.send_if_modified(|d| {
                    let moved = end > *d;
                    *d = (*d).max(end);
                    moved
                });
            }
            Err(e) => {
                lock(&self.writer).dirty = true;
                self.failed(&e);
            }
        }
    }

    /// Read whole lines from `offset` up to the durable end, at most `max_lines` (and about
    /// `max_bytes`): the records, the lines that are not records, and the offset after the last
    /// line. An offset before the oldest segment starts at it. Lines this process wrote and still
    /// holds in its tail come from memory (no read, no checksum, no parse: they are the bytes it
    /// wrote); anything else is read from disk and checked.
    pub fn read(&self, offset: u64, max_lines: usize, max_bytes: usize) -> io::Result<Batch> {
        let durable = *self.durable.borrow();
        if let Some(held) = lock(&self.tail).read(offset, durable, max_lines, max_bytes) {
            let lines = held.records.len();
            return Ok(Batch { records: held.records, bad: Vec::new(), lines, next: held.next });
        }
        read_batch(&self.dir, offset, durable, max_lines, max_bytes)
    }

    /// Delete segments that end at or before `upto` (every sink has them), never the current one,
    /// and drop the tail's lines up to it.
    pub fn release(&self, upto: u64) -> io::Result<u64> {
        lock(&self.tail).trim(upto);
        let current = lock(&self.writer).seg_start;
        let segs = segments(&self.dir)?;
        let mut freed = 0;
        for (i, (start, path)) in segs.iter().enumerate() {
            let end = segs.get(i + 1).map(|(s, _)| *s);
            if *start >= current {
                break;
            }
            if let Some(end) = end.filter(|e| *e <= upto) {
                fs::remove_file(path)?;
                freed += end - start;
            }
        }
        if freed > 0 {
            sync_dir(&self.dir);
        }
        Ok(freed)
    }

    /// Records written from `offset` to the current end (counted by streaming the segments).
    pub fn count_from(&self, offset: u64) -> u64 {
        let mut count = 0;
        let Ok(segs) = segments(&self.dir) else { return 0 };
        for (i, (start, path)) in segs.iter().enumerate() {
            let end = segs.get(i + 1).map(|(s, _)| *s).unwrap_or(u64::MAX);
            if offset >= end {
                continue;
            }
            let Ok(mut f) = File::open(path) else { continue };
            if offset > *start && f.seek(SeekFrom::Start(offset - start)).is_err() {
                continue;
            }
            let mut buf = vec![0u8; 1 << 20];
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                count += buf[..n].iter().filter(|&&c| c == b'\n').count() as u64;
            }
        }
        count
    }

    /// Bytes in segments on disk.
    pub fn bytes_on_disk(&self) -> u64 {
        segments(&self.dir)
            .map(|s| s.iter().filter_map(|(_, p)| fs::metadata(p).ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    }

    /// The oldest offset still on disk.
    pub fn first_offset(&self) -> u64 {
        segments(&self.dir).ok().and_then(|s| s.first().map(|(o, _)| *o)).unwrap_or(0)
    }
}

/// The spool's flusher: a background service that fsyncs every `interval`.
pub struct Flusher {
    spool: Arc<Spool>,
    interval: Duration,
}

impl Flusher {
    /// Flush `spool` every `interval`.
    pub fn new(spool: Arc<Spool>, interval: Duration) -> Flusher {
        Flusher { spool, interval }
    }

    async fn flush(&self) {
        let spool = self.spool.clone();
        // fsync blocks: off the service's runtime thread.
        let _ = tokio::task::spawn_blocking(move || spool.flush()).await;
    }
}

#[async_trait]
impl BackgroundService for Flusher {
    /// Flush every interval; on the shutdown signal flush at once, then go on: connections that
    /// drain still write their stop records (the final flush is `server::run`'s, after every
    /// service stopped).
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut watching = true;
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                changed = shutdown.changed(), if watching => {
                    watching = changed.is_ok() && !*shutdown.borrow();
                    if *shutdown.borrow() {
                        tracing::debug!("spool: shutting down; flushing now and while connections drain");
                    }
                }
            }
            self.flush().await;
        }
    }
}

/// Read whole lines between `offset` and `limit` across segments: the records, and the lines that
/// are not (see "Damage" in the module doc). Stops after `max_lines` lines or about `max_bytes`
/// bytes, and before a line that is not whole yet.
pub fn read_batch(dir: &Path, offset: u64, limit: u64, max_lines: usize, max_bytes: usize) -> io::Result<Batch> {
    let segs = segments(dir)?;
    let mut batch = Batch::default();
    let mut at = offset.max(segs.first().map(|(s, _)| *s).unwrap_or(0));
    let mut bytes = 0usize;
    for (i, (start, path)) in segs.iter().enumerate() {
        let next_start = segs.get(i + 1).map(|(s, _)| *s);
        let end = next_start.unwrap_or(u64::MAX).min(limit);
        if at >= end || at < *start {
            continue;
        }
        // A later segment starts within what may be read: this one is complete up to `end`.
        let sealed = next_start.is_some_and(|s| s <= limit);
        let mut f = File::open(path)?;
        let avail_end = (start + f.metadata()?.len()).min(end);
        // Each round consumes at least one line or leaves the segment.
        while at < end {
            let avail = avail_end.saturating_sub(at);
            // Records are far smaller than `MAX_RECORD`, so a buffer this size holds many lines.
            let want = max_bytes.saturating_sub(bytes).clamp(MAX_RECORD, 64 << 20);
            let mut buf = vec![0u8; usize::try_from(avail).unwrap_or(usize::MAX).min(want)];
            f.seek(SeekFrom::Start(at - start))?;
            let n = read_full(&mut f, &mut buf)?;
            let mut pos = 0;
            while let Some(nl) = buf.get(pos..n).and_then(|b| b.iter().position(|&c| c == b'\n')) {
                batch.push_line(at + pos as u64, *start, &buf[pos..pos + nl]);
                pos += nl + 1;
                bytes += nl + 1;
                if batch.lines >= max_lines || bytes >= max_bytes {
                    batch.next = at + pos as u64;
                    return Ok(batch);
                }
            }
            at += pos as u64;
            if at >= end {
                break;
            }
            let filled = n == buf.len() && (n as u64) < avail;
            if pos > 0 && filled {
                continue; // the buffer ended inside a line: read on from its start
            }
            let rest = buf.get(pos..n).unwrap_or_default();
            if pos == 0 && filled {
                // One line longer than the buffer: skip it whole.
                if let Some(nl) = find_newline(&mut f, at - start + n as u64, avail_end - start)? {
                    let len = start + nl + 1 - at;
                    let reason = format!("a line of {len} bytes, longer than a record can be");
                    batch.bad.push(Bad { offset: at, segment: *start, len, bytes: sample(rest), reason });
                    batch.lines += 1;
                    at += len;
                    bytes = bytes.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
                    if batch.lines >= max_lines || bytes >= max_bytes {
                        break;
                    }
                    continue;
                }
            }
            // Bytes without a newline up to `avail_end`. Final only if nothing can complete them:
            // the segment is sealed (a later one exists), or they reach the durable end (which is
            // always a line boundary). Otherwise wait for more.
            if sealed || (avail_end == end && !rest.is_empty()) {
                let len = end - at;
                let reason = if avail_end < end {
                    format!("the segment ends {} bytes early, inside a line: damaged or truncated", end - avail_end)
                } else {
                    "bytes without a newline at the end of the segment or of what is durable: damaged".into()
                };
                batch.bad.push(Bad { offset: at, segment: *start, len, bytes: sample(rest), reason });
                at = end;
            }
            break;
        }
        if at < end || batch.lines >= max_lines || bytes >= max_bytes {
            break;
        }
    }
    batch.next = at;
    Ok(batch)
}

/// Read the records between `offset` and `limit` across segments, leaving out lines that are not
/// records (see `read_batch`), with the offset after the last line read.
pub fn read_lines(
    dir: &Path,
    offset: u64,
    limit: u64,
    max_lines: usize,
    max_bytes: usize,
) -> io::Result<(Vec<Vec<u8>>, u64)> {
    let batch = read_batch(dir, offset, limit, max_lines, max_bytes)?;
    Ok((batch.records.to_vecs(), batch.next))
}

/// Position (from the start of `f`) of the first newline in `[from, to)`, if any.
fn find_newline(f: &mut File, from: u64, to: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = from;
    f.seek(SeekFrom::Start(from))?;
    while at < to {
        let want = usize::try_from(to - at).unwrap_or(usize::MAX).min(buf.len());
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(i) = buf[..n].iter().position(|&c| c == b'\n') {
            return Ok(Some(at + i as u64));
        }
        at += n as u64;
    }
    Ok(None)
}

/// A torn last line that is a whole checked record which lost only its newline (cut off, or
/// damaged into another byte): the length to keep before writing the newline back.
fn salvageable(tail: &[u8]) -> Option<usize> {
    if decode_checked(tail).is_ok() {
        return Some(tail.len());
    }
    let head = tail.get(..tail.len().checked_sub(1)?)?;
    decode_checked(head).is_ok().then_some(head.len())
}

/// Move every sink cursor in `dir` that is past `end` (the spool's end after `open`'s repair) or
/// inside a line back to the end of the last whole line before it.
fn repair_cursors(dir: &Path, end: u64) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let segs = segments(dir).unwrap_or_default();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(sink) = name.to_str().and_then(|n| n.strip_prefix("cursor-")) else { continue };
        if sink.ends_with(".tmp") {
            continue;
        }
        let path = entry.path();
        // An unreadable cursor is left alone: the delivery loop starts such a sink at the oldest
        // segment (everything again, deduplicated by key).
        let Some(offset) = fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u64>().ok()) else {
            continue;
        };
        let fixed = line_start_at_or_before(&segs, offset, end);
        if fixed == offset {
            continue;
        }
        tracing::warn!(sink, from = offset, to = fixed, "spool: a sink cursor pointed past the repaired end of the spool or inside a record; moved back to the end of the last whole record (what follows is delivered again; sinks drop duplicates by idempotency key)");
        if let Err(e) = (Cursor { path, offset }).advance(fixed) {
            tracing::error!(sink, error = %e, "spool: cannot move the sink cursor back; delivery from it may skip records");
        }
    }
}

/// The line boundary at or before `offset`: `end` if it is past the end, the start of the line
/// it is inside otherwise. An offset before the oldest segment stays (reads start at that one).
fn line_start_at_or_before(segs: &[(u64, PathBuf)], offset: u64, end: u64) -> u64 {
    if offset >= end {
        return end;
    }
    let Some((start, path)) = segs.iter().rev().find(|(s, _)| *s <= offset) else { return offset };
    if offset == *start {
        return offset;
    }
    let Ok(mut f) = File::open(path) else { return offset };
    let Ok(len) = f.metadata().map(|m| m.len()) else { return offset };
    whole_lines_len(&mut f, (offset - start).min(len)).map_or(offset, |p| start + p)
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Length of the prefix of `file` (of length `len`) that ends with a newline.
fn whole_lines_len(file: &mut File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        file.seek(SeekFrom::Start(start))?;
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&c| c == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A sink's delivered offset, kept in `dir/cursor-<sink>` (written to a temporary file, fsynced
/// and renamed, so it is never torn).
pub struct Cursor {
    path: PathBuf,
    /// Offset up to which the sink has every record.
    pub offset: u64,
}

impl Cursor {
    /// Load the cursor of `sink` (a missing one starts at `default`).
    pub fn load(dir: &Path, sink: &str, default: u64) -> Cursor {
        let path = dir.join(format!("cursor-{sink}"));
        let offset = fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(default);
        Cursor { path, offset }
    }

    /// Move to `offset` and persist it.
    pub fn advance(&mut self, offset: u64) -> io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(offset.to_string().as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        self.offset = offset;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(dir: &Path, from: u64) -> Vec<String> {
        let (lines, _) = read_lines(dir, from, u64::MAX, usize::MAX, usize::MAX).unwrap();
        lines.into_iter().map(|l| String::from_utf8(l).unwrap()).collect()
    }

    fn everything(dir: &Path, from: u64) -> Batch {
        read_batch(dir, from, u64::MAX, usize::MAX, usize::MAX).unwrap()
    }

    /// A record as weir writes it (the fields unchecked lines need).
    fn record(n: u64) -> Vec<u8> {
        format!(r#"{{"record":"stop","idempotency_key":"c:{n}","at":"2026-11-22T10:00:00.000Z","n":{n}}}"#).into_bytes()
    }

    fn seg0(d: &Path) -> PathBuf {
        segment_path(d, 0)
    }

    #[test]
    fn crc32c_is_the_castagnoli_checksum() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
        // The instruction (where the CPU has it) and slicing by 8 agree with the bit-by-bit
        // definition at every length and alignment.
        let bitwise = |data: &[u8]| {
            let mut c = !0u32;
            for &b in data {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
                }
            }
            !c
        };
        let data: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for start in 0..8 {
            for end in start..data.len() {
                let want = bitwise(&data[start..end]);
                assert_eq!(crc32c(&data[start..end]), want, "{start}..{end}");
                assert_eq!(crc32c_by_tables(&data[start..end]), want, "tables {start}..{end}");
            }
        }
    }

    #[test]
    fn appends_are_durable_after_a_flush_and_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        for i in 0..10 {
            s.append(format!("{{\"n\":{i}}}").into_bytes());
        }
        assert_eq!(s.read(0, 100, 1 << 20).unwrap().records.len(), 0, "nothing durable before the flush");
        s.flush();
        let first = s.read(0, 4, 1 << 20).unwrap();
        assert_eq!((first.records.len(), first.lines), (4, 4));
        let rest = s.read(first.next, 100, 1 << 20).unwrap();
        assert_eq!(rest.records.len(), 6);
        assert!(rest.bad.is_empty());
        assert_eq!(rest.next, s.written());
        drop(s);
        let s = Spool::open(d.path()).unwrap();
        assert_eq!(*s.durable().borrow(), rest.next);
        assert_eq!(all(d.path(), 0).len(), 10);
        assert_eq!(s.take_quarantined_on_open(), 0);
    }

    /// On a runtime, the lines appended in one pass wait for its end and go out together; off a
    /// runtime each is written at once; a flush writes whatever waits.
    #[tokio::test(flavor = "current_thread")]
    async fn lines_appended_in_one_scheduler_pass_are_written_after_it_together() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let line = (record(0).len() + CHECKED_OVERHEAD + 1) as u64;
        for n in 0..3 {
            s.append(record(n));
        }
        assert_eq!(s.written(), 0, "nothing is written while the pass goes on");
        assert_eq!(fs::metadata(seg0(d.path())).unwrap().len(), 0);
        for _ in 0..10 {
            if s.written() > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(s.written(), 3 * line, "all three, once the pass is over");
        // A flush writes what waits without waiting for the pass.
        s.append(record(3));
        s.flush();
        assert_eq!((s.written(), *s.durable().borrow()), (4 * line, 4 * line));
        let b = s.read(0, 10, MAX_RECORD).unwrap();
        assert_eq!(b.records.to_vecs(), (0..4).map(record).collect::<Vec<_>>());
        // Off a runtime: at once.
        let t = std::thread::spawn(move || {
            s.append(record(4));
            s.written()
        });
        assert_eq!(t.join().unwrap(), 5 * line);
        assert_eq!(all(d.path(), 0).len(), 5);
    }

    #[test]
    fn records_read_back_byte_for_byte_and_lines_stay_json() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let rec =
            br#"{"record":"stop","idempotency_key":"k:1","tenant":"\u00e9t\u00e9 \"q\"","units":{"a":1.5}}"#.to_vec();
        s.append(rec.clone());
        s.flush();
        assert_eq!(s.read(0, 10, 1 << 20).unwrap().records.to_vecs(), vec![rec.clone()], "exactly the bytes appended");
        let text = fs::read_to_string(seg0(d.path())).unwrap();
        let framed: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(framed["data"], serde_json::from_slice::<serde_json::Value>(&rec).unwrap());
        assert_eq!(framed["crc32c"].as_str(), Some(format!("{:08x}", crc32c(&rec)).as_str()));
        assert_eq!(text.len(), rec.len() + CHECKED_OVERHEAD + 1);
    }

    #[test]
    fn an_older_weirs_lines_are_read_unchecked_and_junk_is_not_delivered() {
        let d = tempfile::tempdir().unwrap();
        let legacy = record(1);
        let mut seg = legacy.clone();
        seg.extend_from_slice(
            b"\n{\"record\":\"stop\",\"idempotency_key\":\"c:2\"}\n{\"crc32x\":\"00000000\",\"data\":",
        );
        seg.extend_from_slice(&record(3));
        seg.extend_from_slice(b"}\nnot json\n");
        fs::write(seg0(d.path()), &seg).unwrap();
        let s = Spool::open(d.path()).unwrap();
        s.append(record(4));
        s.flush();
        let b = everything(d.path(), 0);
        assert_eq!(b.records.to_vecs(), vec![legacy, record(4)]);
        assert_eq!(b.lines, 5);
        let reasons: Vec<&str> = b.bad.iter().map(|x| x.reason.as_str()).collect();
        assert!(reasons[0].contains("`at`"), "{reasons:?}");
        assert!(reasons[1].contains("no string `record`"), "a damaged frame is not taken for an old line: {reasons:?}");
        assert!(reasons[2].contains("not JSON"), "{reasons:?}");
        let offsets: Vec<u64> = b.bad.iter().map(|x| x.offset).collect();
        let second = record(1).len() as u64 + 1;
        assert_eq!(offsets[0], second);
    }

    #[test]
    fn a_damaged_line_comes_back_as_bad_reading_goes_on_and_it_is_quarantined_once() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        for n in 0..3 {
            s.append(record(n));
        }
        s.flush();
        let mut bytes = fs::read(seg0(d.path())).unwrap();
        let line = record(0).len() + CHECKED_OVERHEAD + 1;
        bytes[line + line / 2] ^= 0x20; // a flipped bit in record 1
        fs::write(seg0(d.path()), &bytes).unwrap();
        // The process that wrote them reads them from its tail: the bytes it wrote.
        let held = s.read(0, 10, MAX_RECORD).unwrap();
        assert_eq!((held.records.to_vecs(), held.bad.len()), (vec![record(0), record(1), record(2)], 0));
        // The next process reads the disk, and meets the damage.
        drop(s);
        let s = Spool::open(d.path()).unwrap();
        let b = s.read(0, 10, MAX_RECORD).unwrap();
        assert_eq!(b.records.to_vecs(), vec![record(0), record(2)]);
        assert_eq!((b.lines, b.next, b.bad.len()), (3, s.written(), 1));
        let bad = &b.bad[0];
        assert_eq!((bad.offset, bad.len, bad.segment), (line as u64, line as u64, 0));
        assert!(bad.reason.contains("checksum mismatch"), "{}", bad.reason);
        assert!(s.quarantine(bad).unwrap(), "the first sink to meet it quarantines it");
        assert!(!s.quarantine(bad).unwrap(), "the next one does not");
        drop(s);
        let s = Spool::open(d.path()).unwrap();
        assert!(!s.quarantine(bad).unwrap(), "nor does the next process");
        let q = fs::read_to_string(d.path().join(QUARANTINE_FILE)).unwrap();
        assert_eq!(q.lines().count(), 1);
        let entry: serde_json::Value = serde_json::from_str(q.trim_end()).unwrap();
        assert_eq!((entry["offset"].as_u64(), entry["len"].as_u64()), (Some(line as u64), Some(line as u64)));
        assert_eq!(entry["segment"], "seg-00000000000000000000.jsonl");
        assert_eq!(entry["line"].as_str().map(str::as_bytes), Some(&bytes[line..2 * line - 1]));
    }

    #[test]
    fn a_torn_last_line_is_cut_on_open_and_quarantined() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        s.append(b"{\"a\":1}".to_vec());
        s.flush();
        let end = s.written();
        drop(s);
        OpenOptions::new().append(true).open(seg0(d.path())).unwrap().write_all(b"{\"torn\xff").unwrap();
        let s = Spool::open(d.path()).unwrap();
        assert_eq!((s.written(), s.take_quarantined_on_open(), s.take_quarantined_on_open()), (end, 1, 0));
        s.append(b"{\"b\":2}".to_vec());
        s.flush();
        assert_eq!(all(d.path(), 0), vec!["{\"a\":1}", "{\"b\":2}"]);
        let q: serde_json::Value =
            serde_json::from_str(fs::read_to_string(d.path().join(QUARANTINE_FILE)).unwrap().trim_end()).unwrap();
        assert_eq!((q["offset"].as_u64(), q["len"].as_u64()), (Some(end), Some(7)));
        assert_eq!(q["line_base64"], "eyJ0b3Ju/w==", "bytes that are not UTF-8 are kept exactly");
    }

    /// Item 10: a cursor past the cut moves back; nothing appended after the repair is skipped.
    #[test]
    fn a_cursor_past_a_cut_tail_moves_back_and_later_records_are_read_whole() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        for n in 0..3 {
            s.append(record(n));
        }
        s.flush();
        let end = s.written();
        Cursor::load(d.path(), "file", 0).advance(end).unwrap();
        drop(s);
        let line = (record(0).len() + CHECKED_OVERHEAD + 1) as u64;
        OpenOptions::new().write(true).open(seg0(d.path())).unwrap().set_len(end - line / 2).unwrap();
        let s = Spool::open(d.path()).unwrap();
        let cursor = Cursor::load(d.path(), "file", 0);
        assert_eq!(cursor.offset, 2 * line, "moved back to the end of the last whole record");
        for n in 3..6 {
            s.append(record(n));
        }
        s.flush();
        let b = s.read(cursor.offset, 100, MAX_RECORD).unwrap();
        assert!(b.bad.is_empty(), "{:?}", b.bad);
        assert_eq!(b.records.to_vecs(), vec![record(3), record(4), record(5)]);
    }

    #[test]
    fn a_cursor_inside_a_record_moves_back_to_its_start_and_the_record_is_read_again() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        for n in 0..3 {
            s.append(record(n));
        }
        s.flush();
        let line = (record(0).len() + CHECKED_OVERHEAD + 1) as u64;
        Cursor::load(d.path(), "http", 0).advance(line + 5).unwrap();
        Cursor::load(d.path(), "file", 0).advance(2 * line).unwrap();
        drop(s);
        let s = Spool::open(d.path()).unwrap();
        assert_eq!(Cursor::load(d.path(), "http", 0).offset, line);
        assert_eq!(Cursor::load(d.path(), "file", 0).offset, 2 * line, "a cursor at a boundary stays");
        assert_eq!(s.read(line, 100, MAX_RECORD).unwrap().records.to_vecs(), vec![record(1), record(2)]);
    }

    #[test]
    fn a_last_record_that_lost_only_its_newline_gets_it_back() {
        for damage in ["cut", "flip"] {
            let d = tempfile::tempdir().unwrap();
            let s = Spool::open(d.path()).unwrap();
            s.append(record(0));
            s.append(record(1));
            s.flush();
            let end = s.written();
            Cursor::load(d.path(), "file", 0).advance(end).unwrap();
            drop(s);
            let mut bytes = fs::read(seg0(d.path())).unwrap();
            match damage {
                "cut" => {
                    bytes.pop();
                }
                _ => *bytes.last_mut().unwrap() = b'#',
            }
            fs::write(seg0(d.path()), &bytes).unwrap();
            let s = Spool::open(d.path()).unwrap();
            assert_eq!((s.written(), s.take_quarantined_on_open()), (end, 0), "{damage}");
            assert_eq!(Cursor::load(d.path(), "file", 0).offset, end, "{damage}");
            assert_eq!(
                all(d.path(), 0),
                vec![record(0), record(1)].into_iter().map(|r| String::from_utf8(r).unwrap()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn a_sealed_segment_that_ends_early_or_mid_line_is_skipped_to_the_next() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (encode_line(&record(0)), encode_line(&record(1)));
        // seg 0 should hold a and b, but ends in the middle of b; seg 1 holds b again.
        let next = (a.len() + b.len()) as u64;
        let mut first = a.clone();
        first.extend_from_slice(&b[..b.len() / 2]);
        fs::write(seg0(d.path()), &first).unwrap();
        fs::write(segment_path(d.path(), next), &b).unwrap();
        let batch = everything(d.path(), 0);
        assert_eq!(batch.records.to_vecs(), vec![record(0), record(1)]);
        assert_eq!(batch.bad.len(), 1);
        assert_eq!((batch.bad[0].offset, batch.bad[0].len), (a.len() as u64, b.len() as u64));
        assert_eq!((batch.lines, batch.next), (2, next + b.len() as u64));
        // A segment shorter than its place, ending with a whole line: the gap is reported too.
        fs::write(seg0(d.path()), &a).unwrap();
        let batch = everything(d.path(), 0);
        assert_eq!((batch.records.len(), batch.bad.len(), batch.bad[0].bytes.len()), (2, 1, 0));
        // The last segment's unfinished line is not damage: reading waits for it.
        fs::write(segment_path(d.path(), next), &b[..10]).unwrap();
        let batch = everything(d.path(), next);
        assert_eq!((batch.records.len(), batch.bad.len(), batch.next), (0, 0, next));
    }

    #[test]
    fn a_line_longer_than_a_record_can_be_is_skipped_whole() {
        let d = tempfile::tempdir().unwrap();
        let mut seg = vec![b'x'; MAX_RECORD + 10];
        seg.push(b'\n');
        seg.extend_from_slice(&encode_line(&record(1)));
        fs::write(seg0(d.path()), &seg).unwrap();
        let end = seg.len() as u64;
        let first = read_batch(d.path(), 0, end, 100, MAX_RECORD).unwrap();
        assert_eq!(first.bad.len(), 1);
        assert_eq!((first.bad[0].len, first.bad[0].bytes.len()), ((MAX_RECORD + 11) as u64, QUARANTINE_SAMPLE));
        let rest = read_batch(d.path(), first.next, end, 100, MAX_RECORD).unwrap();
        assert_eq!((rest.records.to_vecs(), rest.next), (vec![record(1)], end));
    }

    #[test]
    fn a_line_framed_in_place_has_the_bytes_of_the_checksummed_frame() {
        // Issue 14: records are serialised straight into their line; the bytes must be those of
        // the frame as it was built before (head, lowercase hex of the CRC, mid, record, `}\n`).
        let records: [&[u8]; 3] = [b"{}", "{\"a\":\"\u{e9}\\n\",\"n\":123}".as_bytes(), b""];
        for record in records {
            let want =
                [CHECKED_HEAD, format!("{:08x}", crc32c(record)).as_bytes(), CHECKED_MID, record, b"}\n"].concat();
            let mut line = b"before".to_vec();
            frame_into(&mut line, |b| {
                b.extend_from_slice(record);
                Ok::<(), ()>(())
            })
            .unwrap();
            assert_eq!(&line[6..], &want[..], "{}", String::from_utf8_lossy(&line));
            assert_eq!(encode_line(record), want);
            assert_eq!(
                decode_line(&want[..want.len() - 1]).ok().filter(|_| !record.is_empty()),
                (!record.is_empty()).then_some(record)
            );
        }
        // A writer that fails leaves the buffer as it was.
        let mut line = b"keep".to_vec();
        assert!(frame_into(&mut line, |b| {
            b.extend_from_slice(b"{\"half");
            Err(())
        })
        .is_err());
        assert_eq!(line, b"keep");
    }

    #[test]
    fn segments_rotate_and_are_released_only_when_delivered() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let line = format!("\"{}\"", "x".repeat((1 << 20) - 2)).into_bytes();
        for _ in 0..40 {
            s.append(line.clone());
        }
        s.flush();
        let segs = segments(d.path()).unwrap();
        assert!(segs.len() >= 3, "{segs:?}");
        assert_eq!(s.release(segs[1].0 - 1).unwrap(), 0, "the first segment is not fully delivered");
        let freed = s.release(segs[1].0).unwrap();
        assert_eq!(freed, segs[1].0);
        assert_eq!(segments(d.path()).unwrap().len(), segs.len() - 1);
        let framed = line.len() + CHECKED_OVERHEAD + 1;
        assert_eq!(all(d.path(), 0).len(), 40 - (segs[1].0 as usize / framed));
        // Reading from an offset that was released starts at the oldest segment.
        assert_eq!(s.first_offset(), segs[1].0);
    }

    #[test]
    fn one_writer_per_slot_and_a_second_process_takes_the_handover_slot() {
        let d = tempfile::tempdir().unwrap();
        let (first, other) = open_slot(d.path(), Duration::ZERO).unwrap();
        assert_eq!((first.dir(), other.as_path()), (d.path(), d.path().join(HANDOVER_DIR).as_path()));
        let e = Spool::open(d.path()).err().expect("the slot is locked");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(e.to_string().contains(&format!("pid {}", std::process::id())), "{e}");
        let (second, other) = open_slot(d.path(), Duration::ZERO).unwrap();
        assert_eq!((second.dir(), other.as_path()), (d.path().join(HANDOVER_DIR).as_path(), d.path()));
        assert_eq!(open_slot(d.path(), Duration::ZERO).err().map(|e| e.kind()), Some(io::ErrorKind::WouldBlock));
        second.append(b"{\"record\":\"stop\"}".to_vec());
        second.flush();
        let handover = d.path().join(HANDOVER_DIR);
        assert!(has_undelivered(&handover, &["file"]));
        let end = second.written();
        drop(second);
        Cursor::load(&handover, "file", 0).advance(end).unwrap();
        assert!(!has_undelivered(&handover, &["file"]), "the sink has everything");
        assert!(!has_undelivered(&d.path().join("nowhere"), &["file"]));
        // Once its writer is gone, the slot opens again.
        drop(first);
        assert!(Spool::open(d.path()).is_ok());
    }

    #[test]
    fn cursors_persist() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Cursor::load(d.path(), "file", 7);
        assert_eq!(c.offset, 7);
        c.advance(42).unwrap();
        assert_eq!(Cursor::load(d.path(), "file", 0).offset, 42);
    }
}
