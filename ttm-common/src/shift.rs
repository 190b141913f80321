//! A PROXY header cut out of a TCP stream at the interface: the real
//! server's TCP then numbers the client's bytes as if the header had never
//! been sent, and every segment of the connection is renumbered on the way
//! in (sequence numbers down by the header's length) and on the way out
//! (acknowledgments and SACK edges up by it). This module is that
//! arithmetic, and the one's-complement sums that keep TCP checksums right.

/// A connection whose first `len` stream bytes (its PROXY header) were cut
/// out: the value of `PROXY_FLOWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqShift {
    /// The client's initial sequence number (of its SYN).
    pub isn: u32,
    /// Bytes cut: the header's length.
    pub len: u32,
}

/// What to do with an inbound segment of a shifted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// Payload bytes to cut from the segment's front (header bytes).
    pub cut: u32,
    /// The sequence number the segment carries after the cut.
    pub seq: u32,
}

/// `a` at or after `b` in sequence space.
pub const fn seq_ge(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) as i32 >= 0
}

impl SeqShift {
    /// The client's sequence number of its first byte after the header.
    pub const fn data_start(&self) -> u32 {
        self.isn.wrapping_add(1).wrapping_add(self.len)
    }

    /// An inbound segment starting at `seq` with `payload` bytes: header
    /// bytes it carries (a retransmission, or the first segment) are cut;
    /// a segment of header bytes only becomes an empty one at the stream's
    /// start, which TCP takes as a duplicate.
    pub const fn inbound(&self, seq: u32, payload: u32) -> Inbound {
        let start = self.data_start();
        if seq_ge(seq, start) {
            return Inbound {
                cut: 0,
                seq: seq.wrapping_sub(self.len),
            };
        }
        let before = start.wrapping_sub(seq);
        Inbound {
            cut: if payload < before { payload } else { before },
            // What is left starts at the first data byte, which the server
            // numbers right after the SYN; so does an empty rest.
            seq: self.isn.wrapping_add(1),
        }
    }

    /// An outbound acknowledgment number or SACK edge, in the client's
    /// numbering.
    pub const fn outbound(&self, ack: u32) -> u32 {
        ack.wrapping_add(self.len)
    }
}

/// One's-complement sums of 16-bit words as TCP and IP use them, on
/// 32-bit accumulators (what `bpf_csum_diff` returns), folded at the end.
pub mod csum {
    /// Folds a 32-bit one's-complement accumulator to 16 bits.
    pub const fn fold(sum: u32) -> u16 {
        let s = (sum & 0xffff) + (sum >> 16);
        let s = (s & 0xffff) + (s >> 16);
        s as u16
    }

    /// The checksum field for a folded sum of everything it covers.
    pub const fn finish(sum: u32) -> u16 {
        !fold(sum)
    }

    /// Adds two accumulators (end-around carry).
    pub const fn add(a: u32, b: u32) -> u32 {
        let (s, carry) = a.overflowing_add(b);
        s.wrapping_add(carry as u32)
    }

    /// `a` minus `b`, folded.
    pub const fn sub(a: u32, b: u32) -> u32 {
        add(fold(a) as u32, !fold(b) as u32)
    }

    /// The TCP checksum after the first bytes of the payload were cut out,
    /// from the old one (`check`, a full checksum) and sums the caller can
    /// take over headers only: the pseudo-headers before and after (their
    /// lengths differ), the TCP headers before and after with their
    /// checksum fields zeroed (sequence numbers differ), and the bytes cut
    /// (summed from an even offset, as they sat in the segment). The rest
    /// of the payload is never summed: its sum is what the old checksum
    /// leaves, moved a byte over (rotated) when an odd number was cut.
    pub const fn after_cut(
        check: u16,
        pseudo: (u32, u32),
        header: (u32, u32),
        removed: u32,
        odd: bool,
    ) -> u16 {
        // Everything the old checksum covered.
        let all = !check as u32;
        let rest = sub(sub(sub(all, pseudo.0), header.0), removed);
        let rest = if odd {
            fold(rest).rotate_left(8) as u32
        } else {
            rest
        };
        finish(add(add(pseudo.1, header.1), rest))
    }

    /// The sum of `bytes` as 16-bit words in memory order (a trailing odd
    /// byte padded with zero), the way the kernel's `csum_partial` sums.
    pub fn of_bytes(bytes: &[u8]) -> u32 {
        let mut sum = 0u32;
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            sum = add(sum, u32::from(u16::from_ne_bytes([c[0], c[1]])));
        }
        if let [last] = chunks.remainder() {
            sum = add(sum, u32::from(u16::from_ne_bytes([*last, 0])));
        }
        sum
    }

    /// The sum of a TCP pseudo-header, from v4-mapped or IPv6 addresses,
    /// without building it: the addresses' words (of their last 4 bytes for
    /// IPv4), the protocol and the length.
    #[inline(always)]
    pub fn pseudo_sum(src: &[u8; 16], dst: &[u8; 16], v4: bool, l4_len: u32) -> u32 {
        let word = |a: &[u8; 16], i: usize| u32::from(u16::from_ne_bytes([a[i], a[i + 1]]));
        let mut sum = 0u32;
        let first = if v4 { 12 } else { 0 };
        let mut i = first;
        while i < 16 {
            sum = add(sum, add(word(src, i), word(dst, i)));
            i += 2;
        }
        let len = l4_len.to_be_bytes();
        sum = add(sum, u32::from(u16::from_ne_bytes([len[0], len[1]])));
        sum = add(sum, u32::from(u16::from_ne_bytes([len[2], len[3]])));
        add(sum, u32::from(u16::from_ne_bytes([0, 6])))
    }

    /// The TCP pseudo-header of an IPv4 segment of `l4_len` bytes.
    pub fn pseudo_v4(src: [u8; 4], dst: [u8; 4], l4_len: u16) -> [u8; 12] {
        let mut p = [0u8; 12];
        p[0..4].copy_from_slice(&src);
        p[4..8].copy_from_slice(&dst);
        p[9] = 6;
        p[10..12].copy_from_slice(&l4_len.to_be_bytes());
        p
    }

    /// The TCP pseudo-header of an IPv6 segment of `l4_len` bytes.
    pub fn pseudo_v6(src: [u8; 16], dst: [u8; 16], l4_len: u32) -> [u8; 40] {
        let mut p = [0u8; 40];
        p[0..16].copy_from_slice(&src);
        p[16..32].copy_from_slice(&dst);
        p[32..36].copy_from_slice(&l4_len.to_be_bytes());
        p[39] = 6;
        p
    }
}

#[cfg(test)]
mod tests;
