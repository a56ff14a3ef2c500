//! The in-memory copy of a room's newest messages with their sequence numbers, and what a
//! joining member is sent from it (the last messages, or those after its `?since=N`).
//!
//! Warm path: `Kept::push` runs once per room message under the room's lock; `Kept::select`
//! once per join. Pure: no I/O, no clock. Both history stores (`history.rs`, the file per room;
//! `history_pg.rs`, PostgreSQL) keep their in-memory copy here, so the selection is one code.
//!
//! Sequence numbers: every room message gets the next number of its room, 1, 2, 3, …; they
//! only grow and survive restarts (the stores persist them). `last` is the newest number ever
//! given (0: none yet), even when the history no longer holds that message (a message larger
//! than `keep_bytes` empties it).

use super::history::StoredMessage;
use std::collections::VecDeque;

/// A room's newest messages: the longest suffix within `keep` messages and `keep_bytes`
/// payload bytes, oldest first, each with its sequence number.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    entries: VecDeque<(u64, StoredMessage)>,
    /// Payload bytes in `entries`.
    bytes: u64,
    /// Most messages kept.
    keep: usize,
    /// Most payload bytes kept.
    keep_bytes: u64,
    /// Sequence number of the newest message (0: none yet).
    last: u64,
}

/// What a joining member is sent before live messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Sequence number of the first message sent (`last + 1` when none is sent).
    pub from: u64,
    /// Sequence number of the room's newest message (0: none yet).
    pub seq: u64,
    /// True when the member asked for messages the history no longer holds (or for a
    /// sequence number beyond the newest): what it is sent does not continue what it had.
    pub gap: bool,
    /// The messages, oldest first (`from`, `from + 1`, …).
    pub messages: Vec<StoredMessage>,
}

impl Kept {
    /// An empty history keeping at most `keep` messages and `keep_bytes` payload bytes, whose
    /// newest message so far was number `last`.
    pub fn new(keep: usize, keep_bytes: u64, last: u64) -> Kept {
        Kept { entries: VecDeque::new(), bytes: 0, keep, keep_bytes, last }
    }

    /// Add message number `seq` (larger than every number before it), dropping the oldest
    /// beyond the limits.
    pub fn push(&mut self, seq: u64, msg: StoredMessage) {
        self.last = self.last.max(seq);
        self.bytes += msg.data.len() as u64;
        self.entries.push_back((seq, msg));
        while self.entries.len() > self.keep || self.bytes > self.keep_bytes {
            let Some((_, old)) = self.entries.pop_front() else { break };
            self.bytes -= old.data.len() as u64;
        }
    }

    /// Sequence number of the newest message (0: none yet).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Sequence number of the oldest kept message (`last + 1` when none is kept).
    pub fn first(&self) -> u64 {
        self.entries.front().map_or(self.last + 1, |(s, _)| *s)
    }

    /// The kept messages, oldest first.
    pub fn messages(&self) -> impl Iterator<Item = &StoredMessage> + '_ {
        self.entries.iter().map(|(_, m)| m)
    }

    /// The kept messages with their numbers, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &(u64, StoredMessage)> + '_ {
        self.entries.iter()
    }

    /// Number of kept messages.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no message is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Payload bytes of the kept messages.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// What a member joining with `since` (`?since=N`: the last number it saw) is sent:
    /// - no `since`: every kept message;
    /// - `since` ≤ the newest: the messages after it, or every kept one with `gap` when the
    ///   oldest it missed is no longer kept;
    /// - `since` > the newest (a client of a reset store): every kept message, with `gap`.
    pub fn select(&self, since: Option<u64>) -> Selection {
        let first = self.first();
        let (after, gap) = match since {
            None => (0, false),
            Some(n) if n > self.last => (0, true),
            Some(n) if n.saturating_add(1) < first => (0, true),
            Some(n) => (n, false),
        };
        let messages: Vec<StoredMessage> =
            self.entries.iter().filter(|(s, _)| *s > after).map(|(_, m)| m.clone()).collect();
        let from = if after == 0 { first } else { after + 1 };
        Selection { from, seq: self.last, gap, messages }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::history::MessageKind;
    use bytes::Bytes;

    fn msg(s: &str) -> StoredMessage {
        StoredMessage { kind: MessageKind::Text, data: Bytes::copy_from_slice(s.as_bytes()) }
    }

    /// Kept messages 6..=10 ("m6" … "m10") out of ten sent.
    fn ten_keeping_five() -> Kept {
        let mut k = Kept::new(5, 1 << 20, 0);
        for i in 1..=10 {
            k.push(i, msg(&format!("m{i}")));
        }
        k
    }

    fn texts(s: &Selection) -> Vec<String> {
        s.messages.iter().map(|m| String::from_utf8_lossy(&m.data).into_owned()).collect()
    }

    #[test]
    fn without_since_every_kept_message_is_sent() {
        let s = ten_keeping_five().select(None);
        assert_eq!((s.from, s.seq, s.gap), (6, 10, false));
        assert_eq!(texts(&s), ["m6", "m7", "m8", "m9", "m10"]);
    }

    #[test]
    fn since_within_the_history_sends_exactly_the_missed_ones() {
        let k = ten_keeping_five();
        let s = k.select(Some(7));
        assert_eq!((s.from, s.seq, s.gap), (8, 10, false));
        assert_eq!(texts(&s), ["m8", "m9", "m10"]);
        // The oldest missed one is the oldest kept one: no gap.
        let s = k.select(Some(5));
        assert_eq!((s.from, s.gap, s.messages.len()), (6, false, 5));
        // Up to date: nothing, and the next live message is `from`.
        let s = k.select(Some(10));
        assert_eq!((s.from, s.seq, s.gap, s.messages.len()), (11, 10, false, 0));
    }

    #[test]
    fn since_older_than_the_history_is_a_gap() {
        let s = ten_keeping_five().select(Some(2));
        assert_eq!((s.from, s.seq, s.gap), (6, 10, true));
        assert_eq!(texts(&s), ["m6", "m7", "m8", "m9", "m10"]);
        let s = ten_keeping_five().select(Some(0));
        assert_eq!((s.from, s.gap), (6, true));
    }

    #[test]
    fn since_beyond_the_newest_is_a_gap_with_the_normal_history() {
        let s = ten_keeping_five().select(Some(11));
        assert_eq!((s.from, s.seq, s.gap), (6, 10, true));
        assert_eq!(s.messages.len(), 5);
        let s = ten_keeping_five().select(Some(u64::MAX));
        assert_eq!((s.from, s.gap), (6, true));
    }

    #[test]
    fn an_empty_room_and_a_room_whose_history_was_emptied() {
        let empty = Kept::new(5, 100, 0);
        assert_eq!(empty.select(None), Selection { from: 1, seq: 0, gap: false, messages: vec![] });
        assert_eq!(empty.select(Some(0)), Selection { from: 1, seq: 0, gap: false, messages: vec![] });
        assert!(empty.select(Some(1)).gap);
        // A message over keep_bytes empties the history; the numbers go on.
        let mut k = Kept::new(5, 4, 0);
        k.push(1, msg("ab"));
        k.push(2, msg("too long"));
        assert!(k.is_empty());
        assert_eq!((k.last(), k.first()), (2, 3));
        assert_eq!(k.select(Some(2)), Selection { from: 3, seq: 2, gap: false, messages: vec![] });
        assert!(k.select(Some(1)).gap);
    }

    #[test]
    fn bounded_in_bytes() {
        let mut k = Kept::new(100, 10, 0);
        for i in 1..=6 {
            k.push(i, msg("abcd"));
        }
        assert_eq!((k.len(), k.bytes(), k.first(), k.last()), (2, 8, 5, 6));
    }
}
