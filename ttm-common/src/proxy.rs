//! The PROXY protocol header parser (v1 text, v2 binary), shared by the
//! kernel's stream-verdict program and the host.
//!
//! Input is the first bytes of a stream, held in a [`HeaderBuf`]; the answer
//! is a [`Parsed`]: wait for more bytes, not a header (the stream passes as it
//! is), a header of known length (removed; maybe a client), or a header whose
//! end cannot be known (the stream passes as it is). Every loop is bounded by
//! a constant, and every byte read goes through [`HeaderBuf::at`], which masks
//! its index, so the same code passes the kernel verifier.

use crate::addr::{v4_mapped, Addr16};
use crate::format::AddrFamily;

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header starts with these 6 bytes.
pub const V1_PREFIX: [u8; 6] = *b"PROXY ";
/// The longest v1 line the protocol allows, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// v2's fixed part: signature, version/command, family, length.
pub const V2_FIXED_LEN: usize = 16;
/// The longest header ttm holds and removes: v1 always fits; a v2 header
/// (TLVs included) over this is refused as [`Refusal::Oversized`] (and still
/// removed: its length is known).
pub const MAX_HEADER_LEN: usize = 255;
/// Size of [`HeaderBuf`]: appending up to 255 bytes at an offset up to 255
/// stays inside it by construction (what the kernel verifier can check).
pub const HEADER_BUF_LEN: usize = 512;
/// At most this many TLVs are walked in a v2 header; more is refused.
pub const MAX_TLVS: usize = 24;

/// PROXY protocol version of a header.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text line (`PROXY TCP4 ...\r\n`).
    V1 = 1,
    /// The binary header.
    V2 = 2,
}

/// The client a header names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyClient {
    /// Client address; IPv4 v4-mapped.
    pub addr: Addr16,
    /// Client port, host byte order.
    pub port: u16,
    /// The family of the header's addresses.
    pub family: AddrFamily,
}

/// Why a header from a trusted peer was refused. Each has its own counter.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// v1: no CRLF within 107 bytes.
    V1TooLong = 0,
    /// v1: a field is missing, empty, too long, or not what its place needs.
    V1BadField = 1,
    /// v2: the version nibble is not 2, or the command is neither LOCAL nor PROXY.
    V2BadVersion = 2,
    /// v2: an address family or transport the protocol does not define.
    V2UnknownFamily = 3,
    /// v2: the length is too short for the addresses of its family.
    V2ShortAddresses = 4,
    /// v2: a TLV runs past the header's end, or there are more than [`MAX_TLVS`].
    V2BadTlv = 5,
    /// v2: the header is longer than [`MAX_HEADER_LEN`].
    Oversized = 6,
    /// The address is not one a client can have (unspecified, loopback, multicast).
    ImplausibleClient = 7,
}

/// What the first bytes of a stream are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Every byte so far fits a header that is not complete yet.
    NeedMore,
    /// Not a PROXY header: the stream is the client's own.
    NotProxy,
    /// A complete, well-formed header of `len` bytes. `client` is `None` for
    /// a v2 LOCAL command (health checks), v1 UNKNOWN and v2 UNSPEC/UNIX.
    Header {
        /// Header length in bytes, CRLF or TLVs included.
        len: u16,
        /// The header's version.
        version: ProxyVersion,
        /// Who the header names.
        client: Option<ProxyClient>,
        /// Offset of the v2 TLVs in the header (equal to `len` when none).
        tlv_offset: u16,
    },
    /// A header whose length is known (`len` bytes) but whose content is
    /// refused: removed, nothing recorded.
    Refused {
        /// Header length in bytes (up to 16 + 65,535).
        len: u32,
        /// Why.
        why: Refusal,
    },
    /// A header that starts right but whose end cannot be known: passed on
    /// unchanged, nothing recorded.
    Unframed(Refusal),
}

/// The first bytes of a stream: `len` valid bytes in `bytes`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HeaderBuf {
    /// The bytes; only the first `len` are meaningful.
    pub bytes: [u8; HEADER_BUF_LEN],
    /// How many bytes are held.
    pub len: u32,
}

impl HeaderBuf {
    /// An empty buffer.
    pub const EMPTY: HeaderBuf = HeaderBuf {
        bytes: [0; HEADER_BUF_LEN],
        len: 0,
    };

    /// A buffer holding the first bytes of `data` (as many as fit a header).
    pub fn from_slice(data: &[u8]) -> HeaderBuf {
        let mut b = HeaderBuf::EMPTY;
        let n = data.len().min(MAX_HEADER_LEN);
        b.bytes[..n].copy_from_slice(&data[..n]);
        b.len = n as u32;
        b
    }

    /// Byte `i` (masked into the buffer: callers check `i < len` first).
    #[inline(always)]
    pub fn at(&self, i: usize) -> u8 {
        self.bytes[masked(i, HEADER_BUF_LEN - 1)]
    }

    /// Big-endian u16 at `i`.
    #[inline(always)]
    fn be16(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.at(i), self.at(i + 1)])
    }

    /// The 16 bytes at `i`.
    #[inline(always)]
    fn addr16(&self, i: usize) -> Addr16 {
        let mut a = [0u8; 16];
        let mut k = 0;
        while k < 16 {
            a[k] = self.at(i + k);
            k += 1;
        }
        a
    }
}

/// `i & mask`, with the mask kept where the index is used: the compiler may
/// not drop it on the strength of an earlier check, because the kernel
/// verifier needs to see it right where the index meets memory.
#[inline(always)]
fn masked(i: usize, mask: usize) -> usize {
    core::hint::black_box(i) & mask
}

/// Whether the held bytes start like `pattern` (as far as both go): `None`
/// while they are a strict prefix of it, else whether all of it matched.
#[inline(always)]
fn starts_with<const N: usize>(buf: &HeaderBuf, pattern: &[u8; N]) -> Option<bool> {
    let n = buf.len as usize;
    let mut i = 0;
    while i < N {
        if i >= n {
            return None;
        }
        if buf.at(i) != pattern[i] {
            return Some(false);
        }
        i += 1;
    }
    Some(true)
}

/// What the first bytes of a stream are (see [`Parsed`]).
#[inline(always)]
pub fn parse(buf: &HeaderBuf) -> Parsed {
    parse_with(buf, parse_v1)
}

/// [`parse`], with the v1 line walked by `v1` (the kernel walks it with its
/// state in map memory; see `ttm-ebpf`). `v1` gets a buffer that starts with
/// [`V1_PREFIX`] and must answer what [`parse_v1`] answers.
#[inline(always)]
pub fn parse_with(buf: &HeaderBuf, v1: impl FnOnce(&HeaderBuf) -> Parsed) -> Parsed {
    if buf.len == 0 {
        return Parsed::NeedMore;
    }
    match buf.at(0) {
        b'\r' => match starts_with(buf, &V2_SIGNATURE) {
            None => Parsed::NeedMore,
            Some(false) => Parsed::NotProxy,
            Some(true) => parse_v2(buf),
        },
        b'P' => match starts_with(buf, &V1_PREFIX) {
            None => Parsed::NeedMore,
            Some(false) => Parsed::NotProxy,
            Some(true) => v1(buf),
        },
        _ => Parsed::NotProxy,
    }
}

/// A v2 header: fixed offsets, then the TLV walk.
#[inline(always)]
fn parse_v2(buf: &HeaderBuf) -> Parsed {
    let n = buf.len as usize;
    if n < V2_FIXED_LEN {
        return Parsed::NeedMore;
    }
    let total = V2_FIXED_LEN + buf.be16(14) as usize;
    if total > MAX_HEADER_LEN {
        return Parsed::Refused {
            len: total as u32,
            why: Refusal::Oversized,
        };
    }
    let refused = |why| Parsed::Refused {
        len: total as u32,
        why,
    };
    let ver_cmd = buf.at(12);
    let local = match ver_cmd {
        0x20 => true,
        0x21 => false,
        _ => return refused(Refusal::V2BadVersion),
    };
    if local {
        // LOCAL: the rest of the header (family, addresses, TLVs) is ignored.
        return finish_v2(buf, total, total, None);
    }
    let (addr_len, family) = match buf.at(13) {
        0x00 => (0, None),
        0x11 | 0x12 => (12, Some(AddrFamily::Ipv4)),
        0x21 | 0x22 => (36, Some(AddrFamily::Ipv6)),
        0x31 | 0x32 => (216, None),
        _ => return refused(Refusal::V2UnknownFamily),
    };
    if V2_FIXED_LEN + addr_len > total {
        return refused(Refusal::V2ShortAddresses);
    }
    if n < total {
        return Parsed::NeedMore;
    }
    if family.is_none() {
        // UNSPEC and UNIX: the rest of the header is ignored.
        return finish_v2(buf, total, total, None);
    }
    let tlv_offset = V2_FIXED_LEN + addr_len;
    let client = match family {
        Some(AddrFamily::Ipv4) => Some(ProxyClient {
            addr: v4_mapped([buf.at(16), buf.at(17), buf.at(18), buf.at(19)]),
            port: buf.be16(24),
            family: AddrFamily::Ipv4,
        }),
        Some(AddrFamily::Ipv6) => Some(ProxyClient {
            addr: buf.addr16(16),
            port: buf.be16(48),
            family: AddrFamily::Ipv6,
        }),
        None => None,
    };
    finish_v2(buf, total, tlv_offset, client)
}

/// Checks the TLVs between `tlv_offset` and `total`, then answers.
#[inline(always)]
fn finish_v2(
    buf: &HeaderBuf,
    total: usize,
    tlv_offset: usize,
    client: Option<ProxyClient>,
) -> Parsed {
    let len = total as u16;
    if (buf.len as usize) < total {
        return Parsed::NeedMore;
    }
    let mut at = tlv_offset;
    let mut walked = 0;
    while walked < MAX_TLVS {
        if at == total {
            break;
        }
        if at + 3 > total || at + 3 + buf.be16(at + 1) as usize > total {
            return Parsed::Refused {
                len: u32::from(len),
                why: Refusal::V2BadTlv,
            };
        }
        at += 3 + buf.be16(at + 1) as usize;
        walked += 1;
    }
    if at != total {
        return Parsed::Refused {
            len: u32::from(len),
            why: Refusal::V2BadTlv,
        };
    }
    header(len, ProxyVersion::V2, client, tlv_offset as u16)
}

/// A well-formed header, its client checked for plausibility.
#[inline(always)]
fn header(len: u16, version: ProxyVersion, client: Option<ProxyClient>, tlv_offset: u16) -> Parsed {
    if let Some(c) = &client {
        if !crate::parser::plausible_client(&c.addr) {
            return Parsed::Refused {
                len: u32::from(len),
                why: Refusal::ImplausibleClient,
            };
        }
    }
    Parsed::Header {
        len,
        version,
        client,
        tlv_offset,
    }
}

/// The v1 line's fields after `PROXY ` (the values of `V1State::field`).
mod v1_field {
    pub const PROTO: u8 = 0;
    pub const SRC: u8 = 1;
    pub const DST: u8 = 2;
    pub const SRC_PORT: u8 = 3;
    pub const DST_PORT: u8 = 4;
    /// `UNKNOWN`: anything up to CRLF.
    pub const REST: u8 = 6;
}

/// The state of the v1 line between two bytes (kept in map memory by the
/// kernel, see `ttm-ebpf`).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct V1State {
    field: u8,
    /// 4 or 6 once `TCP4`/`TCP6` is read.
    proto: u8,
    /// Bytes read in the current field.
    field_len: u8,
    /// Saw `\r`: the next byte must be `\n`.
    cr: u8,
    /// The address being read (source, then destination).
    addr: AddrText,
    /// The source address, once read.
    src: Addr16,
    /// The port being read.
    port: u32,
    /// The source port, once read.
    src_port: u16,
    _pad: [u8; 2],
}

/// The outcome of one step of the v1 line.
enum Step {
    More,
    Done(Parsed),
}

impl V1State {
    /// The state right after `PROXY `.
    pub const START: V1State = V1State {
        field: v1_field::PROTO,
        proto: 0,
        field_len: 0,
        cr: 0,
        addr: AddrText::START,
        src: [0; 16],
        port: 0,
        src_port: 0,
        _pad: [0; 2],
    };

    /// Reads byte `c` at offset `i` of the line; `Some` once decided.
    #[inline(always)]
    pub fn step(&mut self, c: u8, i: usize) -> Option<Parsed> {
        match self.step_inner(c, i) {
            Step::More => None,
            Step::Done(p) => Some(p),
        }
    }

    #[inline(always)]
    fn step_inner(&mut self, c: u8, i: usize) -> Step {
        let bad = Step::Done(Parsed::Unframed(Refusal::V1BadField));
        if self.cr != 0 {
            if c != b'\n' {
                return bad;
            }
            let len = (i + 1) as u16;
            return Step::Done(self.finish(len));
        }
        if c == b'\r' {
            if self.field != v1_field::DST_PORT
                && self.field != v1_field::REST
                && !(self.field == v1_field::PROTO && self.field_len == 7)
            {
                return bad;
            }
            if self.field == v1_field::PROTO {
                // `UNKNOWN` right before CRLF.
                if self.proto != b'U' {
                    return bad;
                }
                self.field = v1_field::REST;
            } else if self.field == v1_field::DST_PORT && !self.end_port() {
                return bad;
            }
            self.cr = 1;
            return Step::More;
        }
        if self.field == v1_field::REST {
            return Step::More;
        }
        if c == b' ' {
            return if self.end_field() { Step::More } else { bad };
        }
        self.field_len = self.field_len.saturating_add(1);
        let ok = match self.field {
            v1_field::PROTO => self.proto_byte(c),
            v1_field::SRC | v1_field::DST => self.addr.feed(c, self.proto),
            v1_field::SRC_PORT | v1_field::DST_PORT => {
                self.port = self.port * 10 + u32::from(c.wrapping_sub(b'0'));
                c.is_ascii_digit() && self.field_len <= 5
            }
            _ => false,
        };
        if ok {
            Step::More
        } else {
            bad
        }
    }

    /// `TCP4`, `TCP6` or `UNKNOWN`, one byte at a time.
    #[inline(always)]
    fn proto_byte(&mut self, c: u8) -> bool {
        const TCP: [u8; 4] = *b"TCP\0";
        const UNKNOWN: [u8; 8] = *b"UNKNOWN\0";
        let k = self.field_len as usize - 1;
        if k < 3 && c == TCP[masked(k, 3)] && (k == 0 || self.proto == b'T') {
            self.proto = b'T';
            return true;
        }
        if k == 3 && self.proto == b'T' && (c == b'4' || c == b'6') {
            self.proto = c - b'0';
            return true;
        }
        if k < 7 && c == UNKNOWN[masked(k, 7)] && (k == 0 || self.proto == b'U') {
            self.proto = b'U';
            return true;
        }
        false
    }

    /// A space ends the current field.
    #[inline(always)]
    fn end_field(&mut self) -> bool {
        if self.field_len == 0 {
            return false;
        }
        match self.field {
            v1_field::PROTO => {
                if self.proto == b'U' && self.field_len == 7 {
                    self.proto = 0;
                    self.field = v1_field::REST;
                    return true;
                }
                if self.proto != 4 && self.proto != 6 {
                    return false;
                }
            }
            v1_field::SRC | v1_field::DST => {
                let Some(a) = self.addr.finish(self.proto) else {
                    return false;
                };
                if self.field == v1_field::SRC {
                    self.src = a;
                }
                self.addr = AddrText::START;
            }
            v1_field::SRC_PORT => {
                if !self.end_port() {
                    return false;
                }
                self.src_port = self.port as u16;
                self.port = 0;
            }
            _ => return false,
        }
        self.field += 1;
        self.field_len = 0;
        true
    }

    /// Whether the port just read is a port.
    #[inline(always)]
    fn end_port(&self) -> bool {
        self.field_len > 0 && self.port <= 65_535
    }

    /// The line ended (CRLF) at `len` bytes.
    #[inline(always)]
    fn finish(&self, len: u16) -> Parsed {
        if self.field == v1_field::REST {
            return header(len, ProxyVersion::V1, None, len);
        }
        let family = if self.proto == 4 {
            AddrFamily::Ipv4
        } else {
            AddrFamily::Ipv6
        };
        header(
            len,
            ProxyVersion::V1,
            Some(ProxyClient {
                addr: self.src,
                port: self.src_port,
                family,
            }),
            len,
        )
    }
}

/// A v1 header: the line walked byte by byte from after `PROXY `.
#[inline(always)]
pub fn parse_v1(buf: &HeaderBuf) -> Parsed {
    let n = buf.len as usize;
    let mut state = V1State::START;
    let mut i = V1_PREFIX.len();
    while i < V1_MAX_LEN {
        if i >= n {
            return Parsed::NeedMore;
        }
        if let Some(p) = state.step(buf.at(i), i) {
            return p;
        }
        i += 1;
    }
    Parsed::Unframed(Refusal::V1TooLong)
}

/// An IPv4 or IPv6 address being read as text, one byte at a time. No
/// arrays: groups are shifted into 128-bit registers (two u64 halves), so
/// no step indexes memory by a variable (what the kernel verifier wants).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct AddrText {
    /// Groups before `::` (all of them without one), last read lowest.
    head: (u64, u64),
    /// Groups after `::`, last read lowest.
    tail: (u64, u64),
    /// IPv4: the octets so far, last read lowest; IPv6: the dotted tail's.
    v4: u32,
    /// The current group, read as hex.
    hex: u32,
    /// The current group or octet, read as decimal.
    dec: u32,
    /// Groups in `head`, and in `tail`.
    head_count: u8,
    tail_count: u8,
    /// Octets done (IPv4, or an IPv6 address's dotted tail).
    octets: u8,
    /// Digits in the current group or octet.
    digits: u8,
    /// Non-zero once `::` was read.
    gap: u8,
    /// 1 after one `:`, 2 after `::`, 3 after a leading single `:`.
    colons: u8,
    /// Non-zero once the current IPv6 group had a digit that is not decimal.
    hex_seen: u8,
    /// Non-zero while reading an IPv6 address's dotted IPv4 tail.
    dotted: u8,
}

/// `(hi, lo) << 16 | g`.
#[inline(always)]
fn push16(r: (u64, u64), g: u16) -> (u64, u64) {
    ((r.0 << 16) | (r.1 >> 48), (r.1 << 16) | u64::from(g))
}

/// `(hi, lo) << bits` (0 from 128 on).
#[inline(always)]
fn shl128(r: (u64, u64), bits: u32) -> (u64, u64) {
    if bits >= 128 {
        (0, 0)
    } else if bits >= 64 {
        (r.1 << (bits - 64), 0)
    } else if bits == 0 {
        r
    } else {
        ((r.0 << bits) | (r.1 >> (64 - bits)), r.1 << bits)
    }
}

impl AddrText {
    /// Nothing read.
    pub const START: AddrText = AddrText {
        head: (0, 0),
        tail: (0, 0),
        v4: 0,
        hex: 0,
        dec: 0,
        head_count: 0,
        tail_count: 0,
        octets: 0,
        digits: 0,
        gap: 0,
        colons: 0,
        hex_seen: 0,
        dotted: 0,
    };

    /// Ends the current IPv6 group.
    #[inline(always)]
    fn push_group(&mut self, g: u16) -> bool {
        if self.head_count + self.tail_count >= 8 {
            return false;
        }
        if self.gap != 0 {
            self.tail = push16(self.tail, g);
            self.tail_count += 1;
        } else {
            self.head = push16(self.head, g);
            self.head_count += 1;
        }
        true
    }

    /// Reads `c`; false if no address of `proto` (4 or 6) can contain it here.
    #[inline(always)]
    fn feed(&mut self, c: u8, proto: u8) -> bool {
        if proto == 4 || self.dotted != 0 || (c == b'.' && self.hex_seen == 0 && proto == 6) {
            return self.feed_dotted(c, proto);
        }
        if c == b':' {
            if self.digits > 0 {
                if !self.push_group(self.hex as u16) {
                    return false;
                }
                self.digits = 0;
                self.hex = 0;
                self.dec = 0;
                self.hex_seen = 0;
                self.colons = 1;
                return true;
            }
            return match self.colons {
                1 | 3 if self.gap == 0 => {
                    self.gap = 1;
                    self.colons = 2;
                    true
                }
                0 if self.head_count == 0 && self.gap == 0 => {
                    // A leading `:` must be the first of `::`.
                    self.colons = 3;
                    true
                }
                _ => false,
            };
        }
        let Some(v) = hex_value(c) else {
            return false;
        };
        if self.colons == 3 || self.digits >= 4 {
            return false;
        }
        self.colons = 0;
        self.digits += 1;
        self.hex = self.hex * 16 + u32::from(v);
        if v > 9 {
            self.hex_seen = 1;
        }
        self.dec = self.dec * 10 + u32::from(v);
        true
    }

    /// Decimal octets and dots: an IPv4 address, or an IPv6 address's
    /// dotted tail (`::ffff:192.0.2.1`), entered on its first dot.
    #[inline(always)]
    fn feed_dotted(&mut self, c: u8, proto: u8) -> bool {
        if c == b'.' {
            if !self.octet_done() || self.octets >= 3 {
                return false;
            }
            if proto == 6 && self.dotted == 0 {
                // The tail must follow a `:`.
                if self.head_count == 0 && self.gap == 0 {
                    return false;
                }
                self.dotted = 1;
            }
            self.v4 = (self.v4 << 8) | self.dec;
            self.octets += 1;
            self.digits = 0;
            self.dec = 0;
            return true;
        }
        if !c.is_ascii_digit() || self.digits >= 3 {
            return false;
        }
        self.colons = 0;
        self.digits += 1;
        self.dec = self.dec * 10 + u32::from(c - b'0');
        self.dec <= 255
    }

    /// Whether the current octet is one: 1–3 digits, at most 255, no
    /// leading zero (`010` could be read as octal; inet_pton refuses it).
    #[inline(always)]
    fn octet_done(&self) -> bool {
        match self.digits {
            1 => true,
            2 => self.dec >= 10,
            3 => self.dec >= 100 && self.dec <= 255,
            _ => false,
        }
    }

    /// The address read, if it is a whole one of `proto`.
    #[inline(always)]
    fn finish(&self, proto: u8) -> Option<Addr16> {
        if proto == 4 {
            if self.octets != 3 || !self.octet_done() {
                return None;
            }
            let v4 = ((self.v4 << 8) | self.dec).to_be_bytes();
            return Some(v4_mapped(v4));
        }
        let mut t = *self;
        if t.dotted != 0 {
            // Three dots read: the last octet is the current one.
            if t.octets != 3 || !t.octet_done() {
                return None;
            }
            let v4 = (t.v4 << 8) | t.dec;
            if !t.push_group((v4 >> 16) as u16) || !t.push_group(v4 as u16) {
                return None;
            }
        } else if t.digits > 0 {
            if !t.push_group(t.hex as u16) {
                return None;
            }
        } else if t.colons != 2 {
            // Ends on a single `:` (or nothing at all).
            return None;
        }
        let groups = u32::from(t.head_count) + u32::from(t.tail_count);
        if (t.gap == 0 && groups != 8) || (t.gap != 0 && groups > 7) {
            return None;
        }
        // Head groups go to the top, tail groups stay at the bottom.
        let head = shl128(t.head, 16 * (8 - u32::from(t.head_count)));
        let (hi, lo) = (head.0 | t.tail.0, head.1 | t.tail.1);
        let (h, l) = (hi.to_be_bytes(), lo.to_be_bytes());
        Some([
            h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5],
            l[6], l[7],
        ])
    }
}

#[inline(always)]
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// One v2 TLV: its type and where its value lies in the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The TLV's type (`PP2_TYPE_*`).
    pub kind: u8,
    /// Its value.
    pub value: &'a [u8],
}

/// The TLVs of a well-formed v2 header's `tlvs` bytes (host side: the
/// lookups name them). Stops at the first that does not fit.
pub fn tlvs(mut tlvs: &[u8]) -> impl Iterator<Item = Tlv<'_>> {
    core::iter::from_fn(move || {
        if tlvs.len() < 3 {
            return None;
        }
        let len = u16::from_be_bytes([tlvs[1], tlvs[2]]) as usize;
        if tlvs.len() < 3 + len {
            return None;
        }
        let tlv = Tlv {
            kind: tlvs[0],
            value: &tlvs[3..3 + len],
        };
        tlvs = &tlvs[3 + len..];
        Some(tlv)
    })
}

#[cfg(test)]
mod tests;
