//! `UsageLog`: appends usage records to the usage file, one JSON line each.
//!
//! Warm path (once per connection end). Each record is one `write(2)` of a whole line on a file
//! opened with `O_APPEND`, under a mutex that is never held across an await, so lines never
//! interleave and a record is in the page cache before its connection's task finishes. A failed
//! write is logged and counted (`weir_usage_write_errors_total`); the durable spool with retries
//! is the billing pipeline's job (a later issue).

use super::record::{ObjectRecord, UsageRecord};
use serde::Serialize;
use crate::metrics::Metrics;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The usage file, shared by every connection.
pub struct UsageLog {
    path: PathBuf,
    file: Mutex<File>,
    metrics: Metrics,
}

impl UsageLog {
    /// Open (create, append) the usage file at `path`.
    pub fn open(path: &Path, metrics: Metrics) -> std::io::Result<UsageLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(UsageLog { path: path.to_path_buf(), file: Mutex::new(file), metrics })
    }

    /// Append one connection record (`kind` labels the counters: `connection` or `rejection`).
    pub fn write(&self, record: &UsageRecord, kind: &str) {
        self.append(record, kind, &record.connection_id);
    }

    /// Append one object record (counted as kind `object`).
    pub fn write_object(&self, record: &ObjectRecord) {
        self.append(record, "object", &record.object_id);
    }

    /// Append any record as one line; `subject` names it in error logs.
    fn append<T: Serialize>(&self, record: &T, kind: &str, subject: &str) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise a usage record");
                self.metrics.usage_write_errors.with_label_values(&[kind]).inc();
                return;
            }
        };
        line.push(b'\n');
        let result = match self.file.lock() {
            Ok(mut f) => f.write_all(&line),
            Err(poisoned) => poisoned.into_inner().write_all(&line),
        };
        match result {
            Ok(()) => self.metrics.usage_records.with_label_values(&[kind]).inc(),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, subject, "cannot write a usage record");
                self.metrics.usage_write_errors.with_label_values(&[kind]).inc();
            }
        }
    }
}
