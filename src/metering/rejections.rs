//! Rejection records under load: every rejected request is billing evidence, but a flood of bad
//! requests from one address must not grow the spool and the sinks without bound. Each client
//! address gets `usage.rejections_per_client` records per `usage.rejection_window`; beyond that
//! its rejections are counted, and when the window ends one `rejections` summary record carries
//! the count (by status). Nothing is dropped: records plus summaries add up to every rejection.
//!
//! Warm path: `admit`, once per rejection, under one mutex (rejections are not the fast path).
//! Background: `due`, from the interim sweeper, writes the summaries of ended windows; `server`
//! writes the open ones at exit (`due` with `force`). Memory is bounded: at most
//! `MAX_TRACKED` addresses are tracked at once; beyond that, new addresses share one catch-all
//! window (`client_ip: null`).

use crate::billing::record::rfc3339_ms;
use crate::billing::{RecordKind, RejectionSummary};
use crate::sync::lock;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most client addresses tracked at once (about 100 bytes each).
pub const MAX_TRACKED: usize = 10_000;

/// One address's current window.
struct Window {
    started: Instant,
    started_wall: SystemTime,
    recorded: u64,
    summarised: u64,
    by_status: BTreeMap<u16, u64>,
}

/// The per-address limiter of rejection records.
pub struct Rejections {
    per_client: u64,
    window: Duration,
    /// `None` is the catch-all of addresses beyond `MAX_TRACKED` (and of unknown addresses).
    windows: Mutex<HashMap<Option<IpAddr>, Window>>,
}

impl Rejections {
    /// `per_client` records per address and `window` (0: every rejection gets a record).
    pub fn new(per_client: u64, window: Duration) -> Rejections {
        Rejections { per_client, window, windows: Mutex::new(HashMap::new()) }
    }

    /// A rejection with `status` from `client` at `now`: true when it gets a record of its own,
    /// false when it is counted for the window's summary.
    pub fn admit(&self, client: Option<IpAddr>, status: u16, now: Instant) -> bool {
        if self.per_client == 0 {
            return true;
        }
        let mut windows = lock(&self.windows);
        let key = if client.is_some() && (windows.len() < MAX_TRACKED || windows.contains_key(&client)) {
            client
        } else {
            None
        };
        let w = windows.entry(key).or_insert_with(|| Window {
            started: now,
            started_wall: SystemTime::now(),
            recorded: 0,
            summarised: 0,
            by_status: BTreeMap::new(),
        });
        if w.recorded < self.per_client {
            w.recorded += 1;
            true
        } else {
            w.summarised += 1;
            *w.by_status.entry(status).or_default() += 1;
            false
        }
    }

    /// The summaries of windows that ended by `now` (every window when `force`), and those
    /// windows forgotten. Windows without a summarised rejection end without a record.
    pub fn due(&self, now: Instant, force: bool) -> Vec<RejectionSummary> {
        let mut windows = lock(&self.windows);
        let ended: Vec<Option<IpAddr>> = windows
            .iter()
            .filter(|(_, w)| force || now.saturating_duration_since(w.started) >= self.window)
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::new();
        for key in ended {
            let Some(w) = windows.remove(&key) else { continue };
            if w.summarised == 0 {
                continue;
            }
            let ended_wall = w.started_wall + now.saturating_duration_since(w.started);
            let started_at = rfc3339_ms(w.started_wall);
            let ended_at = rfc3339_ms(ended_wall);
            let start_ms = w.started_wall.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
            let ip = key.map(|ip| ip.to_string());
            out.push(RejectionSummary {
                record: RecordKind::Rejections,
                idempotency_key: format!("rejections:{}:{start_ms}", ip.as_deref().unwrap_or("*")),
                at: ended_at.clone(),
                client_ip: ip,
                started_at,
                ended_at,
                recorded: w.recorded,
                summarised: w.summarised,
                by_status: w.by_status,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_up_to_the_limit_then_one_summary_per_window_that_adds_up() {
        let r = Rejections::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let a: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let b: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        let admitted: Vec<bool> = (0..10).map(|i| r.admit(a, if i % 2 == 0 { 400 } else { 404 }, t0)).collect();
        assert_eq!(admitted.iter().filter(|x| **x).count(), 3);
        assert!(r.admit(b, 400, t0), "another address has its own window");
        assert!(r.due(t0 + Duration::from_secs(9), false).is_empty(), "not over yet");
        let due = r.due(t0 + Duration::from_secs(10), false);
        assert_eq!(due.len(), 1, "b's window had nothing summarised");
        let s = &due[0];
        assert_eq!((s.client_ip.as_deref(), s.recorded, s.summarised), (Some("10.0.0.1"), 3, 7));
        assert_eq!(s.by_status.values().sum::<u64>(), 7);
        assert_eq!(s.by_status.get(&400), Some(&3));
        assert!(r.admit(a, 400, t0 + Duration::from_secs(11)), "a new window");
    }

    #[test]
    fn zero_means_a_record_each_and_force_flushes_open_windows() {
        let r = Rejections::new(0, Duration::from_secs(10));
        assert!((0..100).all(|_| r.admit(None, 400, Instant::now())));
        let r = Rejections::new(1, Duration::from_secs(3600));
        let t0 = Instant::now();
        r.admit(None, 400, t0);
        r.admit(None, 400, t0);
        assert_eq!(r.due(t0, true).len(), 1);
        assert!(r.due(t0, true).is_empty(), "flushed once");
    }

    #[test]
    fn tracked_addresses_are_bounded() {
        let r = Rejections::new(1, Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 500) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            r.admit(Some(ip), 400, t0);
            r.admit(Some(ip), 400, t0);
        }
        assert!(lock(&r.windows).len() <= MAX_TRACKED + 1);
        let due = r.due(t0, true);
        let total: u64 = due.iter().map(|s| s.recorded + s.summarised).sum();
        assert_eq!(total, 2 * (MAX_TRACKED as u64 + 500), "every rejection counted once");
    }
}
