//! The spool's tail: the newest lines this process wrote, kept in memory so that a sink that
//! keeps up gets its records from here instead of reading the segment back, checking each line's
//! checksum and parsing it (issue 14: that read-back was 4.6 % of a handshake's CPU).
//!
//! Sans-io and pure. Warm path: [`Tail::push`] once per written line (one copy of its record, into
//! a chunk of record storage), [`Tail::read`] once per delivery batch (one copy of each record,
//! into the batch's one buffer). The spool owns it and pushes every line, at the
//! offset it was written at, right after the write succeeded; so the tail holds exactly the
//! bytes the segments hold from [`Tail::start`] on, and a record that comes from it is the
//! record that went to disk. What it does not hold (lines written before this process started,
//! lines older than [`TAIL_BYTES`] of newer ones, anything a sink reads from an offset inside a
//! line) is read from disk as before, with every check: [`Tail::read`] answers `None`.
//!
//! Memory is bounded: at most [`TAIL_BYTES`] of records (oldest dropped first), and lines every
//! sink has delivered are dropped at once ([`Tail::trim`]); the chunks add about two chunks and
//! the spare (`CHUNK` bytes each) to that: the oldest one's delivered lines, the newest one's
//! free room.

use super::sinks::Lines;
use std::collections::VecDeque;

/// Most record bytes the tail keeps, bytes (about 9 000 usage records): past this, the oldest
/// lines are dropped and a sink that far behind reads them from disk.
pub const TAIL_BYTES: usize = 8 << 20;

/// Size of one chunk of record storage, bytes. Records are appended to the newest chunk (one that
/// does not fit starts the next; a record larger than this gets a chunk of its own size), and a
/// chunk is freed, or kept as the spare, once no line it holds is left: so a steady flow of
/// records allocates nothing per record, where a copy of each made on a gateway thread and freed
/// on the delivery thread kept both threads' allocator caches refilling and flushing (issue 14).
const CHUNK: usize = 64 << 10;

/// One written spool line.
#[derive(Debug)]
struct Line {
    /// Global offset of the line's first byte.
    offset: u64,
    /// The line's length in the spool, framing and newline included, bytes.
    len: u64,
    /// Sequence number of the chunk that holds its record.
    chunk: u64,
    /// Where the record starts in that chunk, bytes.
    at: usize,
    /// The record's length, bytes.
    record_len: usize,
}

impl Line {
    fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// What one read from the tail found (the same as a read from disk that met no damage).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Records {
    /// Records to deliver, in spool order.
    pub records: Lines,
    /// Offset after the last line read: where the next read starts.
    pub next: u64,
}

/// The newest written lines, contiguous from [`Tail::start`].
#[derive(Debug)]
pub struct Tail {
    /// Global offset of the first line held (the end of the spool while it holds none).
    start: u64,
    /// The lines, oldest first, each starting where the one before ended.
    lines: VecDeque<Line>,
    /// The records' bytes, oldest chunk first (its sequence number is `first_chunk`).
    chunks: VecDeque<Vec<u8>>,
    /// Sequence number of `chunks[0]`.
    first_chunk: u64,
    /// An emptied chunk of `CHUNK` bytes, kept for the next one.
    spare: Option<Vec<u8>>,
    /// Record bytes held.
    bytes: usize,
    /// Most record bytes to hold ([`TAIL_BYTES`] outside tests).
    capacity: usize,
}

impl Tail {
    /// An empty tail for a spool whose end is at global offset `end`.
    #[must_use]
    pub fn new(end: u64) -> Tail {
        Tail::with_capacity(end, TAIL_BYTES)
    }

    /// An empty tail at `end` that holds at most `capacity` record bytes.
    #[must_use]
    pub fn with_capacity(end: u64, capacity: usize) -> Tail {
        Tail {
            start: end,
            lines: VecDeque::new(),
            chunks: VecDeque::new(),
            first_chunk: 0,
            spare: None,
            bytes: 0,
            capacity,
        }
    }

    /// Global offset of the first line held: reads from before it go to disk.
    #[must_use]
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Global offset after the last line held.
    #[must_use]
    pub fn end(&self) -> u64 {
        self.lines.back().map_or(self.start, Line::end)
    }

    /// Record bytes held.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Notes the spool line `line` (newline included) written at global offset `offset`, which
    /// carries `record`. A line that does not start where the tail ends (not expected: the spool
    /// pushes every line it writes, in order) empties the tail first, so it never holds a gap.
    pub fn push(&mut self, offset: u64, line_len: u64, record: &[u8]) {
        if offset != self.end() {
            self.clear(offset);
        }
        if record.len() > self.capacity {
            self.clear(offset + line_len);
            return;
        }
        let fits = self.chunks.back().is_some_and(|c| c.capacity() - c.len() >= record.len());
        if !fits {
            let chunk = match self.spare.take() {
                Some(c) if c.capacity() >= record.len() => c,
                _ => Vec::with_capacity(record.len().max(CHUNK)),
            };
            self.chunks.push_back(chunk);
        }
        let chunk = self.first_chunk + self.chunks.len() as u64 - 1;
        let Some(c) = self.chunks.back_mut() else { return };
        let at = c.len();
        c.extend_from_slice(record);
        self.bytes += record.len();
        self.lines.push_back(Line { offset, len: line_len, chunk, at, record_len: record.len() });
        while self.bytes > self.capacity {
            self.pop_front();
        }
    }

    /// Drops every line that ends at or before `upto` (every sink has delivered it).
    pub fn trim(&mut self, upto: u64) {
        while self.lines.front().is_some_and(|l| l.end() <= upto) {
            self.pop_front();
        }
    }

    /// Forgets every line and starts over at global offset `at` (reads before it go to disk).
    pub fn clear(&mut self, at: u64) {
        self.lines.clear();
        self.bytes = 0;
        self.start = at;
        self.release_chunks();
    }

    /// The records of the whole lines from `offset` that end at or before `limit` (the durable
    /// end), at most `max_lines` of them and stopping after the line that reaches `max_bytes`
    /// (counted in spool bytes), as `spool::read_batch` would read them from disk; `None` when
    /// `offset` is not the start of a line the tail holds (or its end), so the caller reads disk.
    #[must_use]
    pub fn read(&self, offset: u64, limit: u64, max_lines: usize, max_bytes: usize) -> Option<Records> {
        if offset < self.start || offset > self.end() {
            return None;
        }
        let first = self.lines.partition_point(|l| l.offset < offset);
        if self.lines.get(first).is_some_and(|l| l.offset != offset) {
            return None;
        }
        // The lines to take first, so that the batch is allocated once at its size.
        let (mut taken, mut spool_bytes, mut record_bytes) = (0, 0u64, 0);
        for line in self.lines.range(first..) {
            if line.end() > limit || taken >= max_lines {
                break;
            }
            taken += 1;
            record_bytes += line.record_len;
            spool_bytes += line.len;
            if spool_bytes >= max_bytes as u64 {
                break;
            }
        }
        let mut out = Records { records: Lines::with_capacity(taken, record_bytes), next: offset };
        for line in self.lines.range(first..first + taken) {
            out.records.push(self.record(line));
            out.next = line.end();
        }
        Some(out)
    }

    /// The record `line` carries.
    fn record(&self, line: &Line) -> &[u8] {
        let chunk = usize::try_from(line.chunk - self.first_chunk).ok().and_then(|i| self.chunks.get(i));
        chunk.and_then(|c| c.get(line.at..line.at + line.record_len)).unwrap_or_default()
    }

    fn pop_front(&mut self) {
        if let Some(line) = self.lines.pop_front() {
            self.bytes -= line.record_len;
            self.start = line.end();
            self.release_chunks();
        }
    }

    /// Frees the chunks older than the one the oldest line is in (all of them when no line is
    /// left), keeping one of `CHUNK` bytes as the spare.
    fn release_chunks(&mut self) {
        let keep_from = self.lines.front().map_or(self.first_chunk + self.chunks.len() as u64, |l| l.chunk);
        while self.first_chunk < keep_from {
            let Some(mut chunk) = self.chunks.pop_front() else { break };
            self.first_chunk += 1;
            if self.spare.is_none() && chunk.capacity() == CHUNK {
                chunk.clear();
                self.spare = Some(chunk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tail holding lines of `lens` (record length = line length − 10) from offset 100.
    fn tail(lens: &[u64], capacity: usize) -> Tail {
        let mut t = Tail::with_capacity(100, capacity);
        let mut at = 100;
        for (i, &len) in lens.iter().enumerate() {
            t.push(at, len, &rec(i as u8, len as usize));
            at += len;
        }
        t
    }

    fn rec(i: u8, len: usize) -> Vec<u8> {
        vec![b'a' + i; len - 10]
    }

    #[test]
    fn reads_whole_lines_up_to_the_limit_and_the_batch_bounds() {
        let t = tail(&[20, 30, 40], usize::MAX);
        assert_eq!((t.start(), t.end(), t.bytes()), (100, 190, 60));
        let all = t.read(100, 190, 10, 1 << 20).unwrap();
        assert_eq!(all, Records { records: [rec(0, 20), rec(1, 30), rec(2, 40)].into_iter().collect(), next: 190 });
        // Only what is durable: the limit ends the read, never inside a line.
        assert_eq!(t.read(100, 189, 10, 1 << 20).unwrap().next, 150);
        assert_eq!(t.read(100, 150, 10, 1 << 20).unwrap().records.len(), 2);
        // At most `max_lines`; bytes stop after the line that reaches them.
        assert_eq!(
            t.read(100, 190, 1, 1 << 20).unwrap(),
            Records { records: [rec(0, 20)].into_iter().collect(), next: 120 }
        );
        assert_eq!(t.read(100, 190, 10, 21).unwrap().next, 150);
        assert_eq!(t.read(100, 190, 10, 20).unwrap().next, 120);
        // From a later line, and from the end (nothing new).
        assert_eq!(t.read(120, 190, 10, 1 << 20).unwrap().records.to_vecs(), vec![rec(1, 30), rec(2, 40)]);
        assert_eq!(t.read(190, 190, 10, 1 << 20).unwrap(), Records { records: Lines::default(), next: 190 });
    }

    #[test]
    fn what_it_does_not_hold_is_left_to_the_disk() {
        let t = tail(&[20, 30], usize::MAX);
        assert_eq!(t.read(99, 150, 10, 1 << 20), None, "before the first line");
        assert_eq!(t.read(0, 150, 10, 1 << 20), None, "from an older segment");
        assert_eq!(t.read(105, 150, 10, 1 << 20), None, "inside a line");
        assert_eq!(t.read(151, 150, 10, 1 << 20), None, "past the end");
        let empty = Tail::new(500);
        assert_eq!(empty.read(500, 500, 10, 1 << 20), Some(Records { records: Lines::default(), next: 500 }));
        assert_eq!(empty.read(400, 500, 10, 1 << 20), None);
    }

    #[test]
    fn delivered_lines_and_lines_over_the_capacity_are_dropped_oldest_first() {
        let mut t = tail(&[20, 30, 40], usize::MAX);
        t.trim(149);
        assert_eq!((t.start(), t.bytes()), (120, 50), "only lines that end by the offset go");
        t.trim(150);
        assert_eq!((t.start(), t.end(), t.bytes()), (150, 190, 30));
        assert_eq!(t.read(120, 190, 10, 1 << 20), None, "trimmed lines are read from disk");
        // Capacity 45 record bytes: 10 + 20 fit, the third (30) pushes the first two out.
        let t = tail(&[20, 30, 40], 45);
        assert_eq!((t.start(), t.bytes()), (150, 30));
        assert_eq!(t.read(150, 190, 10, 1 << 20).unwrap().records.to_vecs(), vec![rec(2, 40)]);
        // A record larger than the capacity is not held, and nothing before it is.
        let mut t = tail(&[20], 45);
        t.push(120, 70, &[b'x'; 60]);
        assert_eq!((t.start(), t.end(), t.bytes()), (190, 190, 0));
        t.push(190, 20, &rec(0, 20));
        assert_eq!(t.read(190, 210, 10, 1 << 20).unwrap().records.to_vecs(), vec![rec(0, 20)]);
    }

    #[test]
    fn records_across_chunks_come_back_exactly_and_emptied_chunks_are_freed() {
        // 300 records of 1 000 to 1 299 bytes: about 5 chunks.
        let records: Vec<Vec<u8>> = (0..300u32).map(|i| vec![b'a' + (i % 26) as u8; 1000 + i as usize]).collect();
        let mut t = Tail::with_capacity(0, usize::MAX);
        let mut ends = Vec::new();
        let mut at = 0;
        for r in &records {
            t.push(at, r.len() as u64 + 20, r);
            at += r.len() as u64 + 20;
            ends.push(at);
        }
        assert!(t.chunks.len() >= 5, "{} chunks", t.chunks.len());
        assert_eq!(t.read(0, at, usize::MAX, usize::MAX).unwrap().records.to_vecs(), records);
        // Half delivered: the chunks holding only those lines go (one becomes the spare).
        let before = t.chunks.len();
        t.trim(ends[149]);
        assert!(t.chunks.len() < before && t.spare.is_some(), "{} of {before} chunks left", t.chunks.len());
        assert_eq!(t.read(ends[149], at, usize::MAX, usize::MAX).unwrap().records.to_vecs(), records[150..]);
        // A record larger than a chunk gets one of its own; later ones go on in a new chunk.
        let big = vec![b'B'; CHUNK + 5];
        t.push(at, big.len() as u64 + 20, &big);
        t.push(at + big.len() as u64 + 20, 30, &[b'c'; 10]);
        let last = t.read(at, t.end(), usize::MAX, usize::MAX).unwrap().records;
        assert_eq!(last.to_vecs(), vec![big, vec![b'c'; 10]]);
        // Everything delivered: no chunk is left but the spare, reused by the next record.
        t.trim(t.end());
        assert_eq!((t.chunks.len(), t.bytes(), t.spare.as_ref().map(Vec::capacity)), (0, 0, Some(CHUNK)));
        let end = t.end();
        t.push(end, 30, &rec(1, 20));
        assert_eq!((t.chunks.len(), t.spare.is_none()), (1, true));
        assert_eq!(t.read(end, end + 30, 10, 1 << 20).unwrap().records.to_vecs(), vec![rec(1, 20)]);
    }

    #[test]
    fn a_line_that_leaves_a_gap_starts_the_tail_over() {
        let mut t = tail(&[20, 30], usize::MAX);
        t.push(400, 20, &rec(7, 20));
        assert_eq!((t.start(), t.end(), t.bytes()), (400, 420, 10));
        assert_eq!(t.read(100, 420, 10, 1 << 20), None);
        assert_eq!(t.read(400, 420, 10, 1 << 20).unwrap().records.to_vecs(), vec![rec(7, 20)]);
    }
}
