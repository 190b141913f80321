//! What unmodified applications are shown: the `getsockopt` answers of the
//! TOA kernel modules ttm replaces, and the address `accept()`/`getpeername()`
//! return. The kernel hooks copy these bytes; the layouts are tested here.

use crate::addr::{as_v4, Addr16};
use crate::record::{ClientFamily, PeerRecord};

/// Default `getsockopt(SOL_IP, ...)` option name of the `ttm_peer` layout.
pub const TTM_PEER_SOCKOPT: u32 = 1345;
/// Bytes of both getsockopt answers.
pub const PEER_SOCKOPT_LEN: usize = 20;
/// `AF_INET` as Linux numbers it.
pub const AF_INET: u16 = 2;
/// `AF_INET6` as Linux numbers it.
pub const AF_INET6: u16 = 10;

/// `struct ttm_peer { u16 af /* host order */; be16 port; u8 addr[16]; }`:
/// `AF_INET` with the IPv4 in the first 4 address bytes (the other 12 zero)
/// for an IPv4 client, `AF_INET6` with the 16-byte address for an IPv6 one.
#[inline(always)]
pub fn ttm_peer(record: &PeerRecord) -> [u8; PEER_SOCKOPT_LEN] {
    let mut out = [0u8; PEER_SOCKOPT_LEN];
    let af = match as_v4(&record.client_addr) {
        Some(v4) => {
            out[4..8].copy_from_slice(&v4);
            AF_INET
        }
        None => {
            out[4..20].copy_from_slice(&record.client_addr);
            AF_INET6
        }
    };
    out[0..2].copy_from_slice(&af.to_ne_bytes());
    out[2..4].copy_from_slice(&record.client_port.to_be_bytes());
    out
}

/// The NAT64 layout `{ struct in6_addr saddr; be16 port; }` (20 bytes with
/// the struct's trailing padding, zeroed). An IPv4 client is given v4-mapped.
#[inline(always)]
pub fn nat64_peer(record: &PeerRecord) -> [u8; PEER_SOCKOPT_LEN] {
    let mut out = [0u8; PEER_SOCKOPT_LEN];
    out[0..16].copy_from_slice(&record.client_addr);
    out[16..18].copy_from_slice(&record.client_port.to_be_bytes());
    out
}

/// The (address, port) an AF_INET socket's `getpeername()` should return,
/// or `None` to leave it alone: only an IPv4 client fits in a `sockaddr_in`.
#[inline(always)]
pub fn peer_for_inet(record: &PeerRecord) -> Option<([u8; 4], u16)> {
    if ClientFamily::from_raw(record.client_family) != Some(ClientFamily::FourToFour) {
        return None;
    }
    as_v4(&record.client_addr).map(|v4| (v4, record.client_port))
}

/// The (address, port) an AF_INET6 socket's `getpeername()` should return:
/// an IPv4 client v4-mapped (`::ffff:a.b.c.d`), an IPv6 client as is.
#[inline(always)]
pub fn peer_for_inet6(record: &PeerRecord) -> (Addr16, u16) {
    (record.client_addr, record.client_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::v4_mapped;

    fn record(client: Addr16, port: u16, family: ClientFamily) -> PeerRecord {
        PeerRecord {
            client_addr: client,
            peer_addr: v4_mapped([10, 0, 2, 1]),
            local_addr: v4_mapped([10, 0, 2, 2]),
            established_ns: 1,
            client_port: port,
            peer_port: 40_000,
            local_port: 8080,
            client_family: family as u8,
            format_index: 0,
            option_kind: 254,
            option_len: 8,
            _pad: [0; 5],
            shared: 0,
            cookie: 0,
        }
    }

    #[test]
    fn ttm_peer_for_an_ipv4_client_matches_the_documented_unpacking() {
        let r = record(v4_mapped([192, 0, 2, 7]), 0x1f90, ClientFamily::FourToFour);
        let b = ttm_peer(&r);
        // struct.unpack('!bbH4s12s'): af low byte first on little-endian hosts.
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), AF_INET);
        assert_eq!(&b[2..4], &[0x1f, 0x90]);
        assert_eq!(&b[4..8], &[192, 0, 2, 7]);
        assert_eq!(&b[8..20], &[0u8; 12]);
    }

    #[test]
    fn ttm_peer_for_an_ipv6_client_carries_all_16_bytes() {
        let v6 = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42,
        ];
        let r = record(v6, 443, ClientFamily::SixToFour);
        let b = ttm_peer(&r);
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), AF_INET6);
        assert_eq!(&b[2..4], &443u16.to_be_bytes());
        assert_eq!(&b[4..20], &v6);
        assert_eq!(
            peer_for_inet(&r),
            None,
            "an IPv6 client never goes into a sockaddr_in"
        );
        assert_eq!(peer_for_inet6(&r), (v6, 443));
    }

    #[test]
    fn nat64_layout_is_address_then_port_then_zero_padding() {
        let r = record(v4_mapped([192, 0, 2, 7]), 1234, ClientFamily::FourToFour);
        let b = nat64_peer(&r);
        assert_eq!(&b[0..16], &v4_mapped([192, 0, 2, 7]));
        assert_eq!(&b[16..18], &1234u16.to_be_bytes());
        assert_eq!(&b[18..20], &[0, 0]);
        assert_eq!(peer_for_inet(&r), Some(([192, 0, 2, 7], 1234)));
        assert_eq!(peer_for_inet6(&r).0, v4_mapped([192, 0, 2, 7]));
    }
}
