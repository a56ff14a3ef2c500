//! `ActiveClock`: active time as the union of a window after every event (a relayed data frame, a
//! message an object processed), so overlapping activity is counted once.
//!
//! Warm path (one `touch` per relay wakeup with traffic), sans-io: callers pass the `Instant`.

use crate::relay::mono;
use std::time::{Duration, Instant};

/// Union of activity windows, accumulated as messages arrive. 16 bytes (every open connection
/// keeps one): the window is its owner's (`touch` is given it), the times are nanoseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActiveClock {
    /// Active time so far, nanoseconds (the part of the last window still to come included).
    total: u64,
    /// When the last window ends (`relay::mono::nanos`); 0 before the first message.
    until: u64,
}

impl ActiveClock {
    /// A clock that has seen no message.
    pub fn new() -> ActiveClock {
        ActiveClock::default()
    }

    /// A message was processed at `now`: it keeps the owner active for `window`.
    pub fn touch(&mut self, now: Instant, window: Duration) {
        let window = mono::nanos_in(window);
        let now = mono::nanos(now);
        let end = now.saturating_add(window);
        let added = match self.until {
            // Overlaps the current window: extend it.
            until if until != 0 && now < until => end.saturating_sub(until),
            _ => window,
        };
        self.total = self.total.saturating_add(added);
        self.until = self.until.max(end);
    }

    /// Active time up to `end` (the part of the last window after `end` is not counted).
    pub fn total_at(&self, end: Instant) -> Duration {
        let overhang = self.until.saturating_sub(mono::nanos(end));
        Duration::from_nanos(self.total.saturating_sub(overhang))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn overlapping_windows_count_once() {
        // The epoch first (as at a process's start): an instant before it reads as 0, which
        // made this test fail when it ran before any other had touched the epoch.
        mono::now();
        let t0 = Instant::now();
        let mut c = ActiveClock::new();
        c.touch(t0, 10 * S);
        c.touch(t0 + 3 * S, 10 * S); // extends to t0+13
        c.touch(t0 + 2 * S, 10 * S); // inside, earlier end: no change
        assert_eq!(c.total_at(t0 + 100 * S), 13 * S);
        c.touch(t0 + 50 * S, 10 * S); // disjoint: a fresh window
        assert_eq!(c.total_at(t0 + 100 * S), 23 * S);
        // Clipped at the end of the occupancy.
        assert_eq!(c.total_at(t0 + 55 * S), 18 * S);
    }

    #[test]
    fn no_message_no_activity() {
        let t0 = Instant::now();
        assert_eq!(ActiveClock::new().total_at(t0 + S), Duration::ZERO);
    }
}
