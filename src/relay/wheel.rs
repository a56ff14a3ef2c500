//! `Wheel<T>`: a hierarchical timing wheel, sans-io (no clock, no thread, no allocation per
//! operation once its slab has grown).
//!
//! Time is counted in ticks (the owner picks the tick's length). Six levels of 64 slots: level 0
//! holds what is due in the current 64-tick block, one slot per tick; level `k` holds what is due
//! in later blocks of the current `64^(k+1)`-tick span, one slot per `64^k` ticks. When the wheel
//! reaches the start of a higher-level slot, that slot's entries move down (each entry moves at
//! most once per level). Entries live in a slab and each slot is an intrusive doubly linked list
//! through it, so:
//! - `insert`, `remove` (cancel) and moving a deadline (remove + insert) are O(1);
//! - `advance` costs O(expiring + moved down), never O(entries), and jumps over empty stretches
//!   using one occupancy bitmap per level (`next_due` is O(levels));
//! - a deadline past the end of the current top-level span (the 64^6-tick block `now` is in:
//!   about 22 years of 10 ms ticks) is clamped to that end and so fires early; owners re-check
//!   their real deadline when woken (as `timers` does), so that is a spurious wakeup, not a
//!   missed one.
//!
//! Cold path: the slab grows to the most entries ever held at once and keeps that capacity.
//! Used by `timers` (one wheel for the process's connection deadlines) and by the interim-record
//! sweeper (one wheel of due records).

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const NONE: u32 = u32::MAX;
/// Ticks in the top-level span minus one: a deadline is clamped to the end of `now`'s span.
pub const MAX_SPAN: u64 = (1 << (SLOT_BITS as u64 * LEVELS as u64)) - 1;

/// A handle to one inserted entry: stale once it expired or was removed (the generation moves).
/// The default names the first slab entry's first generation: a placeholder for a handle not
/// yet made, never to be used as one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Key {
    index: u32,
    generation: u32,
}

struct Node<T> {
    value: Option<T>,
    /// Tick the entry is due.
    at: u64,
    prev: u32,
    next: u32,
    /// `level * SLOTS + slot` of the list holding it.
    list: u16,
    generation: u32,
}

/// A hierarchical timing wheel of values `T`, each due at a tick.
pub struct Wheel<T> {
    /// Last tick processed: everything due at or before it has been handed out.
    now: u64,
    /// Head node of each slot's list, `level * SLOTS + slot`.
    heads: Vec<u32>,
    /// Per level, bit `s` set when slot `s` holds an entry.
    occupied: [u64; LEVELS],
    slab: Vec<Node<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Wheel<T> {
    fn default() -> Self {
        Wheel::new(0)
    }
}

impl<T> Wheel<T> {
    /// An empty wheel whose current tick is `now`.
    pub fn new(now: u64) -> Wheel<T> {
        Wheel {
            now,
            heads: vec![NONE; LEVELS * SLOTS],
            occupied: [0; LEVELS],
            slab: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// The last tick processed.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Insert `value`, due at tick `at` (a tick at or before `now` is due at the next one).
    pub fn insert(&mut self, at: u64, value: T) -> Key {
        let span_end = self.now | MAX_SPAN;
        let at = at.min(span_end).max(self.now.saturating_add(1));
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slab.push(Node { value: None, at: 0, prev: NONE, next: NONE, list: 0, generation: 0 });
                u32::try_from(self.slab.len() - 1).unwrap_or(NONE)
            }
        };
        let generation = {
            let node = &mut self.slab[index as usize];
            node.value = Some(value);
            node.at = at;
            node.generation
        };
        self.link(index);
        self.len += 1;
        Key { index, generation }
    }

    /// Remove the entry `key` names; `None` when it already expired or was removed.
    pub fn remove(&mut self, key: Key) -> Option<T> {
        let node = self.slab.get(key.index as usize)?;
        if node.generation != key.generation || node.value.is_none() {
            return None;
        }
        self.unlink(key.index);
        Some(self.release(key.index))
    }

    /// The tick at which `advance` next has work: an entry due, or a higher-level slot whose
    /// entries move down. `None` when the wheel is empty.
    pub fn next_due(&self) -> Option<u64> {
        for level in 0..LEVELS {
            let shift = SLOT_BITS * level as u32;
            let pos = (self.now >> shift) & (SLOTS as u64 - 1);
            // Slots after the current one in this level's rotation (entries never sit at or
            // before it: they are placed by the first bit group in which they differ from now).
            let later = self.occupied[level] & !(u64::MAX >> (63 - pos));
            if later != 0 {
                let slot = u64::from(later.trailing_zeros());
                let span_shift = shift + SLOT_BITS;
                let base = if span_shift >= 64 { 0 } else { (self.now >> span_shift) << span_shift };
                return Some(base + (slot << shift));
            }
        }
        None
    }

    /// Move time to tick `to`, pushing every value due at or before it onto `due` (in deadline
    /// order across calls; within one tick in no particular order).
    pub fn advance(&mut self, to: u64, due: &mut Vec<T>) {
        while let Some(t) = self.next_due().filter(|&t| t <= to) {
            self.now = t;
            // Higher levels first: a slot moving down may land in a lower slot that starts now.
            for level in (1..LEVELS).rev() {
                let shift = SLOT_BITS * level as u32;
                if t & ((1u64 << shift) - 1) == 0 {
                    let slot = ((t >> shift) & (SLOTS as u64 - 1)) as usize;
                    self.cascade(level * SLOTS + slot);
                }
            }
            let list = (t & (SLOTS as u64 - 1)) as usize;
            while let Some(&head) = self.heads.get(list).filter(|&&h| h != NONE) {
                self.unlink(head);
                due.push(self.release(head));
            }
        }
        self.now = self.now.max(to);
    }

    /// Re-place every entry of `list` relative to the current tick.
    fn cascade(&mut self, list: usize) {
        while let Some(&head) = self.heads.get(list).filter(|&&h| h != NONE) {
            self.unlink(head);
            self.link(head);
        }
    }

    /// The list (`level * SLOTS + slot`) an entry due at `at` belongs in, now.
    fn list_for(&self, at: u64) -> usize {
        // The first bit group (from the top) in which `at` differs from now picks the level.
        let significant = (self.now ^ at) | (SLOTS as u64 - 1);
        let level = ((63 - significant.leading_zeros()) / SLOT_BITS) as usize;
        let level = level.min(LEVELS - 1);
        let slot = ((at >> (SLOT_BITS * level as u32)) & (SLOTS as u64 - 1)) as usize;
        level * SLOTS + slot
    }

    fn link(&mut self, index: u32) {
        let at = self.slab[index as usize].at;
        let list = self.list_for(at);
        let head = self.heads[list];
        {
            let node = &mut self.slab[index as usize];
            node.prev = NONE;
            node.next = head;
            node.list = list as u16;
        }
        if head != NONE {
            self.slab[head as usize].prev = index;
        }
        self.heads[list] = index;
        self.occupied[list / SLOTS] |= 1 << (list % SLOTS);
    }

    fn unlink(&mut self, index: u32) {
        let (prev, next, list) = {
            let n = &self.slab[index as usize];
            (n.prev, n.next, n.list as usize)
        };
        if prev == NONE {
            self.heads[list] = next;
            if next == NONE {
                self.occupied[list / SLOTS] &= !(1 << (list % SLOTS));
            }
        } else {
            self.slab[prev as usize].next = next;
        }
        if next != NONE {
            self.slab[next as usize].prev = prev;
        }
    }

    /// Take the value out of an unlinked node and put the node on the free list.
    fn release(&mut self, index: u32) -> T {
        let node = &mut self.slab[index as usize];
        node.generation = node.generation.wrapping_add(1);
        self.free.push(index);
        self.len -= 1;
        match node.value.take() {
            Some(v) => v,
            // Only linked nodes are released, and every linked node holds a value.
            None => unreachable!("a linked wheel node without a value"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(w: &mut Wheel<u64>, to: u64) -> Vec<u64> {
        let mut due = Vec::new();
        w.advance(to, &mut due);
        due.sort();
        due
    }

    #[test]
    fn entries_expire_at_their_tick_and_not_before() {
        let mut w = Wheel::new(0);
        for at in [1, 5, 63, 64, 65, 100, 4095, 4096, 4097, 300_000, 20_000_000] {
            w.insert(at, at);
        }
        let mut seen = Vec::new();
        let mut t = 0;
        while let Some(next) = w.next_due() {
            // Stepping to one before the next due tick hands out nothing.
            assert!(drain(&mut w, next - 1).is_empty() || next == 0);
            t = next;
            for v in drain(&mut w, t) {
                assert_eq!(v, t, "due exactly at its tick");
                seen.push(v);
            }
        }
        assert_eq!(seen, vec![1, 5, 63, 64, 65, 100, 4095, 4096, 4097, 300_000, 20_000_000]);
        assert!(w.is_empty());
        assert_eq!(t, 20_000_000);
    }

    #[test]
    fn a_big_jump_hands_out_everything_in_order_of_ticks() {
        let mut w = Wheel::new(7);
        let ats: Vec<u64> = (0..2000u64).map(|i| 8 + (i * 7919) % 1_000_000).collect();
        for &at in &ats {
            w.insert(at, at);
        }
        let mut due = Vec::new();
        w.advance(2_000_000, &mut due);
        let mut sorted = due.clone();
        sorted.sort();
        assert_eq!(due, sorted, "handed out in deadline order");
        assert_eq!(due.len(), ats.len());
        assert_eq!(w.now(), 2_000_000);
    }

    #[test]
    fn removed_entries_never_expire_and_stale_keys_do_nothing() {
        let mut w = Wheel::new(0);
        let a = w.insert(10, 1);
        let b = w.insert(10, 2);
        let c = w.insert(5000, 3);
        assert_eq!(w.remove(b), Some(2));
        assert_eq!(w.remove(b), None, "a key works once");
        assert_eq!(w.remove(c), Some(3));
        assert_eq!(drain(&mut w, 10_000), vec![1]);
        assert_eq!(w.remove(a), None, "expired");
        // The freed node is reused; the old key does not reach the new entry.
        let d = w.insert(20_000, 4);
        assert_eq!(w.remove(a), None);
        assert_eq!(w.remove(d), Some(4));
        assert!(w.is_empty() && w.next_due().is_none());
    }

    #[test]
    fn past_and_far_deadlines_are_clamped() {
        let mut w = Wheel::new(100);
        w.insert(3, 3);
        assert_eq!(w.next_due(), Some(101), "a past deadline is due at the next tick");
        assert_eq!(drain(&mut w, 101), vec![3]);
        w.insert(u64::MAX, 9);
        let mut due = Vec::new();
        w.advance(MAX_SPAN - 1, &mut due);
        assert!(due.is_empty());
        w.advance(MAX_SPAN, &mut due);
        assert_eq!(due, vec![9], "at the end of the span");
    }

    /// Against a simple model: random inserts, removes and advances; every value comes out
    /// exactly at its (clamped) tick, once, unless removed first.
    #[test]
    fn matches_a_sorted_model() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut w = Wheel::new(0);
        let mut model: std::collections::BTreeMap<u64, u64> = Default::default(); // id -> at
        let mut keys: Vec<(u64, Key)> = Vec::new();
        let mut id = 0u64;
        for _ in 0..20_000 {
            match next() % 10 {
                0..=4 => {
                    let span = [3u64, 70, 5000, 300_000, 30_000_000][(next() % 5) as usize];
                    let at = w.now() + next() % span;
                    let at_clamped = at.min(w.now() | MAX_SPAN).max(w.now() + 1);
                    id += 1;
                    keys.push((id, w.insert(at, id)));
                    model.insert(id, at_clamped);
                }
                5 | 6 if !keys.is_empty() => {
                    let (id, key) = keys.swap_remove((next() % keys.len() as u64) as usize);
                    assert_eq!(w.remove(key), model.remove(&id).map(|_| id));
                }
                _ => {
                    let to = w.now() + next() % 100_000;
                    let mut due = Vec::new();
                    w.advance(to, &mut due);
                    let mut want: Vec<u64> = model.iter().filter(|(_, &at)| at <= to).map(|(&id, _)| id).collect();
                    model.retain(|_, at| *at > to);
                    want.sort();
                    due.sort();
                    assert_eq!(due, want);
                }
            }
            assert_eq!(w.len(), model.len());
        }
    }
}
