//! Locking that survives a poisoned mutex: every mutex in weir guards state that stays valid if
//! a holder panicked mid-way (counters, maps, files), so the data is used as is rather than
//! turning one panic into a panic in every later caller.

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, taking the data even if a previous holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
