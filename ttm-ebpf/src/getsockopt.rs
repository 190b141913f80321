//! The getsockopt shim: `getsockopt(fd, SOL_IP, 1345, buf, &len)` answers
//! the client as the TOA kernel modules did, and with `--udp-interface`
//! `getsockopt(fd, SOL_IP, 2048, ...)` a UDP flow's as uoa.ko did
//! (`crate::uoa_lookup`). Every other call returns at the first comparison,
//! untouched.

use core::ptr::write_volatile;

use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use ttm_common::{
    compat::{nat64_peer, ttm_peer, PEER_SOCKOPT_LEN},
    Counter,
};

use crate::{counters::bump, maps::CONFIG, records};

const SOL_IP: i32 = 0;

/// Always returns 1: other programs and the kernel's own answer stand unless
/// this is ttm's option on a socket with a record.
#[cgroup_sockopt(getsockopt)]
pub fn ttm_getsockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: context fields at constant offsets.
    let (level, name) = unsafe { ((*so).level, (*so).optname) };
    if level != SOL_IP {
        return 1;
    }
    let Some(config) = CONFIG.get(0) else {
        return 1;
    };
    if config.uoa_getsockopt_name != 0 && name as u32 == config.uoa_getsockopt_name {
        crate::uoa_lookup::answer(so, config);
        return 1;
    }
    let nat64 = if name as u32 == config.getsockopt_name {
        false
    } else if config.nat64_getsockopt_name != 0 && name as u32 == config.nat64_getsockopt_name {
        true
    } else {
        return 1;
    };
    // This hook cannot read the socket's cookie: a record whose tuple
    // another namespace's live socket shares answers for neither.
    // SAFETY: context field.
    let record = records::of_socket(unsafe { (*so).__bindgen_anon_1.sk });
    let Some(record) = record.filter(|r| r.shared == 0 && r.is_set()) else {
        // The kernel's ENOPROTOOPT for an unknown option stands.
        bump(Counter::GetsockoptNoRecord);
        return 1;
    };
    // SAFETY: context fields; the buffer bounds are checked before the write.
    unsafe {
        let buf = (*so).__bindgen_anon_2.optval.cast::<u8>();
        let end = (*so).__bindgen_anon_3.optval_end.cast::<u8>();
        if buf.add(PEER_SOCKOPT_LEN) > end {
            write_volatile(&raw mut (*so).retval, config.short_buffer_retval);
            bump(Counter::GetsockoptShortBuffer);
            return 1;
        }
        let answer = if nat64 {
            nat64_peer(record)
        } else {
            ttm_peer(record)
        };
        buf.cast::<[u8; PEER_SOCKOPT_LEN]>().write_unaligned(answer);
        // Separate 4-byte stores: the verifier refuses a merged 8-byte one.
        write_volatile(&raw mut (*so).optlen, PEER_SOCKOPT_LEN as i32);
        write_volatile(&raw mut (*so).retval, 0);
    }
    bump(Counter::GetsockoptAnswered);
    1
}
