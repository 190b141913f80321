//! Reading a socket's record from `PEER_STORAGE` in the cgroup hooks.

use core::ptr;

use aya_ebpf::{bindings::bpf_sock, helpers::generated::bpf_sk_storage_get};
use ttm_common::PeerRecord;

use crate::maps::PEER_STORAGE;

/// The record sockops stored for `sk`, if any (never creates one).
#[inline(always)]
pub fn record_of<'a>(sk: *mut bpf_sock) -> Option<&'a PeerRecord> {
    if sk.is_null() {
        return None;
    }
    // SAFETY: our SK_STORAGE map and a non-null socket from the context; no
    // create flag, so no initial value is read.
    let slot = unsafe {
        bpf_sk_storage_get(
            ptr::from_ref(&PEER_STORAGE).cast_mut().cast(),
            sk.cast(),
            ptr::null_mut(),
            0,
        )
    }
    .cast::<PeerRecord>();
    // SAFETY: non-null storage lives as long as the socket, which outlives this call.
    unsafe { slot.as_ref() }
}
