//! Today's usage per tenant, in memory, for the admin status page (`GET /api/summary`): a small
//! bounded tally of the connections that ended since UTC midnight, to which a query adds the
//! open connections' counts so far.
//!
//! Warm path: `LiveSet::end` adds each ended connection's `stop` record totals once (under the
//! tally's mutex, while it takes the connection out of the live registry), and a query copies the
//! tally and snapshots the open connections under the same mutex, so every connection is counted
//! exactly once: either as ended (its stop record) or as open (its counts so far), never both.
//! A connection is counted on the UTC day it ends (while open, on today).
//!
//! Bounded: at most `MAX_TENANTS` tenants get a row of their own each day; the usage of further
//! tenants is summed into one `other` row. The tally resets at the first add or query after UTC
//! midnight. It is not the bill: the usage records are.

use crate::billing::UsageRecord;
use crate::relay::scanner::DirectionCounts;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// Tenants with a row of their own per day; the rest are summed into `other` (about 100 bytes
/// per row: at most ~100 KiB).
pub const MAX_TENANTS: usize = 1000;

/// Seconds in a UTC day.
const DAY_SECONDS: u64 = 86_400;

/// One tenant's usage so far today.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Connections (ended today, or open), in connections.
    pub connections: u64,
    /// Sum of the connections' lifetimes, in milliseconds.
    pub connection_ms: u64,
    /// Complete data messages, both directions, in messages.
    pub messages: u64,
    /// Bytes on the wire from clients to backends, in bytes.
    pub client_to_backend_bytes: u64,
    /// Bytes on the wire from backends to clients, in bytes.
    pub backend_to_client_bytes: u64,
}

impl Usage {
    /// Add one connection that lasted `lifetime` and carried `counts` (`[client → backend,
    /// backend → client]`).
    pub fn add(&mut self, lifetime: Duration, messages: u64, bytes: [u64; 2]) {
        self.connections += 1;
        self.connection_ms = self.connection_ms.saturating_add(lifetime.as_millis() as u64);
        self.messages = self.messages.saturating_add(messages);
        self.client_to_backend_bytes = self.client_to_backend_bytes.saturating_add(bytes[0]);
        self.backend_to_client_bytes = self.backend_to_client_bytes.saturating_add(bytes[1]);
    }

    /// Add an open connection `lifetime` old with `counts` so far.
    pub fn add_open(&mut self, lifetime: Duration, counts: &[DirectionCounts; 2]) {
        self.add(lifetime, counts[0].messages + counts[1].messages, [counts[0].wire_bytes, counts[1].wire_bytes]);
    }

    /// As JSON (`tenant` is null for connections without one).
    pub fn json(&self, tenant: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "tenant": tenant,
            "connections": self.connections,
            "connection_seconds": self.connection_ms as f64 / 1000.0,
            "messages": self.messages,
            "client_to_backend_bytes": self.client_to_backend_bytes,
            "backend_to_client_bytes": self.backend_to_client_bytes,
        })
    }
}

/// The tally of one UTC day.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// The UTC day, in days since 1970-01-01.
    pub day: u64,
    /// Usage by tenant, at most `MAX_TENANTS` rows.
    pub tenants: HashMap<String, Usage>,
    /// Connections without a tenant.
    pub untenanted: Usage,
    /// Tenants beyond `MAX_TENANTS`, summed.
    pub other: Usage,
}

impl Tally {
    /// An empty tally for the UTC day of `now`.
    pub fn new(now: SystemTime) -> Tally {
        Tally { day: day_of(now), ..Tally::default() }
    }

    /// Start over if `now` is on a later UTC day.
    pub fn roll(&mut self, now: SystemTime) {
        let day = day_of(now);
        if day != self.day {
            *self = Tally { day, ..Tally::default() };
        }
    }

    /// The row of `tenant` (or `other` once `MAX_TENANTS` rows exist).
    pub fn row(&mut self, tenant: Option<&str>) -> &mut Usage {
        let Some(tenant) = tenant else { return &mut self.untenanted };
        if !self.tenants.contains_key(tenant) {
            if self.tenants.len() >= MAX_TENANTS {
                return &mut self.other;
            }
            self.tenants.insert(tenant.to_string(), Usage::default());
        }
        match self.tenants.get_mut(tenant) {
            Some(row) => row,
            None => &mut self.other,
        }
    }

    /// Add the totals of an ended connection's `stop` record.
    pub fn add_stop(&mut self, stop: &UsageRecord) {
        let (up, down) = (&stop.client_to_backend, &stop.backend_to_client);
        self.row(stop.identity.tenant.as_deref()).add(
            Duration::from_millis(stop.duration_ms),
            up.messages + down.messages,
            [up.wire_bytes, down.wire_bytes],
        );
    }

    /// The date (`YYYY-MM-DD`, UTC) of the tally.
    pub fn date(&self) -> String {
        let (y, m, d) = super::quota::civil_from_days(i64::try_from(self.day).unwrap_or(0));
        format!("{y:04}-{m:02}-{d:02}")
    }

    /// As JSON: the date, a row per tenant (most connection-seconds first; tenant null for
    /// connections without one), `other` (null when no tenant overflowed) and the bound.
    pub fn json(&self) -> serde_json::Value {
        let mut rows: Vec<(Option<&str>, &Usage)> = self.tenants.iter().map(|(t, u)| (Some(t.as_str()), u)).collect();
        if self.untenanted.connections > 0 {
            rows.push((None, &self.untenanted));
        }
        rows.sort_by(|a, b| b.1.connection_ms.cmp(&a.1.connection_ms).then_with(|| a.0.cmp(&b.0)));
        let tenants: Vec<serde_json::Value> = rows.into_iter().map(|(t, u)| u.json(t)).collect();
        let other = (self.other.connections > 0).then(|| self.other.json(Some(super::quota::OTHER)));
        serde_json::json!({"date": self.date(), "tenants": tenants, "other": other, "max_tenants": MAX_TENANTS})
    }
}

/// The UTC day of `t`, in days since 1970-01-01 (0 before it).
fn day_of(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() / DAY_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_bounded_and_the_rest_goes_to_other() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(20_000 * DAY_SECONDS + 5);
        let mut t = Tally::new(now);
        for i in 0..MAX_TENANTS + 10 {
            t.row(Some(&format!("t{i}"))).add(Duration::from_secs(1), 2, [3, 4]);
        }
        t.row(Some("t0")).add(Duration::from_secs(1), 0, [0, 0]);
        assert_eq!(t.tenants.len(), MAX_TENANTS);
        assert_eq!(t.tenants["t0"].connections, 2, "known tenants keep their row");
        assert_eq!((t.other.connections, t.other.messages, t.other.backend_to_client_bytes), (10, 20, 40));
        let j = t.json();
        assert_eq!(j["date"], "2024-10-04");
        assert_eq!(j["other"]["tenant"], "other");
        assert_eq!(j["tenants"][0]["tenant"], "t0", "most connection-seconds first");
    }

    #[test]
    fn it_resets_at_utc_midnight() {
        let day = 20_000 * DAY_SECONDS;
        let mut t = Tally::new(SystemTime::UNIX_EPOCH + Duration::from_secs(day + DAY_SECONDS - 1));
        t.row(None).add(Duration::from_millis(1500), 1, [1, 1]);
        t.roll(SystemTime::UNIX_EPOCH + Duration::from_secs(day + DAY_SECONDS - 1));
        assert_eq!(t.untenanted.connection_ms, 1500, "same day");
        assert_eq!(t.json()["tenants"][0]["tenant"], serde_json::Value::Null);
        t.roll(SystemTime::UNIX_EPOCH + Duration::from_secs(day + DAY_SECONDS));
        assert_eq!(t.untenanted, Usage::default());
        assert_eq!(t.json()["other"], serde_json::Value::Null);
    }
}
