//! The TCP option walker: finds a TOA-family option and decodes the client.
//!
//! The same code runs on the host (over a byte slice) and in the kernel (over
//! packet memory, behind [`OptionBytes`]). The walk is bounded: it never looks
//! past [`MAX_OPTION_BYTES`] and every step advances at least one byte.

use crate::addr::{is_v4_mapped, v4_mapped, Addr16};
use crate::format::MAX_FORMATS;
use crate::format::{AddrFamily, FormatTable, OptionPosition};

/// The TCP option area is at most 40 bytes (data offset 15 words minus the
/// 20-byte fixed header).
pub const MAX_OPTION_BYTES: usize = 40;

/// TCP option kind "end of option list".
pub const KIND_EOL: u8 = 0;
/// TCP option kind "no operation" (padding).
pub const KIND_NOP: u8 = 1;

/// Random access to the bytes of a TCP option area (the bytes after the
/// 20-byte fixed header, up to the data offset).
pub trait OptionBytes {
    /// Byte `i` of the option area, or `None` if `i` is past its end.
    fn byte(&self, i: usize) -> Option<u8>;
}

/// Reads byte `i` only inside the 40-byte option area, whatever `bytes` holds.
#[inline(always)]
fn at<B: OptionBytes + ?Sized>(bytes: &B, i: usize) -> Option<u8> {
    if i < MAX_OPTION_BYTES {
        bytes.byte(i)
    } else {
        None
    }
}

impl OptionBytes for [u8] {
    #[inline(always)]
    fn byte(&self, i: usize) -> Option<u8> {
        self.get(i).copied()
    }
}

/// A decoded client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr {
    /// Client address; IPv4 v4-mapped.
    pub addr: Addr16,
    /// Client port, host byte order.
    pub port: u16,
    /// Which family the option carried.
    pub family: AddrFamily,
    /// Index into the `FormatTable` of the layout that matched.
    pub format_index: u8,
}

#[cfg(test)]
impl ClientAddr {
    /// The client as std's socket address (IPv4 unmapped), for the tests.
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        socket_addr(&self.addr, self.family, self.port)
    }
}

/// `addr` (IPv4 v4-mapped) of `family` and `port` as std's socket address,
/// IPv4 unmapped: how the tests compare decoded clients.
#[cfg(test)]
pub fn socket_addr(addr: &Addr16, family: AddrFamily, port: u16) -> std::net::SocketAddr {
    let v6 = std::net::Ipv6Addr::from(*addr);
    let ip = match (family, v6.to_ipv4_mapped()) {
        (AddrFamily::Ipv4, Some(v4)) => std::net::IpAddr::V4(v4),
        _ => std::net::IpAddr::V6(v6),
    };
    std::net::SocketAddr::new(ip, port)
}

/// Why an option area was rejected. Each reason has its own counter.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// An option's length byte is 0 or 1 (a length covers at least kind and length).
    LengthTooShort = 0,
    /// An option's length runs past the end of the option area.
    PastEnd = 1,
    /// The area ends after a kind byte, before its length byte.
    Truncated = 2,
    /// An option of a configured kind has a length no configured format has.
    UnexpectedLength = 3,
}

/// Where the configured options sit in the area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    /// Offset of the first configured option's kind byte in the area.
    pub offset: usize,
    /// Index into the `FormatTable` of the layout that matched it.
    pub format_index: usize,
    /// More configured options followed the first (see [`arbitrate`]).
    pub repeated: bool,
    /// Offset of the last configured option (the first when it is alone).
    pub last_offset: usize,
    /// Index of the layout of the last configured option.
    pub last_format_index: usize,
}

impl Located {
    /// The last configured option, located on its own.
    #[inline(always)]
    pub fn last(&self) -> Located {
        Located {
            offset: self.last_offset,
            format_index: self.last_format_index,
            ..*self
        }
    }
}

/// The outcome of walking one option area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// A configured option was found; its bytes are inside the area.
    Found(Located),
    /// The area is well formed and holds no configured option.
    NotFound,
    /// The area is malformed; nothing in it is trusted.
    Malformed(Malformed),
}

/// The outcome of walking and decoding one option area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// A configured option was found and decoded.
    Found(ClientAddr),
    /// An option was decoded but its address cannot be a real client's
    /// (unspecified, loopback, multicast, broadcast); see [`plausible_client`].
    Implausible(ClientAddr),
    /// Several configured options claim different clients and the LB's
    /// position is unknown: none can be told to be the LB's.
    Conflicting,
    /// The area is well formed and holds no configured option.
    NotFound,
    /// The area is malformed; nothing in it is trusted.
    Malformed(Malformed),
}

/// Progress of an option walk, advanced one option at a time by [`WalkState::step`].
///
/// The host drives it in a loop ([`find_option`]); the kernel side calls
/// `step` a fixed [`MAX_OPTION_BYTES`] times, unrolled, keeping the state in a
/// map value between steps so the verifier sees one state per step (linear
/// verification) where a data-dependent loop would not converge.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkState {
    /// Offset of the next option's kind byte.
    pub next: usize,
    /// One past the offset of the first configured option; 0 while none.
    pub found: usize,
    /// Format of the first configured option.
    pub format_index: usize,
    /// One past the offset of the last configured option; 0 while none.
    pub last: usize,
    /// Format of the last configured option.
    pub last_format_index: usize,
    /// A configured kind with an unconfigured length was seen.
    pub odd_length: bool,
    /// A second configured option was seen.
    pub repeated: bool,
}

impl WalkState {
    /// Examines the option at `self.next`. Returns the outcome when the walk
    /// is over, or `None` after advancing past one option (at least one byte).
    #[inline(always)]
    pub fn step<B: OptionBytes + ?Sized>(
        &mut self,
        bytes: &B,
        formats: &FormatTable,
    ) -> Option<Walk> {
        let i = self.next;
        let Some(kind) = at(bytes, i) else {
            return Some(self.finish());
        };
        if kind == KIND_EOL {
            return Some(self.finish());
        }
        if kind == KIND_NOP {
            self.next = i + 1;
            return None;
        }
        let Some(len) = at(bytes, i + 1) else {
            return Some(Walk::Malformed(Malformed::Truncated));
        };
        if len < 2 {
            return Some(Walk::Malformed(Malformed::LengthTooShort));
        }
        if at(bytes, i + len as usize - 1).is_none() {
            return Some(Walk::Malformed(Malformed::PastEnd));
        }
        if let Some(format_index) = formats.find(kind, len) {
            // The first one counts; the walk goes on so that broken framing
            // anywhere in the area, or a repeat, is still seen.
            if self.found == 0 {
                self.found = i + 1;
                self.format_index = format_index;
            } else {
                self.repeated = true;
            }
            self.last = i + 1;
            self.last_format_index = format_index;
        } else {
            self.odd_length |= formats.has_kind(kind);
        }
        self.next = i + len as usize;
        None
    }

    /// The outcome once the area is exhausted.
    #[inline(always)]
    pub fn finish(&self) -> Walk {
        if self.found != 0 {
            Walk::Found(Located {
                offset: self.found - 1,
                format_index: self.format_index,
                repeated: self.repeated,
                last_offset: self.last.saturating_sub(1),
                last_format_index: self.last_format_index,
            })
        } else if self.odd_length {
            Walk::Malformed(Malformed::UnexpectedLength)
        } else {
            Walk::NotFound
        }
    }
}

/// Walks the whole option area and locates the first option matching `formats`.
///
/// Any malformed option, before or after a match, makes the whole area
/// untrusted: once the framing is broken, bytes cannot be told apart from
/// data. An option with a configured kind but unknown length is reported only
/// if no valid option is present. A second matching option is ignored and
/// flagged (`Located::repeated`).
pub fn find_option<B: OptionBytes + ?Sized>(bytes: &B, formats: &FormatTable) -> Walk {
    let mut walk = WalkState::default();
    // Each step advances at least one byte, so MAX_OPTION_BYTES steps cover the area.
    for _ in 0..MAX_OPTION_BYTES {
        if let Some(outcome) = walk.step(bytes, formats) {
            return outcome;
        }
    }
    walk.finish()
}

/// Walks the option area and decodes the LB's option (see [`arbitrate`]).
pub fn find_client<B: OptionBytes + ?Sized>(bytes: &B, formats: &FormatTable) -> Scan {
    match find_option(bytes, formats) {
        Walk::Found(at) => match arbitrate(bytes, at, formats) {
            Claim::Client(client) if plausible_client(&client.addr) => Scan::Found(client),
            Claim::Client(client) => Scan::Implausible(client),
            Claim::Conflicting => Scan::Conflicting,
            // find_option checked the bounds; only a table changed under us lands here.
            Claim::Broken => Scan::Malformed(Malformed::PastEnd),
        },
        Walk::NotFound => Scan::NotFound,
        Walk::Malformed(m) => Scan::Malformed(m),
    }
}

/// Which client the configured options of one segment name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The LB's option names this client.
    Client(ClientAddr),
    /// Configured options name different clients, and which one is the LB's
    /// cannot be told: no client is taken.
    Conflicting,
    /// An option could not be decoded (bounds changed under the walk).
    Broken,
}

/// Picks the LB's option among the configured options [`find_option`]
/// located: alone, it is the one; several, the first where the LBs in force
/// write theirs first (LVS, DPVS), the last where they append (kind-200
/// DPDK LBs); where the position is unknown, they must all name one client —
/// compared first against last, since the LB's is one of the two — or none
/// is taken. A client behind an LB that keeps client options can thus never
/// choose the address recorded for it.
#[inline(always)]
pub fn arbitrate<B: OptionBytes + ?Sized>(
    bytes: &B,
    located: Located,
    formats: &FormatTable,
) -> Claim {
    if !located.repeated {
        return match decode_client(bytes, located, formats) {
            Some(c) => Claim::Client(c),
            None => Claim::Broken,
        };
    }
    let chosen = match formats.position() {
        OptionPosition::First => located,
        OptionPosition::Last => located.last(),
        OptionPosition::Unknown => {
            let (Some(first), Some(last)) = (
                decode_client(bytes, located, formats),
                decode_client(bytes, located.last(), formats),
            ) else {
                return Claim::Broken;
            };
            return if first.addr == last.addr && first.port == last.port {
                Claim::Client(first)
            } else {
                Claim::Conflicting
            };
        }
    };
    match decode_client(bytes, chosen, formats) {
        Some(c) => Claim::Client(c),
        None => Claim::Broken,
    }
}

/// Decodes `[kind][len][port be16][address]` at a location `find_option` returned.
#[inline(always)]
pub fn decode_client<B: OptionBytes + ?Sized>(
    bytes: &B,
    located: Located,
    formats: &FormatTable,
) -> Option<ClientAddr> {
    let start = located.offset;
    // A mask rather than a comparison: the index comes from map memory, and
    // older verifiers (5.10) forget a comparison's bound once the value is
    // spilled to the stack; the walker only yields indexes below MAX_FORMATS.
    let format = &formats.formats[located.format_index & (MAX_FORMATS - 1)];
    let family = format.family()?;
    let port = u16::from_be_bytes([at(bytes, start + 2)?, at(bytes, start + 3)?]);
    let a = start + 4;
    let addr = match family {
        AddrFamily::Ipv4 => v4_mapped([
            at(bytes, a)?,
            at(bytes, a + 1)?,
            at(bytes, a + 2)?,
            at(bytes, a + 3)?,
        ]),
        AddrFamily::Ipv6 => {
            let mut v6 = [0u8; 16];
            let mut k = 0;
            while k < 16 {
                v6[k] = at(bytes, a + k)?;
                k += 1;
            }
            v6
        }
    };
    // An IPv6-format option carrying `::ffff:a.b.c.d` is an IPv4 client.
    let family = if is_v4_mapped(&addr) {
        AddrFamily::Ipv4
    } else {
        family
    };
    Some(ClientAddr {
        addr,
        port,
        family,
        format_index: located.format_index as u8,
    })
}

/// False for addresses no client on the network can have, whatever an
/// option claims: unspecified (`0.0.0.0`, `::`), loopback (`127/8`, `::1`),
/// multicast (`224/4`, `ff00::/8`) and the IPv4 broadcast address.
/// Expects IPv4 v4-mapped.
#[inline(always)]
pub fn plausible_client(addr: &Addr16) -> bool {
    if is_v4_mapped(addr) {
        let first = addr[12];
        let v4_unspecified = first == 0 && addr[13] == 0 && addr[14] == 0 && addr[15] == 0;
        let broadcast = addr[12] == 255 && addr[13] == 255 && addr[14] == 255 && addr[15] == 255;
        !(v4_unspecified || first == 127 || (224..=239).contains(&first) || broadcast)
    } else {
        let mut zero_prefix = true;
        let mut k = 0;
        while k < 15 {
            zero_prefix &= addr[k] == 0;
            k += 1;
        }
        let unspecified_or_loopback = zero_prefix && addr[15] <= 1;
        !(unspecified_or_loopback || addr[0] == 0xff)
    }
}

#[cfg(test)]
pub(crate) mod tests;
