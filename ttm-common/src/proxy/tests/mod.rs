use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;

use super::*;

fn parse_bytes(data: &[u8]) -> Parsed {
    parse(&HeaderBuf::from_slice(data))
}

fn client_of(p: Parsed) -> Option<SocketAddr> {
    match p {
        Parsed::Header {
            client: Some(c), ..
        } => Some(crate::parser::socket_addr(&c.addr, c.family, c.port)),
        _ => None,
    }
}

/// A v2 header naming `src` → `dst`, with `tlvs` appended (host-side writer
/// for the tests; the lab's writer is in `ttm-tests`).
fn v2(command: u8, src: SocketAddr, dst: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x20 | command);
    let mut body = Vec::new();
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            body.extend(s.octets());
            body.extend(d.octets());
        }
        (s, d) => {
            out.push(0x21);
            let six = |a: IpAddr| match a {
                IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
                IpAddr::V6(v) => v.octets(),
            };
            body.extend(six(s));
            body.extend(six(d));
        }
    }
    body.extend(src.port().to_be_bytes());
    body.extend(dst.port().to_be_bytes());
    body.extend(tlvs);
    out.extend((body.len() as u16).to_be_bytes());
    out.extend(body);
    out
}

fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn v1_tcp4_names_the_client_and_the_line_length() {
    let line = v1(sa("198.51.100.7:40001"), sa("10.0.2.2:8080"));
    let p = parse_bytes(&[line.as_slice(), b"GET / HTTP/1.1\r\n"].concat());
    assert_eq!(client_of(p), Some(sa("198.51.100.7:40001")));
    match p {
        Parsed::Header { len, version, .. } => {
            assert_eq!(len as usize, line.len());
            assert_eq!(version, ProxyVersion::V1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn v1_tcp6_reads_every_textual_form() {
    for text in [
        "2001:db8::7",
        "2001:db8:0:0:0:0:0:7",
        "2001:DB8::7",
        "::ffff:198.51.100.7",
        "2001:db8:1:2:3:4:198.51.100.7",
        "fe80::",
        "2001:db8::",
    ] {
        let ip: Ipv6Addr = text.parse().unwrap();
        let line = format!("PROXY TCP6 {text} 2001:db8::2 4242 8080\r\n");
        let p = parse_bytes(line.as_bytes());
        let want = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
        let got = client_of(p).map(|s| match s.ip() {
            IpAddr::V6(v) => v.to_ipv4_mapped().map_or(IpAddr::V6(v), IpAddr::V4),
            v4 => v4,
        });
        assert_eq!(got, Some(want), "{text}: {p:?}");
    }
}

#[test]
fn v1_unknown_is_removed_without_a_client() {
    for line in [
        &b"PROXY UNKNOWN\r\n"[..],
        b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
    ] {
        match parse_bytes(line) {
            Parsed::Header {
                len, client: None, ..
            } => assert_eq!(len as usize, line.len()),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn v1_malformations_are_unframed() {
    for bad in [
        &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"[..],
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP6 1:::2 ::1 1 2\r\n",
        b"PROXY TCP6 :1::2 ::1 1 2\r\n",
        b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
        b"PROXY TCP6 1::2::3 ::1 1 2\r\n",
        b"PROXY TCP6 12345::1 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
    ] {
        assert_eq!(
            parse_bytes(bad),
            Parsed::Unframed(Refusal::V1BadField),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let overlong = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 120]].concat();
    assert_eq!(parse_bytes(&overlong), Parsed::Unframed(Refusal::V1TooLong));
}

#[test]
fn v2_inet_and_inet6_name_the_client_and_the_tlvs_follow() {
    let tlvs = [0x01, 0x00, 0x02, b'h', b'2', 0x05, 0x00, 0x03, 1, 2, 3];
    let h = v2(1, sa("198.51.100.7:40001"), sa("10.0.2.2:8080"), &tlvs);
    match parse_bytes(&h) {
        p @ Parsed::Header {
            len,
            version: ProxyVersion::V2,
            tlv_offset,
            ..
        } => {
            assert_eq!(len as usize, h.len());
            assert_eq!(client_of(p), Some(sa("198.51.100.7:40001")));
            let found: Vec<_> = super::tlvs(&h[tlv_offset as usize..]).collect();
            assert_eq!(found.len(), 2);
            assert_eq!((found[0].kind, found[0].value), (1, &b"h2"[..]));
        }
        other => panic!("{other:?}"),
    }
    let h = v2(1, sa("[2001:db8::7]:4242"), sa("10.0.2.2:8080"), &[]);
    assert_eq!(client_of(parse_bytes(&h)), Some(sa("[2001:db8::7]:4242")));
}

#[test]
fn v2_local_and_unspec_are_removed_without_a_client() {
    let local = v2(0, sa("10.0.2.1:1"), sa("10.0.2.2:2"), &[]);
    assert!(matches!(
        parse_bytes(&local),
        Parsed::Header { client: None, len, .. } if len as usize == local.len()
    ));
    let mut bare_local = V2_SIGNATURE.to_vec();
    bare_local.extend([0x20, 0x00, 0, 0]);
    assert!(matches!(
        parse_bytes(&bare_local),
        Parsed::Header {
            client: None,
            len: 16,
            ..
        }
    ));
    let mut unspec = V2_SIGNATURE.to_vec();
    unspec.extend([0x21, 0x00, 0, 3, 9, 9, 9]);
    assert!(matches!(
        parse_bytes(&unspec),
        Parsed::Header {
            client: None,
            len: 19,
            ..
        }
    ));
}

#[test]
fn v2_malformations_are_refused_with_their_length() {
    let good = v2(1, sa("198.51.100.7:1"), sa("10.0.2.2:2"), &[]);
    let mut bad_version = good.clone();
    bad_version[12] = 0x31;
    let mut bad_command = good.clone();
    bad_command[12] = 0x2f;
    let mut bad_family = good.clone();
    bad_family[13] = 0x41;
    let mut short = good.clone();
    short[15] = 4;
    short.truncate(20);
    let truncated_tlv = v2(
        1,
        sa("198.51.100.7:1"),
        sa("10.0.2.2:2"),
        &[0x01, 0x00, 0x09, 1],
    );
    let loopback = v2(1, sa("127.0.0.1:1"), sa("10.0.2.2:2"), &[]);
    for (h, why) in [
        (bad_version, Refusal::V2BadVersion),
        (bad_command, Refusal::V2BadVersion),
        (bad_family, Refusal::V2UnknownFamily),
        (short, Refusal::V2ShortAddresses),
        (truncated_tlv, Refusal::V2BadTlv),
        (loopback, Refusal::ImplausibleClient),
    ] {
        assert_eq!(
            parse_bytes(&h),
            Parsed::Refused {
                len: h.len() as u32,
                why
            }
        );
    }
    let mut huge = V2_SIGNATURE.to_vec();
    huge.extend([0x21, 0x11, 0x04, 0x00]);
    assert_eq!(
        parse_bytes(&huge),
        Parsed::Refused {
            len: 16 + 1024,
            why: Refusal::Oversized
        }
    );
}

#[test]
fn other_streams_are_not_headers() {
    for data in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"PROXZ",
        b"\r\n\r\n\0\r\nQUIX\n",
        b"\r\nHELO",
        b"\x16\x03\x01",
    ] {
        assert_eq!(parse_bytes(data), Parsed::NotProxy, "{data:?}");
    }
}

fn any_socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(a, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), p)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(a, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), p)),
    ]
}

fn plausible(s: &SocketAddr) -> bool {
    let addr = match s.ip() {
        IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
        IpAddr::V6(v) => v.octets(),
    };
    crate::parser::plausible_client(&addr)
}

proptest! {
    /// Every strict prefix of a header asks for more; the whole header names
    /// its client, whatever follows it.
    #[test]
    fn headers_split_anywhere_wait_then_decode(
        src in any_socket_addr(),
        dst in any_socket_addr(),
        text in any::<bool>(),
        tail in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let dst = if src.is_ipv4() == dst.is_ipv4() { dst } else { src };
        let h = if text { v1(src, dst) } else { v2(1, src, dst, &[]) };
        for cut in 1..h.len() {
            prop_assert_eq!(parse_bytes(&h[..cut]), Parsed::NeedMore);
        }
        let whole = [h.as_slice(), &tail].concat();
        let p = parse_bytes(&whole);
        if plausible(&src) {
            let got = client_of(p).unwrap();
            prop_assert_eq!(got.port(), src.port());
            let same = match (got.ip(), src.ip()) {
                (IpAddr::V6(g), IpAddr::V4(s)) => g.to_ipv4_mapped() == Some(s),
                (g, s) => g == s,
            };
            prop_assert!(same, "{got} vs {src}");
            match p {
                Parsed::Header { len, .. } => prop_assert_eq!(len as usize, h.len()),
                other => prop_assert!(false, "{:?}", other),
            }
        } else {
            let refused = matches!(p, Parsed::Refused { why: Refusal::ImplausibleClient, .. });
            prop_assert!(refused, "{:?}", p);
        }
    }

    /// Arbitrary bytes never panic, and a length is never past what a
    /// header can be.
    #[test]
    fn any_bytes_give_a_bounded_answer(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        match parse_bytes(&data) {
            Parsed::Header { len, .. } => prop_assert!(len as usize <= MAX_HEADER_LEN),
            Parsed::Refused { len, why } => {
                prop_assert!(len as usize >= V2_FIXED_LEN);
                prop_assert!(why == Refusal::Oversized || len as usize <= MAX_HEADER_LEN);
            }
            _ => {}
        }
    }
}

mod reference;
