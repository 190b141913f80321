//! The UDP marking decoder against the host parser: generated datagrams
//! (IPv4 options and opp headers on IPv4 and IPv6, well formed, malformed,
//! truncated, hostile; from a trusted LB and from anyone else; with and
//! without payload) run through the kernel with BPF_PROG_TEST_RUN. Each run
//! is checked three ways: the flow filed is exactly the client
//! `ttm_common::uoa` finds in the same bytes; the verdict drops only a
//! trusted marking-only datagram; and the bytes that go up are the datagram
//! unchanged, or, for a trusted opp datagram, the plain UDP datagram inside
//! it with its IP header made right.

mod common;

use std::os::fd::AsFd;

use common::prog_test_run::{load_classifier, test_run, Rng};

use aya::maps::{Array, HashMap, LpmTrie, MapData};
use aya::EbpfLoader;
use ttm_common::addr::v4_mapped;
use ttm_common::udp::{UdpFlow, UdpFlowKey};
use ttm_common::uoa::{find_in_ip_options, opp_fixed, parse_opp, IPOPT_UOA, IPPROTO_OPP};
use ttm_common::{maps, plausible_client, Config, Scan};

const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_SHOT: u32 = 2;
const TRUSTED: [u8; 4] = [10, 0, 2, 1];
const STRANGER: [u8; 4] = [10, 0, 1, 2];
const LOCAL: [u8; 4] = [10, 0, 2, 2];
const TRUSTED6: [u8; 16] = [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const LOCAL6: [u8; 16] = [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const LOCAL_PORT: u16 = 53;

/// DPVS's marking of a client: `[0x9f][8|20][port][address]`.
fn marking(rng: &mut Rng) -> Vec<u8> {
    let six = rng.below(3) == 0;
    let mut m = vec![IPOPT_UOA, if six { 20 } else { 8 }];
    m.extend_from_slice(&(rng.below(65_536) as u16).to_be_bytes());
    if six {
        m.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        m.extend((0..12).map(|_| rng.below(256) as u8));
    } else {
        // Now and then an address no client can have.
        let first = [192, 198, 203, 127, 0, 224][rng.below(6) as usize];
        m.extend_from_slice(&[first, rng.below(256) as u8, rng.below(256) as u8, 9]);
    }
    m
}

/// An option area of whole words (≤ 40 bytes): markings, NOPs, other
/// options, and now and then broken framing.
fn option_area(rng: &mut Rng) -> Vec<u8> {
    let mut area = Vec::new();
    for _ in 0..rng.below(4) {
        match rng.below(8) {
            0..=3 => area.extend(marking(rng)),
            4 => area.push(1),
            5 => area.extend_from_slice(&[0x94, 4, 0, 0]), // router alert
            6 => area.extend_from_slice(&[IPOPT_UOA, rng.below(30) as u8, 1, 2]),
            _ => area.extend((0..rng.below(5)).map(|_| rng.below(256) as u8)),
        }
    }
    area.truncate(40);
    while area.len() % 4 != 0 {
        area.push(if rng.below(4) == 0 { 0 } else { 1 });
    }
    area
}

/// One generated datagram and where its marking sits.
struct Datagram {
    bytes: Vec<u8>,
    v6: bool,
    trusted: bool,
    /// Offset of the opp header, if the datagram has one.
    opp_at: Option<usize>,
    /// Offset and length of the IPv4 option area (opp's own is in the header).
    ip_options: (usize, usize),
    key: UdpFlowKey,
    payload_len: usize,
    /// An IPv4 first fragment (more fragments follow): its opp header stays.
    first_fragment: bool,
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn datagram(rng: &mut Rng, n: u16) -> Datagram {
    let v6 = rng.below(4) == 0;
    let trusted = rng.below(5) != 0;
    let opp = v6 || rng.below(2) == 0;
    let area = option_area(rng);
    let payload_len = if rng.below(4) == 0 {
        0
    } else {
        1 + rng.below(40) as usize
    };
    let sport = 10_000 + n;
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&LOCAL_PORT.to_be_bytes());
    udp.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    udp.extend_from_slice(&[0x12, 0x34]);
    udp.extend((0..payload_len).map(|i| i as u8));
    let mut opp_header = Vec::new();
    if opp {
        let version = match rng.below(10) {
            0 => 3,
            1..=4 => 2,
            _ => 1,
        };
        let mut len = (4 + area.len()) as u16;
        if rng.below(12) == 0 {
            len = len.wrapping_add(4 * rng.below(30) as u16);
        }
        let proto = if rng.below(15) == 0 { 6 } else { 17 };
        opp_header.extend_from_slice(&[version << 4, proto]);
        opp_header.extend_from_slice(&len.to_be_bytes());
        opp_header.extend_from_slice(&area);
    }
    let inner = [opp_header.as_slice(), udp.as_slice()].concat();
    let mut f = vec![0u8; 12];
    let src: [u8; 16];
    let (opp_at, ip_options);
    let mut first_fragment = false;
    if v6 {
        f.extend_from_slice(&[0x86, 0xdd]);
        src = if trusted {
            TRUSTED6
        } else {
            [0xfd, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]
        };
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(inner.len() as u16).to_be_bytes());
        f.extend_from_slice(&[if opp { IPPROTO_OPP } else { 17 }, 64]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&LOCAL6);
        opp_at = opp.then_some(f.len());
        ip_options = (0, 0);
    } else {
        f.extend_from_slice(&[0x08, 0x00]);
        let s4 = if trusted { TRUSTED } else { STRANGER };
        first_fragment = rng.below(10) == 0;
        src = v4_mapped(s4);
        let ip_area: &[u8] = if opp { &[] } else { &area };
        let ihl = 20 + ip_area.len();
        let mut ip = vec![0x40 | (ihl / 4) as u8, 0];
        ip.extend_from_slice(&((ihl + inner.len()) as u16).to_be_bytes());
        let flags = if first_fragment { 0x20 } else { 0 };
        ip.extend_from_slice(&[0, 1, flags, 0, 64, if opp { IPPROTO_OPP } else { 17 }, 0, 0]);
        ip.extend_from_slice(&s4);
        ip.extend_from_slice(&LOCAL);
        ip.extend_from_slice(ip_area);
        let check = ipv4_checksum(&ip);
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        ip_options = (f.len() + 20, ip_area.len());
        f.extend_from_slice(&ip);
        opp_at = opp.then_some(f.len());
    }
    f.extend_from_slice(&inner);
    Datagram {
        bytes: f,
        v6,
        trusted,
        opp_at,
        ip_options,
        key: UdpFlowKey {
            lb_addr: src,
            lb_port: sport,
            local_port: LOCAL_PORT,
        },
        payload_len,
        first_fragment,
    }
}

/// What the host parser says: the client to file, and whether a trusted
/// datagram's opp header goes (its fixed part is sound and fits).
fn expected(d: &Datagram) -> (Option<ttm_common::ClientAddr>, bool) {
    if !d.trusted {
        return (None, false);
    }
    match d.opp_at {
        Some(at) => {
            let rest = &d.bytes[at..];
            let fixed: [u8; 4] = rest[..4].try_into().unwrap();
            let sound = opp_fixed(fixed).is_ok_and(|(_, len)| len + 8 <= rest.len());
            let client = match parse_opp(rest) {
                Ok(opp) => match opp.scan {
                    Scan::Found(c) if plausible_client(&c.addr) => Some(c),
                    _ => None,
                },
                Err(_) => None,
            };
            (client.filter(|_| sound), sound)
        }
        None => {
            let (at, len) = d.ip_options;
            let client = match find_in_ip_options(&d.bytes[at..at + len]) {
                Scan::Found(c) => Some(c),
                _ => None,
            };
            (client, false)
        }
    }
}

/// The datagram with its opp header removed and its IP header made right.
fn unwrapped(d: &Datagram) -> Vec<u8> {
    let at = d.opp_at.expect("an opp datagram");
    let len = usize::from(u16::from_be_bytes([d.bytes[at + 2], d.bytes[at + 3]]));
    let mut out = [&d.bytes[..at], &d.bytes[at + len..]].concat();
    if d.v6 {
        let payload = u16::from_be_bytes([out[18], out[19]]) - len as u16;
        out[18..20].copy_from_slice(&payload.to_be_bytes());
        out[20] = 17;
    } else {
        let total = u16::from_be_bytes([out[16], out[17]]) - len as u16;
        out[16..18].copy_from_slice(&total.to_be_bytes());
        out[23] = 17;
        out[24..26].copy_from_slice(&[0, 0]);
        let check = ipv4_checksum(&out[14..34]);
        out[24..26].copy_from_slice(&check.to_be_bytes());
    }
    out
}

fn loaded() -> (aya::Ebpf, std::os::fd::OwnedFd) {
    let mut ebpf = EbpfLoader::new()
        .load(ttm::EBPF_OBJECT)
        .expect("load the ttm object");
    let mut config: Array<_, Config> =
        Array::try_from(ebpf.map_mut(maps::CONFIG).expect("CONFIG")).expect("array");
    config.set(0, Config::DISABLED, 0).expect("config");
    let mut trie: LpmTrie<_, [u8; 16], u8> =
        LpmTrie::try_from(ebpf.map_mut(maps::TRUSTED_LBS).expect("TRUSTED_LBS")).expect("trie");
    for addr in [v4_mapped(TRUSTED), TRUSTED6] {
        trie.insert(&aya::maps::lpm_trie::Key::new(128, addr), 1, 0)
            .expect("trust");
    }
    let prog = load_classifier(&mut ebpf, "ttm_udp_ingress");
    (ebpf, prog)
}

#[test]
fn the_udp_program_decides_like_the_host_parser() {
    let _serial = ttm_lab::process::serial();
    let (ebpf, prog) = loaded();
    let flows: HashMap<&MapData, UdpFlowKey, UdpFlow> =
        HashMap::try_from(ebpf.map(maps::UDP_FLOWS).expect("UDP_FLOWS")).expect("hash");
    let mut rng = Rng(0x7564_705f_6469_6666);
    let (mut filed, mut dropped, mut unwrapped_n, mut left) = (0, 0, 0, 0);
    for n in 0..6000u16 {
        let d = datagram(&mut rng, n);
        let (client, unwraps) = expected(&d);
        let (verdict, out) = test_run(prog.as_fd(), &d.bytes);
        let flow = flows.get(&d.key, 0).ok();
        match client {
            Some(c) => {
                let flow = flow.unwrap_or_else(|| panic!("datagram {n}: no flow for {c:?}"));
                assert_eq!(
                    (flow.client_addr, flow.client_port, flow.client_family),
                    (c.addr, c.port, c.family as u8),
                    "datagram {n}"
                );
                filed += 1;
            }
            None => assert!(
                flow.is_none(),
                "datagram {n}: a flow the host parser does not see"
            ),
        }
        if client.is_some() && d.payload_len == 0 {
            assert_eq!(
                verdict, TC_ACT_SHOT,
                "datagram {n}: a marker goes no further"
            );
            dropped += 1;
            continue;
        }
        assert_eq!(
            verdict, TC_ACT_UNSPEC,
            "datagram {n}: only markers are dropped"
        );
        if unwraps && (d.v6 || d.bytes[14] == 0x45) && !d.first_fragment {
            // The checksum is checked for being right, not for its spelling
            // (an incremental update may write 0xffff where a fresh sum 0).
            let (mut got, mut want) = (out.clone(), unwrapped(&d));
            if !d.v6 {
                assert_eq!(
                    ipv4_checksum(&got[14..34]),
                    0,
                    "datagram {n}: IPv4 checksum"
                );
                got[24..26].fill(0);
                want[24..26].fill(0);
            }
            assert_eq!(got, want, "datagram {n}: opp removed, header right");
            unwrapped_n += 1;
        } else {
            assert_eq!(out, d.bytes, "datagram {n}: goes up unchanged");
            left += 1;
        }
    }
    // Every branch was taken.
    assert!(filed > 500 && dropped > 50 && unwrapped_n > 500 && left > 500);
}
