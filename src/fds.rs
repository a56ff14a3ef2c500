//! File descriptors: the process's limit, how many are open, and the headroom the gateway keeps
//! in reserve (for the admin listener, backend connections, the spool and the sinks), so running
//! out is visible (`weir_open_fds`, `weir_max_fds`, `/readyz` 503) and survivable (new upgrades
//! get 503 before `accept` and `connect` start failing).
//!
//! Start (cold): `raise_limit` raises the soft `RLIMIT_NOFILE` to the hard limit once, at `weir
//! run`, and logs both (a unit's `LimitNOFILE=` or the shell's `ulimit -Hn` is then the only knob).
//!
//! Background: `Sampler`, a service, counts `/proc/self/fd` and reads `/proc/self/limits` every
//! `SAMPLE_INTERVAL` (the limit is read again each time: `prlimit` can change it while weir
//! runs); it also samples the resident memory and the allocator's figures (`heap`). Warm path:
//! `Descriptors::exhausted`, two atomic loads per upgrade. Linux only; where `/proc` is missing
//! the counts stay 0 and nothing is refused.

use crate::heap::{Allocator, HeapGauges};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::IntGauge;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time between two samples of the open descriptors.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// Shortest time between two "descriptor headroom used" warnings.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The descriptor counts, shared by the sampler (writer), the gateway and `/readyz` (readers).
#[derive(Debug)]
pub struct Descriptors {
    /// Descriptors kept in reserve: upgrades are refused once fewer than this many are free.
    reserve: u64,
    /// The soft `RLIMIT_NOFILE` at the last sample (0: unknown).
    max: AtomicU64,
    /// Open descriptors at the last sample.
    open: AtomicU64,
}

impl Descriptors {
    /// Counts that keep `reserve` descriptors free; sampled once now.
    pub fn new(reserve: u64) -> Arc<Descriptors> {
        let d = Arc::new(Descriptors { reserve, max: AtomicU64::new(0), open: AtomicU64::new(0) });
        d.sample();
        if d.max() > 0 && reserve >= d.max() {
            tracing::warn!(
                reserve,
                limit = d.max(),
                "server.fd_reserve is not below the descriptor limit: every upgrade will be refused; raise the limit (LimitNOFILE, ulimit -n) or lower server.fd_reserve"
            );
        }
        d
    }

    /// Count the open descriptors and read the limit again.
    pub fn sample(&self) {
        // Linux 6.2 and later report the number of open descriptors as the size of
        // `/proc/self/fd`: one `stat` instead of listing ~20 000 entries twice a second (that
        // listing was most of an idle instance's CPU). Older kernels report 0: list them then.
        let size = std::fs::metadata("/proc/self/fd").map_or(0, |m| m.len());
        if size > 0 {
            self.open.store(size, Ordering::Relaxed);
        } else if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle itself is one of the entries.
            let open = dir.count().saturating_sub(1) as u64;
            self.open.store(open, Ordering::Relaxed);
        }
        if let Some(max) = soft_limit() {
            self.max.store(max, Ordering::Relaxed);
        }
    }

    /// Open descriptors at the last sample.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// The descriptor limit at the last sample (0: unknown).
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// True when fewer than the reserve are free: new upgrades are refused.
    pub fn exhausted(&self) -> bool {
        let max = self.max();
        max > 0 && self.open() + self.reserve >= max
    }

    /// A line for logs and `/readyz`.
    pub fn describe(&self) -> String {
        format!("{} of {} descriptors open, {} kept in reserve", self.open(), self.max(), self.reserve)
    }
}

/// What `raise_limit` did to `RLIMIT_NOFILE`, descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    /// The soft limit weir started with.
    pub was: u64,
    /// The soft limit now (the hard limit, unless raising failed).
    pub now: u64,
    /// The hard limit (`u64::MAX`: unlimited).
    pub hard: u64,
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (an unlimited hard limit: to
/// `/proc/sys/fs/nr_open`, the most the kernel allows) and log `soft → new soft (hard)`. A
/// failure is logged and leaves the limit as it was; weir runs on with fewer descriptors.
pub fn raise_limit() -> Raised {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let was = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    let target = if hard == u64::MAX {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok());
        nr_open.unwrap_or(was).max(was)
    } else {
        hard
    };
    let mut now = was;
    if target > was {
        match setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: limit.maximum }) {
            Ok(()) => now = target,
            Err(e) => tracing::warn!(
                soft = was,
                hard,
                error = %e,
                "cannot raise the soft descriptor limit (RLIMIT_NOFILE) to the hard one; weir runs with the soft one"
            ),
        }
    }
    tracing::info!(
        soft = was,
        new_soft = now,
        hard,
        "descriptor limit (RLIMIT_NOFILE): {was} → {now} ({hard} hard); raise the hard limit (LimitNOFILE=, ulimit -Hn) to hold more connections"
    );
    Raised { was, now, hard }
}

/// The soft "Max open files" of this process, from `/proc/self/limits`.
fn soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// The background service that samples the counts (and the process's resident memory) and
/// exports them.
pub struct Sampler {
    fds: Arc<Descriptors>,
    open: IntGauge,
    max: IntGauge,
    rss: IntGauge,
    /// The process's allocator: released once, before the second sample (one
    /// `SAMPLE_INTERVAL` after start, for the memory startup used and freed), its decayed pages
    /// given back before every other, and read into `heap` at every sample.
    allocator: Allocator,
    heap: Option<HeapGauges>,
}

impl Sampler {
    /// Sample `fds` into the `open` and `max` gauges, and the resident memory into `rss`.
    pub fn new(fds: Arc<Descriptors>, open: IntGauge, max: IntGauge, rss: IntGauge) -> Sampler {
        Sampler { fds, open, max, rss, allocator: Allocator::NONE, heap: None }
    }

    /// Release `allocator`'s freed pages once, one `SAMPLE_INTERVAL` after start, before that
    /// sample, and its decayed ones before every other; export its figures to `heap` at every
    /// sample.
    pub fn with_allocator(self, allocator: Allocator, heap: HeapGauges) -> Sampler {
        Sampler { allocator, heap: Some(heap), ..self }
    }
}

/// The process's resident memory, bytes, from `VmRSS` in `/proc/self/status`.
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: i64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

#[async_trait]
impl BackgroundService for Sampler {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let mut was_exhausted = false;
        // When the last "headroom used" warning was logged: repeated at most every WARN_INTERVAL
        // while the reserve stays in use (or the count flaps around it).
        let mut warned: Option<Instant> = None;
        // Samples taken so far.
        let mut taken = 0u32;
        loop {
            let fds = self.fds.clone();
            // Once, after start: everything startup freed; then what decayed since the last pass.
            let release = if taken == 1 { self.allocator.release } else { self.allocator.decay };
            let stats = self.allocator.stats;
            // Reading /proc (and releasing memory) are blocking calls: off the service's runtime
            // thread.
            let heap = tokio::task::spawn_blocking(move || {
                release();
                fds.sample();
                stats()
            })
            .await;
            if let (Some(gauges), Ok(Some(heap))) = (&self.heap, heap) {
                gauges.set(heap);
            }
            taken = taken.saturating_add(1);
            self.open.set(self.fds.open() as i64);
            self.max.set(self.fds.max() as i64);
            if let Some(rss) = resident_bytes() {
                self.rss.set(rss);
            }
            let exhausted = self.fds.exhausted();
            if exhausted && warned.is_none_or(|at| at.elapsed() >= WARN_INTERVAL) {
                tracing::warn!(state = %self.fds.describe(), "descriptor headroom used: new upgrades get 503 (descriptors_exhausted) and /readyz 503 until descriptors are free again; raise the hard RLIMIT_NOFILE (LimitNOFILE=) to hold more (README, \"Descriptors\")");
                warned = Some(Instant::now());
            } else if !exhausted && was_exhausted {
                tracing::info!(state = %self.fds.describe(), "descriptors free again: upgrades accepted");
            }
            was_exhausted = exhausted;
            tokio::time::sleep(SAMPLE_INTERVAL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_this_process() {
        let d = Descriptors::new(0);
        assert!(d.open() >= 3, "stdin, stdout, stderr at least: {}", d.describe());
        assert!(d.max() >= d.open());
        let files: Vec<_> = (0..10).map(|_| std::fs::File::open("/proc/self/limits").unwrap()).collect();
        d.sample();
        assert!(d.open() >= 13, "{}", d.describe());
        // Both ways of counting agree (other test threads may open files meanwhile: a margin).
        let listed = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64 - 1;
        assert!(d.open().abs_diff(listed) <= 8, "stat says {}, the listing {listed}", d.open());
        drop(files);
        assert!(!d.exhausted());
        let tight = Descriptors::new(d.max());
        assert!(tight.exhausted(), "{}", tight.describe());
    }
}
