//! `Adopter`: delivers what is left in the spool slot this process does not write (see the
//! spool's "One writer per spool, two slots"), once no other process holds it: the records of
//! an old process after a binary upgrade, or of one that stopped before its sinks took
//! everything.
//!
//! Background: every `EVERY` it looks at the other slot's files (no lock, no fsync); only when
//! some sink lacks records there does it take the slot's lock (failing at once while its writer
//! runs) and deliver what the sinks take within `WINDOW`, then let the slot go.

use super::delivery::Delivery;
use super::spool::{has_undelivered, Spool};
use crate::config::Sink as SinkConfig;
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::path::PathBuf;
use std::time::Duration;

/// How often the other slot is looked at.
const EVERY: Duration = Duration::from_secs(1);
/// Longest one adoption delivers before it lets the slot go (and tries again later).
const WINDOW: Duration = Duration::from_secs(30);

/// Delivers the records left in the spool slot at `dir`.
pub struct Adopter {
    /// The other slot.
    pub dir: PathBuf,
    /// Where records go (the same sinks as this process's own spool).
    pub sinks: Vec<SinkConfig>,
    /// Delivery metrics.
    pub metrics: Metrics,
}

impl Adopter {
    /// Deliver what is left in the slot if no process writes it; returns the records delivered.
    pub fn adopt_once(&self) -> u64 {
        let names: Vec<&str> = self.sinks.iter().map(|s| s.name.as_str()).collect();
        if !has_undelivered(&self.dir, &names) {
            return 0;
        }
        let spool = match Spool::open(&self.dir) {
            Ok(s) => s,
            // Its writer still runs (an upgrade in progress): its own delivery has it.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return 0,
            Err(e) => {
                tracing::warn!(slot = %self.dir.display(), error = %e, "cannot open the other spool slot to deliver what is left in it");
                return 0;
            }
        };
        let delivered = Delivery::new(spool, self.sinks.clone(), self.metrics.clone()).deliver_remaining(WINDOW);
        tracing::info!(slot = %self.dir.display(), delivered, "delivered records left in the other spool slot");
        delivered
    }
}

#[async_trait]
impl BackgroundService for Adopter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = shutdown.changed() => return,
            }
            let me = Adopter { dir: self.dir.clone(), sinks: self.sinks.clone(), metrics: self.metrics.clone() };
            // Opening a spool and the delivery's own runtime block: off this runtime's thread.
            let _ = tokio::task::spawn_blocking(move || me.adopt_once()).await;
        }
    }
}
