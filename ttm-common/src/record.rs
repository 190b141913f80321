//! The per-connection record: who the client really is.

use crate::addr::{is_v4_mapped, Addr16};
use crate::format::{AddrFamily, FormatTable, MAX_FORMATS};
use crate::parser::ClientAddr;
use crate::proxy::{ProxyClient, ProxyVersion};

/// `format_index` of a record made from a PROXY protocol v1 header (its
/// `option_kind` and `option_len` are 0: no TCP option carried it).
pub const PROXY_V1_FORMAT: u8 = 0xf1;
/// `format_index` of a record made from a PROXY protocol v2 header.
pub const PROXY_V2_FORMAT: u8 = 0xf2;
/// `format_index` of the record a PROXY connection's pending state holds
/// while it waits for its header (no client yet: `client_family` is 0).
pub const PROXY_PENDING_FORMAT: u8 = 0xf0;

/// Which address families the client and the LB→RS connection use.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFamily {
    /// IPv4 client carried over an IPv4 LB→RS connection.
    FourToFour = 1,
    /// IPv6 client carried over an IPv4 LB→RS connection.
    SixToFour = 2,
    /// IPv4 client carried over an IPv6 LB→RS connection.
    FourToSix = 3,
    /// IPv6 client carried over an IPv6 LB→RS connection.
    SixToSix = 4,
}

impl ClientFamily {
    /// Combines the option's family with the family of the kernel's peer.
    #[inline(always)]
    pub fn of(client: AddrFamily, peer: &Addr16) -> ClientFamily {
        match (client, is_v4_mapped(peer)) {
            (AddrFamily::Ipv4, true) => ClientFamily::FourToFour,
            (AddrFamily::Ipv6, true) => ClientFamily::SixToFour,
            (AddrFamily::Ipv4, false) => ClientFamily::FourToSix,
            (AddrFamily::Ipv6, false) => ClientFamily::SixToSix,
        }
    }

    /// Parses the raw byte stored in a [`PeerRecord`].
    pub fn from_raw(raw: u8) -> Option<ClientFamily> {
        match raw {
            1 => Some(ClientFamily::FourToFour),
            2 => Some(ClientFamily::SixToFour),
            3 => Some(ClientFamily::FourToSix),
            4 => Some(ClientFamily::SixToSix),
            _ => None,
        }
    }

    /// The operator-facing name: `4to4`, `6to4`, `4to6`, `6to6`.
    pub fn name(self) -> &'static str {
        match self {
            ClientFamily::FourToFour => "4to4",
            ClientFamily::SixToFour => "6to4",
            ClientFamily::FourToSix => "4to6",
            ClientFamily::SixToSix => "6to6",
        }
    }
}

/// What ttm knows about one accepted connection. Written once by the sockops
/// program when the handshake completes (or by the PROXY programs once the
/// header is read), in `RECORDS` under its 4-tuple; read there by the cgroup
/// hooks and user space. Never overwritten afterwards.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerRecord {
    /// The real client, from the option. IPv4 v4-mapped.
    pub client_addr: Addr16,
    /// The kernel's peer: the load balancer's address.
    pub peer_addr: Addr16,
    /// The socket's local address.
    pub local_addr: Addr16,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the handshake completed.
    pub established_ns: u64,
    /// The socket cookie of the connection, set when the record is filed
    /// in `RECORDS` (0 in the TC path's map, where no socket exists yet).
    pub cookie: u64,
    /// Client port, host byte order.
    pub client_port: u16,
    /// Kernel peer port, host byte order.
    pub peer_port: u16,
    /// Local port, host byte order.
    pub local_port: u16,
    /// [`ClientFamily`] as u8.
    pub client_family: u8,
    /// Index of the matching layout in the `FormatTable` in force.
    pub format_index: u8,
    /// Option kind that carried the client.
    pub option_kind: u8,
    /// Option length that carried the client.
    pub option_len: u8,
    /// 1 once another live connection with the same 4-tuple (in another
    /// network namespace) was seen: the getsockopt shim, which cannot read
    /// a socket's cookie, then answers for neither.
    pub shared: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 5],
}

impl PeerRecord {
    /// An all-zero record (used as the socket-storage initial value).
    pub const ZERO: PeerRecord = PeerRecord {
        client_addr: [0; 16],
        peer_addr: [0; 16],
        local_addr: [0; 16],
        established_ns: 0,
        cookie: 0,
        client_port: 0,
        peer_port: 0,
        local_port: 0,
        client_family: 0,
        format_index: 0,
        option_kind: 0,
        option_len: 0,
        shared: 0,
        _pad: [0; 5],
    };

    /// Fills the record for a decoded `client` seen from `peer` (address,
    /// port) to `local` at `now_ns`, in place: the kernel side builds records
    /// in map memory, its stack being too small. Every field is written.
    #[inline(always)]
    pub fn fill_decoded(
        &mut self,
        client: &ClientAddr,
        formats: &FormatTable,
        peer: (Addr16, u16),
        local: (Addr16, u16),
        now_ns: u64,
    ) {
        self.set_tuple(peer, local);
        self.fill_client(client, formats, now_ns);
    }

    /// Sets the connection as the server sees it: the kernel's peer and the
    /// local end. The client fields are left as they are.
    #[inline(always)]
    pub fn set_tuple(&mut self, peer: (Addr16, u16), local: (Addr16, u16)) {
        self.peer_addr = peer.0;
        self.peer_port = peer.1;
        self.local_addr = local.0;
        self.local_port = local.1;
    }

    /// Fills every field but the tuple for a decoded `client` at `now_ns`;
    /// the tuple must be set already (the client family depends on the peer).
    #[inline(always)]
    pub fn fill_client(&mut self, client: &ClientAddr, formats: &FormatTable, now_ns: u64) {
        self.client_addr = client.addr;
        self.established_ns = now_ns;
        self.client_port = client.port;
        self.client_family = ClientFamily::of(client.family, &self.peer_addr) as u8;
        self.format_index = client.format_index;
        // Masked, as in `decode_client`, for older verifiers.
        let format = &formats.formats[usize::from(client.format_index) & (MAX_FORMATS - 1)];
        self.option_kind = format.kind;
        self.option_len = format.len;
        self.shared = 0;
        self._pad = [0; 5];
    }

    /// True once the record holds a decoded client.
    #[inline(always)]
    pub fn is_set(&self) -> bool {
        self.client_family != 0
    }

    /// Fills every field but the tuple for the client a PROXY header named.
    #[inline(always)]
    pub fn fill_proxy(&mut self, client: &ProxyClient, version: ProxyVersion, now_ns: u64) {
        self.client_addr = client.addr;
        self.established_ns = now_ns;
        self.client_port = client.port;
        self.client_family = ClientFamily::of(client.family, &self.peer_addr) as u8;
        self.format_index = match version {
            ProxyVersion::V1 => PROXY_V1_FORMAT,
            ProxyVersion::V2 => PROXY_V2_FORMAT,
        };
        self.option_kind = 0;
        self.option_len = 0;
        self.shared = 0;
        self._pad = [0; 5];
    }

    /// The PROXY protocol version that carried the client, if one did.
    #[inline(always)]
    pub fn proxy_version(&self) -> Option<ProxyVersion> {
        match (self.is_set(), self.format_index) {
            (true, PROXY_V1_FORMAT) => Some(ProxyVersion::V1),
            (true, PROXY_V2_FORMAT) => Some(ProxyVersion::V2),
            _ => None,
        }
    }

    /// What carried the client, as the lookups name it: `tcp-option`,
    /// `proxy-v1` or `proxy-v2`.
    pub fn carrier(&self) -> &'static str {
        match self.proxy_version() {
            Some(ProxyVersion::V1) => "proxy-v1",
            Some(ProxyVersion::V2) => "proxy-v2",
            None => "tcp-option",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::v4_mapped;

    #[test]
    fn a_filled_record_names_its_client_family_and_format() {
        let client = crate::ClientAddr {
            addr: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            port: 4242,
            family: crate::AddrFamily::Ipv6,
            format_index: 1,
        };
        let mut r = PeerRecord {
            _pad: [9; 5],
            shared: 9,
            ..PeerRecord::ZERO
        };
        r.fill_decoded(
            &client,
            &crate::FormatTable::DEFAULT,
            (v4_mapped([10, 0, 2, 1]), 50_000),
            (v4_mapped([10, 0, 2, 2]), 8080),
            77,
        );
        assert_eq!(r.client_family, ClientFamily::SixToFour as u8);
        assert_eq!((r.option_kind, r.option_len), (254, 20));
        assert_eq!(
            (r.client_port, r.peer_port, r.local_port),
            (4242, 50_000, 8080)
        );
        assert_eq!(r.established_ns, 77);
        assert_eq!((r._pad, r.shared), ([0; 5], 0));
        assert!(r.is_set());
    }

    #[test]
    fn a_proxy_record_names_its_version_and_no_option() {
        let mut r = PeerRecord::ZERO;
        r.set_tuple(
            (v4_mapped([10, 0, 2, 1]), 50_000),
            (v4_mapped([10, 0, 2, 2]), 8080),
        );
        r.format_index = PROXY_PENDING_FORMAT;
        assert!(!r.is_set() && r.format_index == PROXY_PENDING_FORMAT);
        let client = ProxyClient {
            addr: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
            port: 443,
            family: AddrFamily::Ipv6,
        };
        r.fill_proxy(&client, ProxyVersion::V2, 5);
        assert!(r.is_set() && r.format_index != PROXY_PENDING_FORMAT);
        assert_eq!(r.proxy_version(), Some(ProxyVersion::V2));
        assert_eq!(r.client_family, ClientFamily::SixToFour as u8);
        assert_eq!(
            (r.option_kind, r.option_len, r.carrier()),
            (0, 0, "proxy-v2")
        );
        assert_eq!(PeerRecord::ZERO.carrier(), "tcp-option");
    }

    #[test]
    fn record_layout_is_stable() {
        // Shared with the kernel: a size change is a compatibility change.
        assert_eq!(core::mem::size_of::<PeerRecord>(), 80);
        assert_eq!(core::mem::align_of::<PeerRecord>(), 8);
    }

    #[test]
    fn family_combines_option_and_peer() {
        let v4_peer = v4_mapped([10, 0, 2, 1]);
        let mut v6_peer = [0u8; 16];
        v6_peer[15] = 1;
        assert_eq!(
            ClientFamily::of(AddrFamily::Ipv4, &v4_peer),
            ClientFamily::FourToFour
        );
        assert_eq!(
            ClientFamily::of(AddrFamily::Ipv6, &v4_peer),
            ClientFamily::SixToFour
        );
        assert_eq!(
            ClientFamily::of(AddrFamily::Ipv4, &v6_peer),
            ClientFamily::FourToSix
        );
        assert_eq!(
            ClientFamily::of(AddrFamily::Ipv6, &v6_peer),
            ClientFamily::SixToSix
        );
        for f in [
            ClientFamily::FourToFour,
            ClientFamily::SixToFour,
            ClientFamily::FourToSix,
            ClientFamily::SixToSix,
        ] {
            assert_eq!(ClientFamily::from_raw(f as u8), Some(f));
        }
        assert_eq!(ClientFamily::from_raw(0), None);
        assert!(!PeerRecord::ZERO.is_set());
    }
}
