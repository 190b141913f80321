//! PROXY protocol, early: a cgroup ingress program reads the header off the
//! segment that makes a connection out of a pending handshake — the first
//! data segment once the listener defers accept — before the kernel creates
//! the socket. The client is filed under the 4-tuple in `TC_RECORDS`, and
//! sockops takes it into the new socket right after, as it takes the TC
//! path's records: the client is known before `accept()` can return the
//! connection. (The stream-verdict program removes the header later, on the
//! app's first read; it records the client itself when the header did not
//! come whole in one segment.) Always returns 1: ttm never drops a packet.

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock, BPF_ANY},
    helpers::{bpf_ktime_get_ns, bpf_sk_fullsock, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use ttm_common::{
    addr::v4_mapped,
    maps::{proxy_flags, TcKey},
    proxy::{parse_with, Parsed, MAX_HEADER_LEN},
    record::PROXY_PENDING_FORMAT,
    Addr16, PeerRecord,
};

use crate::{
    maps::{CONFIG, PROXY_INGRESS_BUF, PROXY_PORTS, SCRATCH, TC_RECORDS},
    proxy::{byte_bound, walk_v1_in, WalkSlot},
    sockops::is_trusted,
};

/// `TCP_LISTEN` in `bpf_sock.state`.
const BPF_TCP_LISTEN: u32 = 10;
const IPPROTO_TCP: u8 = 6;

#[cgroup_skb(ingress)]
pub fn ttm_proxy_ingress(ctx: SkBuffContext) -> i32 {
    early_header(&ctx);
    1
}

#[inline(always)]
fn early_header(ctx: &SkBuffContext) -> Option<()> {
    if CONFIG.get(0)?.proxy_flags & proxy_flags::WATCHING == 0 {
        return None;
    }
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: context field; a listener is the only socket a segment that
    // completes a handshake is filtered on.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: helper valid in cgroup skb programs, on the context's socket.
    let full = unsafe { bpf_sk_fullsock(sk.cast()) }.cast::<bpf_sock>();
    // SAFETY: null-checked just below; `state` is a readable field.
    if full.is_null() || unsafe { (*full).state } != BPF_TCP_LISTEN {
        return None;
    }
    let (peer, local, l4) = addresses(ctx)?;
    let ports: [u8; 4] = ctx.load(l4).ok()?;
    let peer_port = u16::from_be_bytes([ports[0], ports[1]]);
    let local_port = u16::from_be_bytes([ports[2], ports[3]]);
    PROXY_PORTS.get_ptr(&local_port)?;
    let data_offset: u8 = ctx.load(l4 + 12).ok()?;
    let payload = l4 + usize::from(data_offset >> 4) * 4;
    let len = (ctx.len() as usize).checked_sub(payload)?;
    if len == 0 {
        return None;
    }
    let first: u8 = ctx.load(payload).ok()?;
    if first != b'P' && first != b'\r' {
        return None;
    }
    if CONFIG.get(0)?.trust_any == 0 && !is_trusted(&peer) {
        return None;
    }
    let buf = PROXY_INGRESS_BUF.get_ptr_mut(0)?;
    // SAFETY: the per-CPU slot is ours until the program returns.
    let buf = unsafe { &mut *buf };
    let take = byte_bound(if len < MAX_HEADER_LEN {
        len
    } else {
        MAX_HEADER_LEN
    });
    if take == 0 {
        return None;
    }
    // SAFETY: `take` ≤ 255 bytes into the 512-byte buffer of a map value.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            skb.cast(),
            payload as u32,
            buf.bytes.as_mut_ptr().cast(),
            crate::proxy::nonzero_len(take) as u32,
        )
    };
    if loaded != 0 {
        return None;
    }
    buf.len = take as u32;
    let Parsed::Header {
        version,
        client: Some(client),
        ..
    } = parse_with(buf, |b| walk_v1_in(b, WalkSlot::Ingress))
    else {
        // Anything else is the verdict program's to handle, on the stream.
        return None;
    };
    let record = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch slot is ours until the program returns.
    let record = unsafe { &mut *record };
    *record = PeerRecord::ZERO;
    record.set_tuple((peer, peer_port), (local, local_port));
    record.format_index = PROXY_PENDING_FORMAT;
    // SAFETY: helper without preconditions.
    record.fill_proxy(&client, version, unsafe { bpf_ktime_get_ns() });
    let key = TcKey {
        local_addr: local,
        peer_addr: peer,
        local_port,
        peer_port,
    };
    // The newest handshake of a tuple wins; sockops takes it at once.
    let _ = TC_RECORDS.insert(&key, &*record, BPF_ANY as u64);
    Some(())
}

/// (source, destination, offset of the TCP header) of an IPv4 or IPv6 TCP
/// packet; IPv6 extension headers are not followed (the verdict program
/// still reads such a connection's header from the stream).
#[inline(always)]
fn addresses(ctx: &SkBuffContext) -> Option<(Addr16, Addr16, usize)> {
    let first: u8 = ctx.load(0).ok()?;
    match first >> 4 {
        4 => {
            let ip: [u8; 20] = ctx.load(0).ok()?;
            if ip[9] != IPPROTO_TCP {
                return None;
            }
            let src = v4_mapped([ip[12], ip[13], ip[14], ip[15]]);
            let dst = v4_mapped([ip[16], ip[17], ip[18], ip[19]]);
            Some((src, dst, usize::from(ip[0] & 0x0f) * 4))
        }
        6 => {
            let next: u8 = ctx.load(6).ok()?;
            if next != IPPROTO_TCP {
                return None;
            }
            let src: Addr16 = ctx.load(8).ok()?;
            let dst: Addr16 = ctx.load(24).ok()?;
            Some((src, dst, 40))
        }
        _ => None,
    }
}
