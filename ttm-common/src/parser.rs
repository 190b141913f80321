//! The TCP option walker: finds a TOA-family option and decodes the client.
//!
//! The same code runs on the host (over a byte slice) and in the kernel (over
//! packet memory, behind [`OptionBytes`]). The walk is bounded: it never looks
//! past [`MAX_OPTION_BYTES`] and every step advances at least one byte.

use crate::addr::{v4_mapped, Addr16};
use crate::format::{AddrFamily, FormatTable};

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

/// Where a configured option sits in the area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    /// Offset of the option's kind byte in the area.
    pub offset: usize,
    /// Index into the `FormatTable` of the layout that matched.
    pub format_index: usize,
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
    /// A configured kind with an unconfigured length was seen.
    pub odd_length: bool,
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
            return Some(Walk::Found(Located {
                offset: i,
                format_index,
            }));
        }
        self.odd_length |= formats.has_kind(kind);
        self.next = i + len as usize;
        None
    }

    /// The outcome once the area is exhausted without a match.
    #[inline(always)]
    pub fn finish(&self) -> Walk {
        if self.odd_length {
            Walk::Malformed(Malformed::UnexpectedLength)
        } else {
            Walk::NotFound
        }
    }
}

/// Walks the option area and locates the first option matching `formats`.
///
/// Any malformed option makes the whole area untrusted: once the framing is
/// broken, later bytes cannot be told apart from data. An option with a
/// configured kind but unknown length is reported only if no valid option
/// follows it.
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

/// Walks the option area and decodes the first option matching `formats`.
pub fn find_client<B: OptionBytes + ?Sized>(bytes: &B, formats: &FormatTable) -> Scan {
    match find_option(bytes, formats) {
        Walk::Found(at) => match decode_client(bytes, at, formats) {
            Some(client) => Scan::Found(client),
            // find_option checked the bounds; only a table changed under us lands here.
            None => Scan::Malformed(Malformed::PastEnd),
        },
        Walk::NotFound => Scan::NotFound,
        Walk::Malformed(m) => Scan::Malformed(m),
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
    let format = formats.formats.get(located.format_index)?;
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
    Some(ClientAddr {
        addr,
        port,
        family,
        format_index: located.format_index as u8,
    })
}

#[cfg(test)]
mod tests;
