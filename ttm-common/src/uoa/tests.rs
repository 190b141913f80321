use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;

use super::*;

/// The marking DPVS writes for `client`: `[0x9f][8|20][port][address]`.
fn marking(client: SocketAddr) -> Vec<u8> {
    let mut out = vec![IPOPT_UOA, 0];
    out.extend_from_slice(&client.port().to_be_bytes());
    match client.ip() {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
    out[1] = out.len() as u8;
    out
}

/// An opp header (version by the client's family) wrapping `options`.
fn opp(version: u8, options: &[u8]) -> Vec<u8> {
    let len = (OPP_FIXED_LEN + options.len()) as u16;
    let mut out = vec![version << 4, 17];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(options);
    out
}

fn found(scan: Scan) -> Option<SocketAddr> {
    match scan {
        Scan::Found(c) => Some(c.socket_addr()),
        _ => None,
    }
}

fn v4(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn the_ipv4_and_ipv6_markings_name_their_client() {
    for client in [v4("198.51.100.7:4242"), v4("[2001:db8::7]:53")] {
        assert_eq!(found(find_in_ip_options(&marking(client))), Some(client));
    }
}

#[test]
fn other_options_nops_and_an_end_around_the_marking_are_walked_past() {
    let client = v4("198.51.100.7:4242");
    // Router alert (0x94, 4 bytes), two NOPs, the marking, EOL, padding.
    let mut area = vec![0x94, 4, 0, 0, 1, 1];
    area.extend_from_slice(&marking(client));
    area.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(found(find_in_ip_options(&area)), Some(client));
    // After an EOL nothing is an option.
    let mut after_end = vec![0, 0, 0, 0];
    after_end.extend_from_slice(&marking(client));
    assert_eq!(find_in_ip_options(&after_end), Scan::NotFound);
}

#[test]
fn broken_or_odd_markings_give_no_client() {
    let good = marking(v4("198.51.100.7:4242"));
    // Running past the area.
    assert!(matches!(
        find_in_ip_options(&good[..5]),
        Scan::Malformed(Malformed::PastEnd)
    ));
    // A length byte under 2.
    assert!(matches!(
        find_in_ip_options(&[IPOPT_UOA, 1, 0, 0]),
        Scan::Malformed(_)
    ));
    // The kind with a length of neither layout.
    let mut odd = good.clone();
    odd[1] = 12;
    odd.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(found(find_in_ip_options(&odd)), None);
    // Implausible clients.
    for bad in ["127.0.0.1:1", "0.0.0.0:1", "[::1]:1", "[ff02::1]:1"] {
        assert!(matches!(
            find_in_ip_options(&marking(v4(bad))),
            Scan::Implausible(_)
        ));
    }
}

#[test]
fn two_markings_naming_different_clients_give_none() {
    let mut area = marking(v4("198.51.100.7:4242"));
    area.extend_from_slice(&marking(v4("203.0.113.9:4444")));
    assert_eq!(find_in_ip_options(&area), Scan::Conflicting);
    let mut same = marking(v4("198.51.100.7:4242"));
    same.extend_from_slice(&marking(v4("198.51.100.7:4242")));
    assert_eq!(
        found(find_in_ip_options(&same)),
        Some(v4("198.51.100.7:4242"))
    );
}

#[test]
fn opp_headers_dpvs_writes_parse_with_their_client_and_length() {
    for (version, client) in [
        (OPP_VERSION_V4, v4("198.51.100.7:4242")),
        (OPP_VERSION_V6, v4("[2001:db8::7]:53")),
    ] {
        let mut datagram = opp(version, &marking(client));
        let header_len = datagram.len();
        // The UDP header and payload follow.
        datagram.extend_from_slice(&[0x12, 0x34, 0x00, 0x35, 0, 12, 0, 0, b'a', b'b', b'c', b'd']);
        let parsed = parse_opp(&datagram).unwrap();
        assert_eq!(parsed.len, header_len);
        assert_eq!(found(parsed.scan), Some(client));
    }
    // No option at all: a well-formed header with no client.
    assert_eq!(
        parse_opp(&opp(OPP_VERSION_V4, &[])),
        Ok(Opp {
            len: 4,
            scan: Scan::NotFound
        })
    );
}

#[test]
fn malformed_opp_headers_are_refused_each_for_its_reason() {
    let good = opp(OPP_VERSION_V4, &marking(v4("198.51.100.7:4242")));
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut h = good.clone();
        f(&mut h);
        parse_opp(&h)
    };
    assert_eq!(parse_opp(&good[..3]), Err(OppRefusal::Truncated));
    assert_eq!(with(&|h| h[0] |= 0x01), Err(OppRefusal::BadVersion));
    assert_eq!(with(&|h| h[0] = 3 << 4), Err(OppRefusal::BadVersion));
    assert_eq!(with(&|h| h[0] = 0), Err(OppRefusal::BadVersion));
    assert_eq!(with(&|h| h[1] = 6), Err(OppRefusal::NotUdp));
    assert_eq!(with(&|h| h[3] = 3), Err(OppRefusal::Truncated));
    assert_eq!(with(&|h| h[3] = 13), Err(OppRefusal::Truncated));
    assert_eq!(
        with(&|h| h[2..4].copy_from_slice(&200u16.to_be_bytes())),
        Err(OppRefusal::TooLong)
    );
    assert_eq!(
        with(&|h| h[0] = OPP_VERSION_V6 << 4),
        Err(OppRefusal::FamilyMismatch)
    );
    assert_eq!(
        with(&|h| h[5] = 9),
        Err(OppRefusal::Malformed(Malformed::PastEnd))
    );
}

#[test]
fn the_lookup_struct_has_uoa_kos_layout() {
    use core::mem::offset_of;
    assert_eq!(offset_of!(UoaParamMap, af), 0);
    assert_eq!(offset_of!(UoaParamMap, saddr), 2);
    assert_eq!(offset_of!(UoaParamMap, daddr), 18);
    assert_eq!(offset_of!(UoaParamMap, sport), 34);
    assert_eq!(offset_of!(UoaParamMap, dport), 36);
    assert_eq!(offset_of!(UoaParamMap, real_af), 38);
    assert_eq!(offset_of!(UoaParamMap, real_saddr), 40);
    assert_eq!(offset_of!(UoaParamMap, real_sport), 56);
}

fn any_client() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), 1u16..).prop_map(|(a, p)| SocketAddr::new(Ipv4Addr::from(a).into(), p)),
        (any::<[u8; 16]>(), 1u16..).prop_map(|(a, p)| SocketAddr::new(Ipv6Addr::from(a).into(), p)),
    ]
}

fn plausible(client: &SocketAddr) -> bool {
    let mut addr = [0u8; 16];
    match client.ip() {
        IpAddr::V4(a) => addr = a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => addr.copy_from_slice(&a.octets()),
    }
    crate::plausible_client(&addr)
}

proptest! {
    /// Whatever the bytes, parsing returns; it never reads past them.
    #[test]
    fn any_bytes_parse_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = find_in_ip_options(&bytes[..bytes.len().min(40)]);
        let _ = parse_opp(&bytes);
    }

    /// A marking among NOPs and other options, in the option area and in
    /// an opp header of the right version, names its client (or is
    /// refused as implausible, never another client).
    #[test]
    fn generated_markings_name_their_client(
        client in any_client(),
        nops in 0usize..8,
        before in proptest::collection::vec(2u8..8, 0..2),
    ) {
        let mut area = vec![1u8; nops];
        for len in &before {
            area.push(0x94);
            area.push(*len);
            area.extend(std::iter::repeat_n(0, usize::from(*len) - 2));
        }
        area.extend_from_slice(&marking(client));
        prop_assume!(area.len() <= 40);
        let ip_mapped_v4 = matches!(client.ip(), IpAddr::V6(a) if a.to_ipv4_mapped().is_some());
        prop_assume!(!ip_mapped_v4);
        let scan = find_in_ip_options(&area);
        let version = if client.is_ipv4() { OPP_VERSION_V4 } else { OPP_VERSION_V6 };
        let wrapped = parse_opp(&opp(version, &area)).unwrap().scan;
        for s in [scan, wrapped] {
            if plausible(&client) {
                prop_assert_eq!(found(s), Some(client));
            } else {
                prop_assert!(matches!(s, Scan::Implausible(_)));
            }
        }
    }
}

mod reference {
    //! The UOA marking and the opp header against references written apart
    //! from them: the option walk's reference parser (`parser::tests`) with
    //! the UOA layouts, and a plain statement of the opp header's rules.

    use crate::parser::tests::reference::{generate, reference, walker, Rng, Verdict};

    use super::super::*;

    // The marking twice: areas holding it are the interesting ones.
    const KINDS: [u8; 5] = [IPOPT_UOA, IPOPT_UOA, 0x94, 0x07, 0x44];

    #[test]
    fn generated_ipv4_option_areas_agree_with_the_reference_parser() {
        let mut rng = Rng(0x756f_615f_6970_6f00);
        let formats = [UOA_V4, UOA_V6];
        let mut clients = 0;
        for case in 0..200_000u32 {
            let area = generate(&mut rng, &KINDS);
            let expected = reference(&area, &formats);
            assert_eq!(
                walker(&area, &UOA_FORMATS),
                expected,
                "case {case}: {area:?}"
            );
            assert_eq!(
                find_in_ip_options(&area[..area.len().min(40)]),
                crate::find_client(&area[..area.len().min(40)], &UOA_FORMATS)
            );
            clients += u32::from(matches!(expected, Verdict::Client { .. }));
        }
        assert!(clients > 40_000, "only {clients} areas held a client");
    }

    /// The opp header's rules, stated plainly: the answer is the header's
    /// length and what the reference parser says of its option area.
    fn opp_reference(b: &[u8]) -> Result<(usize, Verdict), &'static str> {
        if b.len() < 4 {
            return Err("truncated");
        }
        let (version, reserved) = (b[0] / 16, b[0] % 16);
        if reserved != 0 || version == 0 || version > 2 {
            return Err("version");
        }
        if b[1] != 17 {
            return Err("udp");
        }
        let len = usize::from(b[2]) * 256 + usize::from(b[3]);
        if len > 44 {
            return Err("long");
        }
        if len < 4 || len > b.len() {
            return Err("truncated");
        }
        match reference(&b[4..len], &[UOA_V4, UOA_V6]) {
            Verdict::Bad(_) => Err("malformed"),
            Verdict::Client { format, .. } if (format == 1) != (version == 2) => Err("family"),
            v => Ok((len, v)),
        }
    }

    fn name(r: OppRefusal) -> &'static str {
        match r {
            OppRefusal::Truncated => "truncated",
            OppRefusal::TooLong => "long",
            OppRefusal::BadVersion => "version",
            OppRefusal::NotUdp => "udp",
            OppRefusal::Malformed(_) => "malformed",
            OppRefusal::FamilyMismatch => "family",
        }
    }

    #[test]
    fn generated_opp_headers_agree_with_the_reference() {
        let mut rng = Rng(0x6f70_705f_6864_7200);
        let (mut accepted, mut clients) = (0, 0);
        for case in 0..200_000u32 {
            let area = generate(&mut rng, &KINDS);
            let area = &area[..area.len().min(40)];
            let version = match rng.below(16) {
                0 => rng.byte(),
                n => (1 + (n % 2) as u8) << 4,
            };
            let protocol = if rng.below(16) == 0 { rng.byte() } else { 17 };
            let mut len = (4 + area.len()) as u16;
            if rng.below(8) == 0 {
                len = rng.below(64) as u16;
            }
            let mut b = vec![version, protocol];
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(area);
            // The UDP header and some payload after it.
            for _ in 0..rng.below(16) {
                b.push(rng.byte());
            }
            if rng.below(8) == 0 {
                b.truncate(rng.below(b.len() as u64 + 1) as usize);
            }
            let expected = opp_reference(&b);
            let got = parse_opp(&b).map_err(name).map(|o| {
                (o.len, {
                    let mut bytes = b[OPP_FIXED_LEN..o.len].to_vec();
                    bytes.truncate(40);
                    walker(&bytes, &UOA_FORMATS)
                })
            });
            assert_eq!(got, expected, "case {case}: {b:?}");
            if let Ok((_, v)) = &expected {
                accepted += 1;
                clients += u32::from(matches!(v, Verdict::Client { .. }));
            }
        }
        assert!(accepted > 40_000, "only {accepted} headers accepted");
        assert!(clients > 12_000, "only {clients} headers held a client");
    }
}

fn flow_of(local: Ipv4Addr, client: SocketAddr) -> UdpFlow {
    let mapped = |ip: IpAddr| match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    UdpFlow {
        local_addr: local.to_ipv6_mapped().octets(),
        client_addr: mapped(client.ip()),
        client_port: client.port(),
        client_family: if client.is_ipv4() { 4 } else { 6 },
        ..UdpFlow::default()
    }
}

#[test]
fn the_lookup_answer_is_laid_out_as_uoa_ko_writes_it() {
    let key = crate::udp::UdpFlowKey {
        lb_addr: Ipv4Addr::new(10, 0, 2, 1).to_ipv6_mapped().octets(),
        lb_port: 40_001,
        local_port: 6000,
    };
    let flow = flow_of(
        Ipv4Addr::new(10, 0, 2, 2),
        "192.0.2.7:5353".parse().unwrap(),
    );
    let answer = UoaParamMap::answer(false, &key, &flow);
    // SAFETY: a packed plain struct read as its bytes.
    let bytes: [u8; UOA_PARAM_MAP_LEN] = unsafe { core::mem::transmute(answer) };
    assert_eq!(&bytes[0..2], &2u16.to_ne_bytes(), "af, host order");
    assert_eq!(&bytes[2..6], &[10, 0, 2, 1], "saddr: the LB");
    assert_eq!(&bytes[6..18], &[0; 12]);
    assert_eq!(&bytes[18..22], &[10, 0, 2, 2], "daddr: this server");
    assert_eq!(&bytes[34..36], &40_001u16.to_be_bytes(), "sport");
    assert_eq!(&bytes[36..38], &6000u16.to_be_bytes(), "dport");
    assert_eq!(&bytes[38..40], &2u16.to_ne_bytes(), "real_af");
    assert_eq!(&bytes[40..44], &[192, 0, 2, 7]);
    assert_eq!(&bytes[44..56], &[0; 12]);
    assert_eq!(&bytes[56..58], &5353u16.to_be_bytes(), "real_sport");
}

#[test]
fn an_ipv6_client_and_an_ipv6_socket_are_answered_with_sixteen_bytes() {
    let key = crate::udp::UdpFlowKey {
        lb_addr: Ipv4Addr::new(10, 0, 2, 1).to_ipv6_mapped().octets(),
        lb_port: 40_001,
        local_port: 6000,
    };
    let client: SocketAddr = "[2001:db8::7]:443".parse().unwrap();
    let flow = flow_of(Ipv4Addr::new(10, 0, 2, 2), client);
    let answer = UoaParamMap::answer(true, &key, &flow);
    assert_eq!({ answer.af }, AF_INET6);
    assert_eq!(
        { answer.saddr },
        Ipv4Addr::new(10, 0, 2, 1).to_ipv6_mapped().octets(),
        "an IPv6 socket saw the LB v4-mapped"
    );
    assert_eq!({ answer.real_af }, AF_INET6);
    assert_eq!(
        { answer.real_saddr },
        "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets()
    );
    let port = answer.real_sport;
    assert_eq!(u16::from_be(port), 443);
}
