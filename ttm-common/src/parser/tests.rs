use super::*;
use crate::addr::as_v4;
use crate::format::{OptionFormat, TOA_V4};

const T: FormatTable = FormatTable::DEFAULT;

fn toa4(port: u16, ip: [u8; 4]) -> [u8; 8] {
    let p = port.to_be_bytes();
    [254, 8, p[0], p[1], ip[0], ip[1], ip[2], ip[3]]
}

fn v4(scan: Scan) -> ([u8; 4], u16) {
    match scan {
        Scan::Found(c) => {
            assert_eq!(c.family, AddrFamily::Ipv4);
            (as_v4(&c.addr).expect("v4-mapped"), c.port)
        }
        other => panic!("expected a decoded client, got {other:?}"),
    }
}

#[test]
fn bare_option_decodes() {
    assert_eq!(
        v4(find_client(&toa4(40000, [10, 0, 1, 2])[..], &T)),
        ([10, 0, 1, 2], 40000)
    );
}

#[test]
fn option_after_typical_ack_options_decodes() {
    // NOP NOP TIMESTAMP(10) then the TOA option: what a Linux LB sends.
    let mut area = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    area.extend_from_slice(&toa4(1234, [192, 0, 2, 7]));
    assert_eq!(v4(find_client(&area[..], &T)), ([192, 0, 2, 7], 1234));
}

#[test]
fn empty_and_padding_only_areas_have_no_option() {
    assert_eq!(find_client(&[][..], &T), Scan::NotFound);
    assert_eq!(find_client(&[1, 1, 1, 0][..], &T), Scan::NotFound);
    assert_eq!(find_client(&[0; 40][..], &T), Scan::NotFound);
    assert_eq!(find_client(&[1; 40][..], &T), Scan::NotFound);
}

#[test]
fn eol_ends_the_walk_before_a_later_option() {
    let mut area = vec![1, 0];
    area.extend_from_slice(&toa4(1, [1, 2, 3, 4]));
    assert_eq!(find_client(&area[..], &T), Scan::NotFound);
}

#[test]
fn length_zero_and_one_are_malformed() {
    for len in [0u8, 1] {
        let area = [8, len, 0, 0];
        assert_eq!(
            find_client(&area[..], &T),
            Scan::Malformed(Malformed::LengthTooShort),
            "len {len}"
        );
        let area = [254, len, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            find_client(&area[..], &T),
            Scan::Malformed(Malformed::LengthTooShort)
        );
    }
}

#[test]
fn length_past_the_header_is_malformed() {
    // option claims 10 bytes but only 8 are there
    let area = [254, 10, 0, 80, 10, 0, 1, 2];
    assert_eq!(
        find_client(&area[..], &T),
        Scan::Malformed(Malformed::PastEnd)
    );
    // a timestamp option running past a full 40-byte area
    let mut area = [1u8; 40];
    area[36] = 8;
    area[37] = 10;
    assert_eq!(
        find_client(&area[..], &T),
        Scan::Malformed(Malformed::PastEnd)
    );
}

#[test]
fn truncated_option_is_malformed() {
    // kind byte is the last byte of the area
    assert_eq!(
        find_client(&[1, 1, 254][..], &T),
        Scan::Malformed(Malformed::Truncated)
    );
    // TOA option cut in the middle of the address
    let full = toa4(80, [10, 0, 1, 2]);
    for cut in 2..full.len() {
        assert_eq!(
            find_client(&full[..cut], &T),
            Scan::Malformed(Malformed::PastEnd),
            "cut at {cut}"
        );
    }
}

#[test]
fn option_in_the_last_bytes_of_a_full_area_decodes() {
    let mut area = [1u8; 40];
    area[32..].copy_from_slice(&toa4(65535, [10, 0, 1, 200]));
    assert_eq!(v4(find_client(&area[..], &T)), ([10, 0, 1, 200], 65535));
}

#[test]
fn bytes_past_forty_are_never_read() {
    let mut area = [1u8; 48];
    area[40..].copy_from_slice(&toa4(1, [10, 0, 0, 1]));
    assert_eq!(find_client(&area[..], &T), Scan::NotFound);
}

#[test]
fn unknown_length_of_a_configured_kind_is_reported() {
    // kind 254 length 4 (an experimental option such as fast open's)
    let area = [254, 4, 0xf9, 0x89];
    assert_eq!(
        find_client(&area[..], &T),
        Scan::Malformed(Malformed::UnexpectedLength)
    );
    // ...but a valid option after it still wins
    let mut area = vec![254, 4, 0xf9, 0x89];
    area.extend_from_slice(&toa4(9, [10, 0, 1, 9]));
    assert_eq!(v4(find_client(&area[..], &T)), ([10, 0, 1, 9], 9));
}

#[test]
fn first_matching_option_wins_and_the_repeat_is_flagged() {
    let mut area = toa4(1, [10, 0, 1, 1]).to_vec();
    area.extend_from_slice(&toa4(2, [10, 0, 1, 2]));
    assert_eq!(v4(find_client(&area[..], &T)), ([10, 0, 1, 1], 1));
    match find_option(&area[..], &T) {
        Walk::Found(at) => assert!(at.repeated),
        other => panic!("{other:?}"),
    }
    match find_option(&toa4(1, [10, 0, 1, 1])[..], &T) {
        Walk::Found(at) => assert!(!at.repeated),
        other => panic!("{other:?}"),
    }
}

#[test]
fn broken_framing_after_the_option_still_rejects_the_area() {
    let mut area = toa4(1, [10, 0, 1, 1]).to_vec();
    area.extend_from_slice(&[99, 0]);
    assert_eq!(
        find_client(&area[..], &T),
        Scan::Malformed(Malformed::LengthTooShort)
    );
    let mut area = toa4(1, [10, 0, 1, 1]).to_vec();
    area.extend_from_slice(&[99, 9, 0]);
    assert_eq!(
        find_client(&area[..], &T),
        Scan::Malformed(Malformed::PastEnd)
    );
}

#[test]
fn unknown_kinds_around_the_option_are_skipped() {
    let mut area = vec![99, 4, 0xaa, 0xbb];
    area.extend_from_slice(&toa4(3, [10, 0, 1, 3]));
    area.extend_from_slice(&[98, 4, 0xcc, 0xdd, 1, 1, 1, 1]);
    assert_eq!(v4(find_client(&area[..], &T)), ([10, 0, 1, 3], 3));
}

#[test]
fn addresses_no_client_can_have_are_implausible() {
    for ip in [
        [0, 0, 0, 0],
        [127, 0, 0, 1],
        [224, 0, 0, 1],
        [239, 1, 2, 3],
        [255, 255, 255, 255],
    ] {
        let area = toa4(80, ip);
        assert!(
            matches!(find_client(&area[..], &T), Scan::Implausible(c) if c.addr == v4_mapped(ip)),
            "{ip:?}"
        );
    }
    for ip in [
        [10, 0, 1, 2],
        [192, 0, 2, 1],
        [223, 255, 255, 255],
        [240, 0, 0, 1],
    ] {
        assert!(plausible_client(&v4_mapped(ip)), "{ip:?}");
    }
    let mut v6 = [0u8; 16];
    assert!(!plausible_client(&v6), "::");
    v6[15] = 1;
    assert!(!plausible_client(&v6), "::1");
    v6[15] = 2;
    assert!(plausible_client(&v6), "::2 is odd but not excluded");
    let mut mc = [0u8; 16];
    mc[0] = 0xff;
    mc[1] = 0x02;
    mc[15] = 1;
    assert!(!plausible_client(&mc), "ff02::1");
}

#[test]
fn a_v4_mapped_address_in_an_ipv6_option_is_an_ipv4_client() {
    let mut area = vec![254, 20, 0, 80];
    area.extend_from_slice(&v4_mapped([192, 0, 2, 9]));
    match find_client(&area[..], &T) {
        Scan::Found(c) => {
            assert_eq!(c.family, AddrFamily::Ipv4);
            assert_eq!(c.addr, v4_mapped([192, 0, 2, 9]));
            assert_eq!(c.format_index, 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unconfigured_kinds_are_skipped() {
    let only_200 = FormatTable::from_slice(&[OptionFormat::new(200, AddrFamily::Ipv4)]).unwrap();
    let area = toa4(5, [10, 0, 1, 5]);
    assert_eq!(find_client(&area[..], &only_200), Scan::NotFound);
    let mut area200 = area;
    area200[0] = 200;
    assert_eq!(v4(find_client(&area200[..], &only_200)), ([10, 0, 1, 5], 5));
    assert_eq!(find_client(&area[..], &FormatTable::EMPTY), Scan::NotFound);
}

#[test]
fn ipv6_client_decodes() {
    let mut area = vec![254, 20, 0x1f, 0x90];
    let v6 = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42,
    ];
    area.extend_from_slice(&v6);
    match find_client(&area[..], &T) {
        Scan::Found(c) => {
            assert_eq!(c.family, AddrFamily::Ipv6);
            assert_eq!(c.addr, v6);
            assert_eq!(c.port, 8080);
            assert_eq!(c.format_index, 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn format_index_names_the_layout() {
    let t = FormatTable::from_slice(&[OptionFormat::new(200, AddrFamily::Ipv4), TOA_V4]).unwrap();
    let area = toa4(7, [10, 0, 1, 7]);
    match find_client(&area[..], &t) {
        Scan::Found(c) => assert_eq!(c.format_index, 1),
        other => panic!("{other:?}"),
    }
}

pub(crate) mod reference;

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes never panic and never read past 40 bytes.
        #[test]
        fn any_bytes_are_handled(area in proptest::collection::vec(any::<u8>(), 0..64)) {
            let full = find_client(&area[..], &T);
            let capped = find_client(&area[..area.len().min(MAX_OPTION_BYTES)], &T);
            // Bytes past 40 never change the outcome except by making a
            // past-end option look complete, which the 40-byte cap forbids.
            prop_assert_eq!(full, capped);
        }

        /// A TOA option placed after any run of NOPs is decoded exactly.
        #[test]
        fn option_after_padding_round_trips(
            nops in 0usize..=32,
            port: u16,
            ip in any::<[u8; 4]>().prop_filter("a plausible client", |ip| plausible_client(&v4_mapped(*ip))),
        ) {
            let mut area = vec![KIND_NOP; nops];
            area.extend_from_slice(&toa4(port, ip));
            prop_assert_eq!(v4(find_client(&area[..], &T)), (ip, port));
        }
    }
}

mod arbitration {
    use super::*;
    use crate::format::OptionPosition::{self, *};

    fn kind200(position: OptionPosition) -> FormatTable {
        FormatTable::from_slice(&[OptionFormat::new(200, AddrFamily::Ipv4).at(position)]).unwrap()
    }

    fn opt(kind: u8, port: u16, ip: [u8; 4]) -> [u8; 8] {
        let mut o = toa4(port, ip);
        o[0] = kind;
        o
    }

    const LB_SAYS: [u8; 4] = [10, 0, 1, 2];
    const CLIENT_CLAIMS: [u8; 4] = [203, 0, 113, 9];

    #[test]
    fn an_lb_that_writes_first_is_believed_over_an_option_the_client_appended() {
        let mut area = toa4(1000, LB_SAYS).to_vec();
        area.extend_from_slice(&toa4(4444, CLIENT_CLAIMS));
        assert_eq!(v4(find_client(&area[..], &T)), (LB_SAYS, 1000));
    }

    #[test]
    fn an_lb_that_appends_is_believed_over_an_option_the_client_put_before() {
        let mut area = opt(200, 4444, CLIENT_CLAIMS).to_vec();
        area.extend_from_slice(&[1, 1]);
        area.extend_from_slice(&opt(200, 1000, LB_SAYS));
        assert_eq!(v4(find_client(&area[..], &kind200(Last))), (LB_SAYS, 1000));
        // With the wrong belief, the client would win: the position matters.
        assert_eq!(
            v4(find_client(&area[..], &kind200(First))),
            (CLIENT_CLAIMS, 4444)
        );
    }

    #[test]
    fn with_the_position_unknown_different_claims_give_no_client() {
        for (a, b) in [(LB_SAYS, CLIENT_CLAIMS), (CLIENT_CLAIMS, LB_SAYS)] {
            let mut area = opt(200, 1000, a).to_vec();
            area.extend_from_slice(&opt(200, 1000, b));
            assert_eq!(find_client(&area[..], &kind200(Unknown)), Scan::Conflicting);
        }
        // The same port matters too.
        let mut area = opt(200, 1000, LB_SAYS).to_vec();
        area.extend_from_slice(&opt(200, 1001, LB_SAYS));
        assert_eq!(find_client(&area[..], &kind200(Unknown)), Scan::Conflicting);
    }

    #[test]
    fn identical_options_are_one_claim() {
        let mut area = opt(200, 1000, LB_SAYS).to_vec();
        area.extend_from_slice(&opt(200, 1000, LB_SAYS));
        assert_eq!(
            v4(find_client(&area[..], &kind200(Unknown))),
            (LB_SAYS, 1000)
        );
        // An IPv6-layout option naming the same IPv4 client is the same claim.
        let table = FormatTable::from_slice(&[
            OptionFormat::new(254, AddrFamily::Ipv4),
            OptionFormat::new(254, AddrFamily::Ipv6),
        ])
        .unwrap();
        let mut area = toa4(1000, LB_SAYS).to_vec();
        area.extend_from_slice(&[254, 20, 0x03, 0xe8]);
        area.extend_from_slice(&v4_mapped(LB_SAYS));
        assert_eq!(v4(find_client(&area[..], &table)), (LB_SAYS, 1000));
    }

    #[test]
    fn the_last_of_three_is_the_appending_lbs() {
        let mut area = opt(200, 1, [198, 51, 100, 1]).to_vec();
        area.extend_from_slice(&opt(200, 2, CLIENT_CLAIMS));
        area.extend_from_slice(&opt(200, 1000, LB_SAYS));
        assert_eq!(v4(find_client(&area[..], &kind200(Last))), (LB_SAYS, 1000));
        match find_option(&area[..], &kind200(Last)) {
            Walk::Found(at) => {
                assert_eq!((at.offset, at.last_offset), (0, 16));
                assert!(at.repeated);
            }
            other => panic!("{other:?}"),
        }
    }
}
