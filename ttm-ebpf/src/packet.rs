//! Bounds-checked access to an option area in packet memory: the TCP
//! options of a segment, or the IPv4 options and opp options of a UDP
//! datagram (`crate::udp`).

use ttm_common::OptionBytes;

/// Fixed TCP header length; options start here.
const TCP_FIXED_HEADER: usize = 20;

/// The option bytes of one header in packet memory.
pub struct TcpOptions {
    /// First option byte (packet pointer as an integer).
    start: usize,
    /// End of the packet data the kernel exposes.
    data_end: usize,
    /// Option area length from the header's data offset (0..=40).
    len: usize,
}

impl TcpOptions {
    /// Reads the data offset of the header at `data` and returns its option
    /// area, or `None` if the header is not all inside the packet (a frame
    /// cut short is not decoded).
    #[inline(always)]
    pub fn of_header(data: usize, data_end: usize) -> Option<TcpOptions> {
        if data + TCP_FIXED_HEADER > data_end {
            return None;
        }
        // SAFETY: byte 12 lies inside the 20 bytes checked above.
        let data_offset = unsafe { *((data + 12) as *const u8) } >> 4;
        let header_len = (data_offset as usize) * 4;
        if data + header_len > data_end {
            return None;
        }
        let len = header_len.saturating_sub(TCP_FIXED_HEADER);
        Some(TcpOptions {
            start: data + TCP_FIXED_HEADER,
            data_end,
            len,
        })
    }
}

impl TcpOptions {
    /// The `len` option bytes at `start` (at most 40 are read), in a packet
    /// ending at `data_end`.
    #[inline(always)]
    pub fn area(start: usize, len: usize, data_end: usize) -> TcpOptions {
        TcpOptions {
            start,
            data_end,
            len,
        }
    }
}

impl OptionBytes for TcpOptions {
    #[inline(always)]
    fn byte(&self, i: usize) -> Option<u8> {
        if i >= self.len {
            return None;
        }
        // The mask, in a register LLVM cannot see through, bounds the index
        // right where it meets the packet pointer: older verifiers (5.10)
        // lose the bound of an earlier comparison when LLVM spilled and
        // reloaded the value in between. Indexes are below 40 anyway.
        let mut i = i;
        // SAFETY: a register-only AND; no memory is touched.
        unsafe { core::arch::asm!("{0} &= 63", inout(reg) i, options(pure, nomem, nostack)) };
        let p = self.start + i;
        if p + 1 > self.data_end {
            return None;
        }
        // SAFETY: `p` is inside [data, data_end), checked just above.
        // Volatile: read right after its own check, so LLVM does not hoist
        // all checks first and keep every pointer alive on the stack.
        Some(unsafe { core::ptr::read_volatile(p as *const u8) })
    }
}
