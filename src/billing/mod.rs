//! Billing: the pipeline that never loses a usage record, and the units providers price.
//!
//! `metering` makes the records (start, interim, stop, object); `UsageLog` adds the pricing
//! units (`units.rs`) and hands each record to the `spool` (append-only segments, fsynced in
//! batches at most every 200 ms); `delivery` runs one loop per sink that reads the durable records
//! after its own cursor, delivers them in batches and advances the cursor only after the sink has
//! them; `sinks/` holds the sinks (file, postgres, http). A segment is deleted only when every
//! sink's cursor is past it.
//!
//! Paths: `append` and `units::compute` are warm (once per record, on the connection's thread);
//! the flusher, the sweeper and the delivery loops are background; `open` is cold.

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod delivery;
pub mod sinks;
pub mod spool;
pub mod units;

use crate::metering::UsageRecord;
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

    /// The units of `record` (cumulative, like its counts), by name.
    pub fn compute(&self, record: &UsageRecord, chunked: [[u64; 4]; 2]) -> BTreeMap<String, f64> {
        let dir = |d: &crate::metering::DirectionUsage, chunked: [u64; 4]| DirectionCounts {
            frames: d.frames,
            messages: d.messages,
            payload_bytes: d.payload_bytes,
            wire_bytes: d.wire_bytes,
            pings: d.pings,
            pongs: d.pongs,
            largest_message_bytes: d.largest_message_bytes,
            chunked,
            ..Default::default()
        };
        let inputs = UnitInputs {
            requests: record.requests,
            duration_ms: record.duration_ms,
            active_ms: record.active_ms,
            dirs: [dir(&record.client_to_backend, chunked[0]), dir(&record.backend_to_client, chunked[1])],
        };
        units::compute(&self.rules, &inputs).into_iter().collect()
    }
}
