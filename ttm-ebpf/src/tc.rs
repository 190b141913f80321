//! The TC ingress path: for kernels or sockets the sockops decoder cannot
//! reach, decode the option from TCP segments of trusted LBs at the
//! interface and file the client under the connection's 4-tuple; and, for
//! PROXY ports, cut each header out at the interface (`proxy_cut`). Returns
//! "continue" (TC_ACT_UNSPEC) for every packet but one kind: the bare ACK
//! that would complete a trusted PROXY handshake before its header came,
//! held back as `TCP_DEFER_ACCEPT` would hold it.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_ANY, BPF_NOEXIST, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    macros::classifier,
    programs::TcContext,
    EbpfContext,
};
use ttm_common::{
    addr::v4_mapped,
    arbitrate,
    maps::{proxy_flags, TcKey},
    plausible_client, Addr16, Claim, Counter, Walk,
};

use crate::{
    counters::bump,
    maps::{CONFIG, PROXY_TAIL, SCRATCH, TC_PARSED, TC_PENDING, TC_RECORDS},
    packet::TcpOptions,
    proxy_cut::Step,
    sockops::is_trusted,
    walk::walk_options,
};

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
pub(crate) const ETH_P_8021Q: u16 = 0x8100;
pub(crate) const IPPROTO_TCP: u8 = 6;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

#[classifier]
pub fn ttm_tc_ingress(ctx: TcContext) -> i32 {
    let reads_options = CONFIG
        .get(0)
        .is_some_and(|c| c.proxy_flags & proxy_flags::TC_NO_OPTIONS == 0);
    if reads_options {
        options(&ctx);
    }
    // Last: it may change the packet, which the decoder reads in place.
    match crate::proxy_cut::inbound(&ctx) {
        Step::Pass => TC_ACT_UNSPEC,
        Step::Hold => TC_ACT_SHOT,
        Step::Tail(slot) => {
            // From the program's own frame (a tail call from a function
            // would leave its frames' stack limited); on failure the segment
            // goes up as it came.
            // SAFETY: the context is this program's; the slots hold
            // classifiers of the same type.
            unsafe { PROXY_TAIL.tail_call(&ctx, slot) };
            TC_ACT_UNSPEC
        }
    }
}

/// The option decoder, in a frame of its own.
#[inline(never)]
fn options(ctx: &TcContext) {
    // Volatile loads stay here: hoisted into the caller as u32 arguments,
    // their widening becomes a shift the verifier refuses on pkt_end.
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: context fields at constant offsets.
    let (data, end) = unsafe {
        (
            core::ptr::read_volatile(&(*skb).data) as usize,
            core::ptr::read_volatile(&(*skb).data_end) as usize,
        )
    };
    decode(data, end);
}

/// `N` bytes at `at` if they are inside the packet: one bounds check, then
/// reads at constant offsets, which is what the verifier can follow.
#[inline(always)]
pub(crate) fn header<const N: usize>(at: usize, end: usize) -> Option<[u8; N]> {
    if at + N > end {
        return None;
    }
    // SAFETY: [at, at + N) is inside the packet, checked just above.
    Some(unsafe { core::ptr::read_unaligned(at as *const [u8; N]) })
}

/// Where TCP starts (`None`: a packet that may carry TCP but cannot be
/// followed there), the source and the destination.
type L3 = (Option<usize>, Addr16, Addr16);

/// An IPv4 header at `at` carrying TCP, addresses v4-mapped. Options are
/// skipped by the header length.
#[inline(always)]
fn ipv4(at: usize, end: usize) -> Option<L3> {
    let ip: [u8; 20] = header(at, end)?;
    if ip[0] >> 4 != 4 || ip[9] != IPPROTO_TCP {
        return None;
    }
    // 5..=15 words.
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    Some((
        Some(at + ihl),
        v4_mapped([ip[12], ip[13], ip[14], ip[15]]),
        v4_mapped([ip[16], ip[17], ip[18], ip[19]]),
    ))
}

/// Extension headers skipped before giving up on reaching TCP.
const MAX_IPV6_EXTENSIONS: usize = 4;

/// An IPv6 header at `at` carrying TCP. Hop-by-hop, routing and
/// destination-options headers (what an LB path can carry) are skipped, at
/// most [`MAX_IPV6_EXTENSIONS`]; a fragment, an authentication header or
/// more extensions cannot be followed to TCP (counted by the caller once
/// the peer is trusted: `tc_ipv6_unparsed`). Other packets are not TCP.
#[inline(always)]
fn ipv6(at: usize, end: usize) -> Option<L3> {
    let ip: [u8; 40] = header(at, end)?;
    if ip[0] >> 4 != 6 {
        return None;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&ip[24..40]);
    let mut next = ip[6];
    let mut l4 = at + 40;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            IPPROTO_TCP => return Some((Some(l4), src, dst)),
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let ext: [u8; 2] = header(l4, end)?;
                next = ext[0];
                // Length in 8-byte units, not counting the first 8.
                l4 += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_FRAGMENT | IPV6_AUTH => return Some((None, src, dst)),
            _ => return None,
        }
    }
    match next {
        IPPROTO_TCP => Some((Some(l4), src, dst)),
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_FRAGMENT | IPV6_AUTH => {
            Some((None, src, dst))
        }
        _ => None,
    }
}

/// The offset of the network header and its EtherType: Ethernet, with at
/// most one VLAN tag.
#[inline(always)]
pub(crate) fn network_header(data: usize, end: usize) -> Option<(usize, u16)> {
    let eth: [u8; 18] = header(data, end).or_else(|| {
        let short: [u8; 14] = header(data, end)?;
        let mut padded = [0u8; 18];
        padded[..14].copy_from_slice(&short);
        Some(padded)
    })?;
    Some(match u16::from_be_bytes([eth[12], eth[13]]) {
        ETH_P_8021Q => (ETH_HLEN + 4, u16::from_be_bytes([eth[16], eth[17]])),
        p => (ETH_HLEN, p),
    })
}

#[inline(always)]
fn decode(data: usize, end: usize) -> Option<()> {
    let (l3, proto) = network_header(data, end)?;
    let parsed = TC_PARSED.get_ptr_mut(0)?;
    // SAFETY: the per-CPU slot is ours until the program returns.
    let parsed = unsafe { &mut *parsed };
    let (l4, peer, local) = match proto {
        ETH_P_IP => ipv4(data + l3, end)?,
        ETH_P_IPV6 => ipv6(data + l3, end)?,
        _ => return None,
    };
    // Through map memory: every way of reaching TCP (IPv4 with or without
    // options, IPv6 with 0 to 4 extension headers) continues as one
    // verifier state, or the option walk after it is verified once per way.
    let unparsed = u32::MAX;
    // SAFETY (both): the slot is ours; volatile so the reload is real.
    unsafe {
        core::ptr::write_volatile(
            &raw mut parsed.l4,
            l4.map_or(unparsed, |l4| (l4 - data) as u32),
        )
    };
    parsed.peer = peer;
    parsed.local = local;
    let l4 = unsafe { core::ptr::read_volatile(&raw const parsed.l4) };
    let config = CONFIG.get(0)?;
    if config.trust_any == 0 && !is_trusted(&parsed.peer) {
        return None;
    }
    if l4 == unparsed {
        bump(Counter::TcIpv6Unparsed);
        return None;
    }
    // Masked far below the 64 KiB packet-offset limit the verifier tracks
    // ranges under (headers end within 18 + 40 + 4 × 2048 bytes).
    let l4 = data + (l4 as usize & 0x3fff);
    let tcp: [u8; 20] = header(l4, end)?;
    let peer_port = u16::from_be_bytes([tcp[0], tcp[1]]);
    let local_port = u16::from_be_bytes([tcp[2], tcp[3]]);
    let flags = tcp[13];
    let key = TcKey {
        local_addr: parsed.local,
        peer_addr: parsed.peer,
        local_port,
        peer_port,
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if flags & TCP_FLAG_SYN != 0 {
        // A new connection on this 4-tuple: the previous one's client is
        // gone (port reuse must never return it), and the next ACK is the
        // one whose option counts.
        let _ = TC_RECORDS.remove(&key);
        let _ = TC_PENDING.insert(key, now, BPF_ANY as u64);
        return None;
    }
    if flags & TCP_FLAG_ACK == 0 {
        return None;
    }
    // Only the segment that completes the handshake (pure ACK or first
    // data) is read: options on later segments are the client's own.
    // Removing the mark is the test: one segment per handshake wins.
    TC_PENDING.remove(&key).ok()?;
    let options = TcpOptions::of_header(l4, end)?;
    let located = match walk_options(&options, &config.formats) {
        Walk::Found(located) => located,
        Walk::Malformed(reason) => {
            bump(Counter::malformed(reason));
            return None;
        }
        Walk::NotFound => return None,
    };
    if located.repeated {
        bump(Counter::RepeatedOption);
    }
    let client = match arbitrate(&options, located, &config.formats) {
        Claim::Client(client) => client,
        Claim::Conflicting => {
            bump(Counter::ConflictingOptions);
            return None;
        }
        Claim::Broken => return None,
    };
    if !plausible_client(&client.addr) {
        bump(Counter::ImplausibleClient);
        return None;
    }
    let record = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch slot is ours until the program returns.
    let record = unsafe { &mut *record };
    record.fill_decoded(
        &client,
        &config.formats,
        (key.peer_addr, key.peer_port),
        (key.local_addr, key.local_port),
        now,
    );
    // The first trusted option of a connection stands.
    if TC_RECORDS.insert(key, &*record, BPF_NOEXIST as u64).is_ok() {
        bump(Counter::TcDecoded);
    }
    Some(())
}
