//! The sockops decoder: on the segment that completes a passive handshake,
//! find the TOA option, check the peer is a trusted LB, store the record.

use core::ptr;

use aya_ebpf::{
    bindings::{
        bpf_sock_ops, BPF_ANY, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE,
    },
    btf_maps::lpm_trie::Key,
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::sock_ops,
    programs::SockOpsContext,
};
use ttm_common::{
    addr::{from_words, v4_mapped, Addr16},
    decode_client, plausible_client, ClientAddr, Config, Counter, PeerRecord, Walk,
};

use crate::{
    counters::bump,
    maps::{CONFIG, RECORDS, SCRATCH, TRUSTED_LBS},
    packet::TcpOptions,
    peer_storage::{record_of, record_or_insert},
    walk::walk_options,
};

const AF_INET: u32 = 2;

/// Always returns 1 ("continue"): ttm observes, it never changes a verdict.
#[sock_ops]
pub fn ttm_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_passive_established(&ctx),
        BPF_SOCK_OPS_STATE_CB => {
            if ctx.arg(1) == BPF_TCP_CLOSE {
                on_close(&ctx);
            }
        }
        _ => {}
    }
    1
}

/// The socket's (kernel peer, peer port, local, local port), host-order ports.
#[inline(always)]
fn four_tuple(ctx: &SockOpsContext) -> (Addr16, u16, Addr16, u16) {
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

#[inline(always)]
fn on_passive_established(ctx: &SockOpsContext) {
    bump(Counter::ConnectionsSeen);
    let Some(config) = CONFIG.get(0) else { return };
    let (peer, peer_port, local, local_port) = four_tuple(ctx);
    if config.trust_any == 0 && !is_trusted(&peer) {
        bump(Counter::Untrusted);
        return;
    }
    let ops: *mut bpf_sock_ops = ctx.ops;
    // SAFETY: reading context fields; the verifier types them as packet pointers.
    let (data, data_end) = unsafe {
        (
            (*ops).__bindgen_anon_3.skb_data as usize,
            (*ops).__bindgen_anon_4.skb_data_end as usize,
        )
    };
    let Some(options) = TcpOptions::of_header(data, data_end) else {
        bump(Counter::NoHeader);
        return;
    };
    match walk_options(&options, config) {
        Walk::Found(located) => {
            if located.repeated {
                bump(Counter::RepeatedOption);
            }
            match decode_client(&options, located, &config.formats) {
                Some(client) if plausible_client(&client.addr) => {
                    store(ctx, config, &client, peer, peer_port, local, local_port)
                }
                Some(_) => bump(Counter::ImplausibleClient),
                None => bump(Counter::MalformedPastEnd),
            }
        }
        Walk::NotFound => bump(Counter::NoOption),
        Walk::Malformed(reason) => {
            bump(Counter::malformed(reason));
            // Rare and worth an operator's attention: a trusted LB sent a broken header.
            aya_log_ebpf::warn!(
                ctx,
                "malformed TCP options from trusted LB {:i} port {} (reason {}): connection not decoded; see `ttm stats`",
                peer,
                peer_port,
                reason as u8
            );
        }
    }
}

#[inline(always)]
fn store(
    ctx: &SockOpsContext,
    config: &Config,
    client: &ClientAddr,
    peer: Addr16,
    peer_port: u16,
    local: Addr16,
    local_port: u16,
) {
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot is ours until the program returns.
    let record = unsafe { &mut *record };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    record.fill_decoded(
        client,
        &config.formats,
        (peer, peer_port),
        (local, local_port),
        now,
    );

    // SAFETY: `sk` is a context field; null-checked below.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        bump(Counter::StorageFailed);
        return;
    }
    let Some(stored) = record_or_insert(sk.cast(), record) else {
        bump(Counter::StorageFailed);
        return;
    };
    if stored.established_ns != record.established_ns {
        // A record already existed: it is never overwritten.
        return;
    }
    // SAFETY: helper valid in sockops.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    if RECORDS.insert(cookie, &*record, BPF_ANY as u64).is_err() {
        bump(Counter::MapInsertFailed);
    }
    // Ask for state callbacks so the cookie entry goes when the socket closes.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    bump(Counter::Decoded);
}

#[inline(always)]
fn on_close(ctx: &SockOpsContext) {
    // SAFETY: context field (null-checked by `record_of`).
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if !record_of(sk.cast()).is_some_and(PeerRecord::is_set) {
        return;
    }
    // SAFETY: helper valid in sockops.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    match RECORDS.remove(cookie) {
        Ok(()) => bump(Counter::RecordsRemoved),
        Err(_) => bump(Counter::RecordsEvicted),
    }
}
