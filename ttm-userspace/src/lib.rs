//! The ttm agent's library: loading and attaching the decoder, reading its
//! records and counters, serving lookups. The `ttm` binary is a thin CLI over it.

pub mod audit_watch;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod formats;
pub mod host;
pub mod limits;
pub mod links;
pub mod metrics;
pub mod mode;
pub mod pins;
pub mod proxy_listeners;
pub mod proxy_tlvs;
pub mod records;
pub mod service;
pub mod sockdiag;
pub mod stats;
pub mod sweep;
pub mod tc;
pub mod trust;
pub mod udp_flows;
pub mod verify;

/// The compiled kernel programs, embedded so that one file is the whole product.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ttm"));

/// Name of the sockops program inside [`EBPF_OBJECT`].
pub const SOCKOPS_PROGRAM: &str = "ttm_sockops";
/// Name of the header-free sockops program (`--mode tc`) inside [`EBPF_OBJECT`].
pub const SOCKOPS_JOIN_PROGRAM: &str = "ttm_sockops_tc";
/// Name of the getsockopt shim inside [`EBPF_OBJECT`].
pub const GETSOCKOPT_PROGRAM: &str = "ttm_getsockopt";
/// The PROXY protocol stream-verdict program (attached to `PROXY_SOCKS`).
pub const PROXY_VERDICT_PROGRAM: &str = "ttm_proxy_verdict";
/// The PROXY protocol cgroup ingress program (reads a header before the
/// socket exists), attached to the decoder's cgroup with `--proxy-protocol`.
pub const PROXY_INGRESS_PROGRAM: &str = "ttm_proxy_ingress";
/// The recvmsg hooks (AF_INET, AF_INET6) that note, per unconnected UDP
/// socket, the flow of the datagram it last delivered (for the UOA lookup);
/// attached to the compat cgroups with `--udp-interface`.
pub const UDP_RECVMSG_PROGRAMS: [&str; 2] = ["ttm_udp_recvmsg4", "ttm_udp_recvmsg6"];
/// Names of the getpeername rewrite programs (AF_INET, AF_INET6).
pub const GETPEERNAME_PROGRAMS: [&str; 2] = ["ttm_getpeername4", "ttm_getpeername6"];
