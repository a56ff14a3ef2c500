//! `ActiveClock`: active time as the union of a window after every event (a relayed data frame, a
//! message an object processed), so overlapping activity is counted once.
//!
//! Warm path (one `touch` per relay wakeup with traffic), sans-io: callers pass the `Instant`.

use std::time::{Duration, Instant};

/// Union of activity windows, accumulated as messages arrive.
#[derive(Debug, Clone, Copy)]
pub struct ActiveClock {
    window: Duration,
    total: Duration,
    until: Option<Instant>,
}

impl ActiveClock {
    /// A clock whose every message keeps the object active for `window`.
    pub fn new(window: Duration) -> ActiveClock {
        ActiveClock { window, total: Duration::ZERO, until: None }
    }

    /// A message was processed at `now`.
    pub fn touch(&mut self, now: Instant) {
        let end = now + self.window;
        match self.until {
            // Overlaps the current window: extend it.
            Some(until) if now < until => self.total += end.saturating_duration_since(until),
            _ => self.total += self.window,
        }
        self.until = Some(self.until.map_or(end, |u| u.max(end)));
    }

    /// The window each message opens.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Active time up to `end` (the part of the last window after `end` is not counted).
    pub fn total_at(&self, end: Instant) -> Duration {
        let overhang = self.until.map_or(Duration::ZERO, |u| u.saturating_duration_since(end));
        self.total.saturating_sub(overhang)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn overlapping_windows_count_once() {
        let t0 = Instant::now();
        let mut c = ActiveClock::new(10 * S);
        c.touch(t0);
        c.touch(t0 + 3 * S); // extends to t0+13
        c.touch(t0 + 2 * S); // inside, earlier end: no change
        assert_eq!(c.total_at(t0 + 100 * S), 13 * S);
        c.touch(t0 + 50 * S); // disjoint: a fresh window
        assert_eq!(c.total_at(t0 + 100 * S), 23 * S);
        // Clipped at the end of the occupancy.
        assert_eq!(c.total_at(t0 + 55 * S), 18 * S);
    }

    #[test]
    fn no_message_no_activity() {
        let t0 = Instant::now();
        assert_eq!(ActiveClock::new(10 * S).total_at(t0 + S), Duration::ZERO);
    }
}
