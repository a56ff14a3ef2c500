//! The process's allocator as the server sees it: `Allocator`, what `main.rs` lets the server
//! do with it (give freed pages back, read its figures), so the library does not depend on
//! which allocator the binary links; and `HeapGauges`, where its figures are exported.
//!
//! Background only: `fds::Sampler` calls `Allocator::release` once after start, and
//! `Allocator::decay` and `Allocator::stats` (into the gauges) every `fds::SAMPLE_INTERVAL`.
//! Nothing here is on a connection's path.

use prometheus::IntGauge;

/// The allocator's own figures at one moment, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes in the blocks the program holds now (jemalloc `stats.allocated`), bytes: what the
    /// program's data takes, each block rounded up to its size class.
    pub allocated: u64,
    /// Bytes in the allocator's pages that hold blocks (`stats.active`), bytes: `allocated`
    /// plus the free slots of partly used pages.
    pub active: u64,
    /// Bytes the allocator keeps resident (`stats.resident`), bytes: `active` plus its own
    /// metadata and freed pages not yet given back to the kernel.
    pub resident: u64,
}

/// What the server may ask of the process's allocator (supplied by `main.rs`).
#[derive(Debug, Clone, Copy)]
pub struct Allocator {
    /// Gives every freed page the allocator holds back to the kernel now.
    pub release: fn(),
    /// Gives back the freed pages the allocator's decay has let go of by now (jemalloc's
    /// background thread does it too, but sleeps up to a whole decay time while fewer than
    /// 1 024 pages per arena wait: what a burst of handshakes freed stayed resident a second
    /// or more after it).
    pub decay: fn(),
    /// The allocator's figures now (`None` when it keeps none).
    pub stats: fn() -> Option<HeapStats>,
}

impl Allocator {
    /// An allocator the server can do nothing with (tests, other binaries).
    pub const NONE: Allocator = Allocator { release: || {}, decay: || {}, stats: || None };
}

/// The gauges `HeapStats` are exported to (`weir_heap_*_bytes`).
#[derive(Clone)]
pub struct HeapGauges {
    /// `HeapStats::allocated`, bytes.
    pub allocated: IntGauge,
    /// `HeapStats::active`, bytes.
    pub active: IntGauge,
    /// `HeapStats::resident`, bytes.
    pub resident: IntGauge,
}

impl HeapGauges {
    /// Sets the gauges to `stats`.
    pub fn set(&self, stats: HeapStats) {
        let gauge = |g: &IntGauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        gauge(&self.allocated, stats.allocated);
        gauge(&self.active, stats.active);
        gauge(&self.resident, stats.resident);
    }
}
