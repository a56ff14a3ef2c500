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
//!
//! A spooled line that is not a record (it fails its checksum, does not parse, or is a fragment:
//! see "Damage" in `spool.rs`) never reaches a sink: the loop that meets it first moves it to the
//! spool's quarantine file, counts it (`weir_spool_quarantined_total`) and logs it, once per line
//! whichever sinks meet it; every loop then steps over it and goes on with the next record.

use super::sinks::{self, Sink};
use super::spool::{Bad, Cursor, Spool, MAX_RECORD, QUARANTINE_FILE};
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
        // What opening the spool moved to quarantine (a torn last record) counts too.
        metrics.spool_quarantined.inc_by(spool.take_quarantined_on_open());
        // From the first scrape on, not only once the gauge loop runs: a 0 would read as
        // "billing blocked" to an alert.
        metrics.spool_healthy.set(i64::from(spool.healthy()));
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
                if let Some(free) = spool.disk_free() {
                    metrics.spool_disk_free.set(i64::try_from(free).unwrap_or(i64::MAX));
                }
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
                    quarantined: m.spool_quarantined.clone(),
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
                        Step::Delivered { records, .. } => delivered += records,
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
    /// Delivered `records` records and stepped over `lines` spool lines (those and the damaged
    /// ones, which were quarantined).
    Delivered { records: u64, lines: u64 },
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
    quarantined: IntCounter,
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
                Step::Delivered { lines, .. } => {
                    done += lines as i64;
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

    /// Deliver the next batch of durable records, if any, quarantining the damaged lines in it.
    async fn step(&mut self) -> Step {
        let batch = match self.spool.read(self.cursor.offset, self.batch, MAX_RECORD) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, "cannot read the spool");
                return Step::Failed;
            }
        };
        for bad in &batch.bad {
            if let Err(e) = self.quarantine(bad) {
                self.failed(&format!("cannot write the spool's quarantine file: {e}"));
                return Step::Failed;
            }
        }
        if batch.next <= self.cursor.offset {
            self.lag.set(0.0);
            return Step::CaughtUp;
        }
        let lines = batch.lines as u64;
        let Some(first) = batch.records.get(0) else {
            // Only damaged lines, all in quarantine: step over them.
            self.advance(batch.next);
            return Step::Delivered { records: 0, lines };
        };
        self.lag.set(age_of(first));
        let records = batch.records.len() as u64;
        match self.sink.deliver(batch.records).await {
            Ok(()) => {
                self.advance(batch.next);
                self.delivered.inc_by(records);
                if std::mem::take(&mut self.failing) {
                    tracing::info!(sink = %self.name, "usage sink delivers again");
                }
                Step::Delivered { records, lines }
            }
            Err(e) => {
                self.failed(&e);
                Step::Failed
            }
        }
    }

    /// Count and log a failed step (logged when the sink starts failing, not on every retry).
    fn failed(&mut self, e: &str) {
        self.errors.inc();
        if !std::mem::replace(&mut self.failing, true) {
            tracing::warn!(sink = %self.name, error = %e, "usage sink failed; retrying with backoff (nothing is dropped)");
        } else {
            tracing::debug!(sink = %self.name, error = %e, "usage sink still failing");
        }
    }

    /// Move the cursor to `next`, persist it, and delete the segments every sink is past.
    fn advance(&mut self, next: u64) {
        if let Err(e) = self.cursor.advance(next) {
            tracing::error!(sink = %self.name, error = %e, "cannot persist the sink cursor; these records may be delivered again");
        }
        self.release(next);
    }

    /// Move `bad` to the spool's quarantine file; counted and logged only by the first loop to
    /// meet it (in this process or an earlier one).
    fn quarantine(&self, bad: &Bad) -> std::io::Result<()> {
        if self.spool.quarantine(bad)? {
            self.quarantined.inc();
            tracing::warn!(
                sink = %self.name,
                offset = bad.offset,
                len = bad.len,
                reason = %bad.reason,
                file = %self.spool.dir().join(QUARANTINE_FILE).display(),
                "spool: quarantined a damaged record; no sink gets it, delivery goes on with the next one"
            );
        }
        Ok(())
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
    /// The one field read (borrowed: nothing else of the record is built).
    #[derive(serde::Deserialize)]
    struct At<'a> {
        #[serde(borrow)]
        at: Option<std::borrow::Cow<'a, str>>,
    }
    let at =
        serde_json::from_slice::<At<'_>>(line).ok().and_then(|r| r.at.and_then(|s| humantime::parse_rfc3339(&s).ok()));
    at.and_then(|t| SystemTime::now().duration_since(t).ok()).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SinkKind;
    use std::path::Path;

    fn file_sink(name: &str, dir: &Path) -> SinkConfig {
        let path = dir.join(format!("{name}.jsonl"));
        SinkConfig {
            name: name.into(),
            batch: 2,
            kind: SinkKind::File { path, rotate_bytes: 1 << 30, rotate_interval: Duration::from_secs(3600) },
        }
    }

    /// A record's age comes from its `at` alone; anything unreadable is age 0.
    #[test]
    fn a_record_s_age_is_read_from_its_at() {
        let at = crate::billing::record::rfc3339_ms(SystemTime::now() - Duration::from_secs(90));
        let line = format!(r#"{{"record":"stop","units":{{"a":1.5}},"at":"{at}","close":null}}"#);
        let age = age_of(line.as_bytes());
        assert!((89.0..100.0).contains(&age), "{age}");
        for bad in [&br#"{"at":null}"#[..], br#"{"record":"stop"}"#, br#"{"at":"yesterday"}"#, b"not json", b""] {
            assert_eq!(age_of(bad), 0.0, "{}", String::from_utf8_lossy(bad));
        }
    }

    fn record(n: u64) -> Vec<u8> {
        format!(r#"{{"record":"stop","idempotency_key":"c:{n}","at":"2026-11-22T10:00:00.000Z"}}"#).into_bytes()
    }

    /// Item 11: a damaged record is quarantined once, every sink gets every other record (exactly
    /// the bytes appended), and a batch of nothing but damage is stepped over.
    #[test]
    fn a_damaged_record_is_quarantined_once_and_every_sink_goes_on() {
        let d = tempfile::tempdir().unwrap();
        let spool_dir = d.path().join("spool");
        let spool = Spool::open(&spool_dir).unwrap();
        for n in 0..6 {
            spool.append(record(n));
        }
        spool.flush();
        // Damage records 2 and 3: a batch (of 2) holds nothing else.
        let seg = spool_dir.join(format!("seg-{:020}.jsonl", 0));
        let mut bytes = std::fs::read(&seg).unwrap();
        let line = bytes.iter().position(|&c| c == b'\n').unwrap() + 1;
        bytes[2 * line + line / 2] ^= 1;
        bytes[3 * line + line / 2] ^= 1;
        std::fs::write(&seg, &bytes).unwrap();
        // Found by the next process (this one would deliver its records from memory).
        drop(spool);
        let spool = Spool::open(&spool_dir).unwrap();
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let sinks = vec![file_sink("a", d.path()), file_sink("b", d.path())];
        let delivery = Delivery::new(spool.clone(), sinks, metrics.clone());
        assert_eq!(delivery.deliver_remaining(Duration::from_secs(10)), 8);
        let want: String =
            [0, 1, 4, 5].iter().map(|&n| format!("{}\n", String::from_utf8(record(n)).unwrap())).collect();
        for sink in ["a", "b"] {
            assert_eq!(std::fs::read_to_string(d.path().join(format!("{sink}.jsonl"))).unwrap(), want, "{sink}");
            assert_eq!(Cursor::load(&spool_dir, sink, 0).offset, spool.written(), "{sink} is past the damage");
        }
        assert_eq!(metrics.spool_quarantined.get(), 2, "each damaged record counted once");
        let quarantine = std::fs::read_to_string(spool_dir.join(QUARANTINE_FILE)).unwrap();
        assert_eq!(quarantine.lines().count(), 2, "{quarantine}");
        // A second round (a restart) meets nothing new.
        assert_eq!(
            Delivery::new(spool, vec![file_sink("a", d.path())], metrics.clone())
                .deliver_remaining(Duration::from_secs(10)),
            0
        );
        assert_eq!(metrics.spool_quarantined.get(), 2);
    }
}
