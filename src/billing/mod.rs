//! Billing: the pipeline that never loses a usage record, and the units providers price.
//!
//! `metering` makes the records (start, interim, stop, object); `UsageLog` adds the pricing
//! units (`units.rs`) and hands each record to the `spool` (append-only segments, fsynced in
//! batches at most every 200 ms); `delivery` runs one loop per sink that reads the durable records
//! after its own cursor, delivers them in batches and advances the cursor only after the sink has
//! them; `sinks/` holds the sinks (file, postgres, http). A segment is deleted only when every
//! sink's cursor is past it. `report` reads the file or PostgreSQL sink back and totals usage
//! over a time range (`weir usage`).
//!
//! Paths: `append` and `units::compute` are warm (once per record, on the connection's thread);
//! the flusher, the sweeper and the delivery loops are background; `open` and `report` are cold.

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod delivery;
pub mod report;
pub mod sinks;
pub mod spool;
pub mod units;

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
