//! PROXY protocol at the interface (`--proxy-interface`): the TC programs
//! cut each header out of the stream before TCP sees it, so the connection
//! never takes the kernel's sockmap receive path (which on Linux 6.18 can
//! return `EAGAIN` to blocking reads and, under bulk load, deliver a segment
//! twice: BENCHMARKS.md). Per handshake from a trusted peer to a PROXY port:
//!
//! 1. The SYN: followed in `PROXY_SYNS` from its initial sequence number.
//! 2. The bare ACK that would complete the handshake is held back (dropped;
//!    the proxy's next segment acknowledges the same), so the socket is made
//!    by the first data segment, after its header is read: `accept()` never
//!    returns the connection before its client is known. This is what
//!    `TCP_DEFER_ACCEPT` does, without its need for client bytes.
//! 3. The first data segment: its header is read (the client filed in
//!    `TC_RECORDS`, which sockops takes into the new socket), cut out, and
//!    the connection filed in `PROXY_FLOWS` ([`SeqShift`]).
//! 4. From then on every inbound segment is renumbered down by the header's
//!    length (header bytes of a retransmission cut too), every outbound
//!    acknowledgment and SACK edge up by it (`ttm_tc_egress`).
//!
//! A first segment without a header, or one whose header comes in pieces,
//! is left as it is: sockops leaves the first unwatched, and the second to
//! the stream-verdict program (the sockmap path, `proxy_kept`).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{__sk_buff, BPF_ANY, BPF_F_RECOMPUTE_CSUM, BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::{
        bpf_csum_diff, bpf_ktime_get_ns, bpf_skb_change_tail, bpf_skb_load_bytes,
        bpf_skb_store_bytes,
    },
    macros::classifier,
    programs::TcContext,
    EbpfContext,
};
use ttm_common::{
    addr::v4_mapped,
    maps::{proxy_flags, syn_phase, CutJob, ProxySyn, TcKey, PROXY_HOLD_NS},
    proxy::{parse_with, HeaderBuf, Parsed, ProxyClient, ProxyVersion, MAX_HEADER_LEN},
    record::PROXY_PENDING_FORMAT,
    shift::{csum, SeqShift},
    Addr16, Counter, PeerRecord,
};

use crate::{
    counters::bump,
    maps::{
        CONFIG, CUT_BUF, CUT_JOB, PROXY_FLOWS, PROXY_INGRESS_BUF, PROXY_PORTS, PROXY_SYNS,
        PROXY_TAIL, PROXY_TLV_STASH, SCRATCH, SEGMENT, TC_RECORDS,
    },
    proxy::{byte_bound, nonzero_len, walk_v1_in, WalkSlot},
    sockops::is_trusted,
    tc::{ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP},
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_SACK: u8 = 5;
/// Slot of `PROXY_INGRESS_BUF` the TC programs use (the cgroup ingress
/// program has slot 0; TC ingress and egress never nest on a CPU).
const BUF_SLOT: u32 = 1;
/// Bytes moved per step when a cut moves a payload up (`CUT_BUF`'s size).
pub const CHUNK: usize = 16_384;
/// Steps of a move: payloads up to 64 KiB (a GRO or GSO segment; larger
/// ones, BIG TCP's, are not cut: their IP length field is 0).
const MAX_CHUNKS: usize = 4;

/// A TCP segment as these programs need it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Segment {
    /// Offset of the IP header.
    l3: usize,
    /// IPv4 (else IPv6 without extension headers).
    v4: bool,
    /// IP header length (IPv4 options included).
    ip_hlen: usize,
    /// TCP header length.
    tcp_hlen: usize,
    /// Payload bytes, by the IP length (link padding not counted).
    payload_len: usize,
    seq: u32,
    ack: u32,
    flags: u8,
    /// The connection as the real server sees it.
    key: TcKey,
}

impl Segment {
    fn l4(&self) -> usize {
        self.l3 + self.ip_hlen
    }
    fn payload(&self) -> usize {
        self.l4() + self.tcp_hlen
    }
}

/// What the TC ingress program does with a segment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Let it through (renumbered, if it is a cut connection's).
    Pass,
    /// Drop it: a held handshake ACK (see the module doc).
    Hold,
    /// Hand it to the tail program in this `PROXY_TAIL` slot, as
    /// `CUT_JOB` says.
    Tail(u32),
}

/// `PROXY_TAIL` slot of `ttm_tc_cut`.
pub const CUT_SLOT: u32 = 0;
/// `PROXY_TAIL` slot of `ttm_tc_first`.
pub const FIRST_SLOT: u32 = 1;

/// TC ingress, in a frame of its own: see [`Step`].
#[inline(never)]
pub fn inbound(ctx: &TcContext) -> Step {
    on_inbound(ctx).unwrap_or(Step::Pass)
}

#[inline(always)]
fn on_inbound(ctx: &TcContext) -> Option<Step> {
    if CONFIG.get(0)?.proxy_flags & proxy_flags::WATCHING == 0 {
        return None;
    }
    let seg = parse(ctx, false)?;
    PROXY_PORTS.get_ptr(&seg.key.local_port)?;
    if seg.flags & TCP_SYN != 0 {
        if seg.flags & TCP_ACK == 0
            && (CONFIG.get(0)?.trust_any != 0 || is_trusted(&seg.key.peer_addr))
        {
            // A new connection on this tuple: an old one's numbering is gone.
            let _ = PROXY_FLOWS.remove(&seg.key);
            let syn = ProxySyn {
                isn: seg.seq,
                phase: syn_phase::SYN_SEEN,
                // SAFETY: helper without preconditions.
                syn_ns: unsafe { bpf_ktime_get_ns() },
            };
            let _ = PROXY_SYNS.insert(&seg.key, &syn, BPF_ANY as u64);
        }
        return None;
    }
    if let Some(shift) = PROXY_FLOWS.get_ptr(&seg.key) {
        // SAFETY: a live map value, copied.
        let shift = unsafe { *shift };
        let to = shift.inbound(seg.seq, seg.payload_len as u32);
        if to.cut == 0 {
            let _ = replace_u32_at(ctx, &seg, seg.l4() + 4, seg.seq, to.seq);
            return None;
        }
        // Header bytes again (a retransmission): cut in the tail.
        return job(
            CUT_SLOT,
            CutJob {
                first: 0,
                isn: shift.isn,
                cut: to.cut,
                seq: to.seq,
            },
        );
    }
    let syn = PROXY_SYNS.get_ptr(&seg.key)?;
    // SAFETY: a live map value, copied.
    let syn = unsafe { *syn };
    if syn.phase != syn_phase::SYN_SEEN || seg.seq != syn.isn.wrapping_add(1) {
        return None;
    }
    if seg.payload_len == 0 {
        if seg.flags & (TCP_FIN | TCP_RST) != 0 {
            let _ = PROXY_SYNS.remove(&seg.key);
            return None;
        }
        // SAFETY: helper without preconditions.
        if unsafe { bpf_ktime_get_ns() }.wrapping_sub(syn.syn_ns) >= PROXY_HOLD_NS {
            // Nothing came: a peer waiting for the server to speak first.
            return None;
        }
        bump(Counter::ProxyAckHeld);
        return Some(Step::Hold);
    }
    job(
        FIRST_SLOT,
        CutJob {
            first: 1,
            isn: syn.isn,
            cut: 0,
            seq: 0,
        },
    )
}

/// Leaves `job` for the tail program in `slot`.
#[inline(always)]
fn job(slot: u32, job: CutJob) -> Option<Step> {
    let at = CUT_JOB.get_ptr_mut(0)?;
    // SAFETY: the per-CPU slot is ours until the tail returns.
    unsafe { *at = job };
    Some(Step::Tail(slot))
}

/// A tail of the TC ingress program: reads the header off a connection's
/// first data segment, files the client and the renumbering, then hands
/// the cut to `ttm_tc_cut` (a tail again: each program is verified apart).
/// Always returns `TC_ACT_UNSPEC`.
#[classifier]
pub fn ttm_tc_first(ctx: TcContext) -> i32 {
    let Some(job) = CUT_JOB.get_ptr_mut(0) else {
        return TC_ACT_UNSPEC;
    };
    let Some(seg) = parse(&ctx, false).and_then(through_memory) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: the per-CPU slot is ours until the tail returns.
    let isn = unsafe { (*job).isn };
    let Some(len) = first_data(&ctx, &seg, isn) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: as above.
    unsafe {
        (*job).cut = len as u32;
        (*job).seq = isn.wrapping_add(1);
        PROXY_TAIL.tail_call(&ctx, CUT_SLOT);
    }
    // Not reached unless the tail call failed: the socket is made with the
    // header in its stream, and the verdict program removes it.
    let _ = PROXY_FLOWS.remove(&seg.key);
    bump(Counter::ProxyKept);
    TC_ACT_UNSPEC
}

/// `seg` written to map memory and read back: every way `parse` took (IPv4
/// or IPv6, a VLAN tag or none, header lengths) then continues as one
/// verifier state, or the header walks after it are verified once per way
/// (too many for the verifiers of Linux 5.10 and 6.1).
#[inline(always)]
fn through_memory(seg: Segment) -> Option<&'static Segment> {
    let slot = SEGMENT.get_ptr_mut(0)?;
    // SAFETY: the per-CPU slot is ours until the program returns; written
    // volatile and read through an opaque pointer, so the reads are real.
    unsafe {
        core::ptr::write_volatile(slot, seg);
        Some(&*core::hint::black_box(slot))
    }
}

/// A tail of the TC ingress program: cuts the bytes `CUT_JOB` names out of
/// the segment. Always returns `TC_ACT_UNSPEC`.
#[classifier]
pub fn ttm_tc_cut(ctx: TcContext) -> i32 {
    let _ = run_cut(&ctx);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn run_cut(ctx: &TcContext) -> Option<()> {
    let job = CUT_JOB.get_ptr(0)?;
    // SAFETY: the per-CPU slot, copied.
    let job = unsafe { *job };
    let seg = parse(ctx, false)?;
    let changed = cut(ctx, &seg, job.cut as usize, job.seq);
    if job.first != 0 {
        if changed {
            let _ = PROXY_SYNS.remove(&seg.key);
            bump(Counter::ProxyCut);
        } else {
            // Nothing changed: the socket is made with the header in its
            // stream, and the verdict program removes it.
            let _ = PROXY_FLOWS.remove(&seg.key);
            bump(Counter::ProxyKept);
        }
    }
    Some(())
}

/// The connection's first data segment (the socket does not exist yet):
/// reads the header, files the client and the connection's renumbering.
/// Returns the header's length, to cut.
#[inline(always)]
fn first_data(ctx: &TcContext, seg: &Segment, isn: u32) -> Option<usize> {
    let buf = PROXY_INGRESS_BUF.get_ptr_mut(BUF_SLOT)?;
    // SAFETY: the per-CPU slot is ours until the program returns.
    let buf = unsafe { &mut *buf };
    read_head(ctx.as_ptr(), seg.payload(), seg.payload_len, buf)?;
    let take = buf.len as usize;
    let len = match parse_with(buf, |b| walk_v1_in(b, WalkSlot::Tc)) {
        Parsed::Header {
            len,
            version,
            client,
            tlv_offset,
        } => {
            match client {
                Some(client) => {
                    file_early(seg, &client, version)?;
                    if tlv_offset < len {
                        let _ = stash_tlvs(ctx, seg, usize::from(len));
                    }
                }
                None => bump(Counter::ProxyNoClient),
            }
            usize::from(len)
        }
        Parsed::Refused { len, .. } if (len as usize) <= take => {
            bump(Counter::ProxyRefused);
            len as usize
        }
        Parsed::NotProxy => {
            if let Some(syn) = PROXY_SYNS.get_ptr_mut(&seg.key) {
                // SAFETY: a live map value.
                unsafe { (*syn).phase = syn_phase::ABSENT };
            }
            return None;
        }
        // In pieces, unframed, or longer than it can cut: the verdict
        // program's, on the stream.
        _ => {
            bump(Counter::ProxyKept);
            return None;
        }
    };
    let shift = SeqShift {
        isn,
        len: len as u32,
    };
    if PROXY_FLOWS
        .insert(&seg.key, &shift, BPF_NOEXIST as u64)
        .is_err()
    {
        // Full: the verdict program removes this header instead.
        bump(Counter::ProxyKept);
        return None;
    }
    Some(len)
}

/// Loads the first bytes of a payload of `available` bytes at `at` (at most
/// a header's 255) into `buf`, for `parse_with`. `skb` is the context of a
/// program that may call `bpf_skb_load_bytes` (TC or cgroup skb).
#[inline(always)]
fn read_head(skb: *mut c_void, at: usize, available: usize, buf: &mut HeaderBuf) -> Option<()> {
    let take = byte_bound(if available < MAX_HEADER_LEN {
        available
    } else {
        MAX_HEADER_LEN
    });
    if take == 0 {
        return None;
    }
    // SAFETY: `take` ≤ 255 bytes into the 512-byte buffer of a map value.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            skb,
            at as u32,
            buf.bytes.as_mut_ptr().cast(),
            nonzero_len(take) as u32,
        )
    };
    if loaded != 0 {
        return None;
    }
    buf.len = take as u32;
    Some(())
}

/// Files `client` under the 4-tuple in `TC_RECORDS`, as the cgroup ingress
/// program does (its own copy: that program's form is what older verifiers
/// accept); sockops takes it into the new socket.
#[inline(always)]
fn file_early(seg: &Segment, client: &ProxyClient, version: ProxyVersion) -> Option<()> {
    let record = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch slot is ours until the program returns.
    let record = unsafe { &mut *record };
    *record = PeerRecord::ZERO;
    record.set_tuple(
        (seg.key.peer_addr, seg.key.peer_port),
        (seg.key.local_addr, seg.key.local_port),
    );
    record.format_index = PROXY_PENDING_FORMAT;
    // SAFETY: helper without preconditions.
    record.fill_proxy(client, version, unsafe { bpf_ktime_get_ns() });
    // The newest handshake of a tuple wins; sockops takes it at once.
    let _ = TC_RECORDS.insert(&seg.key, &*record, BPF_ANY as u64);
    Some(())
}

/// An empty header buffer, the stash's starting value.
static EMPTY_HEAD: HeaderBuf = HeaderBuf {
    bytes: [0; ttm_common::proxy::HEADER_BUF_LEN],
    len: 0,
};

/// Keeps a v2 header with TLVs (nothing past the header: the entry starts
/// empty and takes the header's bytes from the packet) for sockops to file
/// under the socket's cookie.
#[inline(always)]
fn stash_tlvs(ctx: &TcContext, seg: &Segment, len: usize) -> Option<()> {
    let len = byte_bound(len);
    if len == 0 {
        return None;
    }
    PROXY_TLV_STASH
        .insert(&seg.key, &EMPTY_HEAD, BPF_ANY as u64)
        .ok()?;
    let head = PROXY_TLV_STASH.get_ptr_mut(&seg.key)?;
    // SAFETY: a live map value; ≤ 256 bytes into its 512-byte buffer.
    unsafe {
        if bpf_skb_load_bytes(
            ctx.as_ptr().cast(),
            seg.payload() as u32,
            (*head).bytes.as_mut_ptr().cast(),
            nonzero_len(len) as u32,
        ) != 0
        {
            let _ = PROXY_TLV_STASH.remove(&seg.key);
            return None;
        }
        (*head).len = len as u32;
    }
    Some(())
}

/// Cuts the first `n` payload bytes (at most a header's 255) out of the
/// segment and gives it sequence number `seq`. The TCP header stays where
/// it is (a checksum offload's offsets keep pointing at it): the rest of
/// the payload moves up, the tail is trimmed; the IP length, the IPv4
/// header checksum and the TCP checksum follow, the last from header sums
/// only ([`csum::after_cut`]). False if nothing was changed; a failure
/// later leaves a segment TCP drops as corrupt, and the peer's
/// retransmission is cut again.
#[inline(always)]
fn cut(ctx: &TcContext, seg: &Segment, n: usize, seq: u32) -> bool {
    cut_inner(ctx, seg, n, seq).unwrap_or(false)
}

#[inline(always)]
fn cut_inner(ctx: &TcContext, seg: &Segment, n: usize, seq: u32) -> Option<bool> {
    if n == 0 || n > MAX_HEADER_LEN || n > seg.payload_len || seg.tcp_hlen > 60 {
        return Some(false);
    }
    let buf = PROXY_INGRESS_BUF.get_ptr_mut(BUF_SLOT)?;
    // SAFETY: the per-CPU slot is ours until the program returns.
    let buf = unsafe { &mut *buf };
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    let l4 = seg.l4();
    let check: u16 = ctx.load(l4 + 16).ok()?;
    let partial = checksum_is_partial(ctx, l4 + 16, check)?;
    // The TCP header's sum (its checksum field counted out) and the cut
    // bytes' sum, before anything moves.
    let hlen = seg.tcp_hlen & 0x3c;
    // SAFETY: ≤ 60 bytes into the 512-byte buffer of a map value.
    if hlen < 20
        || unsafe {
            bpf_skb_load_bytes(
                skb.cast(),
                l4 as u32,
                buf.bytes.as_mut_ptr().cast(),
                nonzero_len(hlen) as u32,
            )
        } != 0
    {
        return Some(false);
    }
    let header_old = csum::sub(sum_of(buf, 0, hlen)?, u32::from(check));
    let seq_old = csum::of_bytes(&seg.seq.to_be_bytes());
    let header_new = csum::add(
        csum::sub(header_old, seq_old),
        csum::of_bytes(&seq.to_be_bytes()),
    );
    let n = byte_bound(n);
    // SAFETY: 1..=256 bytes into the buffer past the header's 60.
    if unsafe {
        bpf_skb_load_bytes(
            skb.cast(),
            seg.payload() as u32,
            buf.bytes.as_mut_ptr().add(64).cast(),
            nonzero_len(n) as u32,
        )
    } != 0
    {
        return Some(false);
    }
    let removed = sum_of(buf, 64, n)?;
    let l4_len = seg.tcp_hlen + seg.payload_len - n;
    let (pseudo_old, pseudo_new) = (
        pseudo_sum(seg, seg.tcp_hlen + seg.payload_len),
        pseudo_sum(seg, l4_len),
    );
    // The payload after the cut moves up, a chunk at a time.
    let rest = seg.payload_len - n;
    if rest > CHUNK * MAX_CHUNKS {
        return Some(false);
    }
    let payload = seg.payload();
    let chunk = CUT_BUF.get_ptr_mut(0)?;
    for i in 0..MAX_CHUNKS {
        let off = i * CHUNK;
        if off >= rest {
            break;
        }
        let len = chunk_len(if rest - off < CHUNK {
            rest - off
        } else {
            CHUNK
        });
        // SAFETY (both): 1..=16,384 bytes of the 16 KiB per-CPU buffer.
        unsafe {
            if bpf_skb_load_bytes(
                skb.cast(),
                (payload + n + off) as u32,
                chunk.cast(),
                len as u32,
            ) != 0
                || bpf_skb_store_bytes(
                    skb,
                    (payload + off) as u32,
                    chunk.cast(),
                    len as u32,
                    u64::from(BPF_F_RECOMPUTE_CSUM),
                ) != 0
            {
                return Some(true);
            }
        }
    }
    // SAFETY: helper valid in TC programs; shrinking only.
    if unsafe { bpf_skb_change_tail(skb, (l4 + l4_len) as u32, 0) } != 0 {
        return Some(true);
    }
    fix_lengths(ctx, seg, l4_len)?;
    ctx.store(l4 + 4, &seq.to_be(), u64::from(BPF_F_RECOMPUTE_CSUM))
        .ok()?;
    let check = if partial {
        // An offloaded checksum holds the pseudo-header's sum only.
        csum::fold(pseudo_new)
    } else {
        csum::after_cut(
            check,
            (pseudo_old, pseudo_new),
            (header_old, header_new),
            removed,
            n % 2 == 1,
        )
    };
    ctx.store(l4 + 16, &check, u64::from(BPF_F_RECOMPUTE_CSUM))
        .ok()?;
    Some(true)
}

/// Whether the segment's TCP checksum is left to offload
/// (`CHECKSUM_PARTIAL`: the field holds the pseudo-header's sum), which a
/// program cannot read: the checksum helper changes the field for every
/// other kind and leaves it alone for that one. The field is put back.
#[inline(always)]
fn checksum_is_partial(ctx: &TcContext, at: usize, check: u16) -> Option<bool> {
    ctx.l4_csum_replace(at, 0, 1, 0).ok()?;
    let probed: u16 = ctx.load(at).ok()?;
    ctx.store(at, &check, 0).ok()?;
    Some(probed == check)
}

/// The one's-complement sum of `len` buffer bytes from `at` (zero-padded to
/// a whole word).
#[inline(always)]
fn sum_of(buf: &mut HeaderBuf, at: usize, len: usize) -> Option<u32> {
    let at = at & 0x7f;
    let len = len & 0x1ff;
    if at + len + 4 > buf.bytes.len() {
        return None;
    }
    // SAFETY: inside the buffer, checked just above.
    unsafe {
        core::ptr::write_unaligned(
            buf.bytes.as_mut_ptr().add(at + len).cast::<[u8; 4]>(),
            [0; 4],
        )
    };
    // Masked in a register LLVM cannot see through: older verifiers (6.12)
    // otherwise lose the bound on the way to the helper.
    let mut words = len + 3;
    // SAFETY: a register-only AND; no memory is touched.
    unsafe { core::arch::asm!("{0} &= 0x1fc", inout(reg) words, options(pure, nomem, nostack)) };
    let words = words as u32;
    // SAFETY: `words` bytes from `at`, inside the buffer (checked above).
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            buf.bytes.as_mut_ptr().add(at).cast(),
            words,
            0,
        )
    };
    (sum >= 0).then_some(sum as u32)
}

/// The TCP pseudo-header's sum for a segment of `l4_len` bytes.
#[inline(always)]
fn pseudo_sum(seg: &Segment, l4_len: usize) -> u32 {
    csum::pseudo_sum(
        &seg.key.peer_addr,
        &seg.key.local_addr,
        seg.v4,
        l4_len as u32,
    )
}

/// The IP length after a cut to `l4_len` TCP bytes.
#[inline(always)]
fn fix_lengths(ctx: &TcContext, seg: &Segment, l4_len: usize) -> Option<()> {
    if seg.v4 {
        let old: [u8; 2] = ctx.load(seg.l3 + 2).ok()?;
        let new = ((seg.ip_hlen + l4_len) as u16).to_be();
        // The header checksum moves with it: the header's sum is unchanged.
        ctx.store(seg.l3 + 2, &new, 0).ok()?;
        ctx.l3_csum_replace(
            seg.l3 + 10,
            u64::from(u16::from_ne_bytes(old)),
            u64::from(new),
            2,
        )
        .ok()
    } else {
        let new = (l4_len as u16).to_be();
        ctx.store(seg.l3 + 4, &new, u64::from(BPF_F_RECOMPUTE_CSUM))
            .ok()
    }
}

/// `v`, known to be in 1..=16,384, as a value the verifier sees so.
#[inline(always)]
fn chunk_len(v: usize) -> usize {
    let mut v = v;
    // SAFETY: register-only arithmetic; no memory is touched.
    unsafe {
        core::arch::asm!(
            "{0} -= 1",
            "{0} &= 16383",
            "{0} += 1",
            inout(reg) v,
            options(pure, nomem, nostack)
        )
    };
    v
}

/// TC egress on `--proxy-interface`s: the real server's acknowledgments
/// and SACK edges on cut connections, moved up by the header's length.
/// Always returns `TC_ACT_UNSPEC`.
#[classifier]
pub fn ttm_tc_egress(ctx: TcContext) -> i32 {
    let _ = on_outbound(&ctx);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn on_outbound(ctx: &TcContext) -> Option<()> {
    if CONFIG.get(0)?.proxy_flags & proxy_flags::WATCHING == 0 {
        return None;
    }
    let seg = parse(ctx, true)?;
    PROXY_PORTS.get_ptr(&seg.key.local_port)?;
    let shift = PROXY_FLOWS.get_ptr(&seg.key)?;
    // SAFETY: a live map value, copied.
    let shift = unsafe { *shift };
    if seg.flags & TCP_ACK != 0 {
        replace_u32_at(ctx, &seg, seg.l4() + 8, seg.ack, shift.outbound(seg.ack))?;
    }
    if seg.tcp_hlen > 20 {
        sack_edges(ctx, &seg, &shift);
    }
    Some(())
}

/// Writes `new` over the 32-bit TCP field at `at` (it held `old`), the TCP
/// checksum following.
#[inline(always)]
fn replace_u32_at(ctx: &TcContext, seg: &Segment, at: usize, old: u32, new: u32) -> Option<()> {
    if old == new {
        return Some(());
    }
    let (old, new) = (old.to_be(), new.to_be());
    ctx.store(at, &new, 0).ok()?;
    ctx.l4_csum_replace(seg.l4() + 16, u64::from(old), u64::from(new), 4)
        .ok()
}

/// Moves the edges of a SACK option up by the header's length.
#[inline(always)]
fn sack_edges(ctx: &TcContext, seg: &Segment, shift: &SeqShift) {
    let options_len = seg.tcp_hlen - 20;
    let base = seg.l4() + 20;
    let mut i = 0usize;
    // At most 40 option bytes; a NOP or a kind/length pair per step.
    for _ in 0..40 {
        if i + 2 > options_len {
            return;
        }
        let Ok(kind) = ctx.load::<u8>(base + i) else {
            return;
        };
        match kind {
            TCPOPT_EOL => return,
            TCPOPT_NOP => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let Ok(len) = ctx.load::<u8>(base + i + 1) else {
            return;
        };
        let len = usize::from(len);
        if len < 2 || i + len > options_len {
            return;
        }
        if kind == TCPOPT_SACK {
            // Up to 4 blocks of (left, right) edges.
            for edge in 0..8 {
                let at = 2 + edge * 4;
                if at + 4 > len {
                    break;
                }
                let Ok(raw) = ctx.load::<[u8; 4]>(base + i + at) else {
                    return;
                };
                let old = u32::from_be_bytes(raw);
                let _ = replace_u32_at(ctx, seg, base + i + at, old, shift.outbound(old));
            }
            return;
        }
        i += len;
    }
}

/// The TCP segment in `ctx`: Ethernet with at most one VLAN tag, IPv4
/// (not a fragment) or IPv6 without extension headers. `outbound`: the
/// real server is the source.
#[inline(always)]
fn parse(ctx: &TcContext, outbound: bool) -> Option<Segment> {
    let ether: [u8; 2] = ctx.load(12).ok()?;
    let (l3, proto) = match u16::from_be_bytes(ether) {
        ETH_P_8021Q => {
            let inner: [u8; 2] = ctx.load(16).ok()?;
            (ETH_HLEN + 4, u16::from_be_bytes(inner))
        }
        p => (ETH_HLEN, p),
    };
    let (v4, ip_hlen, ip_total, src, dst): (bool, usize, usize, Addr16, Addr16) = match proto {
        ETH_P_IP => {
            let ip: [u8; 20] = ctx.load(l3).ok()?;
            if ip[0] >> 4 != 4 || ip[9] != IPPROTO_TCP {
                return None;
            }
            // More fragments, or an offset: not a whole segment.
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return None;
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            (
                true,
                ihl,
                usize::from(u16::from_be_bytes([ip[2], ip[3]])),
                v4_mapped([ip[12], ip[13], ip[14], ip[15]]),
                v4_mapped([ip[16], ip[17], ip[18], ip[19]]),
            )
        }
        ETH_P_IPV6 => {
            let ip: [u8; 40] = ctx.load(l3).ok()?;
            if ip[0] >> 4 != 6 || ip[6] != IPPROTO_TCP {
                return None;
            }
            let mut src = [0u8; 16];
            src.copy_from_slice(&ip[8..24]);
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&ip[24..40]);
            (
                false,
                40,
                40 + usize::from(u16::from_be_bytes([ip[4], ip[5]])),
                src,
                dst,
            )
        }
        _ => return None,
    };
    let tcp: [u8; 20] = ctx.load(l3 + ip_hlen).ok()?;
    let tcp_hlen = usize::from(tcp[12] >> 4) * 4;
    if tcp_hlen < 20 {
        return None;
    }
    let payload_len = ip_total.checked_sub(ip_hlen + tcp_hlen)?;
    let src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
    let key = if outbound {
        TcKey {
            local_addr: src,
            peer_addr: dst,
            local_port: src_port,
            peer_port: dst_port,
        }
    } else {
        TcKey {
            local_addr: dst,
            peer_addr: src,
            local_port: dst_port,
            peer_port: src_port,
        }
    };
    Some(Segment {
        l3,
        v4,
        ip_hlen,
        tcp_hlen,
        payload_len,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        flags: tcp[13],
        key,
    })
}
