//! A socket's record in `PEER_STORAGE`: made by sockops, read by the hooks.

use core::ptr;

use aya_ebpf::{
    bindings::{bpf_sock, BPF_SK_STORAGE_GET_F_CREATE},
    helpers::generated::bpf_sk_storage_get,
};
use ttm_common::{maps::TcKey, PeerRecord};

use crate::maps::{PEER_STORAGE, RECORDS, TUPLES};

/// `bpf_sk_storage_get` on `PEER_STORAGE`: with `init`, creates the slot
/// from it if the socket has none. `sk` must be non-null.
#[inline(always)]
fn slot(sk: *mut bpf_sock, init: Option<&mut PeerRecord>) -> *mut PeerRecord {
    let (value, flags) = match init {
        Some(r) => (ptr::from_mut(r).cast(), BPF_SK_STORAGE_GET_F_CREATE as u64),
        None => (ptr::null_mut(), 0),
    };
    // SAFETY: our SK_STORAGE map, a non-null socket, and either no initial
    // value or one of the map's value size.
    unsafe {
        bpf_sk_storage_get(
            ptr::from_ref(&PEER_STORAGE).cast_mut().cast(),
            sk.cast(),
            value,
            flags,
        )
    }
    .cast::<PeerRecord>()
}

/// The record sockops stored for `sk`, if any (never creates one).
#[inline(always)]
pub fn record_of<'a>(sk: *mut bpf_sock) -> Option<&'a PeerRecord> {
    if sk.is_null() {
        return None;
    }
    // SAFETY: non-null storage lives as long as the socket, which outlives this call.
    unsafe { slot(sk, None).as_ref() }
}

/// The socket's record, created from `init` if it has none; `None` when the
/// kernel cannot allocate it. `sk` must be non-null.
#[inline(always)]
pub fn record_or_insert<'a>(sk: *mut bpf_sock, init: &mut PeerRecord) -> Option<&'a PeerRecord> {
    // SAFETY: as in `record_of`.
    unsafe { slot(sk, Some(init)).as_ref() }
}

/// The client record the app-facing hooks answer with: the socket's own
/// slot when it holds one; for a PROXY connection whose slot still waits,
/// the record the verdict program filed by tuple and cookie, copied into
/// the slot so that later calls take the first path. `None`: no client.
#[inline(always)]
pub fn client_record<'a>(sk: *mut bpf_sock) -> Option<&'a PeerRecord> {
    if sk.is_null() {
        return None;
    }
    // SAFETY: as in `record_of`; the slot is this socket's, and a hook's
    // copy into it writes what any other copy would write.
    let slot = unsafe { slot(sk, None).as_mut()? };
    if slot.is_set() {
        return Some(slot);
    }
    if !slot.is_proxy_pending() {
        return None;
    }
    let key = TcKey {
        local_addr: slot.local_addr,
        peer_addr: slot.peer_addr,
        local_port: slot.local_port,
        peer_port: slot.peer_port,
    };
    // SAFETY: live map values, copied at once.
    unsafe {
        let cookie = *TUPLES.get_ptr(&key)?;
        let found = RECORDS.get_ptr(&cookie)?;
        if (*found).local_port != slot.local_port || (*found).peer_port != slot.peer_port {
            return None;
        }
        ptr::copy_nonoverlapping(found, slot, 1);
    }
    Some(slot)
}
