//! The witness: runs after ttm's rewrite in the getpeername chain of the
//! attached cgroup and checks that what the application is about to receive
//! is the kernel's peer or ttm's recorded client. Anything else — a foreign
//! program rewrote it — is counted and filed under the socket's cookie.
//!
//! Limits: programs attached to the same cgroup after ttm run after the
//! witness and are not seen (the static audit lists them); programs on
//! child cgroups run before ttm and are seen.

use core::ptr::read_volatile;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use ttm_common::{
    addr::{from_words, v4_mapped},
    maps::Mismatch,
    Addr16, Counter,
};

use crate::{counters::bump, getpeername::own_record, maps::MISMATCHES};

#[inline(always)]
fn check(
    ctx: &SockAddrContext,
    returned: Addr16,
    returned_port: u16,
    kernel: Addr16,
    kernel_port: u16,
) {
    if returned == kernel && returned_port == kernel_port {
        return;
    }
    if let Some(record) = own_record(ctx) {
        if returned == record.client_addr && returned_port == record.client_port {
            return;
        }
    }
    bump(Counter::PeerMismatch);
    // SAFETY: helpers valid in sock_addr programs.
    let (cookie, pid, now) = unsafe {
        (
            bpf_get_socket_cookie(ctx.sock_addr.cast()),
            (bpf_get_current_pid_tgid() >> 32) as u32,
            bpf_ktime_get_ns(),
        )
    };
    let m = Mismatch {
        returned_addr: returned,
        kernel_addr: kernel,
        seen_ns: now,
        returned_port,
        kernel_port,
        pid,
    };
    let _ = MISMATCHES.insert(cookie, &m, 0);
}

/// AF_INET sockets. Always returns 1.
#[cgroup_sock_addr(getpeername4)]
pub fn ttm_witness4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: context fields at constant offsets; `sk` null-checked.
    unsafe {
        let sk = (*sa).__bindgen_anon_1.sk;
        if sk.is_null() {
            return 1;
        }
        let returned = v4_mapped(read_volatile(&(*sa).user_ip4).to_ne_bytes());
        let returned_port = u16::from_be(read_volatile(&(*sa).user_port) as u16);
        let kernel = v4_mapped(read_volatile(&(*sk).dst_ip4).to_ne_bytes());
        let kernel_port = u16::from_be(read_volatile(&(*sk).dst_port));
        check(&ctx, returned, returned_port, kernel, kernel_port);
    }
    1
}

/// AF_INET6 sockets (v4-mapped included). Always returns 1.
#[cgroup_sock_addr(getpeername6)]
pub fn ttm_witness6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: context fields, each word at its own constant offset; `sk` null-checked.
    unsafe {
        let sk = (*sa).__bindgen_anon_1.sk;
        if sk.is_null() {
            return 1;
        }
        let returned = from_words([
            read_volatile(&(*sa).user_ip6[0]),
            read_volatile(&(*sa).user_ip6[1]),
            read_volatile(&(*sa).user_ip6[2]),
            read_volatile(&(*sa).user_ip6[3]),
        ]);
        let returned_port = u16::from_be(read_volatile(&(*sa).user_port) as u16);
        let kernel = from_words([
            read_volatile(&(*sk).dst_ip6[0]),
            read_volatile(&(*sk).dst_ip6[1]),
            read_volatile(&(*sk).dst_ip6[2]),
            read_volatile(&(*sk).dst_ip6[3]),
        ]);
        let kernel_port = u16::from_be(read_volatile(&(*sk).dst_port));
        check(&ctx, returned, returned_port, kernel, kernel_port);
    }
    1
}
