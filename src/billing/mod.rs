//! Billing: the pipeline that never loses a usage record.
//!
//! `metering` makes the records (start, interim, stop, object); `UsageLog` hands each one to
//! the `spool` (append-only segments, fsynced in batches at most every 200 ms); `delivery` runs one
//! loop per sink that reads the durable records after its own cursor, delivers them in batches
//! and advances the cursor only after the sink has them; `sinks/` holds the sinks (file,
//! postgres, http). A segment is deleted only when every sink's cursor is past it.
//!
//! Paths: `append` is warm (once per record, on the connection's thread); the flusher, the
//! sweeper and the delivery loops are background; `open` is cold.

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod delivery;
pub mod sinks;
pub mod spool;

use crate::metering::UsageRecord;
use std::collections::BTreeMap;

/// The billable units computed on every connection record (`billing.units`).
#[derive(Debug, Clone, Default)]
pub struct Units {}

impl Units {
    /// True when no unit is configured.
    pub fn is_empty(&self) -> bool {
        true
    }

    /// The units of `record` (cumulative, like its counts).
    pub fn compute(&self, _record: &UsageRecord) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }
}
