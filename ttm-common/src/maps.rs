//! Names and value types of the maps the kernel programs and user space share.
//!
//! Owners: the sockops program writes `RECORDS` (the PROXY verdict program
//! too) and `RECORD_EVENTS`; every program bumps `STATS`;
//! the daemon writes `CONFIG` and `TRUSTED_LBS` before attaching and reads the
//! rest; `ttm lookup`/`ttm stats` read the pinned copies.

use crate::addr::Addr16;
use crate::format::FormatTable;
use crate::parser::Malformed;

/// Hash: [`TcKey`] (local end, kernel peer) → [`crate::PeerRecord`], one
/// element per decoded connection and nothing else in the kernel: the
/// app-facing hooks find a socket's record by the tuple they read off the
/// socket, and the record names its socket cookie. Not preallocated and
/// never evicting: its memory follows live connections, and a full map
/// refuses new records (counted), it never drops a live one.
pub const RECORDS: &str = "RECORDS";
/// Ring buffer of [`RecordEvent`]s: each record filed and removed, from
/// which the daemon keeps its cookie and client-tuple indexes in its own
/// memory, not the kernel's.
pub const RECORD_EVENTS: &str = "RECORD_EVENTS";
/// Bytes of `RECORD_EVENTS` (a power of two): about 29,000 events between
/// two reads by the daemon.
pub const RECORD_EVENTS_BYTES: u32 = 2 << 20;
/// Maps of earlier layouts that a daemon removes when it finds them pinned:
/// the cookie-keyed tuple index and the per-socket storage.
pub const OBSOLETE_MAPS: [&str; 2] = ["TUPLES", "PEER_STORAGE"];
/// LPM trie of trusted LB networks ([`TrustKey`] → `u8` 1).
pub const TRUSTED_LBS: &str = "TRUSTED_LBS";
/// One-entry array holding the [`Config`].
pub const CONFIG: &str = "CONFIG";
/// Per-CPU array of `u64` counters indexed by [`Counter`].
pub const STATS: &str = "STATS";
/// LRU hash: [`TcKey`] (4-tuple as the server sees it) → [`crate::PeerRecord`],
/// filled by the TC ingress path.
pub const TC_RECORDS: &str = "TC_RECORDS";

/// LRU hash: [`TcKey`] → `u64` (`bpf_ktime_get_ns()` of the SYN), the
/// connections whose handshake-completing segment the TC path has yet to
/// see. Only that segment's option is used, as in sockops.
pub const TC_PENDING: &str = "TC_PENDING";

/// Hash: local port (host order) → `u8` 1, the `--proxy-protocol` ports.
pub const PROXY_PORTS: &str = "PROXY_PORTS";
/// Capacity of `PROXY_PORTS`.
pub const PROXY_PORTS_CAPACITY: u32 = 64;
/// Sockhash: socket cookie → socket, the connections on `--proxy-protocol`
/// ports from trusted peers; its stream-verdict program removes the header.
pub const PROXY_SOCKS: &str = "PROXY_SOCKS";
/// Hash: socket cookie → [`ProxyPending`], watched connections whose
/// header is not through yet. Not preallocated.
pub const PROXY_PENDING: &str = "PROXY_PENDING";
/// Capacity of `PROXY_PENDING`: connections whose first bytes are in
/// flight at once (each entry lives from the handshake to the header's end).
pub const PROXY_PENDING_CAPACITY: u32 = 65_536;

/// LRU hash: [`TcKey`] → [`ProxySyn`], the handshakes on
/// `--proxy-protocol` ports from trusted peers that the TC program follows
/// until their first data segment (`--proxy-interface`). Preallocated, not
/// pinned: an entry lost to eviction or a restart only sends that
/// connection the sockmap's way.
pub const PROXY_SYNS: &str = "PROXY_SYNS";
/// Capacity of `PROXY_SYNS`: handshakes in flight at once.
pub const PROXY_SYNS_CAPACITY: u32 = 8_192;
/// LRU hash: [`TcKey`] → [`crate::proxy::HeaderBuf`], v2 headers with TLVs
/// the TC program cut out, until sockops files them in `PROXY_TLVS` under
/// the new socket's cookie (at once: entries live for a handshake).
pub const PROXY_TLV_STASH: &str = "PROXY_TLV_STASH";
/// Capacity of `PROXY_TLV_STASH`.
pub const PROXY_TLV_STASH_CAPACITY: u32 = 1_024;
/// Hash: [`TcKey`] → [`crate::shift::SeqShift`], the PROXY connections whose
/// header the TC program cut out at the interface, renumbered in both
/// directions for their whole life. Written by the TC program, removed by
/// sockops at close; pinned (a restart must keep renumbering them). Not
/// preallocated; capacity `--max-records`.
pub const PROXY_FLOWS: &str = "PROXY_FLOWS";

/// Hash: socket cookie → [`crate::proxy::HeaderBuf`], the v2 header of a
/// PROXY connection whose header carried TLVs (ALPN, authority, unique id,
/// cloud endpoint ids), for the lookups; bytes past the header are zeroed.
/// Written by the verdict program, removed by sockops at close. Not
/// preallocated; a full map keeps the record, not the TLVs.
pub const PROXY_TLVS: &str = "PROXY_TLVS";
/// Capacity of `PROXY_TLVS`.
pub const PROXY_TLVS_CAPACITY: u32 = 65_536;

/// A watched connection before its PROXY header is through: who it is, the
/// bytes held so far, and what is left to remove of a refused header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProxyPending {
    /// The connection's tuple (set by sockops), filled with the client once
    /// the header is read.
    pub record: crate::PeerRecord,
    /// The stream's first bytes, held while they are a header's prefix.
    pub head: crate::proxy::HeaderBuf,
    /// Bytes of a refused header still to remove from the stream.
    pub skip: u32,
    /// Non-zero once the header was seen over more than one segment.
    pub split: u32,
}

/// Program array: the TC ingress program's tail, `ttm_tc_cut`.
pub const PROXY_TAIL: &str = "PROXY_TAIL";

/// What the TC ingress program asks of its tail `ttm_tc_cut`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CutJob {
    /// Non-zero: the connection's first data segment (read its header,
    /// then cut it); zero: cut `cut` bytes and renumber to `seq`.
    pub first: u32,
    /// The client's initial sequence number.
    pub isn: u32,
    /// Payload bytes to cut (`first` zero).
    pub cut: u32,
    /// Sequence number after the cut (`first` zero).
    pub seq: u32,
}

/// Where a [`ProxySyn`] stands.
pub mod syn_phase {
    /// The SYN came through TC; the first data segment has not.
    pub const SYN_SEEN: u32 = 1;
    /// The first data segment had no PROXY header: sockops leaves the
    /// connection unwatched.
    pub const ABSENT: u32 = 2;
}

/// A handshake on a PROXY port from a trusted peer, as the TC program
/// follows it until its first data segment. Written by TC; read and
/// removed by sockops when the socket is made.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxySyn {
    /// The client's initial sequence number.
    pub isn: u32,
    /// A [`syn_phase`] value.
    pub phase: u32,
    /// `bpf_ktime_get_ns()` of the SYN.
    pub syn_ns: u64,
}

/// How long the TC program holds a PROXY handshake's bare ACK back waiting
/// for the header (as the daemon's `TCP_DEFER_ACCEPT` of 1 s): a trusted
/// peer that sends nothing is then accepted with the next ACK, the one
/// answering the real server's retransmitted SYN-ACK.
pub const PROXY_HOLD_NS: u64 = 1_000_000_000;

/// A connection as the real server sees it, for the TC path's records.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcKey {
    /// The server's address (the packet's destination), v4-mapped.
    pub local_addr: Addr16,
    /// The peer's address (the packet's source: the LB), v4-mapped.
    pub peer_addr: Addr16,
    /// The server's port, host order.
    pub local_port: u16,
    /// The peer's port, host order.
    pub peer_port: u16,
}

/// LRU hash: socket cookie → [`Mismatch`], what the witness caught.
pub const MISMATCHES: &str = "MISMATCHES";
/// Capacity of `MISMATCHES`.
pub const MISMATCHES_CAPACITY: u32 = 1_024;

/// A getpeername answer that was neither the kernel's peer nor ttm's
/// client: written by the witness programs, read by `ttm verify --live`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The address the application was about to receive (IPv4 v4-mapped).
    pub returned_addr: Addr16,
    /// The kernel's peer.
    pub kernel_addr: Addr16,
    /// CLOCK_MONOTONIC nanoseconds when seen.
    pub seen_ns: u64,
    /// Returned port, host order.
    pub returned_port: u16,
    /// Kernel peer port, host order.
    pub kernel_port: u16,
    /// Thread group id of the caller.
    pub pid: u32,
}

/// Default capacity of `RECORDS` (live connections tracked for lookups):
/// a limit, not an allocation — entries are allocated as connections come.
pub const DEFAULT_RECORDS_CAPACITY: u32 = 1 << 20;

/// [`RecordEvent::kind`]: a record was filed.
pub const RECORD_FILED: u8 = 1;
/// [`RecordEvent::kind`]: a record was removed at its socket's close.
pub const RECORD_REMOVED: u8 = 2;

/// What `RECORD_EVENTS` carries per record filed or removed: enough for the
/// daemon to index it by cookie and by the tuple the app sees.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordEvent {
    /// The record's key in `RECORDS`.
    pub key: TcKey,
    /// [`RECORD_FILED`] or [`RECORD_REMOVED`].
    pub kind: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
    /// The socket cookie.
    pub cookie: u64,
    /// The client, v4-mapped for IPv4.
    pub client_addr: Addr16,
    /// The client's port, host order.
    pub client_port: u16,
    /// Explicit padding; always zero.
    pub _pad2: [u8; 6],
}
/// Default capacity of the TC path's LRU maps (`TC_RECORDS`, `TC_PENDING`):
/// handshakes in flight and sockets outside the decoder's cgroup. These are
/// preallocated (an LRU map always is), so they stay small.
pub const DEFAULT_TC_CAPACITY: u32 = 65_536;
/// Hash: [`crate::udp::UdpFlowKey`] → [`crate::udp::UdpFlow`], the UDP
/// flows a trusted LB marked (`--udp-interface`), bounded by
/// `--max-udp-flows`, expired by the daemon after `--udp-idle`.
pub const UDP_FLOWS: &str = "UDP_FLOWS";
/// Socket storage: [`crate::udp::Delivery`], the flow of the datagram each
/// unconnected UDP socket last delivered (for the UOA lookup). Not pinned:
/// it describes sockets of this load only.
pub const UDP_DELIVERIES: &str = "UDP_DELIVERIES";

/// Capacity of `TRUSTED_LBS`.
pub const TRUSTED_LBS_CAPACITY: u32 = 1_024;

/// Key of the trusted-LB trie: an LPM prefix over a 16-byte address (IPv4
/// networks are stored v4-mapped, with their prefix length plus 96).
pub type TrustKey = Addr16;

/// Bits of [`Config::proxy_flags`].
pub mod proxy_flags {
    /// `PROXY_PORTS` holds ports: sockops watches them.
    pub const WATCHING: u32 = 1;
    /// The TC program is attached only to follow PROXY handshakes
    /// (`--proxy-interface` without TC mode): it reads no TCP option.
    pub const TC_NO_OPTIONS: u32 = 2;
}

/// Decoder settings, written by the daemon before it attaches the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Option layouts accepted, in priority order.
    pub formats: FormatTable,
    /// Non-zero: decode options from any peer (`--trust-any`, unsafe).
    pub trust_any: u32,
    /// `getsockopt(SOL_IP, name)` answered with the `ttm_peer` layout
    /// (`--getsockopt-name`, default [`crate::compat::TTM_PEER_SOCKOPT`]).
    pub getsockopt_name: u32,
    /// `getsockopt(SOL_IP, name)` answered with the NAT64 layout; 0 is off
    /// (`--nat64-getsockopt`).
    pub nat64_getsockopt_name: u32,
    /// What the getsockopt shim returns for a buffer under 20 bytes: -EINVAL
    /// where the kernel lets cgroup programs choose the errno (5.18+), else
    /// -EFAULT, the only error older kernels give for a changed return value.
    pub short_buffer_retval: i32,
    /// [`proxy_flags`] bits: whether `PROXY_PORTS` holds ports
    /// (`--proxy-protocol`; only then does sockops look there) and whether
    /// the TC program reads TCP options or only follows PROXY handshakes.
    pub proxy_flags: u32,
    /// `--udp-idle` in seconds: a UDP flow idle this long is answered no
    /// more (the daemon's sweep then removes it); 0 while UDP is off.
    pub udp_idle_secs: u32,
    /// What `getsockopt(SOL_IP, name)` answers with the UOA lookup (uoa.ko's
    /// 2048); 0 while UDP is off.
    pub uoa_getsockopt_name: u32,
    /// What the UOA lookup returns for a flow it has no client for:
    /// -ENOENT as uoa.ko does, where the kernel lets cgroup programs choose
    /// the errno (5.18+); else 0, which leaves the kernel's ENOPROTOOPT.
    pub uoa_missing_retval: i32,
    /// Explicit padding; always zero.
    pub _pad: u32,
}

impl Config {
    /// A config that decodes nothing (what the kernel sees before the daemon writes it).
    pub const DISABLED: Config = Config {
        formats: FormatTable::EMPTY,
        trust_any: 0,
        getsockopt_name: 0,
        nat64_getsockopt_name: 0,
        short_buffer_retval: 0,
        proxy_flags: 0,
        udp_idle_secs: 0,
        uoa_getsockopt_name: 0,
        uoa_missing_retval: 0,
        _pad: 0,
    };
}

/// Counters kept in `STATS`, one slot each, summed over CPUs by user space.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Passively opened connections whose handshake completed.
    ConnectionsSeen = 0,
    /// Connections with a decoded, trusted option (a record was stored).
    Decoded = 1,
    /// Trusted peer, well-formed options, no configured option present.
    NoOption = 2,
    /// Peer outside the trusted LB networks: options ignored.
    Untrusted = 3,
    /// Malformed: an option length of 0 or 1.
    MalformedLengthTooShort = 4,
    /// Malformed: an option running past the end of the header.
    MalformedPastEnd = 5,
    /// Malformed: a kind byte without its length byte.
    MalformedTruncated = 6,
    /// Malformed: a configured kind with an unconfigured length.
    MalformedUnexpectedLength = 7,
    /// Records removed because their socket closed.
    RecordsRemoved = 8,
    /// A closing socket's cookie entry was gone before it closed. The cookie
    /// map no longer evicts, so this stays 0; kept for its place in `STATS`.
    RecordsEvicted = 9,
    /// Socket storage could not be allocated. Records no longer live in
    /// socket storage, so this stays 0; kept for its place in `STATS`.
    StorageFailed = 10,
    /// Cookie map insert failed: the map is full (`--max-records`) or the
    /// kernel is out of memory. The socket's own storage still has the
    /// record (getsockopt and the rewrite work; lookups by fd too), no
    /// existing record was dropped.
    MapInsertFailed = 11,
    /// The handshake-completing segment was not available to parse.
    NoHeader = 12,
    /// `getsockopt(SOL_IP, ttm name)` answered with the client.
    GetsockoptAnswered = 13,
    /// `getsockopt(SOL_IP, ttm name)` on a socket without a record (the app gets ENOPROTOOPT).
    GetsockoptNoRecord = 14,
    /// `getsockopt(SOL_IP, ttm name)` with a buffer under 20 bytes (the app gets EINVAL).
    GetsockoptShortBuffer = 15,
    /// `accept()`/`getpeername()` answers rewritten to the client.
    PeerRewritten = 16,
    /// A second configured option in the same segment: the LB's was picked
    /// by position (see `conflicting_options` when it cannot be).
    RepeatedOption = 17,
    /// The option claimed an address no client can have (unspecified,
    /// loopback, multicast, broadcast): not recorded.
    ImplausibleClient = 18,
    /// A getpeername answer was neither the kernel's peer nor ttm's client
    /// (seen by the witness; details in `MISMATCHES`).
    PeerMismatch = 19,
    /// The TC path recorded a client for a 4-tuple.
    TcDecoded = 20,
    /// A socket's record was taken from the TC path's 4-tuple map (sockops
    /// found no option itself, or cannot read headers on this kernel).
    TcJoined = 21,
    /// 4-tuple records removed by the daemon's sweep: older than
    /// `--tc-max-age` and no socket with that 4-tuple left.
    TcExpired = 22,
    /// Records filed in the record map. Live records = this − `RecordsRemoved`,
    /// so the live count costs two per-CPU reads, not a walk of the map.
    RecordsStored = 23,
    /// A live record already holds this connection's 4-tuple: the same
    /// tuple in another network namespace. This connection gets no record,
    /// and the getsockopt shim answers for neither (the other keeps its
    /// lookups and its rewrite, which check the socket's cookie).
    TupleIndexFailed = 24,
    /// The handshake segment held configured options naming different
    /// clients and the LB's position is unknown: no record (the app sees the
    /// LB), never a client's choice.
    ConflictingOptions = 25,
    /// IPv6 packets from trusted peers the TC path could not follow to TCP:
    /// a fragment, an authentication header, or more than 4 extension
    /// headers. Left alone (sockops mode reads the reassembled segment).
    TcIpv6Unparsed = 26,
    /// Connections to a `--proxy-protocol` port from a trusted peer, watched
    /// for a PROXY header.
    ProxyWatched = 27,
    /// A PROXY header was removed and its client recorded.
    ProxyDecoded = 28,
    /// A PROXY header naming no client (v2 LOCAL, v1 UNKNOWN, v2 UNSPEC or
    /// UNIX) was removed; nothing recorded.
    ProxyNoClient = 29,
    /// A watched connection began without a PROXY header: passed unchanged.
    ProxyAbsent = 30,
    /// A PROXY header of known length was refused (bad version, unknown
    /// family, short addresses, broken TLVs, oversized, implausible client):
    /// removed, nothing recorded.
    ProxyRefused = 31,
    /// A v1 line that is broken or has no end within 107 bytes: passed
    /// unchanged (its end cannot be known), nothing recorded.
    ProxyUnframed = 32,
    /// A PROXY header arrived over more than one segment (held, then joined).
    ProxySplit = 33,
    /// A connection that should have been watched could not be (the pending
    /// or socket map was full): its bytes reach the app as they came.
    ProxyWatchFailed = 34,
    /// `listen()` calls on a `--proxy-protocol` port (the daemon then sets
    /// `TCP_DEFER_ACCEPT` on the new listener).
    ProxyListening = 35,
    /// A PROXY header cut out at the interface (`--proxy-interface`): the
    /// connection never takes the sockmap path; its data path is the
    /// kernel's own, renumbered by the TC programs.
    ProxyCut = 36,
    /// A PROXY connection the TC program could not take (its header came in
    /// pieces, or `PROXY_FLOWS` was full): it takes the sockmap path.
    ProxyKept = 37,
    /// Handshake-completing bare ACKs of PROXY connections held back at the
    /// interface, so that `accept()` waits for the header's segment.
    ProxyAckHeld = 38,
    /// Record events the ring buffer had no room for (the daemon fell
    /// behind or was not running): the daemon rebuilds its indexes from
    /// `RECORDS` when it sees this grow.
    EventsLost = 39,
    /// UDP flows filed from a trusted marking (live flows = this −
    /// `UdpExpired`).
    UdpDecoded = 40,
    /// A trusted marking named another client for a live flow (the LB
    /// reused its port sooner than `--udp-idle`): the newer client replaced
    /// the older.
    UdpReplaced = 41,
    /// A new flow's marking found `UDP_FLOWS` full (`--max-udp-flows`): not
    /// filed; no live flow was evicted. Its datagrams reach the app as the
    /// LB's.
    UdpRefused = 42,
    /// opp headers removed from trusted datagrams, which then went up as
    /// plain UDP.
    UdpUnwrapped = 43,
    /// Marking-only datagrams (empty payload) from trusted LBs: filed and
    /// dropped, never given to the app.
    UdpMarkersDropped = 44,
    /// Markings (IP option or opp) from peers outside `--trust`: left alone.
    UdpUntrusted = 45,
    /// Broken markings from trusted peers (option framing, opp header,
    /// implausible client, an opp the path cannot remove): nothing filed,
    /// the datagram left alone.
    UdpMalformed = 46,
    /// Markings that name two clients in one datagram, or one key reached
    /// by two local addresses: no client is answered for it.
    UdpConflicting = 47,
    /// UDP flows removed by the daemon's sweep after `--udp-idle`.
    UdpExpired = 48,
    /// UOA lookups (`getsockopt(IPPROTO_IP, 2048)`) answered with a client.
    UdpLookupAnswered = 49,
    /// UOA lookups without an answer (no flow, or which flow is meant
    /// cannot be told): the app gets ENOENT.
    UdpLookupUnanswered = 50,
}

impl Counter {
    /// Number of counters; the size of `STATS`.
    pub const COUNT: u32 = 51;

    /// Every counter, in index order.
    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::ConnectionsSeen,
        Counter::Decoded,
        Counter::NoOption,
        Counter::Untrusted,
        Counter::MalformedLengthTooShort,
        Counter::MalformedPastEnd,
        Counter::MalformedTruncated,
        Counter::MalformedUnexpectedLength,
        Counter::RecordsRemoved,
        Counter::RecordsEvicted,
        Counter::StorageFailed,
        Counter::MapInsertFailed,
        Counter::NoHeader,
        Counter::GetsockoptAnswered,
        Counter::GetsockoptNoRecord,
        Counter::GetsockoptShortBuffer,
        Counter::PeerRewritten,
        Counter::RepeatedOption,
        Counter::ImplausibleClient,
        Counter::PeerMismatch,
        Counter::TcDecoded,
        Counter::TcJoined,
        Counter::TcExpired,
        Counter::RecordsStored,
        Counter::TupleIndexFailed,
        Counter::ConflictingOptions,
        Counter::TcIpv6Unparsed,
        Counter::ProxyWatched,
        Counter::ProxyDecoded,
        Counter::ProxyNoClient,
        Counter::ProxyAbsent,
        Counter::ProxyRefused,
        Counter::ProxyUnframed,
        Counter::ProxySplit,
        Counter::ProxyWatchFailed,
        Counter::ProxyListening,
        Counter::ProxyCut,
        Counter::ProxyKept,
        Counter::ProxyAckHeld,
        Counter::EventsLost,
        Counter::UdpDecoded,
        Counter::UdpReplaced,
        Counter::UdpRefused,
        Counter::UdpUnwrapped,
        Counter::UdpMarkersDropped,
        Counter::UdpUntrusted,
        Counter::UdpMalformed,
        Counter::UdpConflicting,
        Counter::UdpExpired,
        Counter::UdpLookupAnswered,
        Counter::UdpLookupUnanswered,
    ];

    /// The counter for a malformed-option reason.
    #[inline(always)]
    pub const fn malformed(reason: Malformed) -> Counter {
        match reason {
            Malformed::LengthTooShort => Counter::MalformedLengthTooShort,
            Malformed::PastEnd => Counter::MalformedPastEnd,
            Malformed::Truncated => Counter::MalformedTruncated,
            Malformed::UnexpectedLength => Counter::MalformedUnexpectedLength,
        }
    }

    /// Stable snake_case name used by `ttm stats` and its JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::ConnectionsSeen => "connections_seen",
            Counter::Decoded => "decoded",
            Counter::NoOption => "no_option",
            Counter::Untrusted => "untrusted",
            Counter::MalformedLengthTooShort => "malformed_length_too_short",
            Counter::MalformedPastEnd => "malformed_past_end",
            Counter::MalformedTruncated => "malformed_truncated",
            Counter::MalformedUnexpectedLength => "malformed_unexpected_length",
            Counter::RecordsRemoved => "records_removed",
            Counter::RecordsEvicted => "records_evicted",
            Counter::StorageFailed => "storage_failed",
            Counter::MapInsertFailed => "map_insert_failed",
            Counter::NoHeader => "no_header",
            Counter::GetsockoptAnswered => "getsockopt_answered",
            Counter::GetsockoptNoRecord => "getsockopt_no_record",
            Counter::GetsockoptShortBuffer => "getsockopt_short_buffer",
            Counter::PeerRewritten => "peer_rewritten",
            Counter::RepeatedOption => "repeated_option",
            Counter::ImplausibleClient => "implausible_client",
            Counter::PeerMismatch => "peer_mismatch",
            Counter::TcDecoded => "tc_decoded",
            Counter::TcJoined => "tc_joined",
            Counter::TcExpired => "tc_expired",
            Counter::RecordsStored => "records_stored",
            Counter::TupleIndexFailed => "tuple_index_failed",
            Counter::ConflictingOptions => "conflicting_options",
            Counter::TcIpv6Unparsed => "tc_ipv6_unparsed",
            Counter::ProxyWatched => "proxy_watched",
            Counter::ProxyDecoded => "proxy_decoded",
            Counter::ProxyNoClient => "proxy_no_client",
            Counter::ProxyAbsent => "proxy_absent",
            Counter::ProxyRefused => "proxy_refused",
            Counter::ProxyUnframed => "proxy_unframed",
            Counter::ProxySplit => "proxy_split",
            Counter::ProxyWatchFailed => "proxy_watch_failed",
            Counter::ProxyListening => "proxy_listening",
            Counter::ProxyCut => "proxy_cut",
            Counter::ProxyKept => "proxy_kept",
            Counter::ProxyAckHeld => "proxy_ack_held",
            Counter::EventsLost => "record_events_lost",
            Counter::UdpDecoded => "udp_decoded",
            Counter::UdpReplaced => "udp_replaced",
            Counter::UdpRefused => "udp_refused",
            Counter::UdpUnwrapped => "udp_unwrapped",
            Counter::UdpMarkersDropped => "udp_markers_dropped",
            Counter::UdpUntrusted => "udp_untrusted",
            Counter::UdpMalformed => "udp_malformed",
            Counter::UdpConflicting => "udp_conflicting",
            Counter::UdpExpired => "udp_expired",
            Counter::UdpLookupAnswered => "udp_lookup_answered",
            Counter::UdpLookupUnanswered => "udp_lookup_unanswered",
        }
    }
}

/// Live records from counter totals: filed minus removed (never below 0:
/// counters are summed per CPU at slightly different moments).
pub const fn live_records(stored: u64, removed: u64) -> u64 {
    stored.saturating_sub(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_records_are_stored_minus_removed_and_never_negative() {
        assert_eq!(live_records(10, 3), 7);
        assert_eq!(live_records(3, 3), 0);
        assert_eq!(live_records(3, 4), 0);
    }

    #[test]
    fn a_record_event_is_laid_out_without_holes() {
        assert_eq!(core::mem::size_of::<TcKey>(), 36);
        assert_eq!(core::mem::size_of::<RecordEvent>(), 72);
    }

    #[test]
    fn counters_are_indexed_in_order_with_unique_names() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32);
            for other in &Counter::ALL[i + 1..] {
                assert_ne!(c.name(), other.name());
            }
        }
    }
}
