//! The live-connection registry and the one sweeper that writes every `interim` record.
//!
//! Warm path: `begin` at the 101 (registers the connection and writes its `start`), `end` at its
//! end (deregisters it and writes its `stop`). Hot path: `Live::observe`, once per relay wakeup
//! that moved bytes, stores the cumulative counts and touches the active-time clock under the
//! connection's own uncontended mutex. Background: `sweep`, run by one thread every second
//! (never a timer per connection), writes an `interim` for each connection whose interval is
//! due, with the cumulative counts so far and the next sequence number.
//!
//! Sequence numbers are taken under the connection's mutex, and `end` marks the connection ended
//! under the same mutex, so a connection's records are numbered 0, 1, … without gaps and no
//! `interim` follows its `stop`.

use super::clock::ActiveClock;
use super::{Meter, Progress, RecordKind, UsageLog, UsageRecord};
use crate::relay::pump::RelayReport;
use crate::relay::scanner::DirectionCounts;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Shards of the registry (connections spread by id, so begin/end rarely contend).
const SHARDS: usize = 16;

/// One relayed connection while it is open.
pub struct Live {
    /// Its identity (fixed after the 101).
    pub meter: Meter,
    state: Mutex<LiveState>,
}

struct LiveState {
    counts: [DirectionCounts; 2],
    active: ActiveClock,
    /// Data frames seen at the last `observe` (for the active clock).
    data_frames: u64,
    last_seq: u64,
    next_interim: Instant,
    ended: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Live {
    /// The relay's counts after a wakeup that moved bytes.
    pub fn observe(&self, counts: [&DirectionCounts; 2]) {
        let mut s = lock(&self.state);
        let frames = counts[0].data_frames + counts[1].data_frames;
        if frames != s.data_frames {
            s.data_frames = frames;
            s.active.touch(Instant::now());
        }
        s.counts = [*counts[0], *counts[1]];
    }
}

/// Every open relayed connection, and what `interim` records need.
pub struct LiveSet {
    shards: Vec<Mutex<HashMap<uuid::Uuid, Arc<Live>>>>,
    interval: Duration,
    idle_threshold: Duration,
    usage: Arc<UsageLog>,
}

impl LiveSet {
    /// A registry writing `interim` records every `interval` to `usage`; traffic keeps a
    /// connection active for `idle_threshold`.
    pub fn new(interval: Duration, idle_threshold: Duration, usage: Arc<UsageLog>) -> LiveSet {
        LiveSet { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), interval, idle_threshold, usage }
    }

    fn shard(&self, id: &uuid::Uuid) -> &Mutex<HashMap<uuid::Uuid, Arc<Live>>> {
        let i = id.as_u128() as usize % SHARDS;
        &self.shards[i % self.shards.len()]
    }

    /// A connection got its 101: register it and write its `start` record.
    pub fn begin(&self, meter: Meter) -> Arc<Live> {
        let none = [DirectionCounts::default(); 2];
        let start = meter.snapshot(RecordKind::Start, 0, Progress { counts: &none, active: Duration::ZERO });
        let live = Arc::new(Live {
            state: Mutex::new(LiveState {
                counts: none,
                active: ActiveClock::new(self.idle_threshold),
                data_frames: 0,
                last_seq: 0,
                next_interim: meter.started() + self.interval,
                ended: false,
            }),
            meter,
        });
        lock(self.shard(&live.meter.id)).insert(live.meter.id, live.clone());
        self.usage.write(&start, "start");
        live
    }

    /// A connection ended as `report` says: deregister it and return its `stop` record (the
    /// caller adds what it knows and writes it).
    pub fn end(&self, live: &Live, report: &RelayReport) -> UsageRecord {
        lock(self.shard(&live.meter.id)).remove(&live.meter.id);
        let mut s = lock(&live.state);
        s.ended = true;
        s.last_seq += 1;
        let active = s.active.total_at(Instant::now());
        live.meter.relayed(s.last_seq, report, active)
    }

    /// Write an `interim` for every connection whose interval is due at `now`; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut written = 0;
        for shard in &self.shards {
            let due: Vec<Arc<Live>> = lock(shard).values().filter(|l| lock(&l.state).next_interim <= now).cloned().collect();
            for live in due {
                let record = {
                    let mut s = lock(&live.state);
                    if s.ended {
                        continue;
                    }
                    s.last_seq += 1;
                    // The next one is due one interval later, never in a burst after a stall.
                    s.next_interim = (s.next_interim + self.interval).max(now);
                    let active = s.active.total_at(now);
                    live.meter.snapshot(RecordKind::Interim, s.last_seq, Progress { counts: &s.counts, active })
                };
                self.usage.write(&record, "interim");
                written += 1;
            }
        }
        written
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Run the sweeper on a thread of its own, once a second (or every interval, if shorter).
    pub fn start_sweeper(self: &Arc<Self>) {
        let set = self.clone();
        let tick = self.interval.min(Duration::from_secs(1));
        let spawned = std::thread::Builder::new().name("weir-interim".into()).spawn(move || loop {
            std::thread::sleep(tick);
            set.sweep(Instant::now());
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the interim-record sweeper; only start and stop records will be written");
        }
    }
}
