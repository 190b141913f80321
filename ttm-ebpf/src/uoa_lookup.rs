//! uoa.ko's lookup, `getsockopt(IPPROTO_IP, UOA_SO_GET_LOOKUP, &struct
//! uoa_param_map)`, answered from `UDP_FLOWS` (the shim calls [`answer`]),
//! and the recvmsg hooks that note which flow each unconnected socket last
//! delivered a datagram of.
//!
//! When the kernel's own getsockopt fails, as it does for this option
//! number, the program is handed a zeroed buffer, not the tuple the app
//! wrote into it. So the flow is the socket's own for a connected socket,
//! and for an unconnected one the flow of the datagram it last delivered,
//! answered only while that is the one flow the app can mean
//! (`ttm_common::udp::Delivery`). Otherwise: ENOENT.

use core::ptr::{self, write_volatile};

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sockopt, BPF_SK_STORAGE_GET_F_CREATE},
    helpers::{bpf_ktime_get_ns, generated::bpf_sk_storage_get},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use ttm_common::{
    addr::{from_words, v4_mapped},
    udp::{idle_ns, Delivery, UdpFlowKey},
    uoa::{UoaParamMap, UOA_PARAM_MAP_LEN},
    Config, Counter,
};

use crate::{
    counters::bump,
    maps::{UDP_DELIVERIES, UDP_FLOWS},
    records,
};

const AF_INET6: u16 = 10;
const IPPROTO_UDP: u32 = 17;

/// The socket storage of `sk` in `UDP_DELIVERIES`, made if `create`.
#[inline(always)]
fn delivery<'a>(sk: *mut bpf_sock, create: bool) -> Option<&'a mut Delivery> {
    if sk.is_null() {
        return None;
    }
    let zero = Delivery::default();
    // SAFETY: our SK_STORAGE map, a non-null socket, an initial value of
    // the map's type.
    let p = unsafe {
        bpf_sk_storage_get(
            ptr::from_ref(&UDP_DELIVERIES).cast_mut().cast(),
            sk.cast(),
            ptr::from_ref(&zero).cast_mut().cast(),
            if create {
                BPF_SK_STORAGE_GET_F_CREATE as u64
            } else {
                0
            },
        )
    }
    .cast::<Delivery>();
    // SAFETY: null or this socket's storage, ours until the program returns.
    unsafe { p.as_mut() }
}

/// Notes the flow of the datagram an unconnected socket is handing over:
/// its source (the LB), and the socket's own port.
#[inline(always)]
fn note(ctx: &SockAddrContext, lb_addr: [u8; 16], lb_port_be: u32) {
    // SAFETY: context field.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    let Some(local) = records::key_of_socket(sk) else {
        return;
    };
    // Connected sockets are answered by their own tuple.
    if local.peer_port != 0 {
        return;
    }
    let Some(slot) = delivery(sk, true) else {
        return;
    };
    let key = UdpFlowKey {
        lb_addr,
        lb_port: u16::from_be(lb_port_be as u16),
        local_port: local.local_port,
    };
    slot.note(&key);
}

/// `recvfrom()`/`recvmsg()` of an AF_INET socket. Always returns 1.
#[cgroup_sock_addr(recvmsg4)]
pub fn ttm_udp_recvmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: readable context fields of a recvmsg hook.
    let (ip, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    note(&ctx, v4_mapped(ip.to_ne_bytes()), port);
    1
}

/// `recvfrom()`/`recvmsg()` of an AF_INET6 socket (IPv4 peers v4-mapped).
/// Always returns 1.
#[cgroup_sock_addr(recvmsg6)]
pub fn ttm_udp_recvmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: readable context fields of a recvmsg hook.
    let (ip, port) = unsafe {
        let sa = &*ctx.sock_addr;
        (from_words(sa.user_ip6), sa.user_port)
    };
    note(&ctx, ip, port);
    1
}

/// Answers the UOA lookup on the socket of `so`. The caller has matched
/// the level and name.
#[inline(always)]
pub fn answer(so: *mut bpf_sockopt, config: &Config) {
    // SAFETY: context fields; the buffer bounds are checked before the write.
    unsafe {
        let buf = (*so).__bindgen_anon_2.optval.cast::<u8>();
        let end = (*so).__bindgen_anon_3.optval_end.cast::<u8>();
        if buf.add(UOA_PARAM_MAP_LEN) > end {
            write_volatile(&raw mut (*so).retval, config.short_buffer_retval);
            bump(Counter::UdpLookupUnanswered);
            return;
        }
        let sk = (*so).__bindgen_anon_1.sk;
        let Some(answer) = lookup(sk, config) else {
            if config.uoa_missing_retval != 0 {
                write_volatile(&raw mut (*so).retval, config.uoa_missing_retval);
            }
            bump(Counter::UdpLookupUnanswered);
            return;
        };
        buf.cast::<UoaParamMap>().write_unaligned(answer);
        // Separate 4-byte stores: the verifier refuses a merged 8-byte one.
        write_volatile(&raw mut (*so).optlen, UOA_PARAM_MAP_LEN as i32);
        write_volatile(&raw mut (*so).retval, 0);
    }
    bump(Counter::UdpLookupAnswered);
}

#[inline(always)]
fn lookup(sk: *mut bpf_sock, config: &Config) -> Option<UoaParamMap> {
    let socket = records::key_of_socket(sk)?;
    // SAFETY: a non-null socket (key_of_socket checked), constant offsets.
    let (family, protocol) = unsafe {
        (
            core::ptr::read_volatile(&(*sk).family) as u16,
            core::ptr::read_volatile(&(*sk).protocol),
        )
    };
    // A TCP socket's tuple may match a UDP flow's numbers: never its client.
    if protocol != IPPROTO_UDP {
        return None;
    }
    let key = if socket.peer_port != 0 {
        UdpFlowKey {
            lb_addr: socket.peer_addr,
            lb_port: socket.peer_port,
            local_port: socket.local_port,
        }
    } else {
        delivery(sk, false)?.ask()?
    };
    // SAFETY: a live map value, copied out.
    let flow = unsafe { *UDP_FLOWS.get_ptr(&key)? };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let bound = socket.local_addr != [0; 16] && socket.local_addr != v4_mapped([0; 4]);
    if !flow.answers()
        || flow.expired(now, idle_ns(config.udp_idle_secs))
        || (bound && flow.local_addr != socket.local_addr)
    {
        return None;
    }
    Some(UoaParamMap::answer(family == AF_INET6, &key, &flow))
}
