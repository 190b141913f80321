//! Types and pure logic shared by ttm's kernel programs and its user-space agent.
//!
//! Everything here is `no_std` and host-testable: the TOA option formats
//! ([`format`]), the TCP option walker that finds the client address
//! ([`parser`]), the per-connection record ([`record`]) and the layout of the
//! maps both sides share ([`maps`]), what applications are shown
//! ([`compat`]), the PROXY protocol header ([`proxy`]) and DPVS's UDP
//! marking of the client ([`uoa`]) and the UDP flows it names ([`udp`]).
#![cfg_attr(not(test), no_std)]

pub mod addr;
pub mod compat;
pub mod format;
pub mod maps;
pub mod parser;
pub mod proxy;
pub mod record;
pub mod shift;
pub mod udp;
pub mod uoa;

pub use addr::Addr16;
pub use format::{AddrFamily, FormatTable, OptionFormat, OptionPosition};
pub use maps::{Config, Counter, TrustKey};
pub use parser::{
    arbitrate, decode_client, find_client, find_option, plausible_client, Claim, ClientAddr,
    Located, Malformed, OptionBytes, Scan, Walk, WalkState,
};
pub use record::{ClientFamily, PeerRecord};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)] plain data with explicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for crate::PeerRecord {}
    unsafe impl aya::Pod for crate::Config {}
    unsafe impl aya::Pod for crate::maps::Mismatch {}
    unsafe impl aya::Pod for crate::maps::TcKey {}
    unsafe impl aya::Pod for crate::maps::ProxyPending {}
    unsafe impl aya::Pod for crate::proxy::HeaderBuf {}
    unsafe impl aya::Pod for crate::shift::SeqShift {}
    unsafe impl aya::Pod for crate::udp::UdpFlowKey {}
    unsafe impl aya::Pod for crate::udp::UdpFlow {}
    unsafe impl aya::Pod for crate::udp::Delivery {}
}
