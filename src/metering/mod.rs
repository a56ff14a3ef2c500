//! Metering: one `Meter` per connection; its records are `start` (at the 101), `interim` (every
//! `usage.interim_interval`, from one shared sweeper) and `stop` (at the end), each with a
//! sequence number, the cumulative counts so far and an idempotency key (`<connection>:<seq>`).
//!
//! Warm path (per connection). A `Meter` holds the identity and clocks of a connection: a
//! monotonic `Instant` for the duration and a wall-clock `SystemTime` only for the record's
//! timestamps (never subtracted from each other). `live.rs` keeps the relayed connections and
//! runs the sweeper; `clock.rs` measures active time; `record.rs` defines the records (the README
//! documents their schema); `log.rs` hands records to the spool.

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod clock;
pub mod live;
pub mod log;
pub mod record;

pub use log::UsageLog;
pub use record::{CloseUsage, DirectionUsage, ObjectRecord, ObjectRef, RecordKind, UsageRecord};

use crate::relay::pump::RelayReport;
use crate::relay::scanner::DirectionCounts;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

/// Identity and clocks of one connection, from the first byte of its request to its end.
#[derive(Debug)]
pub struct Meter {
    /// Sortable unique id (UUIDv7), also sent to the backend as `X-Weir-Connection-Id`.
    pub id: uuid::Uuid,
    started: Instant,
    started_wall: SystemTime,
    /// Client address.
    pub client: Option<SocketAddr>,
    /// Route name, once routed.
    pub route: Option<String>,
    /// Tenant the route bills to, once routed.
    pub tenant: Option<String>,
    /// Pool name, once routed to a pool.
    pub pool: Option<String>,
    /// Object addressed, once routed to an object namespace.
    pub object: Option<ObjectRef>,
    /// Backend address, once picked.
    pub backend: Option<String>,
    /// Subprotocol the backend chose, if any.
    pub subprotocol: Option<String>,
}

/// What a connection carried so far: counts per direction and its active time.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// `[client → backend, backend → client]`.
    pub counts: &'a [DirectionCounts; 2],
    /// Time with traffic so far (see `clock::ActiveClock`).
    pub active: Duration,
}

impl Meter {
    /// Start metering a connection from `client` now.
    pub fn start(client: Option<SocketAddr>) -> Meter {
        Meter {
            id: uuid::Uuid::now_v7(),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            client,
            route: None,
            tenant: None,
            pool: None,
            object: None,
            backend: None,
            subprotocol: None,
        }
    }

    /// When metering started (monotonic).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The only record of a connection whose handshake failed with `status` for `reason`.
    pub fn rejected(self, status: u16, outcome: &str, reason: &str) -> UsageRecord {
        let none = [DirectionCounts::default(); 2];
        let progress = Progress { counts: &none, active: Duration::ZERO };
        let mut r = self.snapshot(RecordKind::Stop, 0, progress);
        r.status = status;
        r.outcome = outcome.to_string();
        r.reason = Some(reason.to_string());
        r
    }

    /// The `stop` record (sequence `seq`) of a relayed connection that ended as `report` says.
    pub fn relayed(&self, seq: u64, report: &RelayReport, active: Duration) -> UsageRecord {
        let mut r = self.snapshot(RecordKind::Stop, seq, Progress { counts: &report.counts, active });
        r.close = Some(CloseUsage {
            code: report.close_code,
            initiator: report.initiator.as_str().to_string(),
            clean: report.clean,
        });
        r.outcome = report.outcome.as_str().to_string();
        r.reason = report.violation.map(|(d, v)| format!("{}: {}", d.as_str(), v.as_str()));
        r
    }

    /// A record of kind `kind` with sequence `seq` and the cumulative `progress` so far.
    pub fn snapshot(&self, kind: RecordKind, seq: u64, progress: Progress<'_>) -> UsageRecord {
        let duration = self.started.elapsed();
        let now_wall = self.started_wall + duration;
        let active = progress.active.min(duration);
        let connection_id = self.id.to_string();
        UsageRecord {
            record: kind.as_str().to_string(),
            idempotency_key: format!("{connection_id}:{seq}"),
            seq,
            at: record::rfc3339_ms(now_wall),
            connection_id,
            tenant: self.tenant.clone(),
            route: self.route.clone(),
            pool: self.pool.clone(),
            object: self.object.clone(),
            backend: self.backend.clone(),
            client_addr: self.client.map(|a| a.to_string()),
            started_at: record::rfc3339_ms(self.started_wall),
            ended_at: (kind == RecordKind::Stop).then(|| record::rfc3339_ms(now_wall)),
            duration_ms: duration.as_millis() as u64,
            active_ms: active.as_millis() as u64,
            idle_ms: (duration.as_millis() - active.as_millis()) as u64,
            requests: 1,
            status: 101,
            subprotocol: self.subprotocol.clone(),
            client_to_backend: DirectionUsage::from(&progress.counts[0]),
            backend_to_client: DirectionUsage::from(&progress.counts[1]),
            close: None,
            outcome: if kind == RecordKind::Stop { String::new() } else { "open".into() },
            reason: None,
            units: Default::default(),
        }
    }
}
