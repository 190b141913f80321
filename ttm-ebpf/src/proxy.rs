//! PROXY protocol: connections to a `--proxy-protocol` port from a trusted
//! peer are put in `PROXY_SOCKS` by sockops; the stream-verdict program then
//! reads the stream's first bytes, records the client a header names and
//! removes the header, so the app reads exactly the client's bytes.
//!
//! Per segment, until the header is through (`PROXY_PENDING` holds the
//! connection): a header prefix alone is held and the segment dropped from
//! the stream; held bytes that turn out not to be a header are put back in
//! front of the next segment. After it, one failed hash lookup per segment.

use core::ptr;

use aya_ebpf::{
    bindings::{
        bpf_sock_ops,
        sk_action::{SK_DROP, SK_PASS},
        BPF_NOEXIST,
    },
    helpers::{
        bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_skb_adjust_room, bpf_skb_load_bytes,
        bpf_skb_store_bytes,
    },
    macros::stream_verdict,
    programs::{SkBuffContext, SockOpsContext},
};
use ttm_common::{
    maps::{syn_phase, ProxyPending, TcKey},
    proxy::{parse_with, HeaderBuf, Parsed, Refusal, V1State, MAX_HEADER_LEN, V1_MAX_LEN},
    record::PROXY_PENDING_FORMAT,
    Addr16, Counter, PeerRecord,
};

use crate::{
    counters::bump,
    maps::{
        PROXY_FLOWS, PROXY_PENDING, PROXY_PORTS, PROXY_SCRATCH, PROXY_SOCKS, PROXY_SYNS,
        PROXY_TLV_STASH, V1_WALK,
    },
    records::{self, KeySlot},
    sockops::{four_tuple, is_trusted},
};

/// Bounds `v` to 0..=255 in a register LLVM cannot see through (the
/// verifier then knows the bound where the value meets a pointer).
#[inline(always)]
pub fn byte_bound(v: usize) -> usize {
    let mut v = v;
    // SAFETY: a register-only AND; no memory is touched.
    unsafe { core::arch::asm!("{0} &= 255", inout(reg) v, options(pure, nomem, nostack)) };
    v
}

/// `v`, known by an earlier check to be in 1..=255, as a value the verifier
/// sees in 1..=256: the length of a helper that refuses a length that may be
/// 0. Older verifiers (Linux 6.1) learn nothing from a `!= 0` test, so the
/// check alone does not do.
#[inline(always)]
pub fn nonzero_len(v: usize) -> usize {
    let mut v = v;
    // SAFETY: register-only arithmetic; no memory is touched.
    unsafe {
        core::arch::asm!(
            "{0} -= 1",
            "{0} &= 255",
            "{0} += 1",
            inout(reg) v,
            options(pure, nomem, nostack)
        )
    };
    v
}

/// At the handshake: a connection to a PROXY port from a trusted peer goes
/// into `PROXY_SOCKS`, with its pending state and a socket-storage slot
/// marked as waiting (the app-facing hooks then look for the record by
/// cookie or tuple). Untrusted peers and other ports are left alone.
#[inline(always)]
pub fn watch(ctx: &SockOpsContext, trust_any: bool) {
    let (peer, peer_port, local, local_port) = four_tuple(ctx);
    if PROXY_PORTS.get_ptr(&local_port).is_none() {
        return;
    }
    if !trust_any && !is_trusted(&peer) {
        return;
    }
    if cut_at_interface(ctx, peer, peer_port, local, local_port) {
        return;
    }
    let Some(pending) = PROXY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot is ours until the program returns.
    let pending = unsafe { &mut *pending };
    pending.record = PeerRecord::ZERO;
    pending
        .record
        .set_tuple((peer, peer_port), (local, local_port));
    pending.record.format_index = PROXY_PENDING_FORMAT;
    pending.head.len = 0;
    pending.skip = 0;
    pending.split = 0;
    // SAFETY: helper valid in sockops.
    let mut cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    if PROXY_PENDING
        .insert(&cookie, &*pending, BPF_NOEXIST as u64)
        .is_err()
    {
        bump(Counter::ProxyWatchFailed);
        return;
    }
    // SAFETY: `ops` is the context's own socket-ops pointer.
    let ops: &mut bpf_sock_ops = unsafe { &mut *ctx.ops };
    if PROXY_SOCKS
        .update(&mut cookie, ops, BPF_NOEXIST as u64)
        .is_err()
    {
        let _ = PROXY_PENDING.remove(&cookie);
        bump(Counter::ProxyWatchFailed);
        return;
    }
    bump(Counter::ProxyWatched);
}

/// Whether the TC program took this connection (`--proxy-interface`): its
/// header was cut at the interface (the record came with it, through
/// `TC_RECORDS`), or its first segment showed there was none. Either way
/// it needs no watching. Clears the handshake's entry.
#[inline(always)]
fn cut_at_interface(
    ctx: &SockOpsContext,
    peer: Addr16,
    peer_port: u16,
    local: Addr16,
    local_port: u16,
) -> bool {
    let key = TcKey {
        local_addr: local,
        peer_addr: peer,
        local_port,
        peer_port,
    };
    let absent = PROXY_SYNS
        .get_ptr(&key)
        // SAFETY: a live map value.
        .is_some_and(|s| unsafe { (*s).phase } == syn_phase::ABSENT);
    let _ = PROXY_SYNS.remove(&key);
    if absent {
        bump(Counter::ProxyAbsent);
        return true;
    }
    if PROXY_FLOWS.get_ptr(&key).is_none() {
        return false;
    }
    if let Some(head) = PROXY_TLV_STASH.get_ptr(&key) {
        // SAFETY: helper valid in sockops.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
        // SAFETY: a live map value, copied into the other map.
        let _ = crate::maps::PROXY_TLVS.insert(&cookie, unsafe { &*head }, BPF_NOEXIST as u64);
        let _ = PROXY_TLV_STASH.remove(&key);
    }
    true
}

/// A `listen()` on a PROXY port: counted, which tells the daemon to set
/// `TCP_DEFER_ACCEPT` on the new listener.
#[inline(always)]
pub fn on_listen(ctx: &SockOpsContext) {
    let watching = crate::maps::CONFIG
        .get(0)
        .is_some_and(|c| c.proxy_flags & ttm_common::maps::proxy_flags::WATCHING != 0);
    let port = ctx.local_port() as u16;
    if watching && PROXY_PORTS.get_ptr(&port).is_some() {
        bump(Counter::ProxyListening);
    }
}

/// Reads the first bytes of each watched connection. Returns SK_PASS for
/// every segment that carries client bytes, SK_DROP only for one that held
/// nothing but header bytes (its bytes are consumed, never lost: they were
/// the header, or are held to be put back).
#[stream_verdict]
pub fn ttm_proxy_verdict(ctx: SkBuffContext) -> u32 {
    // SAFETY: helper valid in sk_skb programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let Some(pending) = PROXY_PENDING.get_ptr_mut(&cookie) else {
        return SK_PASS;
    };
    // SAFETY: a live map value; entries are only removed by this program
    // (one segment of a socket at a time) and at close.
    let pending = unsafe { &mut *pending };
    on_segment(&ctx, cookie, pending)
}

#[inline(always)]
fn on_segment(ctx: &SkBuffContext, cookie: u64, pending: &mut ProxyPending) -> u32 {
    let skb_len = ctx.len() as usize;
    if skb_len == 0 {
        return SK_PASS;
    }
    if pending.skip > 0 {
        // The rest of a refused header.
        let skip = pending.skip as usize;
        return if skip >= skb_len {
            pending.skip = (skip - skb_len) as u32;
            if pending.skip == 0 {
                let _ = PROXY_PENDING.remove(&cookie);
            }
            SK_DROP
        } else {
            let _ = PROXY_PENDING.remove(&cookie);
            pop(ctx, skip)
        };
    }
    let held = byte_bound(pending.head.len as usize);
    if held >= MAX_HEADER_LEN {
        let _ = PROXY_PENDING.remove(&cookie);
        return SK_PASS;
    }
    let room = MAX_HEADER_LEN - held;
    let take = byte_bound(if skb_len < room { skb_len } else { room });
    if take == 0 {
        return SK_PASS;
    }
    // SAFETY: `held` ≤ 254 and the length ≤ 256 (masked above): the copy
    // stays inside the 512-byte buffer of a live map value.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            0,
            pending.head.bytes.as_mut_ptr().add(held).cast(),
            nonzero_len(take) as u32,
        )
    };
    if loaded != 0 {
        let _ = PROXY_PENDING.remove(&cookie);
        return SK_PASS;
    }
    pending.head.len = (held + take) as u32;
    match parse_with(&pending.head, |b| walk_v1_in(b, WalkSlot::Verdict)) {
        Parsed::NeedMore if take == skb_len => {
            // The whole segment is a header's prefix: hold it.
            if pending.split == 0 {
                pending.split = 1;
                bump(Counter::ProxySplit);
            }
            SK_DROP
        }
        Parsed::NeedMore | Parsed::NotProxy => {
            bump(Counter::ProxyAbsent);
            let _ = PROXY_PENDING.remove(&cookie);
            put_back(ctx, pending, held)
        }
        Parsed::Unframed(_) => {
            bump(Counter::ProxyUnframed);
            let _ = PROXY_PENDING.remove(&cookie);
            put_back(ctx, pending, held)
        }
        Parsed::Header {
            len,
            version,
            client,
            tlv_offset,
        } => {
            match client {
                // Recorded at the handshake (the ingress program read the
                // header off its segment, sockops took it): only removed here.
                Some(_) if own_record(&pending.record, cookie) => {}
                Some(client) => {
                    // SAFETY: helper without preconditions.
                    let now = unsafe { bpf_ktime_get_ns() };
                    pending.record.fill_proxy(&client, version, now);
                    if store(&mut pending.record, cookie) {
                        bump(Counter::ProxyDecoded);
                    }
                }
                None => bump(Counter::ProxyNoClient),
            }
            if client.is_some() && usize::from(tlv_offset) < usize::from(len) {
                keep_tlvs(pending, cookie, usize::from(len));
            }
            let _ = PROXY_PENDING.remove(&cookie);
            remove_header(ctx, usize::from(len) - held, skb_len)
        }
        Parsed::Refused { len, .. } => {
            bump(Counter::ProxyRefused);
            let rest = len as usize - held;
            if rest > skb_len {
                pending.skip = (rest - skb_len) as u32;
                return SK_DROP;
            }
            let _ = PROXY_PENDING.remove(&cookie);
            remove_header(ctx, rest, skb_len)
        }
    }
}

/// Files the header (its TLVs) for the lookups, the client's bytes after it
/// zeroed first.
#[inline(always)]
fn keep_tlvs(pending: &mut ProxyPending, cookie: u64, len: usize) {
    // Stated, so that the compiler's memset of the zeroing loop has no
    // out-of-range case (a panic path the verifier refuses).
    if len > MAX_HEADER_LEN {
        return;
    }
    // Iterated, not indexed: no bounds check, so no panic path.
    for (i, b) in pending
        .head
        .bytes
        .iter_mut()
        .take(MAX_HEADER_LEN)
        .enumerate()
    {
        if i >= len {
            *b = 0;
        }
    }
    pending.head.len = len as u32;
    let _ = crate::maps::PROXY_TLVS.insert(&cookie, &pending.head, BPF_NOEXIST as u64);
}

/// Removes the header's last `n` bytes from the front of this segment.
#[inline(always)]
fn remove_header(ctx: &SkBuffContext, n: usize, skb_len: usize) -> u32 {
    if n >= skb_len {
        // Nothing but header: an empty segment would read as end of stream.
        return SK_DROP;
    }
    pop(ctx, n)
}

/// Pops `n` bytes off the front of the segment.
#[inline(always)]
fn pop(ctx: &SkBuffContext, n: usize) -> u32 {
    if n > 0 {
        // SAFETY: helper valid in sk_skb programs; shrinking only.
        let _ = unsafe { bpf_skb_adjust_room(ctx.skb.skb.cast(), -(n as i32), 0, 0) };
    }
    SK_PASS
}

/// Puts the `held` bytes of earlier segments back in front of this one.
#[inline(always)]
fn put_back(ctx: &SkBuffContext, pending: &ProxyPending, held: usize) -> u32 {
    let held = byte_bound(held);
    if held == 0 {
        return SK_PASS;
    }
    // SAFETY: helpers valid in sk_skb programs; `held` ≤ 255 bytes of a
    // live map value.
    unsafe {
        if bpf_skb_adjust_room(ctx.skb.skb.cast(), held as i32, 0, 0) == 0 {
            let _ = bpf_skb_store_bytes(
                ctx.skb.skb.cast(),
                0,
                pending.head.bytes.as_ptr().cast(),
                nonzero_len(held) as u32,
                0,
            );
        }
    }
    SK_PASS
}

/// Whether `cookie`'s socket (whose tuple `record` holds) has a record.
#[inline(always)]
fn own_record(record: &PeerRecord, cookie: u64) -> bool {
    records::key_of(record, KeySlot::Verdict).is_some_and(|key| records::has_own(key, cookie))
}

/// Files a PROXY record under its 4-tuple (a TCP option's record, filed at
/// the handshake, is never overwritten).
#[inline(always)]
fn store(record: &mut PeerRecord, cookie: u64) -> bool {
    if !records::file(record, cookie, KeySlot::Verdict) {
        return false;
    }
    bump(Counter::Decoded);
    true
}

/// Not a PROXY header after all, or the connection closed: forget it.
#[inline(always)]
pub fn forget(cookie: u64) {
    let _ = PROXY_PENDING.remove(&cookie);
}

/// Which program's slot of `V1_WALK` a walk uses. Each program its own: the
/// verdict program may run in process context and be interrupted on the
/// same CPU by the softirq programs.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum WalkSlot {
    /// The stream-verdict program.
    Verdict = 0,
    /// The cgroup ingress program.
    Ingress = 1,
    /// The TC program (`proxy_cut`).
    Tc = 2,
}

/// The v1 line, one byte per iteration from offset 6 (after `PROXY `) to
/// 106, with the state in `V1_WALK` between iterations: every iteration
/// then starts from the same unknown state, so the verifier's work is the
/// paths of one step times the iterations, not their product (and the stack
/// holds no copy of the state).
#[inline(always)]
pub fn walk_v1_in(buf: &HeaderBuf, slot: WalkSlot) -> Parsed {
    let Some(slot) = V1_WALK.get_ptr_mut(slot as u32) else {
        return Parsed::Unframed(Refusal::V1BadField);
    };
    let n = buf.len as usize;
    // SAFETY (all accesses below): the per-CPU slot is ours until the program returns.
    unsafe { ptr::write_volatile(slot, V1State::START) };
    let mut i = ttm_common::proxy::V1_PREFIX.len();
    while i < V1_MAX_LEN {
        if i >= n {
            return Parsed::NeedMore;
        }
        // Through an opaque pointer: each step reads the state from memory
        // and leaves it there, none kept in registers.
        let state = unsafe { &mut *core::hint::black_box(slot) };
        if let Some(p) = state.step(buf.at(i), i) {
            return p;
        }
        i += 1;
    }
    Parsed::Unframed(Refusal::V1TooLong)
}
