//! The TC ingress program against the host parser: generated frames (valid,
//! malformed, truncated, VLAN-tagged, with IPv4 options, non-TCP; IPv6 with
//! and without extension headers, fragments) run through the kernel with
//! BPF_PROG_TEST_RUN, and the program's decisions compared with
//! `ttm_common::find_client` on the same bytes.

mod common;

use std::os::fd::AsFd;

use common::prog_test_run::{load_classifier, test_run, Rng};

use aya::maps::{Array, HashMap, MapData};
use aya::EbpfLoader;
use ttm_common::addr::v4_mapped;
use ttm_common::format::FormatTable;
use ttm_common::maps::{self, TcKey};
use ttm_common::{find_client, Config, PeerRecord, Scan};

const TC_ACT_UNSPEC: u32 = u32::MAX;
const LOCAL: [u8; 4] = [10, 0, 2, 2];

/// An option area of whole words (≤ 40 bytes) from plausible pieces.
fn option_area(rng: &mut Rng) -> Vec<u8> {
    let mut area = Vec::new();
    let target = rng.below(41) as usize;
    while area.len() < target {
        match rng.below(8) {
            0 => area.push(0),
            1 | 2 => area.push(1),
            3..=5 => {
                area.extend_from_slice(&[254, 8, rng.next() as u8, rng.next() as u8]);
                area.extend_from_slice(&[
                    10 + rng.below(200) as u8,
                    rng.next() as u8,
                    rng.next() as u8,
                    1 + rng.below(250) as u8,
                ]);
            }
            6 => area.extend_from_slice(&[8, 10, 1, 2, 3, 4, 5, 6, 7, 8]),
            _ => {
                area.push(rng.next() as u8);
                area.push(rng.below(12) as u8);
            }
        }
    }
    area.truncate(40);
    while area.len() % 4 != 0 {
        area.push(1);
    }
    area
}

struct Frame {
    bytes: Vec<u8>,
    key: TcKey,
    /// The option area the kernel should read, when the frame is one it decodes.
    area: Option<Vec<u8>>,
}

fn frame(rng: &mut Rng, n: u16) -> Frame {
    let area = option_area(rng);
    let vlan = rng.below(4) == 0;
    let ip_options = rng.below(4) == 0;
    let udp = rng.below(10) == 0;
    let syn = rng.below(10) == 0;
    let src = [10, 9, (n >> 8) as u8, n as u8];
    let sport = 20_000 + n;
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    if vlan {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    }
    f.extend_from_slice(&[0x08, 0x00]);
    let ihl = if ip_options { 6 } else { 5 };
    let tcp_len = 20 + area.len();
    let total = ihl * 4 + tcp_len;
    f.extend_from_slice(&[
        0x40 | ihl as u8,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
    ]);
    f.push(if udp { 17 } else { 6 });
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&LOCAL);
    if ip_options {
        f.extend_from_slice(&[1, 1, 1, 0]);
    }
    push_tcp(&mut f, sport, if syn { 0x12 } else { 0x10 }, &area);
    // Sometimes cut the frame short, anywhere.
    let cut = rng.below(8) == 0;
    if cut {
        let keep = rng.below(f.len() as u64) as usize;
        // BPF_PROG_TEST_RUN refuses frames that end inside the IPv4 header.
        f.truncate(keep.max(40));
    }
    let decodable = !udp && !syn && !cut;
    Frame {
        bytes: f,
        key: TcKey {
            local_addr: v4_mapped(LOCAL),
            peer_addr: v4_mapped(src),
            local_port: 8080,
            peer_port: sport,
        },
        area: decodable.then_some(area),
    }
}

/// The real server's IPv6 address in the generated frames.
const LOCAL6: [u8; 16] = [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// An IPv6 source address for connection `n`.
fn src6(n: u16) -> [u8; 16] {
    let mut a = [0xfd, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    a[14..].copy_from_slice(&n.to_be_bytes());
    a
}

/// An extension header of `kind` holding `words` 8-byte units, `next` after it.
fn extension(kind: u8, next: u8, words: u8) -> Vec<u8> {
    let mut h = vec![next, words - 1];
    h.resize(usize::from(words) * 8, if kind == 44 { 0 } else { 1 });
    h
}

/// An Ethernet/IPv6 frame: `extensions` (kind, 8-byte units) before TCP
/// from `src:sport` to LOCAL6:8080 with `flags` and option `area`.
fn tcp_frame6(
    src: [u8; 16],
    sport: u16,
    flags: u8,
    area: &[u8],
    extensions: &[(u8, u8)],
    vlan: bool,
) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    if vlan {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    }
    f.extend_from_slice(&[0x86, 0xdd]);
    let mut chain = Vec::new();
    for (k, (kind, words)) in extensions.iter().enumerate() {
        let next = extensions.get(k + 1).map_or(6, |n| n.0);
        chain.extend(extension(*kind, next, *words));
    }
    let first = extensions.first().map_or(6, |e| e.0);
    let tcp_len = 20 + area.len();
    let payload = chain.len() + tcp_len;
    f.extend_from_slice(&[
        0x60,
        0,
        0,
        0,
        (payload >> 8) as u8,
        payload as u8,
        first,
        64,
    ]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&LOCAL6);
    f.extend(chain);
    push_tcp(&mut f, sport, flags, area);
    f
}

/// A generated IPv6 frame: 0 to 5 extension headers (hop-by-hop, routing,
/// destination options; sometimes a fragment), VLAN, SYN or cut short.
fn frame6(rng: &mut Rng, n: u16) -> Frame {
    let area = option_area(rng);
    let vlan = rng.below(4) == 0;
    let syn = rng.below(10) == 0;
    let mut extensions = Vec::new();
    for _ in 0..rng.below(6) {
        let kind = [0u8, 43, 60, 60, 43, 44][rng.below(6) as usize];
        extensions.push((kind, 1 + rng.below(3) as u8));
    }
    let src = src6(n);
    let sport = 30_000 + n;
    let mut bytes = tcp_frame6(
        src,
        sport,
        if syn { 0x12 } else { 0x10 },
        &area,
        &extensions,
        vlan,
    );
    let cut = rng.below(8) == 0;
    if cut {
        let keep = rng.below(bytes.len() as u64) as usize;
        bytes.truncate(keep.max(60));
    }
    // TCP is reached through at most 4 extension headers, none a fragment.
    let followable = extensions.len() <= 4 && extensions.iter().all(|e| e.0 != 44);
    let decodable = followable && !syn && !cut;
    Frame {
        bytes,
        key: TcKey {
            local_addr: LOCAL6,
            peer_addr: src,
            local_port: 8080,
            peer_port: sport,
        },
        area: decodable.then_some(area),
    }
}

/// Appends a TCP header from `sport` to port 8080 with `flags`, followed by
/// the option `area` (its length a multiple of 4).
fn push_tcp(f: &mut Vec<u8>, sport: u16, flags: u8, area: &[u8]) {
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&8080u16.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
    f.push((((20 + area.len()) / 4) as u8) << 4);
    f.push(flags);
    f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(area);
}

/// A plain Ethernet/IPv4/TCP frame from `src:sport` to LOCAL:8080.
fn tcp_frame(src: [u8; 4], sport: u16, flags: u8, area: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let tcp_len = 20 + area.len();
    let total = 20 + tcp_len;
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        6,
        0,
        0,
    ]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&LOCAL);
    push_tcp(&mut f, sport, flags, area);
    f
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// The ttm object with its config written, and the loaded TC program's fd.
fn loaded() -> (aya::Ebpf, std::os::fd::OwnedFd) {
    let mut ebpf = EbpfLoader::new()
        .load(ttm::EBPF_OBJECT)
        .expect("load the ttm object");
    let mut config: Array<_, Config> =
        Array::try_from(ebpf.map_mut(maps::CONFIG).expect("CONFIG")).expect("array");
    config
        .set(
            0,
            Config {
                formats: FormatTable::DEFAULT,
                trust_any: 1,
                getsockopt_name: 1345,
                nat64_getsockopt_name: 0,
                short_buffer_retval: -22,
                proxy_flags: 0,
                ..Config::DISABLED
            },
            0,
        )
        .expect("config");
    let prog = load_classifier(&mut ebpf, "ttm_tc_ingress");
    (ebpf, prog)
}

#[test]
fn the_tc_program_decides_like_the_host_parser() {
    let _serial = ttm_lab::process::serial();
    let (ebpf, prog) = loaded();
    let mut rng = Rng(0x7463_5f64_6966_6621);
    let mut frames: Vec<Frame> = (0..4000u16).map(|n| frame(&mut rng, n)).collect();
    frames.extend((0..3000u16).map(|n| frame6(&mut rng, n)));
    for f in &frames {
        // Each connection's handshake starts with a SYN from the LB.
        let syn = if f.key.local_addr == LOCAL6 {
            tcp_frame6(f.key.peer_addr, f.key.peer_port, SYN, &[], &[], false)
        } else {
            let src: [u8; 4] = f.key.peer_addr[12..].try_into().unwrap();
            tcp_frame(src, f.key.peer_port, SYN, &[])
        };
        test_run(prog.as_fd(), &syn);
        assert_eq!(
            test_run(prog.as_fd(), &f.bytes).0,
            TC_ACT_UNSPEC,
            "always continue"
        );
    }
    let records: HashMap<&MapData, TcKey, PeerRecord> =
        HashMap::try_from(ebpf.map(maps::TC_RECORDS).expect("TC_RECORDS")).expect("hash");
    let (mut decoded, mut refused) = (0, 0);
    for f in &frames {
        let expected =
            f.area
                .as_ref()
                .and_then(|area| match find_client(&area[..], &FormatTable::DEFAULT) {
                    Scan::Found(c) => Some((c.addr, c.port)),
                    _ => None,
                });
        let got = records
            .get(&f.key, 0)
            .ok()
            .map(|r| (r.client_addr, r.client_port));
        assert_eq!(got, expected, "frame {:?}", f.bytes);
        if got.is_some() {
            decoded += 1;
        } else {
            refused += 1;
        }
    }
    assert!(
        decoded > 500 && refused > 500,
        "decoded {decoded}, refused {refused}"
    );
    let v6_decoded = frames
        .iter()
        .filter(|f| f.key.local_addr == LOCAL6)
        .filter(|f| records.get(&f.key, 0).is_ok())
        .count();
    assert!(v6_decoded > 300, "only {v6_decoded} IPv6 frames decoded");
    // Fragments and too many extensions were counted, not decoded.
    let stats: aya::maps::PerCpuArray<&MapData, u64> =
        aya::maps::PerCpuArray::try_from(ebpf.map(maps::STATS).expect("STATS")).expect("stats");
    let unparsed: u64 = stats
        .get(&(ttm_common::Counter::TcIpv6Unparsed as u32), 0)
        .expect("counter")
        .iter()
        .sum();
    let expected = frames
        .iter()
        .filter(|f| f.key.local_addr == LOCAL6 && f.bytes.len() > 58)
        .count();
    assert!(
        unparsed > 100 && (unparsed as usize) < expected,
        "unparsed {unparsed}"
    );
}

#[test]
fn only_the_segment_completing_the_handshake_counts() {
    let _serial = ttm_lab::process::serial();
    let (ebpf, prog) = loaded();
    let run = |src: [u8; 4], port: u16, flags: u8, area: &[u8]| {
        assert_eq!(
            test_run(prog.as_fd(), &tcp_frame(src, port, flags, area)).0,
            TC_ACT_UNSPEC
        );
    };
    let toa = |client: [u8; 4], port: u16| {
        let p = port.to_be_bytes();
        [
            254, 8, p[0], p[1], client[0], client[1], client[2], client[3],
        ]
    };
    let lb = [10, 0, 2, 1];
    let key = |port: u16| TcKey {
        local_addr: v4_mapped(LOCAL),
        peer_addr: v4_mapped(lb),
        local_port: 8080,
        peer_port: port,
    };
    let client_of = |port: u16| {
        let records: HashMap<&MapData, TcKey, PeerRecord> =
            HashMap::try_from(ebpf.map(maps::TC_RECORDS).expect("TC_RECORDS")).expect("hash");
        records
            .get(&key(port), 0)
            .ok()
            .map(|r| (r.client_addr, r.client_port))
    };
    let a = (v4_mapped([198, 51, 100, 1]), 1111);
    let b = (v4_mapped([198, 51, 100, 2]), 2222);

    // The completing ACK had no option: a later segment's option (the
    // client's own, passed through by the LB) is not taken.
    run(lb, 40_001, SYN, &[]);
    run(lb, 40_001, ACK, &[]);
    run(lb, 40_001, ACK, &toa([198, 51, 100, 2], 2222));
    assert_eq!(client_of(40_001), None);

    // The completing ACK's option stands against later ones.
    run(lb, 40_002, SYN, &[]);
    run(lb, 40_002, ACK, &toa([198, 51, 100, 1], 1111));
    run(lb, 40_002, ACK, &toa([198, 51, 100, 2], 2222));
    assert_eq!(client_of(40_002), Some(a));

    // Port reuse: the new handshake's SYN drops the old client at once,
    // and its completing ACK brings the new one.
    run(lb, 40_002, SYN, &[]);
    assert_eq!(client_of(40_002), None);
    run(lb, 40_002, ACK, &toa([198, 51, 100, 2], 2222));
    assert_eq!(client_of(40_002), Some(b));

    // No handshake seen (connection older than the program): nothing.
    run(lb, 40_003, ACK, &toa([198, 51, 100, 1], 1111));
    assert_eq!(client_of(40_003), None);

    // An option on the SYN itself is not a client.
    run(lb, 40_004, SYN, &toa([198, 51, 100, 1], 1111));
    assert_eq!(client_of(40_004), None);
}
