//! The bounded option walk shared by the sockops decoder, the TC path and
//! the UDP marking decoder.

use core::ptr;

use ttm_common::{parser::MAX_OPTION_BYTES, FormatTable, Walk, WalkState};

use crate::{maps::WALK, packet::TcpOptions};

/// Runs the shared option walk for at most `MAX_OPTION_BYTES` steps, unrolled
/// (each step advances ≥ 1 byte). Between steps the state lives in the `WALK`
/// map: the verifier then sees one bounded state per step instead of one per
/// path, which keeps verification linear.
#[inline(always)]
pub fn walk_options(options: &TcpOptions, formats: &FormatTable) -> Walk {
    let Some(slot) = WALK.get_ptr_mut(0) else {
        return Walk::NotFound;
    };
    // SAFETY (all accesses below): the per-CPU slot is ours until the program returns.
    unsafe { ptr::write_volatile(slot, WalkState::default()) };
    macro_rules! step {
        () => {
            let mut walk = unsafe { ptr::read_volatile(slot) };
            if let Some(outcome) = walk.step(options, formats) {
                return outcome;
            }
            unsafe { ptr::write_volatile(slot, walk) };
        };
    }
    macro_rules! step8 {
        () => {
            step!();
            step!();
            step!();
            step!();
            step!();
            step!();
            step!();
            step!();
        };
    }
    const _: () = assert!(MAX_OPTION_BYTES == 40);
    step8!();
    step8!();
    step8!();
    step8!();
    step8!();
    unsafe { ptr::read_volatile(slot) }.finish()
}
