//! ttm's kernel side: thin adapters from kernel contexts to ttm-common logic.
#![no_std]
#![no_main]
// `asm!` on bpf: one register mask the verifier of older kernels needs (packet.rs).
#![feature(asm_experimental_arch)]

mod counters;
mod getpeername;
mod getsockopt;
mod maps;
mod packet;
mod proxy;
mod proxy_cut;
mod proxy_ingress;
mod records;
mod sockops;
mod tc;
mod udp;
mod uoa_lookup;
mod walk;
mod witness;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
