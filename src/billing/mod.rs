//! Billing: the record contract, the pipeline that never loses a usage record, and the units
//! providers price.
//!
//! - `record.rs`: the contract: `UsageRecord` (start, interim, stop), `ObjectRecord`, their kinds
//!   and the connection `Identity` records share (warm path: serialised once per record).
//! - `json.rs`: a connection record's JSON written straight into its spool line, byte for byte
//!   serde_json's (warm path).
//! - `log.rs`: `UsageLog`, the one way into the spool; records are made by `metering` (connection
//!   records) and `objects` (occupancies) and written through it (warm path).
//! - `spool.rs`: append-only segments, fsynced in batches at most every `usage.fsync_interval`
//!   (warm append; background flusher).
//! - `tail.rs`: the newest spooled lines in memory, so sinks that keep up read them without
//!   reading the disk back (warm, pure).
//! - `adopt.rs`: delivers what is left in the spool slot another (exited) process wrote, e.g.
//!   after a binary upgrade (background).
//! - `delivery.rs`: one loop per sink that reads the durable records after its own cursor,
//!   delivers them in batches and advances the cursor only after the sink has them; a segment is
//!   deleted only when every sink's cursor is past it (background).
//! - `sinks/`: file, postgres and http (CloudEvents) sinks (background).
//! - `units.rs`: pricing units computed from a connection's counts (warm, pure).
//! - `report.rs`: reads the file or PostgreSQL sink back and totals usage over a time range
//!   (`weir usage`; cold).

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod adopt;
pub mod delivery;
pub mod json;
pub mod log;
pub mod record;
pub mod report;
pub mod sinks;
pub mod spool;
pub mod tail;
pub mod units;

pub use log::UsageLog;
pub use record::{
    CloseUsage, DirectionUsage, Identity, Name, ObjectRecord, ObjectRef, RecordKind, RejectionSummary, UsageRecord,
};

use crate::relay::scanner::DirectionCounts;
use std::collections::BTreeMap;
use units::{UnitInputs, UnitRule};

/// The billable units computed on every connection record (`billing.units`).
#[derive(Debug, Clone, Default)]
pub struct Units {
    rules: Vec<UnitRule>,
}

impl Units {
    /// Units from the configured rules.
    pub fn new(rules: Vec<UnitRule>) -> Units {
        Units { rules }
    }

    /// True when no unit is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The units of a connection that carried `counts` over `duration_ms` (`active_ms` of it
    /// active), by name; cumulative, like the counts.
    pub fn compute(&self, duration_ms: u64, active_ms: u64, counts: &[DirectionCounts; 2]) -> BTreeMap<String, f64> {
        let inputs = UnitInputs { requests: 1, duration_ms, active_ms, dirs: *counts };
        units::compute(&self.rules, &inputs).into_iter().collect()
    }

    /// The scanner's chunk-size slots these units need.
    pub fn chunks(&self) -> crate::relay::scanner::Chunks {
        units::chunks(&self.rules)
    }
}
