//! The maps this object owns. Names match `ttm_common::maps`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf, SkStorage,
        SockHash,
    },
    macros::btf_map,
};
use ttm_common::{
    maps::{
        Mismatch, ProxyPending, ProxySyn, RecordEvent, TcKey, DEFAULT_RECORDS_CAPACITY,
        DEFAULT_TC_CAPACITY, MISMATCHES_CAPACITY, PROXY_PENDING_CAPACITY, PROXY_PORTS_CAPACITY,
        PROXY_SYNS_CAPACITY, PROXY_TLVS_CAPACITY, PROXY_TLV_STASH_CAPACITY, RECORD_EVENTS_BYTES,
        TRUSTED_LBS_CAPACITY,
    },
    shift::SeqShift,
    udp::{Delivery, UdpFlow, UdpFlowKey, DEFAULT_MAX_UDP_FLOWS},
    Config, Counter, PeerRecord, TrustKey, WalkState,
};

/// Hash maps whose entries are allocated as they come, not up front.
const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;

/// (local end, kernel peer) → record: the only kernel memory ttm spends
/// per connection. Filed by sockops at handshake completion (by the PROXY
/// verdict program once a header is read), removed by sockops at close;
/// read by the app-facing hooks by the tuple of their socket, and by user
/// space. Capacity set by the daemon at load (`--max-records`); a full map
/// refuses the new record (counted), it never evicts a live one.
#[btf_map]
pub static RECORDS: HashMap<TcKey, PeerRecord, { DEFAULT_RECORDS_CAPACITY as usize }, NO_PREALLOC> =
    HashMap::new();

/// Each record filed and removed, for the daemon's cookie and client-tuple
/// indexes (kept in its memory). Written by sockops and the verdict program
/// (`crate::records`); read by the daemon. A full ring drops the event
/// (counted as `EventsLost`), never the record.
#[btf_map]
pub static RECORD_EVENTS: RingBuf<RecordEvent, { RECORD_EVENTS_BYTES as usize }> = RingBuf::new();

/// UDP flow → the client its trusted LB marked. Filed and kept fresh by
/// the UDP decoder at TC ingress (`crate::udp`); read by the UOA lookup;
/// expired by the daemon's sweep after `--udp-idle`. Capacity set by the
/// daemon (`--max-udp-flows`); a full map refuses new flows (counted) and
/// never evicts a live one.
#[btf_map]
pub static UDP_FLOWS: HashMap<
    UdpFlowKey,
    UdpFlow,
    { DEFAULT_MAX_UDP_FLOWS as usize },
    NO_PREALLOC,
> = HashMap::new();

/// Per unconnected UDP socket: the flow of the datagram it last delivered,
/// and to which thread. Written by the recvmsg hooks; read by the UOA
/// lookup (`crate::uoa_lookup`).
#[btf_map]
pub static UDP_DELIVERIES: SkStorage<Delivery> = SkStorage::new();

/// Per-CPU home of the UDP decoder's header parse. Owned by `crate::udp`.
#[btf_map]
pub static UDP_PARSED: PerCpuArray<crate::udp::UdpParsed, 1> = PerCpuArray::new();

/// Trusted load-balancer networks. Written by the daemon; read by sockops.
#[btf_map]
pub static TRUSTED_LBS: LpmTrie<TrustKey, u8, { TRUSTED_LBS_CAPACITY as usize }> = LpmTrie::new();

/// Settings (slot 0). Written by the daemon; read by sockops and the getsockopt shim.
#[btf_map]
pub static CONFIG: Array<Config, 1> = Array::new();

/// Per-CPU counters indexed by `Counter`. Written by every program; summed by user space.
#[btf_map]
pub static STATS: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

/// Per-CPU scratch space where sockops builds a record (the BPF stack is too
/// small to hold it beside the option walk). Owned by sockops only.
#[btf_map]
pub static SCRATCH: PerCpuArray<PeerRecord, 1> = PerCpuArray::new();

/// Per-CPU scratch space for a `RECORDS` key (the stack of older verifiers
/// has no room for it beside the record): slot 0 sockops', slot 1 the PROXY
/// verdict program's (which may be interrupted by sockops on its CPU).
#[btf_map]
pub static KEY_SCRATCH: PerCpuArray<TcKey, 2> = PerCpuArray::new();

/// Per-CPU home of the option walk between steps. Re-reading it from map
/// memory at each step keeps verifier states from multiplying. Owned by sockops.
#[btf_map]
pub static WALK: PerCpuArray<WalkState, 1> = PerCpuArray::new();

/// Socket cookie → the last getpeername answer that was neither the kernel's
/// peer nor ttm's client. Written by the witness; read by `ttm verify --live`.
#[btf_map]
pub static MISMATCHES: LruHashMap<u64, Mismatch, { MISMATCHES_CAPACITY as usize }> =
    LruHashMap::new();

/// 4-tuple → record, written by the TC ingress path from the segment that
/// completes a handshake (never overwritten); read by sockops (the join),
/// which removes it when the socket closes, and by user space, whose sweep
/// removes entries of sockets sockops never saw.
#[btf_map]
pub static TC_RECORDS: LruHashMap<TcKey, PeerRecord, { DEFAULT_TC_CAPACITY as usize }> =
    LruHashMap::new();

/// Where the TC path found TCP in a frame, and its addresses.
#[repr(C)]
pub struct TcParsed {
    /// The packet's source (the peer), v4-mapped for IPv4.
    pub peer: ttm_common::Addr16,
    /// The packet's destination (this host).
    pub local: ttm_common::Addr16,
    /// Offset of the TCP header from the frame's start; `u32::MAX`: an IPv6
    /// packet that could not be followed to TCP.
    pub l4: u32,
}

/// Per-CPU scratch of the TC path between parsing the network header and
/// reading TCP (see `tc.rs`). Owned by the TC path.
#[btf_map]
pub static TC_PARSED: PerCpuArray<TcParsed, 1> = PerCpuArray::new();

/// 4-tuple → SYN time: handshakes whose completing segment the TC path has
/// not seen yet. Owned by the TC ingress path.
#[btf_map]
pub static TC_PENDING: LruHashMap<TcKey, u64, { DEFAULT_TC_CAPACITY as usize }> = LruHashMap::new();

/// Local ports (host order) of `--proxy-protocol`. Written by the daemon;
/// read by sockops.
#[btf_map]
pub static PROXY_PORTS: HashMap<u16, u8, { PROXY_PORTS_CAPACITY as usize }> = HashMap::new();

/// Socket cookie → socket: connections on PROXY ports from trusted peers,
/// added by sockops at the handshake, removed by the kernel at close. Its
/// stream-verdict program is `ttm_proxy_verdict`. Capacity set by the
/// daemon at load (`--max-records`, or 1 without `--proxy-protocol`).
#[btf_map]
pub static PROXY_SOCKS: SockHash<u64, 1> = SockHash::new();

/// Socket cookie → the connection's state until its PROXY header is
/// through. Added by sockops with the socket; removed by the verdict program
/// when the header is decided, or by sockops at close.
#[btf_map]
pub static PROXY_PENDING: HashMap<
    u64,
    ProxyPending,
    { PROXY_PENDING_CAPACITY as usize },
    NO_PREALLOC,
> = HashMap::new();

/// Per-CPU space where sockops builds a `PROXY_PENDING` entry (too big for
/// the stack). Owned by sockops.
#[btf_map]
pub static PROXY_SCRATCH: PerCpuArray<ProxyPending, 1> = PerCpuArray::new();

/// Per-CPU home of the v1 line's walk between steps (see
/// `proxy::walk_v1_in`): one slot per program that walks, [`crate::proxy::WalkSlot`].
#[btf_map]
pub static V1_WALK: PerCpuArray<ttm_common::proxy::V1State, 3> = PerCpuArray::new();

/// Per-CPU copy of a segment's first bytes: slot 0 the PROXY ingress
/// program's, slot 1 the TC program's (which also sums a checksum there).
#[btf_map]
pub static PROXY_INGRESS_BUF: PerCpuArray<ttm_common::proxy::HeaderBuf, 2> = PerCpuArray::new();

/// 4-tuple → the handshake the TC program follows on a PROXY port until
/// its first data segment (`proxy_cut`). Written by the TC program; read and
/// removed by sockops when the socket is made.
#[btf_map]
pub static PROXY_SYNS: LruHashMap<TcKey, ProxySyn, { PROXY_SYNS_CAPACITY as usize }> =
    LruHashMap::new();

/// The TC ingress program's tails, each a program verified apart: slot 0
/// `ttm_tc_cut` (cuts header bytes out of a segment), slot 1
/// `ttm_tc_first` (reads a connection's first header, then tails into the
/// cut). Filled by the daemon before the ingress program is attached.
#[btf_map]
pub static PROXY_TAIL: ProgramArray<2> = ProgramArray::new();

/// Per-CPU: where `ttm_tc_cut` moves a payload through when it cuts header
/// bytes out of a segment. Owned by it.
#[btf_map]
pub static CUT_BUF: PerCpuArray<[u8; crate::proxy_cut::CHUNK], 1> = PerCpuArray::new();

/// Per-CPU: the segment `ttm_tc_first` parsed, written and read back (see
/// `proxy_cut::through_memory`). Owned by it.
#[btf_map]
pub static SEGMENT: PerCpuArray<crate::proxy_cut::Segment, 1> = PerCpuArray::new();

/// Per-CPU: what the TC ingress program asks of `ttm_tc_cut` (its tail).
#[btf_map]
pub static CUT_JOB: PerCpuArray<ttm_common::maps::CutJob, 1> = PerCpuArray::new();

/// 4-tuple → a v2 header with TLVs that the TC program cut out, until
/// sockops files it under the new socket's cookie in `PROXY_TLVS`.
/// Capacity 1 without `--proxy-protocol` (set by the daemon).
#[btf_map]
pub static PROXY_TLV_STASH: LruHashMap<
    TcKey,
    ttm_common::proxy::HeaderBuf,
    { PROXY_TLV_STASH_CAPACITY as usize },
> = LruHashMap::new();

/// 4-tuple → the renumbering of a connection whose PROXY header the TC
/// program cut out. Written by the TC ingress program, read by both TC
/// programs, removed by sockops at close. Capacity set by the daemon
/// (`--max-records`, 1 without `--proxy-protocol`).
#[btf_map]
pub static PROXY_FLOWS: HashMap<
    TcKey,
    SeqShift,
    { DEFAULT_RECORDS_CAPACITY as usize },
    NO_PREALLOC,
> = HashMap::new();

/// Socket cookie → the v2 header of a PROXY connection whose header carried
/// TLVs (bytes past it zeroed), for the lookups. Written by the verdict
/// program; removed by sockops at close.
#[btf_map]
pub static PROXY_TLVS: HashMap<
    u64,
    ttm_common::proxy::HeaderBuf,
    { PROXY_TLVS_CAPACITY as usize },
    NO_PREALLOC,
> = HashMap::new();
