//! DPVS's marking of a UDP flow's client ("UDP option of address", UOA), as
//! bytes: the private IPv4 option, and the "opp" header that wraps a
//! datagram between its IP and UDP headers. Shared by the TC program and the
//! host; the lookup struct apps pass to `getsockopt(IPPROTO_IP, 2048)`.
//!
//! The option is a TOA-family layout, `[kind][len][port be16][address]`, in
//! an IPv4 option area framed as TCP's is (EOL, NOP, kind-length), so the
//! walk and its rules are [`crate::parser`]'s: broken framing anywhere means
//! nothing in the area is trusted, two markings naming different clients
//! give none, implausible clients are refused.

use crate::format::{AddrFamily, FormatTable, OptionFormat, OptionPosition, MAX_FORMATS};
use crate::parser::{find_client, ClientAddr, Malformed, Scan};
use crate::udp::{UdpFlow, UdpFlowKey};
use crate::Addr16;

/// IPv4 option kind of the marking: number 31 with the copy bit clear and
/// class "control" (`31 | 0x80`).
pub const IPOPT_UOA: u8 = 0x9f;

/// IP protocol number of the opp header (an unassigned number DPVS uses).
pub const IPPROTO_OPP: u8 = 248;

/// Length of the opp header before its options.
pub const OPP_FIXED_LEN: usize = 4;

/// Longest opp header ttm reads: the fixed part and an option area as long
/// as IPv4's (DPVS writes 12 or 24 bytes).
pub const MAX_OPP_LEN: usize = OPP_FIXED_LEN + crate::parser::MAX_OPTION_BYTES;

/// opp version for an IPv4 client.
pub const OPP_VERSION_V4: u8 = 1;
/// opp version for an IPv6 client.
pub const OPP_VERSION_V6: u8 = 2;

/// The socket option number (level `IPPROTO_IP`) of uoa.ko's lookup.
pub const UOA_SO_GET_LOOKUP: i32 = 2048;

/// The marking for an IPv4 client: kind 0x9f, 8 bytes.
pub const UOA_V4: OptionFormat = OptionFormat::new(IPOPT_UOA, AddrFamily::Ipv4);
/// The marking for an IPv6 client: kind 0x9f, 20 bytes.
pub const UOA_V6: OptionFormat = OptionFormat::new(IPOPT_UOA, AddrFamily::Ipv6);

/// The layouts a UOA option area is walked with. Where DPVS puts its option
/// among ones the client sent is not known, so two markings that disagree
/// give no client (`Scan::Conflicting`).
pub const UOA_FORMATS: FormatTable = {
    let mut formats = FormatTable::EMPTY.formats;
    formats[0] = UOA_V4.at(OptionPosition::Unknown);
    formats[1] = UOA_V6.at(OptionPosition::Unknown);
    FormatTable { formats, count: 2 }
};
const _: () = assert!(MAX_FORMATS >= 2);

/// Finds the client in an IPv4 option area (the bytes after the 20-byte
/// IPv4 header, at most 40).
#[inline(always)]
pub fn find_in_ip_options(options: &[u8]) -> Scan {
    find_client(options, &UOA_FORMATS)
}

/// Why an opp header is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OppRefusal {
    /// Fewer bytes than the fixed header, or a length below it or past the
    /// datagram's end.
    Truncated,
    /// A length over [`MAX_OPP_LEN`].
    TooLong,
    /// Reserved bits set, or a version other than 1 and 2.
    BadVersion,
    /// The wrapped protocol is not UDP.
    NotUdp,
    /// Its option area is malformed.
    Malformed(Malformed),
    /// The version names one client family and the marking the other.
    FamilyMismatch,
}

/// A parsed opp header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opp {
    /// Bytes of the header, fixed part and options: what unwrapping removes.
    pub len: usize,
    /// What its option area says (never `Malformed`: that refuses the header).
    pub scan: Scan,
}

/// Parses the opp header at the start of `bytes` (what follows the IP
/// header of a datagram whose protocol is [`IPPROTO_OPP`]), and the client
/// in its option area. `bytes` may extend past the header.
#[inline(always)]
pub fn parse_opp(bytes: &[u8]) -> Result<Opp, OppRefusal> {
    let Some(fixed) = bytes.first_chunk::<OPP_FIXED_LEN>() else {
        return Err(OppRefusal::Truncated);
    };
    let (version, len) = opp_fixed(*fixed)?;
    if len > bytes.len() {
        return Err(OppRefusal::Truncated);
    }
    let scan = find_in_ip_options(&bytes[OPP_FIXED_LEN..len]);
    if let Scan::Malformed(m) = scan {
        return Err(OppRefusal::Malformed(m));
    }
    if let Scan::Found(client) | Scan::Implausible(client) = scan {
        if !family_fits(version, &client) {
            return Err(OppRefusal::FamilyMismatch);
        }
    }
    Ok(Opp { len, scan })
}

/// Checks the fixed part of an opp header; returns its version and the
/// header's whole length (fixed part and options), which the caller checks
/// against the datagram's end.
#[inline(always)]
pub fn opp_fixed(fixed: [u8; OPP_FIXED_LEN]) -> Result<(u8, usize), OppRefusal> {
    let version = fixed[0] >> 4;
    if fixed[0] & 0x0f != 0 || !(version == OPP_VERSION_V4 || version == OPP_VERSION_V6) {
        return Err(OppRefusal::BadVersion);
    }
    if fixed[1] != 17 {
        return Err(OppRefusal::NotUdp);
    }
    let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
    if len > MAX_OPP_LEN {
        return Err(OppRefusal::TooLong);
    }
    if len < OPP_FIXED_LEN {
        return Err(OppRefusal::Truncated);
    }
    Ok((version, len))
}

/// True if the opp `version` names the family of the option that carried
/// `client` (an IPv6 option holding `::ffff:a.b.c.d` is still version 2).
#[inline(always)]
pub fn family_fits(version: u8, client: &ClientAddr) -> bool {
    let six = UOA_FORMATS.formats[usize::from(client.format_index) & (MAX_FORMATS - 1)].family
        == AddrFamily::Ipv6 as u8;
    six == (version == OPP_VERSION_V6)
}

/// `union inet_addr`: 16 bytes, an IPv4 address in the first 4.
pub type InetAddr = [u8; 16];

/// The struct of `getsockopt(IPPROTO_IP, UOA_SO_GET_LOOKUP)`, packed as
/// uoa.ko declares it (58 bytes): the app fills `af` and the datagram's
/// addresses and ports (source = the LB, as `recvfrom` gave them); the
/// answer fills `real_*`. Ports are network order, `af` host order.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UoaParamMap {
    /// `AF_INET` or `AF_INET6` of the addresses below.
    pub af: u16,
    /// The datagram's source: the LB.
    pub saddr: InetAddr,
    /// The datagram's destination: this server.
    pub daddr: InetAddr,
    /// Source port, network order.
    pub sport: u16,
    /// Destination port, network order.
    pub dport: u16,
    /// The client's family.
    pub real_af: u16,
    /// The client's address.
    pub real_saddr: InetAddr,
    /// The client's port, network order.
    pub real_sport: u16,
}

/// `AF_INET`, as the struct carries it (host order).
pub const AF_INET: u16 = 2;
/// `AF_INET6`, as the struct carries it (host order).
pub const AF_INET6: u16 = 10;

impl UoaParamMap {
    /// The answer for `flow`, filed under `key`, as uoa.ko writes it back:
    /// the datagram's tuple in the socket's family (`v6_socket`: IPv4 ends
    /// v4-mapped, as `recvfrom` gave them), and the client in its own.
    #[inline(always)]
    pub fn answer(v6_socket: bool, key: &UdpFlowKey, flow: &UdpFlow) -> UoaParamMap {
        let in_family = |addr: &Addr16, v6: bool| -> InetAddr {
            if v6 {
                *addr
            } else {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&addr[12..16]);
                a
            }
        };
        let client_v6 = flow.client_is_v6();
        UoaParamMap {
            af: if v6_socket { AF_INET6 } else { AF_INET },
            saddr: in_family(&key.lb_addr, v6_socket),
            daddr: in_family(&flow.local_addr, v6_socket),
            sport: key.lb_port.to_be(),
            dport: key.local_port.to_be(),
            real_af: if client_v6 { AF_INET6 } else { AF_INET },
            real_saddr: in_family(&flow.client_addr, client_v6),
            real_sport: flow.client_port.to_be(),
        }
    }
}

/// `sizeof(struct uoa_param_map)`.
pub const UOA_PARAM_MAP_LEN: usize = 58;
const _: () = assert!(core::mem::size_of::<UoaParamMap>() == UOA_PARAM_MAP_LEN);

#[cfg(test)]
mod tests;
