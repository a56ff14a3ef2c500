//! `UsageLog`: hands every usage record to the spool, one JSON line each.
//!
//! Warm path (once per record). Serialising and the spool's single `write(2)` happen on the
//! caller's thread, so a record is in the spool's page cache before its connection's task goes
//! on; the spool's flusher makes it durable within `usage.fsync_interval`, and the sinks deliver
//! it from there (`delivery.rs`). Nothing is dropped: a record the spool cannot write waits
//! in memory (see `spool.rs`).

use super::record::{ObjectRecord, UsageRecord};
use super::spool::Spool;
use super::Units;
use crate::metrics::Metrics;
use serde::Serialize;
use std::sync::Arc;

/// The way into the spool, shared by every connection.
pub struct UsageLog {
    spool: Arc<Spool>,
    metrics: Metrics,
    /// The units in force: a reload swaps them (`set_units`).
    units: arc_swap::ArcSwap<Units>,
}

impl UsageLog {
    /// Records go to `spool`; `units` are the pricing units connection records carry.
    pub fn new(spool: Arc<Spool>, metrics: Metrics, units: Units) -> UsageLog {
        UsageLog { spool, metrics, units: arc_swap::ArcSwap::from_pointee(units) }
    }

    /// The spool behind this log.
    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// True while records can be made durable (the spool can be written).
    pub fn healthy(&self) -> bool {
        self.spool.healthy()
    }

    /// Append one connection record (counted under `UsageRecord::label`).
    pub fn write(&self, record: &UsageRecord) {
        self.append(record, record.label(), &record.idempotency_key);
    }

    /// The pricing units records carry: those in force when the record is written.
    pub fn units(&self) -> arc_swap::Guard<Arc<Units>> {
        self.units.load()
    }

    /// New pricing units (a reload): every record written from now on carries them, open
    /// connections' next interim and stop records included.
    pub fn set_units(&self, units: Units) {
        self.units.store(Arc::new(units));
    }

    /// Append one rejection summary (counted as kind `rejections`).
    pub fn write_summary(&self, record: &super::record::RejectionSummary) {
        self.append(record, record.record.as_str(), &record.idempotency_key);
    }

    /// Append one object record (counted as kind `object`).
    pub fn write_object(&self, record: &ObjectRecord) {
        self.append(record, record.record.as_str(), &record.idempotency_key);
    }

    fn append<T: Serialize>(&self, record: &T, kind: &str, key: &str) {
        match serde_json::to_vec(record) {
            Ok(line) => {
                self.spool.append(line);
                self.metrics.usage_records.with_label_values(&[kind]).inc();
            }
            Err(e) => {
                // Only a bug can get here (every field serialises); say which record it was.
                tracing::error!(error = %e, key, "cannot serialise a usage record");
                self.metrics.usage_write_errors.with_label_values(&[kind]).inc();
            }
        }
    }
}
