//! `UsageLog`: hands every usage record to the spool, one JSON line each.
//!
//! Warm path (once per record). The record is serialised on the caller's thread straight into
//! its spool line (`frame_into`; connection records by `json.rs`, the others by serde_json), in
//! a per-thread buffer that is reused, so a record costs no allocation, and its counter is a
//! handle resolved once (issue 14). The spool writes it together
//! with the other records of the same scheduler pass, once that pass is over
//! (`Spool::append_line`); its flusher makes it durable within `usage.fsync_interval`, and the
//! sinks deliver it from there (`delivery.rs`). Nothing is dropped: a record the spool cannot
//! write waits in memory (see `spool.rs`).

use super::record::{ObjectRecord, UsageRecord};
use super::spool::Spool;
use super::Units;
use crate::metrics::Metrics;
use prometheus::IntCounter;
use std::cell::RefCell;
use std::sync::Arc;

/// Bytes a record's line buffer starts with (a stop record's line is about 700).
const LINE_CAPACITY: usize = 2048;

thread_local! {
    /// The spool line being built on this thread (cleared, never shrunk below its capacity).
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(LINE_CAPACITY));
}

/// The record kinds `weir_usage_records_total` counts (its `kind` label).
const KINDS: [&str; 6] = ["start", "interim", "stop", "rejection", "object", "rejections"];

/// The way into the spool, shared by every connection.
pub struct UsageLog {
    spool: Arc<Spool>,
    metrics: Metrics,
    /// The units in force: a reload swaps them (`set_units`).
    units: arc_swap::ArcSwap<Units>,
    /// `weir_usage_records_total{kind}` for each of `KINDS`, resolved once.
    written: [IntCounter; KINDS.len()],
}

impl UsageLog {
    /// Records go to `spool`; `units` are the pricing units connection records carry.
    pub fn new(spool: Arc<Spool>, metrics: Metrics, units: Units) -> UsageLog {
        let written = KINDS.map(|k| metrics.usage_records.with_label_values(&[k]));
        UsageLog { spool, metrics, units: arc_swap::ArcSwap::from_pointee(units), written }
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
        self.append(record.label(), &record.idempotency_key, |buf| {
            super::json::write_usage(buf, record);
            Ok(())
        });
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
        self.append(record.record.as_str(), &record.idempotency_key, |buf| serde_json::to_writer(buf, record));
    }

    /// Append one object record (counted as kind `object`).
    pub fn write_object(&self, record: &ObjectRecord) {
        self.append(record.record.as_str(), &record.idempotency_key, |buf| serde_json::to_writer(buf, record));
    }

    /// Append the record `json` writes (its JSON, without a newline) as one spool line.
    fn append(&self, kind: &str, key: &dyn std::fmt::Display, json: impl Fn(&mut Vec<u8>) -> serde_json::Result<()>) {
        let encode = |line: &mut Vec<u8>| {
            line.clear();
            super::spool::frame_into(line, &json)
        };
        let framed = LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => encode(&mut line).map(|()| {
                self.spool.append_line(&line);
                if line.capacity() > 4 * LINE_CAPACITY {
                    // One huge record does not keep its buffer alive on this thread.
                    *line = Vec::with_capacity(LINE_CAPACITY);
                }
            }),
            // Not expected (nothing here re-enters); a buffer of its own then.
            Err(_) => {
                let mut line = Vec::with_capacity(LINE_CAPACITY);
                encode(&mut line).map(|()| self.spool.append_line(&line))
            }
        });
        match framed {
            Ok(()) => match KINDS.iter().position(|k| *k == kind) {
                Some(i) => self.written[i].inc(),
                None => self.metrics.usage_records.with_label_values(&[kind]).inc(),
            },
            Err(e) => {
                // Only a bug can get here (every field serialises); say which record it was.
                tracing::error!(error = %e, key = %key, "cannot serialise a usage record");
                self.metrics.usage_write_errors.with_label_values(&[kind]).inc();
            }
        }
    }
}
