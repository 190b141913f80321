//! The rewrite: `accept()` and `getpeername()` return the real client instead
//! of the load balancer, for sockets with a record. Sockets without one, and
//! IPv6 clients on AF_INET sockets, are left alone.

use core::ptr::write_volatile;

use aya_ebpf::{
    helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use ttm_common::{
    compat::{peer_for_inet, peer_for_inet6},
    Counter, PeerRecord,
};

use crate::{counters::bump, records};

/// The record of the socket behind `ctx`, if it is this socket's own (its
/// cookie: the same 4-tuple may be another namespace's socket).
#[inline(always)]
pub fn own_record<'a>(ctx: &SockAddrContext) -> Option<&'a PeerRecord> {
    // SAFETY: context field.
    let record = records::of_socket(unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk })?;
    // SAFETY: helper valid in sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    (record.cookie == cookie && record.is_set()).then_some(record)
}

/// AF_INET sockets. Always returns 1 (allow).
#[cgroup_sock_addr(getpeername4)]
pub fn ttm_getpeername4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some(record) = own_record(&ctx) else {
        return 1;
    };
    let Some((addr, port)) = peer_for_inet(record) else {
        return 1;
    };
    // SAFETY: writable context fields of a getpeername hook; the port goes in
    // network order in the low 16 bits.
    unsafe {
        write_volatile(&raw mut (*sa).user_ip4, u32::from_ne_bytes(addr));
        write_volatile(&raw mut (*sa).user_port, u32::from(port.to_be()));
    }
    bump(Counter::PeerRewritten);
    1
}

/// AF_INET6 sockets, including v4-mapped connections on dual-stack
/// listeners. Always returns 1 (allow).
#[cgroup_sock_addr(getpeername6)]
pub fn ttm_getpeername6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some(record) = own_record(&ctx) else {
        return 1;
    };
    let (addr, port) = peer_for_inet6(record);
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    // SAFETY: writable context fields, each a separate 4-byte store at its
    // own constant offset (the verifier refuses merged stores).
    unsafe {
        write_volatile(&raw mut (*sa).user_ip6[0], word(0));
        write_volatile(&raw mut (*sa).user_ip6[1], word(4));
        write_volatile(&raw mut (*sa).user_ip6[2], word(8));
        write_volatile(&raw mut (*sa).user_ip6[3], word(12));
        write_volatile(&raw mut (*sa).user_port, u32::from(port.to_be()));
    }
    bump(Counter::PeerRewritten);
    1
}
