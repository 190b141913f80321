//! Test-only TOA writer: inserts `[kind][len][port][ip]` into the first
//! non-SYN segment of connections made from its cgroup, the way a full-NAT
//! load balancer inserts the client address into the third handshake ACK.
//! Lives in the lab only; never part of the `ttm` binary.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_HDR_OPT_LEN_CB, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_WRITE_HDR_OPT_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
    },
    btf_maps::Array,
    helpers::generated::{bpf_reserve_hdr_opt, bpf_store_hdr_opt},
    macros::{btf_map, sock_ops},
    programs::SockOpsContext,
};
use lab_ebpf::WriterConfig;

#[btf_map]
static WRITER_CONFIG: Array<WriterConfig, 1> = Array::new();

const TCP_FLAG_SYN: u32 = 0x02;
/// Largest option this writer emits.
const MAX_LEN: usize = 20;

#[sock_ops]
pub fn toa_writer(ctx: SockOpsContext) -> u32 {
    let Some(cfg) = WRITER_CONFIG.get(0) else {
        return 1;
    };
    if cfg.kind == 0 || !(cfg.len == 8 || cfg.len == 20) {
        return 1;
    }
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG) as i32);
        }
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => {
            if !is_syn(&ctx) {
                // SAFETY: valid in HDR_OPT_LEN_CB.
                unsafe { bpf_reserve_hdr_opt(ctx.ops, cfg.len as u32, 0) };
            }
        }
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB => {
            if !is_syn(&ctx) {
                write_option(&ctx, cfg);
                // Only the first non-SYN segment (the third handshake ACK) carries it.
                let _ =
                    ctx.set_cb_flags((ctx.cb_flags() & !BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG) as i32);
            }
        }
        _ => {}
    }
    1
}

#[inline(always)]
fn is_syn(ctx: &SockOpsContext) -> bool {
    // SAFETY: context field.
    unsafe { (*ctx.ops).skb_tcp_flags & TCP_FLAG_SYN != 0 }
}

#[inline(always)]
fn write_option(ctx: &SockOpsContext, cfg: &WriterConfig) {
    let (port, addr) = if cfg.claim != 0 {
        (cfg.claim_port, cfg.claim_addr)
    } else {
        (ctx.local_port() as u16, ctx.local_ip4().to_ne_bytes())
    };
    let p = port.to_be_bytes();
    let mut opt = [0u8; MAX_LEN];
    opt[0] = cfg.kind;
    opt[1] = cfg.len;
    opt[2] = p[0];
    opt[3] = p[1];
    opt[4] = addr[0];
    opt[5] = addr[1];
    opt[6] = addr[2];
    opt[7] = addr[3];
    // Constant lengths at the call: the verifier needs the size bounded there.
    // SAFETY (both arms): valid in WRITE_HDR_OPT_CB; `opt` holds MAX_LEN bytes.
    match cfg.len {
        8 => unsafe { bpf_store_hdr_opt(ctx.ops, opt.as_ptr().cast(), 8, 0) },
        20 => unsafe { bpf_store_hdr_opt(ctx.ops, opt.as_ptr().cast(), 20, 0) },
        _ => 0,
    };
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
