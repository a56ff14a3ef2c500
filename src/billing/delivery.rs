//! Delivery: one loop per sink, reading durable records after the sink's cursor and delivering
//! them in batches; the cursor moves (and is persisted) only after the sink said `Ok`.
//!
//! Background path, on a Pingora background service of its own. A failed batch is counted,
//! logged (once when a sink starts failing, once when it recovers) and retried with exponential
//! backoff (100 ms doubling to 10 s) until it goes through: delivery is at-least-once, and with
//! idempotency keys effectively once. Shutdown does not stop delivery: what is left when the
//! process exits is delivered at the next start. After every delivery the segments every sink
//! has are deleted.

use super::sinks::{self, Sink};
use super::spool::{Cursor, Spool, MAX_RECORD};
use crate::config::Sink as SinkConfig;
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// First retry delay after a failed batch.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Every sink's delivery loop.
pub struct Delivery {
    spool: Arc<Spool>,
    sinks: Vec<SinkConfig>,
    metrics: Metrics,
    /// Each sink's delivered offset, for releasing segments.
    cursors: Arc<Mutex<HashMap<String, u64>>>,
}

impl Delivery {
    /// Deliveries from `spool` to `sinks`.
    pub fn new(spool: Arc<Spool>, sinks: Vec<SinkConfig>, metrics: Metrics) -> Delivery {
        Delivery { spool, sinks, metrics, cursors: Arc::default() }
    }
}

#[async_trait]
impl BackgroundService for Delivery {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let first = self.spool.first_offset();
        let mut loops = Vec::new();
        for config in &self.sinks {
            let cursor = Cursor::load(self.spool.dir(), &config.name, first);
            crate::sync::lock(&self.cursors).insert(config.name.clone(), cursor.offset);
            let run = SinkLoop {
                name: config.name.clone(),
                batch: config.batch,
                sink: sinks::build(config),
                spool: self.spool.clone(),
                cursor,
                cursors: self.cursors.clone(),
                metrics: self.metrics.clone(),
            };
            loops.push(tokio::spawn(run.run()));
        }
        let spool = self.spool.clone();
        let metrics = self.metrics.clone();
        loops.push(tokio::spawn(async move {
            loop {
                metrics.spool_bytes.set(spool.bytes_on_disk() as i64);
                metrics.spool_waiting.set(spool.backlog_len() as i64);
                metrics.spool_healthy.set(i64::from(spool.healthy()));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
        for l in loops {
            let _ = l.await;
        }
    }
}

struct SinkLoop {
    name: String,
    batch: usize,
    sink: Box<dyn Sink>,
    spool: Arc<Spool>,
    cursor: Cursor,
    cursors: Arc<Mutex<HashMap<String, u64>>>,
    metrics: Metrics,
}

impl SinkLoop {
    async fn run(mut self) {
        let mut durable = self.spool.durable();
        let mut backoff = BACKOFF_MIN;
        let mut failing = false;
        let delivered = self.metrics.sink_delivered.with_label_values(&[&self.name]);
        let errors = self.metrics.sink_errors.with_label_values(&[&self.name]);
        let lag = self.metrics.sink_lag.with_label_values(&[&self.name]);
        let pending = self.metrics.sink_pending.with_label_values(&[&self.name]);
        // Records between the cursor and the end at start, plus what is appended from now on.
        let base = self.spool.count_from(self.cursor.offset) as i64 - self.spool.appended() as i64;
        let mut done: i64 = 0;
        loop {
            pending.set((base + self.spool.appended() as i64 - done).max(0));
            let read = self.spool.read(self.cursor.offset, self.batch, MAX_RECORD);
            let (lines, next) = match read {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(sink = %self.name, error = %e, "cannot read the spool");
                    tokio::time::sleep(BACKOFF_MAX).await;
                    continue;
                }
            };
            if lines.is_empty() {
                lag.set(0.0);
                // Wake when more becomes durable (at most every fsync interval).
                if durable.changed().await.is_err() {
                    return;
                }
                continue;
            }
            lag.set(age_of(&lines[0]));
            match self.sink.deliver(&lines).await {
                Ok(()) => {
                    if let Err(e) = self.cursor.advance(next) {
                        tracing::error!(sink = %self.name, error = %e, "cannot persist the sink cursor; these records may be delivered again");
                    }
                    done += lines.len() as i64;
                    delivered.inc_by(lines.len() as u64);
                    if failing {
                        tracing::info!(sink = %self.name, "usage sink delivers again");
                        failing = false;
                    }
                    backoff = BACKOFF_MIN;
                    self.release(next);
                }
                Err(e) => {
                    errors.inc();
                    if !failing {
                        tracing::warn!(sink = %self.name, error = %e, "usage sink failed; retrying with backoff (nothing is dropped)");
                        failing = true;
                    } else {
                        tracing::debug!(sink = %self.name, error = %e, "usage sink still failing");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn release(&self, offset: u64) {
        let min = {
            let mut c = crate::sync::lock(&self.cursors);
            c.insert(self.name.clone(), offset);
            c.values().copied().min().unwrap_or(0)
        };
        if let Err(e) = self.spool.release(min) {
            tracing::warn!(error = %e, "cannot delete delivered spool segments");
        }
    }
}

/// Seconds since the record in `line` was made (0 if it has no readable `at`).
fn age_of(line: &[u8]) -> f64 {
    let at = serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["at"].as_str().and_then(|s| humantime::parse_rfc3339(s).ok()));
    at.and_then(|t| SystemTime::now().duration_since(t).ok()).map_or(0.0, |d| d.as_secs_f64())
}
