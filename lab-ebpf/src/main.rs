//! Test-only TOA writer: inserts an option into segments of connections made
//! from its cgroup, the way a full-NAT load balancer inserts the client
//! address into the third handshake ACK — or, for hostile-input tests, into
//! the SYN or into every later segment. Lives in the lab only; never part of
//! the `ttm` binary.
#![no_std]
#![no_main]

use core::ptr;

use aya_ebpf::{
    bindings::{
        bpf_sock_ops, BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_HDR_OPT_LEN_CB,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_WRITE_HDR_OPT_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
    },
    btf_maps::{Array, SkStorage},
    helpers::generated::{bpf_reserve_hdr_opt, bpf_sk_storage_get, bpf_store_hdr_opt},
    macros::{btf_map, sock_ops},
    programs::SockOpsContext,
};
use lab_ebpf::{WriterConfig, MAX_OPTION, MODE_OFF, MODE_OWN_ADDRESS, MODE_PAIR, MODE_V4_CLIENT};

/// Slot 0: what to write. Written by the lab; read here.
#[btf_map]
static WRITER_CONFIG: Array<WriterConfig, 1> = Array::new();

/// Per socket: 1 once the handshake ACK's option was written. Owned here.
#[btf_map]
static HANDSHAKE_WRITTEN: SkStorage<u8> = SkStorage::new();

const TCP_FLAG_SYN: u32 = 0x02;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn toa_writer(ctx: SockOpsContext) -> u32 {
    let Some(cfg) = WRITER_CONFIG.get(0) else {
        return 1;
    };
    if cfg.mode == MODE_OFF {
        return 1;
    }
    let syn = is_syn(&ctx);
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG) as i32);
        }
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => {
            let len = match (syn, cfg.on_syn != 0, written(&ctx)) {
                (true, true, _) | (false, false, false) => first_len(&ctx, cfg),
                (false, false, true) if cfg.repeat != 0 => first_len(&ctx, cfg),
                (false, false, true) => cfg.later_len,
                _ => 0,
            };
            reserve(&ctx, len);
        }
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB => match (syn, cfg.on_syn != 0) {
            (true, true) => write_first(&ctx, cfg),
            (false, true) => stop(&ctx),
            (false, false) => match slot(&ctx, true) {
                // SAFETY (both reads/writes): this socket's storage slot.
                Some(flag) if unsafe { *flag } != 0 => {
                    if cfg.repeat != 0 {
                        write_first(&ctx, cfg);
                    } else {
                        write(&ctx, &cfg.later, cfg.later_len);
                    }
                }
                Some(flag) => {
                    write_first(&ctx, cfg);
                    unsafe { *flag = 1 };
                    if cfg.later_len == 0 && cfg.repeat == 0 {
                        stop(&ctx);
                    }
                }
                None => {}
            },
            (true, false) => {}
        },
        _ => {}
    }
    1
}

#[inline(always)]
fn is_syn(ctx: &SockOpsContext) -> bool {
    // SAFETY: context field.
    unsafe { (*ctx.ops).skb_tcp_flags & TCP_FLAG_SYN != 0 }
}

/// No more option callbacks for this socket.
#[inline(always)]
fn stop(ctx: &SockOpsContext) {
    let _ = ctx.set_cb_flags((ctx.cb_flags() & !BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG) as i32);
}

/// Whether the handshake option was already written on this socket.
#[inline(always)]
fn written(ctx: &SockOpsContext) -> bool {
    // SAFETY: non-null storage of this socket.
    slot(ctx, false).is_some_and(|p| unsafe { *p } != 0)
}

#[inline(always)]
fn slot(ctx: &SockOpsContext, create: bool) -> Option<*mut u8> {
    let ops: *mut bpf_sock_ops = ctx.ops;
    // SAFETY: context field.
    let sk = unsafe { (*ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    let zero = 0u8;
    // SAFETY: our SK_STORAGE map, a non-null socket, a u8 initial value.
    let p = unsafe {
        bpf_sk_storage_get(
            ptr::from_ref(&HANDSHAKE_WRITTEN).cast_mut().cast(),
            sk.cast(),
            ptr::from_ref(&zero).cast_mut().cast(),
            if create {
                BPF_SK_STORAGE_GET_F_CREATE as u64
            } else {
                0
            },
        )
    }
    .cast::<u8>();
    (!p.is_null()).then_some(p)
}

#[inline(always)]
fn reserve(ctx: &SockOpsContext, len: u8) {
    if len != 0 {
        // SAFETY: valid in HDR_OPT_LEN_CB.
        unsafe { bpf_reserve_hdr_opt(ctx.ops, u32::from(len), 0) };
    }
}

#[inline(always)]
fn write_first(ctx: &SockOpsContext, cfg: &WriterConfig) {
    if cfg.mode == MODE_PAIR {
        write_pair(ctx, cfg);
        return;
    }
    if cfg.mode == MODE_OWN_ADDRESS && on_ipv6(ctx) {
        // 6to6: the connection's own IPv6 address.
        let port = (ctx.local_port() as u16).to_be_bytes();
        let mut opt = [0u8; MAX_OPTION];
        opt[0] = cfg.first[0];
        opt[1] = 20;
        opt[2] = port[0];
        opt[3] = port[1];
        // SAFETY: context fields, each word at its own offset.
        let words = unsafe {
            [
                ptr::read_volatile(&(*ctx.ops).local_ip6[0]),
                ptr::read_volatile(&(*ctx.ops).local_ip6[1]),
                ptr::read_volatile(&(*ctx.ops).local_ip6[2]),
                ptr::read_volatile(&(*ctx.ops).local_ip6[3]),
            ]
        };
        opt[4..8].copy_from_slice(&words[0].to_ne_bytes());
        opt[8..12].copy_from_slice(&words[1].to_ne_bytes());
        opt[12..16].copy_from_slice(&words[2].to_ne_bytes());
        opt[16..20].copy_from_slice(&words[3].to_ne_bytes());
        write(ctx, &opt, 20);
    } else if cfg.mode == MODE_V4_CLIENT {
        let port = (ctx.local_port() as u16).to_be_bytes();
        let mut opt = [0u8; MAX_OPTION];
        opt[0] = cfg.first[0];
        opt[1] = 8;
        opt[2] = port[0];
        opt[3] = port[1];
        opt[4..8].copy_from_slice(&cfg.first[4..8]);
        write(ctx, &opt, 8);
    } else if cfg.mode == MODE_OWN_ADDRESS {
        let port = (ctx.local_port() as u16).to_be_bytes();
        let ip = ctx.local_ip4().to_ne_bytes();
        let mut opt = [0u8; MAX_OPTION];
        opt[0] = cfg.first[0];
        opt[1] = 8;
        opt[2] = port[0];
        opt[3] = port[1];
        opt[4] = ip[0];
        opt[5] = ip[1];
        opt[6] = ip[2];
        opt[7] = ip[3];
        write(ctx, &opt, 8);
    } else {
        write(ctx, &cfg.first, cfg.first_len());
    }
}

/// An IPv6 connection (not v4-mapped): the own address needs 16 bytes.
#[inline(always)]
fn on_ipv6(ctx: &SockOpsContext) -> bool {
    // SAFETY: context fields.
    let (family, w2) = unsafe {
        (
            (*ctx.ops).family,
            ptr::read_volatile(&(*ctx.ops).local_ip6[2]),
        )
    };
    family == AF_INET6 && w2 != u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// Length of the handshake option on this connection.
#[inline(always)]
fn first_len(ctx: &SockOpsContext, cfg: &WriterConfig) -> u8 {
    if cfg.mode == MODE_OWN_ADDRESS && on_ipv6(ctx) {
        20
    } else {
        cfg.first_len()
    }
}

/// The client's claim and the LB's own-address option, in the configured order.
#[inline(always)]
fn write_pair(ctx: &SockOpsContext, cfg: &WriterConfig) {
    let port = (ctx.local_port() as u16).to_be_bytes();
    let ip = ctx.local_ip4().to_ne_bytes();
    let mut own = [0u8; MAX_OPTION];
    own[0] = cfg.own_kind;
    own[2] = port[0];
    own[3] = port[1];
    if cfg.own_len == 20 {
        own[1] = 20;
        own[14] = 0xff;
        own[15] = 0xff;
        own[16..20].copy_from_slice(&ip);
    } else {
        own[1] = 8;
        own[4..8].copy_from_slice(&ip);
    }
    // Two stores, one option each (a store writes one option). The kernel
    // refuses a second option of the same kind unless it is experimental
    // (253/254, told apart by the two bytes after the length): the lab pairs
    // other kinds through the LB's nftables instead.
    let claim_len = cfg.first[1];
    if cfg.own_after != 0 {
        write(ctx, &cfg.first, claim_len);
        write(ctx, &own, own[1]);
    } else {
        write(ctx, &own, own[1]);
        write(ctx, &cfg.first, claim_len);
    }
}

/// Stores the option at the start of `opt` (`len` bytes, 4 to 20). The
/// length is clamped so the verifier sees it bounded by the buffer.
#[inline(always)]
fn write(ctx: &SockOpsContext, opt: &[u8; MAX_OPTION], len: u8) {
    if len < 4 {
        return;
    }
    let len = u32::from(len).min(MAX_OPTION as u32);
    let p = opt.as_ptr().cast_mut().cast();
    // SAFETY: valid in WRITE_HDR_OPT_CB; `opt` holds MAX_OPTION ≥ `len` bytes.
    unsafe { bpf_store_hdr_opt(ctx.ops, p, len, 0) };
}

/// Test-only hijacker for `ttm verify`: makes every getpeername() in its
/// cgroup return 127.0.0.1:65535, as a foreign program rewriting peers would.
#[aya_ebpf::macros::cgroup_sock_addr(getpeername4)]
pub fn hijack_getpeername4(ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    set_user_addr4(&ctx);
    1
}

/// Bench-only: a getpeername program that returns at once. What any eBPF
/// rewrite costs per call before it does anything (`cargo xtask bench`).
#[aya_ebpf::macros::cgroup_sock_addr(getpeername4)]
pub fn empty_getpeername4(_ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    1
}

/// Bench-only: the record map's shape (a 36-byte 4-tuple key, an 80-byte
/// value, no preallocation, a million slots), for the lookup floor below.
#[btf_map]
static LOOKUP_FLOOR: aya_ebpf::btf_maps::HashMap<
    [u32; 9],
    [u64; 10],
    { 1 << 20 },
    { aya_ebpf::bindings::BPF_F_NO_PREALLOC as usize },
> = aya_ebpf::btf_maps::HashMap::new();

/// Bench-only: a getpeername program that reads the socket's 4-tuple and
/// looks it up once in a map shaped as ttm's record map, then returns: the
/// floor of any rewrite that finds its record by the socket's tuple
/// (`cargo xtask bench`).
#[aya_ebpf::macros::cgroup_sock_addr(getpeername4)]
pub fn lookup_getpeername4(ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    // SAFETY: context field; fields of a non-null socket at constant offsets.
    unsafe {
        let sk = (*ctx.sock_addr).__bindgen_anon_1.sk;
        if sk.is_null() {
            return 1;
        }
        let key = [
            0,
            0,
            u32::from_ne_bytes([0, 0, 0xff, 0xff]),
            ptr::read_volatile(&(*sk).src_ip4),
            0,
            0,
            u32::from_ne_bytes([0, 0, 0xff, 0xff]),
            ptr::read_volatile(&(*sk).dst_ip4),
            ptr::read_volatile(&(*sk).src_port)
                | (u32::from(u16::from_be(ptr::read_volatile(&(*sk).dst_port))) << 16),
        ];
        if let Some(value) = LOOKUP_FLOOR.get_ptr(&key) {
            ptr::read_volatile(value.cast::<u64>());
        }
    }
    1
}

/// Bench-only: a TC classifier that returns "continue" at once. What any
/// program on an interface's ingress costs each packet before it does
/// anything (`cargo xtask bench`, the UDP section's floor).
#[aya_ebpf::macros::classifier]
pub fn empty_tc(_ctx: aya_ebpf::programs::TcContext) -> i32 {
    -1
}

/// Test-only harmless program for `ttm verify`: a sock_create hook that
/// allows every socket (it could count them); it cannot touch peers.
#[aya_ebpf::macros::cgroup_sock(sock_create)]
pub fn harmless_sock_create(_ctx: aya_ebpf::programs::SockContext) -> i32 {
    1
}

// Foreign programs for `ttm verify`'s instruction analysis: writers that
// rewrite an address (each in its own way) and harmless counters on the same
// hooks. Test-only, like everything here.

/// Per-CPU counter the harmless programs bump. Owned here.
#[btf_map]
static FOREIGN_COUNT: aya_ebpf::btf_maps::PerCpuArray<u64, 1> =
    aya_ebpf::btf_maps::PerCpuArray::new();

#[inline(always)]
fn count() {
    if let Some(slot) = FOREIGN_COUNT.get_ptr_mut(0) {
        // SAFETY: the per-CPU slot is ours while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Sets the user address of a sock_addr hook to 127.0.0.1:65535.
#[inline(always)]
fn set_user_addr4(ctx: &aya_ebpf::programs::SockAddrContext) {
    // SAFETY: writable context fields of the IPv4 sock_addr hooks.
    unsafe {
        ptr::write_volatile(
            &raw mut (*ctx.sock_addr).user_ip4,
            u32::from_ne_bytes([127, 0, 0, 1]),
        );
        ptr::write_volatile(
            &raw mut (*ctx.sock_addr).user_port,
            u32::from(65535u16.to_be()),
        );
    }
}

/// Rewrites the address a socket binds to: 127.0.0.1:65535.
#[aya_ebpf::macros::cgroup_sock_addr(bind4)]
pub fn rewrite_bind4(ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    set_user_addr4(&ctx);
    1
}

/// Counts binds; changes nothing.
#[aya_ebpf::macros::cgroup_sock_addr(bind4)]
pub fn count_bind4(_ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    count();
    1
}

/// Rewrites where connections go: 127.0.0.1:65535.
#[aya_ebpf::macros::cgroup_sock_addr(connect4)]
pub fn rewrite_connect4(ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    set_user_addr4(&ctx);
    1
}

/// Counts connects; changes nothing.
#[aya_ebpf::macros::cgroup_sock_addr(connect4)]
pub fn count_connect4(_ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    count();
    1
}

/// Rewrites the local address getsockname() returns on IPv6 sockets to ::1.
#[aya_ebpf::macros::cgroup_sock_addr(getsockname6)]
pub fn rewrite_getsockname6(ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    // SAFETY: writable context fields, each word at its own offset.
    unsafe {
        ptr::write_volatile(&raw mut (*ctx.sock_addr).user_ip6[0], 0);
        ptr::write_volatile(&raw mut (*ctx.sock_addr).user_ip6[1], 0);
        ptr::write_volatile(&raw mut (*ctx.sock_addr).user_ip6[2], 0);
        ptr::write_volatile(
            &raw mut (*ctx.sock_addr).user_ip6[3],
            u32::from_ne_bytes([0, 0, 0, 1]),
        );
    }
    1
}

/// Counts getsockname() calls on IPv6 sockets; changes nothing.
#[aya_ebpf::macros::cgroup_sock_addr(getsockname6)]
pub fn count_getsockname6(_ctx: aya_ebpf::programs::SockAddrContext) -> i32 {
    count();
    1
}

/// Rewrites the IPv4 source address of every packet it sees to 198.51.100.7
/// (without fixing checksums: it exists to be found, not to work).
#[aya_ebpf::macros::classifier]
pub fn rewrite_tc_source(ctx: aya_ebpf::programs::TcContext) -> i32 {
    let new_source = [198u8, 51, 100, 7];
    // Ethernet (14) + the IPv4 source address offset (12).
    let _ = ctx.store(26, &new_source, 0);
    0
}

/// Counts packets; changes nothing.
#[aya_ebpf::macros::classifier]
pub fn count_tc(_ctx: aya_ebpf::programs::TcContext) -> i32 {
    count();
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

// Bench-only: the floor of a socket kept in a sockhash with a stream-verdict
// program, the kernel's own cost of the mechanism ttm's PROXY protocol path
// uses (`cargo xtask bench --only proxy-protocol`).

/// Slot 0: the local port whose passive connections `floor_sockhash` puts
/// into `FLOOR_SOCKS`. Written by the bench; read here.
#[btf_map]
static FLOOR_PORT: Array<u32, 1> = Array::new();

/// Socket cookie → socket, for `pass_verdict`. Added by `floor_sockhash`,
/// removed by the kernel at close.
#[btf_map]
static FLOOR_SOCKS: aya_ebpf::btf_maps::SockHash<u64, 65536> = aya_ebpf::btf_maps::SockHash::new();

/// Bench-only: puts each passive connection to `FLOOR_PORT` into
/// `FLOOR_SOCKS`; does nothing else.
#[sock_ops]
pub fn floor_sockhash(ctx: SockOpsContext) -> u32 {
    if ctx.op() != aya_ebpf::bindings::BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        return 1;
    }
    let Some(port) = FLOOR_PORT.get(0) else {
        return 1;
    };
    if ctx.local_port() != *port {
        return 1;
    }
    // SAFETY: helper valid in sockops.
    let mut cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: `ops` is the context's own socket-ops pointer.
    let ops: &mut bpf_sock_ops = unsafe { &mut *ctx.ops };
    let _ = FLOOR_SOCKS.update(&mut cookie, ops, 0);
    1
}

/// Bench-only: a stream verdict that passes every segment untouched.
#[aya_ebpf::macros::stream_verdict]
pub fn pass_verdict(_ctx: aya_ebpf::programs::SkBuffContext) -> u32 {
    aya_ebpf::bindings::sk_action::SK_PASS
}
