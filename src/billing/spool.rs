//! The spool: every usage record goes here first, as one JSON line in an append-only segment
//! file, before any sink sees it.
//!
//! Warm path (`append`, once per record): one `write(2)` of the whole line under a mutex, never
//! held across an await. Background (`Flusher`, a service): every `fsync_interval` (≤ 200 ms) it
//! fsyncs what was written and publishes the new *durable* offset; sinks only read up to it. On
//! the shutdown signal it flushes at once and goes on while connections drain; the last flush
//! runs after every service has stopped (`server::run`), so every record made before exit is
//! durable.
//! Offsets are global byte positions: segment `seg-<start>.jsonl` holds the bytes from `start`.
//!
//! Nothing is dropped. When a write fails (a full disk), the file is cut back to the end of its
//! last whole line, the spool turns *unhealthy* (the gateway then refuses new upgrades with 503
//! unless `usage.on_spool_error: fail_open`), and the record waits in memory, in order, with
//! every later one, until the flusher manages to write them. Cold path (`open`): a torn last line
//! (a crash mid-write) is cut off; cursors (`cursor-<sink>`) say how far each sink got; a segment
//! is deleted once every sink has delivered all of it.

use crate::sync::lock;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Largest segment before a new one starts, bytes.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// Largest record the spool reads back in one piece, bytes (a usage record is about 1 KB).
pub const MAX_RECORD: usize = 4 << 20;

/// The spool of one process.
pub struct Spool {
    dir: PathBuf,
    writer: Mutex<Writer>,
    /// Records that could not be written yet, oldest first.
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
}

struct Writer {
    file: File,
    seg_start: u64,
    seg_len: u64,
    dirty: bool,
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("seg-{start:020}.jsonl"))
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
    /// Open (or create) the spool in `dir`: cut a torn last line, fsync, and start writing at
    /// the end.
    pub fn open(dir: &Path) -> io::Result<Arc<Spool>> {
        fs::create_dir_all(dir)?;
        let segs = segments(dir)?;
        let (seg_start, path) = match segs.last() {
            Some((start, path)) => (*start, path.clone()),
            None => (0, segment_path(dir, 0)),
        };
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        let whole = whole_lines_len(&mut file, len)?;
        if whole < len {
            tracing::warn!(segment = %path.display(), dropped = len - whole, "spool: cut a torn last record (written when weir stopped mid-write)");
            file.set_len(whole)?;
        }
        file.sync_all()?;
        sync_dir(dir);
        let end = seg_start + whole;
        let (durable, _) = watch::channel(end);
        Ok(Arc::new(Spool {
            dir: dir.to_path_buf(),
            writer: Mutex::new(Writer { file, seg_start, seg_len: whole, dirty: false }),
            backlog: Mutex::new(VecDeque::new()),
            healthy: AtomicBool::new(true),
            written: AtomicU64::new(end),
            durable,
            appended: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        }))
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

    /// Append one record (`line` without its newline). Never fails: a record that cannot be
    /// written now waits in memory and is written, in order, when the spool can take it.
    pub fn append(&self, mut line: Vec<u8>) {
        line.push(b'\n');
        self.appended.fetch_add(1, Ordering::Relaxed);
        let mut w = lock(&self.writer);
        let mut backlog = lock(&self.backlog);
        if !backlog.is_empty() {
            backlog.push_back(line);
            return;
        }
        drop(backlog);
        if let Err(e) = self.write_line(&mut w, &line) {
            self.failed(&e);
            lock(&self.backlog).push_back(line);
        }
    }

    /// Write one line at the end of the current segment (rotating first if it is full); on
    /// error, cut the segment back so it still ends with a whole line.
    fn write_line(&self, w: &mut Writer, line: &[u8]) -> io::Result<()> {
        if w.seg_len >= SEGMENT_BYTES {
            self.rotate(w)?;
        }
        if let Err(e) = w.file.write_all(line) {
            // A short write leaves part of a line: cut it off (truncating frees space, so this
            // works on a full disk too).
            let _ = w.file.set_len(w.seg_len);
            return Err(e);
        }
        w.seg_len += line.len() as u64;
        w.dirty = true;
        self.written.store(w.seg_start + w.seg_len, Ordering::Relaxed);
        Ok(())
    }

    fn rotate(&self, w: &mut Writer) -> io::Result<()> {
        w.file.sync_all()?;
        let start = w.seg_start + w.seg_len;
        let file = OpenOptions::new().create(true).read(true).append(true).open(segment_path(&self.dir, start))?;
        sync_dir(&self.dir);
        *w = Writer { file, seg_start: start, seg_len: 0, dirty: false };
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
            let mut backlog = lock(&self.backlog);
            while let Some(line) = backlog.front() {
                match self.write_line(&mut w, line) {
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

    /// Read whole lines from `offset` up to the durable end, at most `max_lines`; returns them
    /// with the offset after the last one. An offset before the oldest segment starts at it.
    pub fn read(&self, offset: u64, max_lines: usize, max_bytes: usize) -> io::Result<(Vec<Vec<u8>>, u64)> {
        let durable = *self.durable.borrow();
        read_lines(&self.dir, offset, durable, max_lines, max_bytes)
    }

    /// Delete segments that end at or before `upto` (every sink has them), never the current one.
    pub fn release(&self, upto: u64) -> io::Result<u64> {
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

/// Read whole lines between `offset` and `limit` across segments.
pub fn read_lines(
    dir: &Path,
    offset: u64,
    limit: u64,
    max_lines: usize,
    max_bytes: usize,
) -> io::Result<(Vec<Vec<u8>>, u64)> {
    let segs = segments(dir)?;
    let mut lines = Vec::new();
    let mut at = offset.max(segs.first().map(|(s, _)| *s).unwrap_or(0));
    let mut bytes = 0;
    for (i, (start, path)) in segs.iter().enumerate() {
        let end = segs.get(i + 1).map(|(s, _)| *s).unwrap_or(u64::MAX).min(limit);
        if at >= end || at < *start {
            continue;
        }
        let mut f = File::open(path)?;
        let avail = (start + f.metadata()?.len()).min(end).saturating_sub(at);
        f.seek(SeekFrom::Start(at - start))?;
        // Records are far smaller than `MAX_RECORD`, so a buffer this size always holds a line.
        let want = max_bytes.saturating_sub(bytes).clamp(MAX_RECORD, 64 << 20);
        let mut buf = vec![0u8; usize::try_from(avail).unwrap_or(usize::MAX).min(want)];
        let n = read_full(&mut f, &mut buf)?;
        let mut pos = 0;
        while let Some(nl) = buf.get(pos..n).and_then(|b| b.iter().position(|&c| c == b'\n')) {
            lines.push(buf[pos..pos + nl].to_vec());
            pos += nl + 1;
            bytes += nl + 1;
            if lines.len() >= max_lines || bytes >= max_bytes {
                return Ok((lines, at + pos as u64));
            }
        }
        at += pos as u64;
        if at < end {
            // A line longer than the buffer, or the end of what is durable: stop here.
            break;
        }
    }
    Ok((lines, at))
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

    #[test]
    fn appends_are_durable_after_a_flush_and_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        for i in 0..10 {
            s.append(format!("{{\"n\":{i}}}").into_bytes());
        }
        assert_eq!(s.read(0, 100, 1 << 20).unwrap().0.len(), 0, "nothing durable before the flush");
        s.flush();
        let (lines, next) = s.read(0, 4, 1 << 20).unwrap();
        assert_eq!(lines.len(), 4);
        let (rest, end) = s.read(next, 100, 1 << 20).unwrap();
        assert_eq!(rest.len(), 6);
        assert_eq!(end, s.written());
        drop(s);
        let s = Spool::open(d.path()).unwrap();
        assert_eq!(*s.durable().borrow(), end);
        assert_eq!(all(d.path(), 0).len(), 10);
    }

    #[test]
    fn a_torn_last_line_is_cut_on_open() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        s.append(b"{\"a\":1}".to_vec());
        s.flush();
        drop(s);
        let seg = segment_path(d.path(), 0);
        OpenOptions::new().append(true).open(&seg).unwrap().write_all(b"{\"torn").unwrap();
        let s = Spool::open(d.path()).unwrap();
        s.append(b"{\"b\":2}".to_vec());
        s.flush();
        assert_eq!(all(d.path(), 0), vec!["{\"a\":1}", "{\"b\":2}"]);
    }

    #[test]
    fn segments_rotate_and_are_released_only_when_delivered() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let line = vec![b'x'; 1 << 20];
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
        assert_eq!(all(d.path(), 0).len(), 40 - (segs[1].0 as usize / (line.len() + 1)));
        // Reading from an offset that was released starts at the oldest segment.
        assert_eq!(s.first_offset(), segs[1].0);
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
