//! Delivery: one loop per sink, reading durable records after the sink's cursor and delivering
//! them in batches; the cursor moves (and is persisted) only after the sink said `Ok`.
//!
//! Background path, on a Pingora background service of its own. A failed batch is counted,
//! logged (once when a sink starts failing, once when it recovers) and retried with exponential
//! backoff (100 ms doubling to 10 s) until it goes through: delivery is at-least-once, and with
//! idempotency keys effectively once. Shutdown does not stop delivery: the loops go on while
//! connections drain, and after every service stopped `deliver_remaining` delivers what is left
//! (bounded in time); what a sink still has not taken is delivered at the next start. After every
//! delivery the segments every sink has are deleted.

use super::sinks::{self, Sink};
use super::spool::{Cursor, Spool, MAX_RECORD};
use crate::config::Sink as SinkConfig;
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::{Gauge, IntCounter, IntGauge};
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
        let mut loops: Vec<_> = self.sink_loops().into_iter().map(|l| tokio::spawn(l.run())).collect();
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

impl Delivery {
    /// One delivery loop per sink, each from its persisted cursor.
    fn sink_loops(&self) -> Vec<SinkLoop> {
        let first = self.spool.first_offset();
        self.sinks
            .iter()
            .map(|config| {
                let cursor = Cursor::load(self.spool.dir(), &config.name, first);
                crate::sync::lock(&self.cursors).insert(config.name.clone(), cursor.offset);
                let m = &self.metrics;
                let name = config.name.as_str();
                SinkLoop {
                    name: config.name.clone(),
                    batch: config.batch,
                    sink: sinks::build(config),
                    spool: self.spool.clone(),
                    cursor,
                    cursors: self.cursors.clone(),
                    delivered: m.sink_delivered.with_label_values(&[name]),
                    errors: m.sink_errors.with_label_values(&[name]),
                    lag: m.sink_lag.with_label_values(&[name]),
                    pending: m.sink_pending.with_label_values(&[name]),
                    failing: false,
                }
            })
            .collect()
    }

    /// The last delivery, after every service has stopped (`server::run`): deliver what is
    /// durable to every sink that takes it within `within` in all, on a runtime of its own.
    /// A sink that fails keeps the rest for the next start. Returns the records delivered.
    pub fn deliver_remaining(&self, within: Duration) -> u64 {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the final delivery; records stay in the spool for the next start");
                return 0;
            }
        };
        let loops = self.sink_loops();
        runtime.block_on(async move {
            let all = loops.into_iter().map(|mut l| async move {
                let mut delivered = 0;
                loop {
                    match l.step().await {
                        Step::Delivered(n) => delivered += n,
                        Step::CaughtUp => return delivered,
                        Step::Failed => {
                            tracing::warn!(sink = %l.name, "final delivery failed; the rest stays in the spool for the next start");
                            return delivered;
                        }
                    }
                }
            });
            let all = futures_util::future::join_all(all);
            match tokio::time::timeout(within, all).await {
                Ok(counts) => counts.into_iter().sum(),
                Err(_) => {
                    tracing::warn!(?within, "final delivery did not finish; the rest stays in the spool for the next start");
                    0
                }
            }
        })
    }
}

/// What one delivery step did.
enum Step {
    /// Delivered this many records.
    Delivered(u64),
    /// Nothing durable is left to deliver.
    CaughtUp,
    /// Reading the spool or delivering failed.
    Failed,
}

struct SinkLoop {
    name: String,
    batch: usize,
    sink: Box<dyn Sink>,
    spool: Arc<Spool>,
    cursor: Cursor,
    cursors: Arc<Mutex<HashMap<String, u64>>>,
    delivered: IntCounter,
    errors: IntCounter,
    lag: Gauge,
    pending: IntGauge,
    /// The last step failed (logged once when a sink starts failing, once when it recovers).
    failing: bool,
}

impl SinkLoop {
    /// Deliver forever: a batch whenever records are durable, with backoff after a failure.
    async fn run(mut self) {
        let mut durable = self.spool.durable();
        let mut backoff = BACKOFF_MIN;
        // Records between the cursor and the end at start, plus what is appended from now on.
        let base = self.spool.count_from(self.cursor.offset) as i64 - self.spool.appended() as i64;
        let mut done: i64 = 0;
        loop {
            self.pending.set((base + self.spool.appended() as i64 - done).max(0));
            match self.step().await {
                Step::Delivered(n) => {
                    done += n as i64;
                    backoff = BACKOFF_MIN;
                }
                Step::CaughtUp => {
                    // Wake when more becomes durable (at most every fsync interval).
                    if durable.changed().await.is_err() {
                        return;
                    }
                }
                Step::Failed => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Deliver the next batch of durable records, if any.
    async fn step(&mut self) -> Step {
        let (lines, next) = match self.spool.read(self.cursor.offset, self.batch, MAX_RECORD) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, "cannot read the spool");
                return Step::Failed;
            }
        };
        let Some(first) = lines.first() else {
            self.lag.set(0.0);
            return Step::CaughtUp;
        };
        self.lag.set(age_of(first));
        match self.sink.deliver(&lines).await {
            Ok(()) => {
                if let Err(e) = self.cursor.advance(next) {
                    tracing::error!(sink = %self.name, error = %e, "cannot persist the sink cursor; these records may be delivered again");
                }
                self.delivered.inc_by(lines.len() as u64);
                if std::mem::take(&mut self.failing) {
                    tracing::info!(sink = %self.name, "usage sink delivers again");
                }
                self.release(next);
                Step::Delivered(lines.len() as u64)
            }
            Err(e) => {
                self.errors.inc();
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(sink = %self.name, error = %e, "usage sink failed; retrying with backoff (nothing is dropped)");
                } else {
                    tracing::debug!(sink = %self.name, error = %e, "usage sink still failing");
                }
                Step::Failed
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
