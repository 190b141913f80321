use super::csum::{add, after_cut, finish, fold, of_bytes, pseudo_v4, pseudo_v6};
use super::*;

const SHIFT: SeqShift = SeqShift { isn: 1000, len: 28 };

#[test]
fn segments_after_the_header_move_down_by_its_length() {
    // The first data byte after the header is client seq 1029.
    assert_eq!(SHIFT.data_start(), 1029);
    assert_eq!(SHIFT.inbound(1029, 100), Inbound { cut: 0, seq: 1001 });
    assert_eq!(SHIFT.inbound(5000, 0), Inbound { cut: 0, seq: 4972 });
}

#[test]
fn header_bytes_are_cut_wherever_a_segment_carries_them() {
    // The first segment: header and data.
    assert_eq!(SHIFT.inbound(1001, 128), Inbound { cut: 28, seq: 1001 });
    // The header alone: an empty segment at the stream's start.
    assert_eq!(SHIFT.inbound(1001, 28), Inbound { cut: 28, seq: 1001 });
    // A retransmission from the header's middle on.
    assert_eq!(SHIFT.inbound(1011, 50), Inbound { cut: 18, seq: 1001 });
    // Part of the header only.
    assert_eq!(SHIFT.inbound(1001, 10), Inbound { cut: 10, seq: 1001 });
}

#[test]
fn acknowledgments_move_up_by_the_header_length() {
    assert_eq!(SHIFT.outbound(1001), 1029);
    assert_eq!(SHIFT.outbound(4972), 5000);
}

#[test]
fn the_arithmetic_wraps_with_sequence_space() {
    let s = SeqShift {
        isn: u32::MAX - 5,
        len: 20,
    };
    // isn + 1 + 20 wraps to 15.
    assert_eq!(s.data_start(), 15);
    assert_eq!(
        s.inbound(15, 1),
        Inbound {
            cut: 0,
            seq: u32::MAX - 4
        }
    );
    assert_eq!(
        s.inbound(u32::MAX - 4, 30),
        Inbound {
            cut: 20,
            seq: u32::MAX - 4
        }
    );
    assert_eq!(s.outbound(u32::MAX - 4), 15);
    assert!(seq_ge(3, u32::MAX - 2));
    assert!(!seq_ge(u32::MAX - 2, 3));
}

/// The TCP checksum of a whole segment, from scratch.
fn checksum(pseudo: &[u8], segment: &[u8]) -> u16 {
    finish(add(of_bytes(pseudo), of_bytes(segment)))
}

#[test]
fn a_segment_with_its_checksum_sums_to_all_ones() {
    let src = [10, 0, 2, 1];
    let dst = [10, 0, 2, 2];
    // Odd length: the last byte is padded.
    let mut seg = vec![0u8; 20];
    seg.extend_from_slice(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET");
    let pseudo = pseudo_v4(src, dst, seg.len() as u16);
    let c = checksum(&pseudo, &seg);
    seg[16..18].copy_from_slice(&c.to_ne_bytes());
    assert_eq!(fold(add(of_bytes(&pseudo), of_bytes(&seg))), 0xffff);
}

#[test]
fn sums_add_with_end_around_carry() {
    assert_eq!(add(0xffff_ffff, 1), 1);
    assert_eq!(fold(0x0001_fffe), 0xffff);
    assert_eq!(fold(0x1_0000), 1);
}

/// A segment's TCP header with `seq`, checksum field zero.
fn header(seq: u32) -> Vec<u8> {
    let mut h = vec![0u8; 32];
    h[0..2].copy_from_slice(&40000u16.to_be_bytes());
    h[2..4].copy_from_slice(&8080u16.to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[12] = 8 << 4;
    h[13] = 0x18;
    // Options: NOP NOP timestamp.
    h[20] = 1;
    h[21] = 1;
    h[22] = 8;
    h[23] = 10;
    h[24..28].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    h
}

fn payload(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

/// Cuts `cut` bytes off the payload front both ways: from scratch, and with
/// [`after_cut`] from header sums only; both checksums must agree.
fn check_cut(payload_len: usize, cut: usize, salt: u8, v6: bool) {
    let body = payload(payload_len, salt);
    let (old_seq, new_seq) = (7_000_000u32, 6_999_990u32);
    let pseudo_of = |len: usize| -> Vec<u8> {
        if v6 {
            let mut a = [0u8; 16];
            a[15] = 1;
            let mut b = [0u8; 16];
            b[15] = 2;
            pseudo_v6(a, b, len as u32).to_vec()
        } else {
            pseudo_v4([10, 0, 2, 1], [10, 0, 2, 2], len as u16).to_vec()
        }
    };
    let old_h = header(old_seq);
    let new_h = header(new_seq);
    let mut old_seg = old_h.clone();
    old_seg.extend_from_slice(&body);
    let mut new_seg = new_h.clone();
    new_seg.extend_from_slice(&body[cut..]);
    let old_p = pseudo_of(old_seg.len());
    let new_p = pseudo_of(new_seg.len());
    let old_check = checksum(&old_p, &old_seg);
    let want = checksum(&new_p, &new_seg);
    let got = after_cut(
        old_check,
        (of_bytes(&old_p), of_bytes(&new_p)),
        (of_bytes(&old_h), of_bytes(&new_h)),
        of_bytes(&body[..cut]),
        cut % 2 == 1,
    );
    // 0 and 0xffff are the same one's-complement sum: compare what a
    // receiver checks.
    let verify = |check: u16| {
        let mut seg = new_seg.clone();
        seg[16..18].copy_from_slice(&check.to_ne_bytes());
        fold(add(of_bytes(&new_p), of_bytes(&seg)))
    };
    assert_eq!(verify(want), 0xffff);
    assert_eq!(
        verify(got),
        0xffff,
        "payload {payload_len}, cut {cut}, v6 {v6}: {got:#x} vs {want:#x}"
    );
}

#[test]
fn a_cut_checksum_from_header_sums_matches_one_summed_from_scratch() {
    for v6 in [false, true] {
        for payload_len in [1usize, 2, 28, 29, 107, 108, 1448, 1449] {
            for cut in 1..=payload_len.min(120) {
                for salt in [0u8, 0xff, 0x5a] {
                    check_cut(payload_len, cut, salt, v6);
                }
            }
        }
    }
}

#[test]
fn pseudo_header_sums_match_the_headers_built_and_summed() {
    let v4 = crate::addr::v4_mapped([10, 0, 2, 1]);
    let v4b = crate::addr::v4_mapped([192, 168, 7, 250]);
    for len in [20u32, 1500, 65_535] {
        assert_eq!(
            fold(super::csum::pseudo_sum(&v4, &v4b, true, len)),
            fold(of_bytes(&pseudo_v4(
                [10, 0, 2, 1],
                [192, 168, 7, 250],
                len as u16
            )))
        );
        let a = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd];
        let b = [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(
            fold(super::csum::pseudo_sum(&a, &b, false, len)),
            fold(of_bytes(&pseudo_v6(a, b, len)))
        );
    }
}
