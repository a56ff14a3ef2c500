//! Metering: one `Meter` per connection, turned into exactly one `UsageRecord` at its end.
//!
//! Warm path (per connection). A `Meter` holds the identity and clocks of a connection: a
//! monotonic `Instant` for the duration and a wall-clock `SystemTime` only for the record's
//! timestamps (never subtracted from each other). `Meter::finish` takes `self`, so a connection
//! cannot be billed twice. `record.rs` defines the record (the README documents its schema);
//! `log.rs` appends records to the usage file.

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod log;
pub mod record;

pub use log::UsageLog;
pub use record::{CloseUsage, DirectionUsage, ObjectRecord, ObjectRef, UsageRecord};

use crate::relay::pump::RelayReport;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

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
    /// Pool name, once routed to a pool.
    pub pool: Option<String>,
    /// Object addressed, once routed to an object namespace.
    pub object: Option<ObjectRef>,
    /// Backend address, once picked.
    pub backend: Option<String>,
    /// Subprotocol the backend chose, if any.
    pub subprotocol: Option<String>,
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
            pool: None,
            object: None,
            backend: None,
            subprotocol: None,
        }
    }

    /// The record of a connection whose handshake failed with `status` for `reason`.
    pub fn rejected(self, status: u16, outcome: &str, reason: &str) -> UsageRecord {
        self.record(status, None, outcome.to_string(), Some(reason.to_string()))
    }

    /// The record of a relayed connection that ended as `report` says.
    pub fn relayed(self, report: &RelayReport) -> UsageRecord {
        let reason = report.violation.map(|(d, v)| format!("{}: {}", d.as_str(), v.as_str()));
        self.record(101, Some(report), report.outcome.as_str().to_string(), reason)
    }

    fn record(self, status: u16, report: Option<&RelayReport>, outcome: String, reason: Option<String>) -> UsageRecord {
        let duration = self.started.elapsed();
        let ended_wall = self.started_wall + duration;
        let dir = |i: usize| report.map(|r| DirectionUsage::from(&r.counts[i])).unwrap_or_default();
        UsageRecord {
            record: "connection".into(),
            connection_id: self.id.to_string(),
            route: self.route,
            pool: self.pool,
            object: self.object,
            backend: self.backend,
            client_addr: self.client.map(|a| a.to_string()),
            started_at: record::rfc3339_ms(self.started_wall),
            ended_at: record::rfc3339_ms(ended_wall),
            duration_ms: duration.as_millis() as u64,
            requests: 1,
            status,
            subprotocol: self.subprotocol,
            client_to_backend: dir(0),
            backend_to_client: dir(1),
            close: report.map(|r| CloseUsage {
                code: r.close_code,
                initiator: r.initiator.as_str().to_string(),
                clean: r.clean,
            }),
            outcome,
            reason,
        }
    }
}
