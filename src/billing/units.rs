//! Pricing units: the billable quantities of one connection, computed from its raw counts as
//! `billing.units` in the config says (README, "Pricing units").
//!
//! A unit is a named sum of terms; a term is one quantity divided by `per`, and a message count
//! may be counted per message in chunks (`chunk: 32768`: each message counts
//! `max(1, ceil(len / 32768))`). The sum is kept as is or rounded up (`round: up`).
//!
//! Warm path, pure: no I/O, no clock, no panics. Every input is monotonic over a connection, so
//! [`compute`] on the cumulative counts at any moment gives the units so far.
//!
//! Per-message quantisation cannot be recovered from totals, so the frame scanner counts it:
//! [`chunks`] gives the `ScanPolicy::chunks` layout for a rule set, and each chunked term reads
//! `DirectionCounts::chunked[slot]` of its direction. Validation (`config/validate.rs`) gives
//! every distinct chunk size its slot (at most 4).

pub use crate::config::{ChunkSlot, Quantity, Rounding, UnitRule, UnitTerm};
use crate::relay::scanner::{Chunks, DirectionCounts};

/// Everything a unit can count, for one connection (or one object occupancy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitInputs {
    /// HTTP requests on the connection (1: the upgrade), in requests.
    pub requests: u64,
    /// Connection lifetime, in milliseconds.
    pub duration_ms: u64,
    /// Active time (union of idle windows after messages; 0 where not tracked), in milliseconds.
    pub active_ms: u64,
    /// Counts per direction: `[client → backend ("in"), backend → client ("out")]`, the order
    /// of `Direction::index`; `chunked` must come from scanners given [`chunks`] of the rules.
    pub dirs: [DirectionCounts; 2],
}

/// Every unit of `rules`, in rule order: `(name, value)`, the value in the unit's own terms
/// (a whole number under `round: up`, possibly fractional otherwise).
#[must_use]
pub fn compute(rules: &[UnitRule], inputs: &UnitInputs) -> Vec<(String, f64)> {
    rules.iter().map(|rule| (rule.name.clone(), value(rule, inputs))).collect()
}

/// The value of one unit: the sum of its terms, rounded as the rule says.
#[must_use]
pub fn value(rule: &UnitRule, inputs: &UnitInputs) -> f64 {
    let sum: f64 = rule.terms.iter().map(|term| raw(term, inputs) as f64 / term.per).sum();
    match rule.round {
        Rounding::None => sum,
        Rounding::Up => ceil_whole(sum, rule.terms.len()),
    }
}

/// A term's quantity before division by `per`: a count, bytes, or milliseconds for times; for a
/// chunked message term, the direction's chunk count of the term's slot.
#[must_use]
pub fn raw(term: &UnitTerm, inputs: &UnitInputs) -> u64 {
    let [client, backend] = &inputs.dirs;
    let messages = |d: &DirectionCounts| match term.chunk {
        None => d.messages,
        Some(chunk) => d.chunked.get(chunk.slot).copied().unwrap_or(0),
    };
    match term.of {
        Quantity::Requests => inputs.requests,
        Quantity::MessagesIn => messages(client),
        Quantity::MessagesOut => messages(backend),
        Quantity::PayloadBytesIn => client.payload_bytes,
        Quantity::PayloadBytesOut => backend.payload_bytes,
        Quantity::WireBytesIn => client.wire_bytes,
        Quantity::WireBytesOut => backend.wire_bytes,
        Quantity::Duration => inputs.duration_ms,
        Quantity::ActiveTime => inputs.active_ms,
    }
}

/// The scanner chunk sizes `rules` need: slot `k` holds the size of the terms whose chunk slot is
/// `k` (0 for unused slots). Give it to both directions' `ScanPolicy::chunks`.
#[must_use]
pub fn chunks(rules: &[UnitRule]) -> Chunks {
    let mut sizes = [0u32; 4];
    for chunk in rules.iter().flat_map(|rule| &rule.terms).filter_map(|term| term.chunk) {
        if let Some(size) = sizes.get_mut(chunk.slot) {
            *size = chunk.bytes;
        }
    }
    Chunks(sizes)
}

/// The ceiling of `sum`, a sum of `terms` quotients. A sum within a few float roundings of a
/// whole number is that number, so that `1 + 5/3 + 1/3` (3.0000000000000004 in f64) bills 3
/// units, not 4. The slack is relative (a few ulps per term), far below any real excess: the
/// inputs are whole counts, bytes and milliseconds.
fn ceil_whole(sum: f64, terms: usize) -> f64 {
    let nearest = sum.round();
    let slack = sum.abs().max(1.0) * f64::EPSILON * 4.0 * terms.max(1) as f64;
    if (sum - nearest).abs() <= slack {
        nearest
    } else {
        sum.ceil()
    }
}

#[cfg(test)]
mod tests;
