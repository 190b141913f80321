//! One address representation for both families: 16 bytes, IPv4 as `::ffff:a.b.c.d`.

/// An IPv4 or IPv6 address in network byte order; IPv4 is stored v4-mapped
/// (`::ffff:a.b.c.d`) so maps and records need one key shape for both families.
pub type Addr16 = [u8; 16];

/// The all-zero address, used for "not set".
pub const UNSPECIFIED: Addr16 = [0; 16];

/// Maps an IPv4 address (network byte order bytes) to `::ffff:a.b.c.d`.
#[inline(always)]
pub const fn v4_mapped(v4: [u8; 4]) -> Addr16 {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Returns the IPv4 address if `addr` is v4-mapped.
#[inline(always)]
pub fn as_v4(addr: &Addr16) -> Option<[u8; 4]> {
    if is_v4_mapped(addr) {
        Some([addr[12], addr[13], addr[14], addr[15]])
    } else {
        None
    }
}

/// True if `addr` is of the form `::ffff:a.b.c.d`.
#[inline(always)]
pub fn is_v4_mapped(addr: &Addr16) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}

/// An IPv6 address from the four 32-bit words the kernel's BPF contexts hold
/// (each in network byte order, as loaded on this host).
#[inline(always)]
pub fn from_words(w: [u32; 4]) -> Addr16 {
    let mut a = [0u8; 16];
    let mut k = 0;
    while k < 4 {
        let b = w[k].to_ne_bytes();
        a[k * 4] = b[0];
        a[k * 4 + 1] = b[1];
        a[k * 4 + 2] = b[2];
        a[k * 4 + 3] = b[3];
        k += 1;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_round_trips_through_mapped_form() {
        let m = v4_mapped([10, 0, 1, 2]);
        assert!(is_v4_mapped(&m));
        assert_eq!(as_v4(&m), Some([10, 0, 1, 2]));
    }

    #[test]
    fn plain_v6_is_not_v4() {
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[1] = 0x01;
        assert_eq!(as_v4(&a), None);
        assert_eq!(as_v4(&UNSPECIFIED), None);
    }
}
