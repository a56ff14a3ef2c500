//! Monotonic instants in 8 bytes: nanoseconds after the process's one epoch (the first use of
//! this module), for state every open connection keeps, where an `Instant` takes 16 bytes
//! (README "Idle cost"), and the time base the timers' and the live set's ticks count from.
//! Leaf; any path.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// The process's epoch: the first instant anything was converted.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `t` as nanoseconds after the epoch (0 for an instant before it, saturated at 584 years).
pub fn nanos(t: Instant) -> u64 {
    nanos_in(t.saturating_duration_since(*EPOCH))
}

/// `d` in nanoseconds (saturated at 584 years).
pub fn nanos_in(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The instant `n` nanoseconds after the epoch.
pub fn instant(n: u64) -> Instant {
    *EPOCH + Duration::from_nanos(n)
}

/// The tick `t` falls in, counting ticks of length `tick` from the epoch (rounded down): the
/// timers' and the interim wheel's clock.
pub fn ticks(t: Instant, tick: Duration) -> u64 {
    ticks_of(nanos(t), tick)
}

/// The tick the instant `n` nanoseconds after the epoch falls in (`ticks` for an instant already
/// converted).
pub fn ticks_of(n: u64, tick: Duration) -> u64 {
    n / nanos_in(tick)
}

/// The instant tick `n` (of length `tick`, counted from the epoch) starts.
pub fn tick_start(n: u64, tick: Duration) -> Instant {
    instant(n.saturating_mul(nanos_in(tick)))
}

/// Now, as nanoseconds after the epoch.
pub fn now() -> u64 {
    nanos(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_survives_the_round_trip() {
        let t = Instant::now() + Duration::from_millis(5);
        assert_eq!(instant(nanos(t)), t);
        assert!(now() < nanos(t));
        assert_eq!(nanos_in(Duration::from_millis(3)), 3_000_000);
        assert_eq!(nanos_in(Duration::MAX), u64::MAX);
        let tick = Duration::from_millis(10);
        let n = ticks(t, tick);
        assert!(tick_start(n, tick) <= t && t < tick_start(n + 1, tick), "t lies in its tick");
    }
}
