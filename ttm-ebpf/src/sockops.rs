//! The sockops decoder: on the segment that completes a passive handshake,
//! find the TOA option (or the TC path's record for the 4-tuple), check the
//! peer is a trusted LB, store the record.

use core::ptr;

use aya_ebpf::{
    bindings::{
        bpf_sock_ops, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_TCP_CLOSE,
    },
    btf_maps::lpm_trie::Key,
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::sock_ops,
    programs::SockOpsContext,
};
use ttm_common::{
    addr::{from_words, v4_mapped, Addr16},
    arbitrate,
    maps::TcKey,
    plausible_client, Claim, Config, Counter, PeerRecord, Walk,
};

use crate::{
    counters::bump,
    maps::{CONFIG, SCRATCH, TC_RECORDS, TRUSTED_LBS},
    packet::TcpOptions,
    records::{self, KeySlot},
    walk::walk_options,
};

const AF_INET: u32 = 2;

/// Decodes the option from the handshake-completing segment, or takes the
/// TC path's record when that segment holds none. Always returns 1
/// ("continue"): ttm observes, it never changes a verdict.
#[sock_ops]
pub fn ttm_sockops(ctx: SockOpsContext) -> u32 {
    dispatch::<true>(&ctx);
    1
}

/// The TC path's partner for kernels whose sockops cannot read TCP headers
/// (before 5.10): takes each connection's record from the 4-tuple map into
/// the socket, so the shim, the rewrite and cookie lookups work as in
/// sockops mode. Touches no packet data. Always returns 1.
#[sock_ops]
pub fn ttm_sockops_tc(ctx: SockOpsContext) -> u32 {
    dispatch::<false>(&ctx);
    1
}

#[inline(always)]
fn dispatch<const READ_HEADER: bool>(ctx: &SockOpsContext) {
    match ctx.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            on_passive_established::<READ_HEADER>(ctx);
            if let Some(config) = CONFIG.get(0) {
                if config.proxy_flags & ttm_common::maps::proxy_flags::WATCHING != 0 {
                    crate::proxy::watch(ctx, config.trust_any != 0);
                    // The close callback clears what the watch made.
                    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
                }
            }
        }
        BPF_SOCK_OPS_TCP_LISTEN_CB => crate::proxy::on_listen(ctx),
        BPF_SOCK_OPS_STATE_CB => {
            if ctx.arg(1) == BPF_TCP_CLOSE {
                on_close(ctx);
            }
        }
        _ => {}
    }
}

/// The socket's (kernel peer, peer port, local, local port), host-order ports.
#[inline(always)]
pub fn four_tuple(ctx: &SockOpsContext) -> (Addr16, u16, Addr16, u16) {
    let (peer, local) = if ctx.family() == AF_INET {
        (
            v4_mapped(ctx.remote_ip4().to_ne_bytes()),
            v4_mapped(ctx.local_ip4().to_ne_bytes()),
        )
    } else {
        // SAFETY: context fields, each read with its own constant offset as
        // the verifier requires.
        unsafe {
            let ops = ctx.ops;
            (
                from_words([
                    ptr::read_volatile(&(*ops).remote_ip6[0]),
                    ptr::read_volatile(&(*ops).remote_ip6[1]),
                    ptr::read_volatile(&(*ops).remote_ip6[2]),
                    ptr::read_volatile(&(*ops).remote_ip6[3]),
                ]),
                from_words([
                    ptr::read_volatile(&(*ops).local_ip6[0]),
                    ptr::read_volatile(&(*ops).local_ip6[1]),
                    ptr::read_volatile(&(*ops).local_ip6[2]),
                    ptr::read_volatile(&(*ops).local_ip6[3]),
                ]),
            )
        }
    };
    // remote_port holds the network-order port in its upper half; local_port is host order.
    let peer_port = u32::from_be(ctx.remote_port()) as u16;
    (peer, peer_port, local, ctx.local_port() as u16)
}

/// True if `peer` is inside a trusted LB network.
#[inline(always)]
pub fn is_trusted(peer: &Addr16) -> bool {
    TRUSTED_LBS.get(&Key::new(128, *peer)).is_some()
}

/// What the handshake-completing segment said.
enum FromHeader {
    /// A plausible client from a configured option, filled into the record.
    Filled,
    /// Something was wrong with it (counted): no record, and no fallback.
    Refused,
    /// No option to read: try the TC path, else count this.
    Absent(Counter),
}

#[inline(always)]
fn on_passive_established<const READ_HEADER: bool>(ctx: &SockOpsContext) {
    bump(Counter::ConnectionsSeen);
    let Some(config) = CONFIG.get(0) else { return };
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot is ours until the program returns.
    let record = unsafe { &mut *record };
    // The tuple goes straight into map memory: kept on the stack across the
    // option walk it would not fit the 512 bytes older verifiers allow.
    let (peer, peer_port, local, local_port) = four_tuple(ctx);
    record.set_tuple((peer, peer_port), (local, local_port));
    // SAFETY: helper valid in sockops.
    record.cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // Another namespace's live record of this tuple must not answer for
    // this socket, whether or not it gets a record of its own.
    if let Some(key) = records::key_of(record, KeySlot::Sockops) {
        records::note_tuple(key, record.cookie);
    }
    if config.trust_any == 0 && !is_trusted(&record.peer_addr) {
        bump(Counter::Untrusted);
        return;
    }
    let absent = if READ_HEADER {
        match from_header(ctx, config, record) {
            FromHeader::Filled => {
                // Decoded whether or not the map has room (a refusal is
                // counted where it happens).
                bump(Counter::Decoded);
                let _ = store(ctx, record);
                return;
            }
            FromHeader::Refused => return,
            FromHeader::Absent(counter) => counter,
        }
    } else {
        Counter::NoOption
    };
    if !join_tc_record(ctx) {
        bump(absent);
    }
}

/// The 4-tuple under which the TC path files this socket's connection.
#[inline(always)]
fn tc_key(ctx: &SockOpsContext) -> TcKey {
    let (peer_addr, peer_port, local_addr, local_port) = four_tuple(ctx);
    TcKey {
        local_addr,
        peer_addr,
        local_port,
        peer_port,
    }
}

/// Stores the TC path's record for this socket's 4-tuple, if there is one.
/// The tuple is read again from the context rather than kept alive across
/// the header walk: the BPF stack has no room for both.
#[inline(always)]
fn join_tc_record(ctx: &SockOpsContext) -> bool {
    let Some(found) = TC_RECORDS.get_ptr(&tc_key(ctx)) else {
        return false;
    };
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: the scratch slot is ours; `found` is a live map value.
    let record = unsafe {
        core::ptr::copy_nonoverlapping(found, record, 1);
        &mut *record
    };
    // Decoded whether or not the map has room, as in sockops' own decode.
    bump(Counter::Decoded);
    if store(ctx, record) {
        if record.proxy_version().is_some() {
            // The PROXY ingress program's record, not the TC path's.
            bump(Counter::ProxyDecoded);
        } else {
            bump(Counter::TcJoined);
        }
    }
    // The socket holds the record now: the 4-tuple map keeps only
    // handshakes in flight and sockets sockops does not see.
    let _ = TC_RECORDS.remove(&tc_key(ctx));
    true
}

/// Reads the option off the segment that completed the handshake; on
/// success the client's fields are filled into `record` (its tuple is set).
#[inline(always)]
fn from_header(ctx: &SockOpsContext, config: &Config, record: &mut PeerRecord) -> FromHeader {
    let ops: *mut bpf_sock_ops = ctx.ops;
    // SAFETY: reading context fields; the verifier types them as packet pointers.
    let (data, data_end) = unsafe {
        (
            (*ops).__bindgen_anon_3.skb_data as usize,
            (*ops).__bindgen_anon_4.skb_data_end as usize,
        )
    };
    let Some(options) = TcpOptions::of_header(data, data_end) else {
        return FromHeader::Absent(Counter::NoHeader);
    };
    match walk_options(&options, &config.formats) {
        Walk::Found(located) => {
            if located.repeated {
                bump(Counter::RepeatedOption);
            }
            match arbitrate(&options, located, &config.formats) {
                Claim::Client(client) if plausible_client(&client.addr) => {
                    // SAFETY: helper without preconditions.
                    let now = unsafe { bpf_ktime_get_ns() };
                    record.fill_client(&client, &config.formats, now);
                    FromHeader::Filled
                }
                Claim::Client(_) => {
                    bump(Counter::ImplausibleClient);
                    FromHeader::Refused
                }
                Claim::Conflicting => {
                    bump(Counter::ConflictingOptions);
                    FromHeader::Refused
                }
                Claim::Broken => {
                    bump(Counter::MalformedPastEnd);
                    FromHeader::Refused
                }
            }
        }
        Walk::NotFound => FromHeader::Absent(Counter::NoOption),
        Walk::Malformed(reason) => {
            bump(Counter::malformed(reason));
            // Rare and worth an operator's attention: a trusted LB sent a broken header.
            aya_log_ebpf::warn!(
                ctx,
                "malformed TCP options from trusted LB {:i} port {} (reason {}): connection not decoded; see `ttm stats`",
                record.peer_addr,
                record.peer_port,
                reason as u8
            );
            FromHeader::Refused
        }
    }
}

/// Files `record` under its 4-tuple with this socket's cookie, and asks
/// for the close callback. False when nothing new was stored.
#[inline(always)]
fn store(ctx: &SockOpsContext, record: &mut PeerRecord) -> bool {
    // SAFETY: helper valid in sockops.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    if !records::file(record, cookie, KeySlot::Sockops) {
        return false;
    }
    // Ask for state callbacks so the record goes when the socket closes.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    true
}

#[inline(always)]
fn on_close(ctx: &SockOpsContext) {
    // SAFETY: helper valid in sockops.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    crate::proxy::forget(cookie);
    let key = tc_key(ctx);
    // Absent when the map was full at the handshake (counted then), or
    // when the tuple's record is another namespace's socket's.
    let had_tlvs = records::unfile(&key, cookie).unwrap_or(false);
    // The TC path's entries for this 4-tuple, if it made any, go too.
    let _ = TC_RECORDS.remove(&key);
    let _ = crate::maps::PROXY_FLOWS.remove(&key);
    if had_tlvs {
        let _ = crate::maps::PROXY_TLVS.remove(&cookie);
    }
}
