//! The option writer's configuration, shared by the kernel program (the
//! `toa-writer` binary target) and the lab that loads it.
#![no_std]

/// What the writer puts into the third ACK. Slot 0 of `WRITER_CONFIG`;
/// written by the lab, read by the writer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    /// Option kind; 0 disables the writer.
    pub kind: u8,
    /// Option length written (8 for an IPv4 client, 20 for IPv6).
    pub len: u8,
    /// Non-zero: claim `claim_addr:claim_port` instead of the socket's own address.
    pub claim: u8,
    /// Padding.
    pub _pad: u8,
    /// Claimed port, host order.
    pub claim_port: u16,
    /// Padding.
    pub _pad2: u16,
    /// Claimed IPv4 address, network order bytes.
    pub claim_addr: [u8; 4],
}

impl WriterConfig {
    /// The common TOA layout carrying the connecting socket's own address.
    pub const TOA_V4: WriterConfig = WriterConfig {
        kind: 254,
        len: 8,
        claim: 0,
        _pad: 0,
        claim_port: 0,
        _pad2: 0,
        claim_addr: [0; 4],
    };
}

// SAFETY: repr(C) plain data with explicit padding, valid for any bit pattern.
#[cfg(feature = "user")]
unsafe impl aya::Pod for WriterConfig {}
