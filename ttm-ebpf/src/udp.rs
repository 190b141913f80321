//! The UDP marking decoder at TC ingress (`--udp-interface`): reads the
//! client a trusted LB marked a datagram with (DPVS's UOA: an IPv4 option,
//! or an opp header between the IP and UDP headers), files it as the flow's
//! in `UDP_FLOWS`, and keeps live flows fresh. opp headers of trusted
//! datagrams are removed (the socket gets plain UDP, its checksum still
//! right: the LB computed it over the UDP header); marking-only datagrams
//! (empty payload) are dropped once filed. Every other datagram goes up
//! unchanged: the program returns "continue" (TC_ACT_UNSPEC) for all but
//! those markers.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_EXIST, BPF_F_RECOMPUTE_CSUM, BPF_NOEXIST, TC_ACT_SHOT, TC_ACT_UNSPEC,
    },
    helpers::bpf_ktime_get_ns,
    macros::classifier,
    programs::TcContext,
    EbpfContext,
};
use ttm_common::{
    addr::v4_mapped,
    arbitrate, plausible_client,
    udp::{on_marking, refresh_due, Marked, UdpFlow, UdpFlowKey, AMBIGUOUS},
    uoa::{family_fits, opp_fixed, IPPROTO_OPP, OPP_FIXED_LEN, UOA_FORMATS},
    Addr16, Claim, ClientAddr, Counter, Walk,
};

use crate::{
    counters::bump,
    maps::{CONFIG, UDP_FLOWS, UDP_PARSED},
    packet::TcpOptions,
    sockops::is_trusted,
    tc::{header, network_header, ETH_P_IP, ETH_P_IPV6},
    walk::walk_options,
};

const IPPROTO_UDP: u8 = 17;
const UDP_HLEN: usize = 8;
/// `errno` values as the map helpers return them, negated.
const E2BIG: i32 = 7;
const ENOMEM: i32 = 12;

/// Where the datagram's marking sits.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Carrier {
    /// No marking can be there: plain UDP.
    None = 0,
    /// IPv4 options.
    IpOptions = 1,
    /// An opp header (IPv4 or IPv6).
    Opp = 2,
}

/// What the headers said, kept in map memory between the parse and the
/// option walk so every way through the headers continues as one verifier
/// state.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpParsed {
    /// The datagram's source (the LB), v4-mapped.
    pub src: Addr16,
    /// Its destination (this server), v4-mapped.
    pub dst: Addr16,
    /// Offset of the IP header from the packet's start.
    pub l3: u32,
    /// Offset of the option area.
    pub area: u32,
    /// Its length.
    pub area_len: u32,
    /// Offset of the UDP header.
    pub udp: u32,
    /// Bytes of the opp header (0 without one).
    pub opp_len: u32,
    /// [`Carrier`] value.
    pub carrier: u8,
    /// opp version (0 without one).
    pub opp_version: u8,
    /// 1 for an IPv6 header.
    pub v6: u8,
    /// 1 when the opp header sits right after the fixed IP header, where
    /// the kernel can remove it.
    pub removable: u8,
}

#[classifier]
pub fn ttm_udp_ingress(ctx: TcContext) -> i32 {
    if inbound(&ctx) == Some(Verdict::Drop) {
        TC_ACT_SHOT
    } else {
        TC_ACT_UNSPEC
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
}

#[inline(never)]
fn inbound(ctx: &TcContext) -> Option<Verdict> {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: context fields at constant offsets.
    let (data, end) = unsafe {
        (
            read_volatile(&(*skb).data) as usize,
            read_volatile(&(*skb).data_end) as usize,
        )
    };
    parse(data, end)?;
    let parsed = UDP_PARSED.get_ptr_mut(0)?;
    // SAFETY: the per-CPU slot is ours until the program returns; volatile
    // so the values come back from map memory.
    let (carrier, udp) = unsafe {
        (
            read_volatile(&raw const (*parsed).carrier),
            read_volatile(&raw const (*parsed).udp),
        )
    };
    // SAFETY: as above.
    let parsed = unsafe { &*parsed };
    // Masked far below the 64 KiB packet-offset limit the verifier tracks.
    let udp_at = data + (udp as usize & 0x3ff);
    let udp_header: [u8; UDP_HLEN] = header(udp_at, end)?;
    let key = UdpFlowKey {
        lb_addr: parsed.src,
        lb_port: u16::from_be_bytes([udp_header[0], udp_header[1]]),
        local_port: u16::from_be_bytes([udp_header[2], udp_header[3]]),
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if carrier == Carrier::None as u8 {
        refresh(&key, &parsed.dst, now);
        return Some(Verdict::Pass);
    }
    let config = CONFIG.get(0)?;
    let trusted = config.trust_any != 0 || is_trusted(&parsed.src);
    // SAFETY: as above.
    let (area, area_len) = unsafe {
        (
            read_volatile(&raw const parsed.area) as usize & 0x3ff,
            read_volatile(&raw const parsed.area_len) as usize & 0x3f,
        )
    };
    let options = TcpOptions::area(data + area, area_len, end);
    // What the marking says; a broken one (counted, when trusted) names
    // no client.
    let walk = walk_options(&options, &UOA_FORMATS);
    if !trusted {
        if carrier == Carrier::Opp as u8 || !matches!(walk, Walk::NotFound) {
            bump(Counter::UdpUntrusted);
        }
        return Some(Verdict::Pass);
    }
    let client = match walk {
        Walk::Found(located) => match arbitrate(&options, located, &UOA_FORMATS) {
            Claim::Client(client) => Some(client),
            Claim::Conflicting => {
                bump(Counter::UdpConflicting);
                None
            }
            Claim::Broken => {
                bump(Counter::UdpMalformed);
                None
            }
        },
        Walk::NotFound => None,
        Walk::Malformed(_) => {
            bump(Counter::UdpMalformed);
            None
        }
    };
    let client = client.filter(|c| {
        let fits = plausible_client(&c.addr)
            && (carrier != Carrier::Opp as u8 || family_fits(parsed.opp_version, c));
        if !fits {
            bump(Counter::UdpMalformed);
        }
        fits
    });
    if let Some(client) = client {
        file(&key, &parsed.dst, &client, now);
        let udp_len = u16::from_be_bytes([udp_header[4], udp_header[5]]);
        if usize::from(udp_len) == UDP_HLEN {
            // A marker, never app data.
            bump(Counter::UdpMarkersDropped);
            return Some(Verdict::Drop);
        }
    } else {
        refresh(&key, &parsed.dst, now);
    }
    // A trusted LB's opp header goes, whatever its options said: the
    // datagram is the LB's and reaches the app as plain UDP.
    if carrier == Carrier::Opp as u8 {
        unwrap_opp(ctx, parsed);
    }
    Some(Verdict::Pass)
}

/// Reads the Ethernet and IP headers into `UDP_PARSED`; `None` for anything
/// that is not a UDP datagram (or an opp-wrapped one) with its UDP header.
#[inline(always)]
fn parse(data: usize, end: usize) -> Option<()> {
    let (l3, proto) = network_header(data, end)?;
    let parsed = UDP_PARSED.get_ptr_mut(0)?;
    // SAFETY: the per-CPU slot is ours until the program returns.
    let parsed = unsafe { &mut *parsed };
    parsed.l3 = l3 as u32;
    parsed.opp_len = 0;
    parsed.opp_version = 0;
    parsed.removable = 0;
    let (next, l4) = match proto {
        ETH_P_IP => {
            let ip: [u8; 20] = header(data + l3, end)?;
            if ip[0] >> 4 != 4 {
                return None;
            }
            // Later fragments carry no UDP header; a first one keeps its
            // opp header (its fragments would no longer reassemble).
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            if frag & 0x1fff != 0 {
                return None;
            }
            let more_fragments = frag & 0x2000 != 0;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            parsed.src = v4_mapped([ip[12], ip[13], ip[14], ip[15]]);
            parsed.dst = v4_mapped([ip[16], ip[17], ip[18], ip[19]]);
            parsed.v6 = 0;
            parsed.area = (l3 + 20) as u32;
            parsed.area_len = (ihl - 20) as u32;
            parsed.removable = u8::from(ihl == 20 && !more_fragments);
            (ip[9], l3 + ihl)
        }
        ETH_P_IPV6 => {
            let ip: [u8; 40] = header(data + l3, end)?;
            if ip[0] >> 4 != 6 {
                return None;
            }
            parsed.src.copy_from_slice(&ip[8..24]);
            parsed.dst.copy_from_slice(&ip[24..40]);
            parsed.v6 = 1;
            parsed.area = (l3 + 40) as u32;
            parsed.area_len = 0;
            // Extension headers are not followed: DPVS puts opp first.
            parsed.removable = 1;
            (ip[6], l3 + 40)
        }
        _ => return None,
    };
    match next {
        IPPROTO_UDP => {
            parsed.carrier = if parsed.area_len > 0 {
                Carrier::IpOptions as u8
            } else {
                Carrier::None as u8
            };
            parsed.udp = l4 as u32;
        }
        IPPROTO_OPP => {
            let fixed: [u8; OPP_FIXED_LEN] = header(data + l4, end)?;
            let Ok((version, len)) = opp_fixed(fixed) else {
                let trusted =
                    is_trusted(&parsed.src) || CONFIG.get(0).is_some_and(|c| c.trust_any != 0);
                bump(if trusted {
                    Counter::UdpMalformed
                } else {
                    Counter::UdpUntrusted
                });
                return None;
            };
            parsed.carrier = Carrier::Opp as u8;
            parsed.opp_version = version;
            parsed.opp_len = len as u32;
            parsed.area = (l4 + OPP_FIXED_LEN) as u32;
            parsed.area_len = (len - OPP_FIXED_LEN) as u32;
            parsed.udp = (l4 + len) as u32;
        }
        _ => return None,
    }
    Some(())
}

/// Keeps a live flow fresh: at most one write a second.
#[inline(always)]
fn refresh(key: &UdpFlowKey, local: &Addr16, now: u64) {
    let Some(flow) = UDP_FLOWS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a live map value; one aligned 8-byte store.
    unsafe {
        if refresh_due(&*flow, local, now) {
            write_volatile(&raw mut (*flow).seen_ns, now);
        }
    }
}

/// Files `client` for the flow `key` went to `local` on, by the rules of
/// [`on_marking`]. A replaced or ambiguous flow is written whole (readers
/// see the old flow or the new, never half of each).
#[inline(always)]
fn file(key: &UdpFlowKey, local: &Addr16, client: &ClientAddr, now: u64) {
    // SAFETY: a live map value, copied out.
    let existing = UDP_FLOWS.get_ptr(key).map(|f| unsafe { *f });
    match on_marking(existing.as_ref(), local, client) {
        Marked::New => {
            let flow = UdpFlow::new(local, client, now);
            match UDP_FLOWS.insert(key, &flow, BPF_NOEXIST as u64) {
                Ok(()) => bump(Counter::UdpDecoded),
                // Full (or out of memory): refused; a flow filed by another
                // CPU a moment earlier is not a refusal.
                Err(e) if e == -E2BIG || e == -ENOMEM => bump(Counter::UdpRefused),
                Err(_) => {}
            }
        }
        Marked::Same => refresh(key, local, now),
        Marked::Replaced => {
            let flow = UdpFlow::new(local, client, now);
            if UDP_FLOWS.insert(key, &flow, BPF_EXIST as u64).is_ok() {
                bump(Counter::UdpReplaced);
            }
        }
        Marked::Ambiguous => {
            let Some(mut flow) = existing else { return };
            if flow.answers() {
                flow.flags |= AMBIGUOUS;
                flow.seen_ns = now;
                if UDP_FLOWS.insert(key, &flow, BPF_EXIST as u64).is_ok() {
                    bump(Counter::UdpConflicting);
                }
            } else {
                refresh(key, &flow.local_addr, now);
            }
        }
    }
}

/// Removes the opp header of a trusted datagram and makes its IP header
/// say UDP again. Where it cannot (IPv4 options before the opp header, a
/// first fragment, a kernel refusal), the datagram goes up as it came,
/// counted as malformed.
#[inline(always)]
fn unwrap_opp(ctx: &TcContext, parsed: &UdpParsed) {
    let len = parsed.opp_len & 0x3f;
    let l3 = (parsed.l3 & 0x3f) as usize;
    if parsed.removable == 0 || ctx.adjust_room(-(len as i32), 0, 0).is_err() {
        bump(Counter::UdpMalformed);
        return;
    }
    let ok = if parsed.v6 != 0 {
        let Ok(payload) = ctx.load::<[u8; 2]>(l3 + 4) else {
            return;
        };
        let payload = u16::from_be_bytes(payload).wrapping_sub(len as u16);
        ctx.store(l3 + 4, &payload.to_be_bytes(), BPF_F_RECOMPUTE_CSUM as u64)
            .is_ok()
            && ctx
                .store(l3 + 6, &IPPROTO_UDP, BPF_F_RECOMPUTE_CSUM as u64)
                .is_ok()
    } else {
        let (Ok(total), Ok(ttl_proto)) = (ctx.load::<[u8; 2]>(l3 + 2), ctx.load::<[u8; 2]>(l3 + 8))
        else {
            return;
        };
        let old_total = u16::from_ne_bytes(total);
        let new_total = (u16::from_be_bytes(total).wrapping_sub(len as u16)).to_be();
        let old_tp = u16::from_ne_bytes(ttl_proto);
        let new_tp = u16::from_ne_bytes([ttl_proto[0], IPPROTO_UDP]);
        ctx.store(l3 + 2, &new_total, 0).is_ok()
            && ctx.store(l3 + 8, &new_tp, 0).is_ok()
            && ctx
                .l3_csum_replace(l3 + 10, u64::from(old_total), u64::from(new_total), 2)
                .is_ok()
            && ctx
                .l3_csum_replace(l3 + 10, u64::from(old_tp), u64::from(new_tp), 2)
                .is_ok()
    };
    if ok {
        bump(Counter::UdpUnwrapped);
    }
}
