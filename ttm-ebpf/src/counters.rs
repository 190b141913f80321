//! Increments a per-CPU counter in `STATS`.

use ttm_common::Counter;

use crate::maps::STATS;

/// Adds one to `counter` on this CPU (per-CPU slots need no atomics).
#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = STATS.get_ptr_mut(counter as u32) {
        // SAFETY: the per-CPU slot is ours for the duration of the program.
        unsafe { *slot += 1 };
    }
}
