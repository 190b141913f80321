//! `RECORDS`, the clients of live connections by 4-tuple: filed and
//! removed here for sockops and the PROXY verdict program, found here for
//! the app-facing hooks by the tuple of their socket. Each change is told
//! to the daemon through `RECORD_EVENTS`.

use core::ptr::{addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::bindings::{bpf_sock, BPF_NOEXIST};
use ttm_common::{
    maps::{TcKey, RECORD_FILED, RECORD_REMOVED},
    Counter, PeerRecord,
};

use crate::{
    counters::bump,
    maps::{KEY_SCRATCH, RECORDS, RECORD_EVENTS},
};

const AF_INET: u32 = 2;

/// Which slot of `KEY_SCRATCH` a program builds its keys in.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum KeySlot {
    /// The sockops programs.
    Sockops = 0,
    /// The PROXY stream-verdict program.
    Verdict = 1,
}

/// The `RECORDS` key of `record` (its local end and kernel peer), built in
/// map memory.
#[inline(always)]
pub fn key_of<'a>(record: &PeerRecord, slot: KeySlot) -> Option<&'a TcKey> {
    let key = KEY_SCRATCH.get_ptr_mut(slot as u32)?;
    // SAFETY: the per-CPU scratch slot is this program's until it returns.
    let key = unsafe { &mut *key };
    key.local_addr = record.local_addr;
    key.local_port = record.local_port;
    key.peer_addr = record.peer_addr;
    key.peer_port = record.peer_port;
    Some(key)
}

/// Files `record` under its 4-tuple as socket `cookie`'s (unshared). True
/// when filed; false when this socket has a record already (never
/// overwritten), the tuple is another live socket's (marked shared,
/// counted), or the map is full (counted).
#[inline(always)]
pub fn file(record: &mut PeerRecord, cookie: u64, slot: KeySlot) -> bool {
    record.cookie = cookie;
    record.shared = 0;
    let Some(key) = key_of(record, slot) else {
        return false;
    };
    if RECORDS.insert(key, &*record, BPF_NOEXIST as u64).is_ok() {
        bump(Counter::RecordsStored);
        announce(RECORD_FILED, key, record);
        return true;
    }
    match RECORDS.get_ptr_mut(key) {
        Some(other) => mark_if_other(other, cookie),
        None => bump(Counter::MapInsertFailed),
    }
    false
}

/// Marks the live record under `key` shared if it belongs to a socket
/// other than `cookie`'s: the same 4-tuple in another network namespace.
#[inline(always)]
pub fn note_tuple(key: &TcKey, cookie: u64) {
    if let Some(other) = RECORDS.get_ptr_mut(key) {
        mark_if_other(other, cookie);
    }
}

#[inline(always)]
fn mark_if_other(other: *mut PeerRecord, cookie: u64) {
    // SAFETY: a live map value; one byte written in place.
    unsafe {
        if (*other).cookie != cookie && (*other).shared == 0 {
            write_volatile(addr_of_mut!((*other).shared), 1);
            bump(Counter::TupleIndexFailed);
        }
    }
}

/// True if `cookie`'s socket has a record under `key`.
#[inline(always)]
pub fn has_own(key: &TcKey, cookie: u64) -> bool {
    // SAFETY: a live map value, read at once.
    RECORDS
        .get_ptr(key)
        .is_some_and(|r| unsafe { (*r).cookie == cookie })
}

/// Removes the record under `key` if it is `cookie`'s socket's, and tells
/// the daemon. Returns whether it carried PROXY v2 TLVs.
#[inline(always)]
pub fn unfile(key: &TcKey, cookie: u64) -> Option<bool> {
    let found = RECORDS.get_ptr(key)?;
    // SAFETY: a live map value, read before its removal.
    let record = unsafe { &*found };
    if record.cookie != cookie {
        return None;
    }
    let had_tlvs = record.proxy_version() == Some(ttm_common::proxy::ProxyVersion::V2);
    announce(RECORD_REMOVED, key, record);
    if RECORDS.remove(key).is_ok() {
        bump(Counter::RecordsRemoved);
    }
    Some(had_tlvs)
}

/// Tells the daemon that `record` was filed or removed under `key`; a full
/// ring loses the event (counted), never the record.
#[inline(always)]
fn announce(kind: u8, key: &TcKey, record: &PeerRecord) {
    let Some(mut entry) = RECORD_EVENTS.reserve(0) else {
        bump(Counter::EventsLost);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the reserved entry is ours until submitted; every field is written.
    unsafe {
        (*event).key = *key;
        (*event).kind = kind;
        (*event)._pad = [0; 3];
        (*event).cookie = record.cookie;
        (*event).client_addr = record.client_addr;
        (*event).client_port = record.client_port;
        (*event)._pad2 = [0; 6];
    }
    entry.submit(0);
}

/// A `TcKey` built as nine 4-byte words: the socket's addresses are read as
/// words, and stored as words they are one store each, not sixteen byte
/// stores and shifts (this runs on every getpeername of the compat cgroups).
#[repr(C, align(4))]
struct KeyWords([u32; 9]);
const _: () = assert!(core::mem::size_of::<KeyWords>() == core::mem::size_of::<TcKey>());
const _: () = assert!(core::mem::align_of::<KeyWords>() >= core::mem::align_of::<TcKey>());

/// `::ffff:0:0`'s third word as it sits in memory (bytes 00 00 ff ff).
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The 4-tuple of socket `sk` as `RECORDS` keys it; `None` for a null socket.
#[inline(always)]
pub fn key_of_socket(sk: *mut bpf_sock) -> Option<TcKey> {
    if sk.is_null() {
        return None;
    }
    // SAFETY: fields of a non-null socket, each read at its own constant
    // offset as the verifier requires. Both families' fields are read
    // before choosing: a branch per family lets LLVM pick one base
    // pointer and offset it, which the verifier refuses on a socket.
    unsafe {
        let family = read_volatile(&(*sk).family);
        let src4 = read_volatile(&(*sk).src_ip4);
        let dst4 = read_volatile(&(*sk).dst_ip4);
        let src6 = [
            read_volatile(&(*sk).src_ip6[0]),
            read_volatile(&(*sk).src_ip6[1]),
            read_volatile(&(*sk).src_ip6[2]),
            read_volatile(&(*sk).src_ip6[3]),
        ];
        let dst6 = [
            read_volatile(&(*sk).dst_ip6[0]),
            read_volatile(&(*sk).dst_ip6[1]),
            read_volatile(&(*sk).dst_ip6[2]),
            read_volatile(&(*sk).dst_ip6[3]),
        ];
        let local_port = read_volatile(&(*sk).src_port) as u16;
        let peer_port = u16::from_be(read_volatile(&(*sk).dst_port));
        let (local, peer) = if family == AF_INET {
            ([0, 0, V4_MAPPED_WORD, src4], [0, 0, V4_MAPPED_WORD, dst4])
        } else {
            (src6, dst6)
        };
        let ports = u32::from(local_port) | (u32::from(peer_port) << 16);
        let words = KeyWords([
            local[0],
            local[1],
            local[2],
            local[3],
            peer[0],
            peer[1],
            peer[2],
            peer[3],
            u32::from_le(ports),
        ]);
        // SAFETY: same size, alignment at least TcKey's; every bit pattern
        // is a valid TcKey (byte arrays and integers), laid out as the
        // words were stored (the ports little-endian, as BPF is).
        Some(core::mem::transmute::<KeyWords, TcKey>(words))
    }
}

/// The record of socket `sk`, by its 4-tuple. The caller checks that the
/// record is this socket's (its cookie), or that it is not shared.
#[inline(always)]
pub fn of_socket<'a>(sk: *mut bpf_sock) -> Option<&'a PeerRecord> {
    let key = key_of_socket(sk)?;
    // SAFETY: a live map value; records are never rewritten but for the
    // `shared` byte, and removed only at their socket's close.
    RECORDS.get_ptr(&key).map(|r| unsafe { &*r })
}
