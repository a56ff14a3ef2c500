//! The access log (`access_log:`): one JSON line per ended connection with the fields operators
//! grep for (time, id, client, route, tenant, backend, status, duration, bytes and messages each
//! way, close code, cause), for the usual log pipelines.
//!
//! Warm path: `AccessLog::write` at a connection's end only formats the line and hands it to a
//! bounded queue; a thread of its own (`weir-access-log`) writes the lines to stderr or a file,
//! flushing after each batch, so a slow disk never stalls a connection. A full queue drops the
//! line and counts it (`weir_access_log_dropped_total`): the usage records, not this log, are
//! the billing truth.

pub use crate::config::AccessLogTarget as Target;
use prometheus::IntCounter;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Lines queued at most before new ones are dropped.
pub const QUEUE: usize = 16_384;

/// The writer's end of the access log.
pub struct AccessLog {
    queue: SyncSender<String>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Start the writer thread for `target`; lines dropped on a full queue count in `dropped`.
    pub fn start(target: Target, dropped: IntCounter) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match &target {
            Target::Stderr => Box::new(std::io::stderr()),
            Target::File(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (queue, lines) = sync_channel(QUEUE);
        std::thread::Builder::new().name("weir-access-log".into()).spawn(move || write_lines(lines, out))?;
        Ok(AccessLog { queue, dropped })
    }

    /// Queue one line (a JSON object); dropped and counted when the queue is full.
    pub fn write(&self, line: &serde_json::Value) {
        // Full, or the writer thread is gone: the line is lost either way.
        if self.queue.try_send(line.to_string()).is_err() {
            self.dropped.inc();
        }
    }
}

/// The writer thread: every queued line, then a flush, until the sender is gone.
fn write_lines(lines: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(first) = lines.recv() {
        let mut ok = writeln!(out, "{first}").is_ok();
        while let Ok(more) = lines.try_recv() {
            ok &= writeln!(out, "{more}").is_ok();
        }
        if !(ok && out.flush().is_ok()) {
            // Logged once per batch at most; the usage records are unaffected.
            tracing::warn!("access log: cannot write; lines are lost until it can");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.jsonl");
        let dropped = IntCounter::new("d", "d").unwrap();
        let log = AccessLog::start(Target::File(path.clone()), dropped.clone()).unwrap();
        for i in 0..100 {
            log.write(&serde_json::json!({ "n": i }));
        }
        drop(log);
        let text = (0..200)
            .find_map(|_| {
                let t = std::fs::read_to_string(&path).unwrap_or_default();
                if t.lines().count() == 100 {
                    Some(t)
                } else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    None
                }
            })
            .expect("100 lines written");
        let ns: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, (0..100).collect::<Vec<_>>());
        assert_eq!(dropped.get(), 0);
    }
}
