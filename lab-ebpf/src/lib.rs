//! The option writer's configuration, shared by the kernel program (the
//! `toa-writer` binary target) and the lab that loads it.
#![no_std]

/// Bytes of the longest option the writer emits.
pub const MAX_OPTION: usize = 20;

/// The writer is off.
pub const MODE_OFF: u8 = 0;
/// `[kind][8][own port][own IPv4]`, as a load balancer inserts the client;
/// on an IPv6 connection `[kind][20][own port][own IPv6]` (6to6).
pub const MODE_OWN_ADDRESS: u8 = 1;
/// `[kind][8][own port][the IPv4 address in first[4..8]]` on any
/// connection: on an IPv6 one, what an LB doing NAT46 sends for an IPv4
/// client (4to6).
pub const MODE_V4_CLIENT: u8 = 4;
/// `first` verbatim (its byte 1 is its length: 4, 8, 12, 16 or 20).
pub const MODE_RAW: u8 = 2;
/// Two options in one segment, as a client that adds its own option and an
/// LB that inserts the true one meet: `first` verbatim (the client's claim)
/// and `[own_kind][own_len][own port][own IPv4, or v4-mapped in 16 bytes]`
/// (the LB's), the LB's before the claim or, with `own_after`, after it.
/// Experimental kinds (253, 254) only: the kernel refuses a second option
/// of any other kind in one segment.
pub const MODE_PAIR: u8 = 3;
/// Longest pair: two 20-byte options (needs a segment without timestamps).
pub const MAX_PAIR: usize = 40;

/// What the writer puts into segments of connections from its cgroup. Slot 0
/// of `WRITER_CONFIG`; written by the lab, read by the writer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    /// `MODE_OFF`, `MODE_OWN_ADDRESS` or `MODE_RAW`.
    pub mode: u8,
    /// Non-zero: write `first` on the SYN only, never on the handshake ACK.
    pub on_syn: u8,
    /// Length of `later`, written on every segment after the handshake ACK; 0: none.
    pub later_len: u8,
    /// Non-zero (`MODE_OWN_ADDRESS` by default): the handshake option is
    /// written again on every later segment, as an LB that marks each packet
    /// of the connection does. Then the segment that completes the handshake
    /// carries it even when the handshake ACK is lost or overtaken by a
    /// duplicate ACK (seen under QEMU: a retransmitted SYN-ACK's duplicate ACK,
    /// sent from another CPU, reached the real server first).
    pub repeat: u8,
    /// The handshake ACK's option (`MODE_RAW`), or byte 0 = the kind (`MODE_OWN_ADDRESS`).
    pub first: [u8; MAX_OPTION],
    /// The option of later segments.
    pub later: [u8; MAX_OPTION],
    /// `MODE_PAIR`: kind of the LB's own-address option.
    pub own_kind: u8,
    /// `MODE_PAIR`: its length, 8 (IPv4) or 20 (v4-mapped IPv6 layout).
    pub own_len: u8,
    /// `MODE_PAIR`: non-zero puts the LB's option after the claim.
    pub own_after: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
}

impl WriterConfig {
    /// Nothing written.
    pub const OFF: WriterConfig = WriterConfig {
        mode: MODE_OFF,
        on_syn: 0,
        later_len: 0,
        repeat: 0,
        first: [0; MAX_OPTION],
        later: [0; MAX_OPTION],
        own_kind: 0,
        own_len: 0,
        own_after: 0,
        _pad: 0,
    };

    /// The common TOA layout carrying the connecting socket's own address.
    pub const TOA_V4: WriterConfig = WriterConfig::own_address(254);

    /// `[kind][8][own port][client]` on the handshake ACK and later
    /// segments: an IPv4 client carried over whatever the connection is.
    pub const fn v4_client(kind: u8, client: [u8; 4]) -> WriterConfig {
        let mut c = WriterConfig::own_address(kind);
        c.mode = MODE_V4_CLIENT;
        c.first[4] = client[0];
        c.first[5] = client[1];
        c.first[6] = client[2];
        c.first[7] = client[3];
        c
    }

    /// `[kind][8][own port][own IPv4]` on the handshake ACK.
    pub const fn own_address(kind: u8) -> WriterConfig {
        let mut c = WriterConfig::OFF;
        c.mode = MODE_OWN_ADDRESS;
        c.first[0] = kind;
        c.repeat = 1;
        c
    }

    /// `option` verbatim on the handshake ACK; `None` if its length byte is
    /// not its length or not one of 4, 8, 12, 16, 20.
    pub fn raw(option: &[u8]) -> Option<WriterConfig> {
        let mut c = WriterConfig::OFF;
        c.mode = MODE_RAW;
        c.first[..option.len()].copy_from_slice(fits(option)?);
        Some(c)
    }

    /// `[kind][len][port][address]` claiming `port`/`addr` (4 or 16 bytes)
    /// on the handshake ACK, padded with zeros to `len`.
    pub fn claim(kind: u8, len: u8, port: u16, addr: &[u8]) -> Option<WriterConfig> {
        let mut option = [0u8; MAX_OPTION];
        let total = usize::from(len);
        if total > MAX_OPTION || 4 + addr.len() > total {
            return None;
        }
        option[0] = kind;
        option[1] = len;
        option[2..4].copy_from_slice(&port.to_be_bytes());
        option[4..4 + addr.len()].copy_from_slice(addr);
        WriterConfig::raw(&option[..total])
    }

    /// Also writes `option` on every segment after the handshake ACK.
    pub fn then_on_every_segment(mut self, option: &[u8]) -> Option<WriterConfig> {
        let option = fits(option)?;
        self.later[..option.len()].copy_from_slice(option);
        self.later_len = option.len() as u8;
        self.repeat = 0;
        Some(self)
    }

    /// Moves the option to the SYN (nothing on the handshake ACK).
    pub fn on_syn_only(mut self) -> WriterConfig {
        self.on_syn = 1;
        self.repeat = 0;
        self
    }

    /// The client's `claim` (a whole option) and the LB's own-address option
    /// of `own_kind`/`own_len` (8 or 20) in the handshake ACK, the LB's after
    /// the claim if `lb_after`, else before it. `None` if the claim is not a
    /// valid option or the pair is longer than 40 bytes.
    pub fn pair(claim: &[u8], own_kind: u8, own_len: u8, lb_after: bool) -> Option<WriterConfig> {
        let mut c = WriterConfig::raw(claim)?;
        if !(own_len == 8 || own_len == 20) || claim.len() + usize::from(own_len) > MAX_PAIR {
            return None;
        }
        c.mode = MODE_PAIR;
        c.own_kind = own_kind;
        c.own_len = own_len;
        c.own_after = u8::from(lb_after);
        Some(c)
    }

    /// Length of the handshake option (or options).
    pub fn first_len(&self) -> u8 {
        match self.mode {
            MODE_OWN_ADDRESS | MODE_V4_CLIENT => 8,
            MODE_RAW => self.first[1],
            MODE_PAIR => self.first[1] + self.own_len,
            _ => 0,
        }
    }
}

fn fits(option: &[u8]) -> Option<&[u8]> {
    let ok_len = matches!(option.len(), 4 | 8 | 12 | 16 | 20);
    (ok_len && option.get(1) == Some(&(option.len() as u8))).then_some(option)
}

// SAFETY: repr(C) plain data with explicit padding, valid for any bit pattern.
#[cfg(feature = "user")]
unsafe impl aya::Pod for WriterConfig {}
