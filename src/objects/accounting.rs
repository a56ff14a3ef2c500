//! Object accounting the way Durable Objects bill it: per object, the time it had at least one
//! connection, and its active time (time in which it processed a message), shared by all of its
//! sockets.
//!
//! Warm path: `Occupancy::touch` runs once per relay wakeup that carried a message (and once per
//! message in built-in objects), under the object's own small mutex; the rest runs once per
//! connection. Sans-io: every method takes the `Instant` it happens at, so unit tests drive time.
//!
//! Active time is the union of windows `[t, t + idle_window)` over every message time `t`, on any
//! socket of the object, clipped to the occupancy: two sockets talking at once are billed once.

use crate::billing::record::{rfc3339_ms, ObjectRecord, RecordKind};
use crate::metering::clock::ActiveClock;
use crate::relay::scanner::DirectionCounts;
use std::time::{Duration, Instant, SystemTime};

/// One object's occupancy: from its first connection to the moment it became empty.
#[derive(Debug)]
pub struct Occupancy {
    since: Instant,
    since_wall: SystemTime,
    /// Host that served the object (`host:port` as configured, or `builtin:<kind>`).
    pub host: String,
    /// Tenant of the route that placed it.
    pub tenant: Option<String>,
    active: ActiveClock,
    /// How long each message keeps the object active.
    idle_window: Duration,
    connections: u64,
    live: usize,
    peak: usize,
    counts: [DirectionCounts; 2],
    moved: bool,
}

impl Occupancy {
    /// An occupancy starting at `now` on `host`.
    pub fn new(host: String, tenant: Option<String>, idle_window: Duration, now: Instant) -> Occupancy {
        Occupancy {
            since: now,
            since_wall: SystemTime::now(),
            host,
            tenant,
            active: ActiveClock::new(),
            idle_window,
            connections: 0,
            live: 0,
            peak: 0,
            counts: Default::default(),
            moved: false,
        }
    }

    /// When the occupancy began: monotonic and wall clock.
    pub fn since(&self) -> (Instant, SystemTime) {
        (self.since, self.since_wall)
    }

    /// A message was processed at `now`.
    pub fn touch(&mut self, now: Instant) {
        self.active.touch(now, self.idle_window);
    }

    /// A connection to the object was established (its 101 was sent).
    pub fn connected(&mut self) {
        self.connections += 1;
        self.live += 1;
        self.peak = self.peak.max(self.live);
    }

    /// An established connection ended having carried `counts` (`[client→object, object→client]`).
    pub fn disconnected(&mut self, counts: &[DirectionCounts; 2]) {
        self.live = self.live.saturating_sub(1);
        for (total, c) in self.counts.iter_mut().zip(counts) {
            total.frames += c.frames;
            total.messages += c.messages;
            total.payload_bytes += c.payload_bytes;
            total.wire_bytes += c.wire_bytes;
        }
    }

    /// The object's host failed and its connections were closed with 1012.
    pub fn mark_moved(&mut self) {
        self.moved = true;
    }

    /// True if at least one connection was established (only those occupancies are billed).
    pub fn billable(&self) -> bool {
        self.connections > 0
    }

    /// The object usage record of this occupancy, which ended at `end`.
    pub fn record(&self, namespace: &str, id: &str, end: Instant) -> ObjectRecord {
        let connected = end.saturating_duration_since(self.since);
        let started_at = rfc3339_ms(self.since_wall);
        let ended_at = rfc3339_ms(self.since_wall + connected);
        ObjectRecord {
            record: RecordKind::Object,
            idempotency_key: format!("object:{namespace}:{id}:{started_at}"),
            at: ended_at.clone(),
            tenant: self.tenant.clone(),
            namespace: namespace.into(),
            object_id: id.into(),
            host: self.host.clone(),
            started_at,
            ended_at,
            connected_ms: connected.as_millis() as u64,
            active_ms: self.active.total_at(end).min(connected).as_millis() as u64,
            idle_window_ms: self.idle_window.as_millis() as u64,
            connections: self.connections,
            peak_connections: self.peak as u64,
            messages_in: self.counts[0].messages,
            messages_out: self.counts[1].messages,
            payload_bytes_in: self.counts[0].payload_bytes,
            payload_bytes_out: self.counts[1].payload_bytes,
            moved: self.moved,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn record_sums_connections_and_clips_active_time() {
        let t0 = Instant::now();
        let mut o = Occupancy::new("builtin:room".into(), None, 10 * S, t0);
        assert!(!o.billable());
        o.connected();
        o.connected();
        o.touch(t0 + S);
        let a = DirectionCounts { messages: 2, payload_bytes: 10, frames: 3, ..Default::default() };
        let b = DirectionCounts { messages: 5, payload_bytes: 50, frames: 6, ..Default::default() };
        o.disconnected(&[a, b]);
        o.connected();
        o.disconnected(&[a, a]);
        o.disconnected(&[b, b]);
        let r = o.record("rooms", "lobby", t0 + 4 * S);
        assert_eq!((r.connections, r.peak_connections), (3, 2));
        assert_eq!((r.messages_in, r.messages_out), (9, 12));
        assert_eq!((r.payload_bytes_in, r.payload_bytes_out), (70, 110));
        assert_eq!(r.connected_ms, 4000);
        assert_eq!(r.active_ms, 3000, "window from t0+1s clipped at t0+4s");
        assert!(o.billable() && !r.moved);
    }
}
