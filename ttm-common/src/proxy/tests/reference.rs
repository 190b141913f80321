//! A reference PROXY header parser written independently of the kernel's
//! (whole-buffer string and slice handling, std's address parsing), and
//! generated headers — valid ones and mutated ones — on which both must
//! reach the same outcome.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::super::*;

/// What happens to the connection: the comparison's unit.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    NeedMore,
    NotProxy,
    /// Removed (`len` bytes), naming this client if any.
    Removed(usize, Option<(IpAddr, u16)>),
    /// Removed, refused.
    Refused(usize),
    /// Passed on unchanged.
    Unframed,
}

fn outcome(p: Parsed) -> Outcome {
    match p {
        Parsed::NeedMore => Outcome::NeedMore,
        Parsed::NotProxy => Outcome::NotProxy,
        Parsed::Header { len, client, .. } => Outcome::Removed(
            len as usize,
            client.map(|c| {
                let v6 = Ipv6Addr::from(c.addr);
                let ip = match (c.family, v6.to_ipv4_mapped()) {
                    (AddrFamily::Ipv4, Some(v4)) => IpAddr::V4(v4),
                    _ => IpAddr::V6(v6),
                };
                (ip, c.port)
            }),
        ),
        Parsed::Refused { len, .. } => Outcome::Refused(len as usize),
        Parsed::Unframed(_) => Outcome::Unframed,
    }
}

fn plausible(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            !(v.is_unspecified() || v.is_loopback() || v.is_multicast() || v.is_broadcast())
        }
        IpAddr::V6(v) => {
            if let Some(v4) = v.to_ipv4_mapped() {
                return plausible(IpAddr::V4(v4));
            }
            !(v.is_unspecified() || v.is_loopback() || v.is_multicast())
        }
    }
}

/// The reference: `None` when the input is an incomplete v1 line whose
/// outcome depends on bytes not yet seen (the kernel's parser may already
/// refuse it; both answers pass the bytes on or wait).
fn reference(data: &[u8]) -> Option<Outcome> {
    let data = &data[..data.len().min(MAX_HEADER_LEN)];
    let Some(&first) = data.first() else {
        return Some(Outcome::NeedMore);
    };
    let prefix_of = |sig: &[u8]| {
        let n = data.len().min(sig.len());
        data[..n] == sig[..n]
    };
    match first {
        b'\r' if prefix_of(&V2_SIGNATURE) => Some(if data.len() < 12 {
            Outcome::NeedMore
        } else {
            reference_v2(data)
        }),
        b'P' if prefix_of(&V1_PREFIX) => {
            if data.len() < 6 {
                Some(Outcome::NeedMore)
            } else {
                reference_v1(data)
            }
        }
        _ => Some(Outcome::NotProxy),
    }
}

fn reference_v1(data: &[u8]) -> Option<Outcome> {
    // The line ends at its first CR, which LF must follow, by byte 107.
    let Some(cr) = data.iter().position(|&b| b == b'\r') else {
        return if data.len() >= V1_MAX_LEN {
            Some(Outcome::Unframed)
        } else {
            None
        };
    };
    if cr + 2 > V1_MAX_LEN {
        return Some(Outcome::Unframed);
    }
    match data.get(cr + 1) {
        None => return None,
        Some(b'\n') => {}
        Some(_) => return Some(Outcome::Unframed),
    }
    let len = cr + 2;
    let line = &data[6..cr];
    if line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ") {
        return Some(Outcome::Removed(len, None));
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return Some(Outcome::Unframed);
    };
    let fields: Vec<&str> = text.split(' ').collect();
    let [proto, src, dst, sport, dport] = fields[..] else {
        return Some(Outcome::Unframed);
    };
    let port = |p: &str| {
        (!p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u16>().ok())
            .flatten()
    };
    let (src, ok_dst) = match proto {
        "TCP4" => (
            src.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
            dst.parse::<Ipv4Addr>().is_ok(),
        ),
        "TCP6" => (
            src.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
            dst.parse::<Ipv6Addr>().is_ok(),
        ),
        _ => return Some(Outcome::Unframed),
    };
    let (Some(src), true, Some(sport), Some(_)) = (src, ok_dst, port(sport), port(dport)) else {
        return Some(Outcome::Unframed);
    };
    if !plausible(src) {
        return Some(Outcome::Refused(len));
    }
    Some(Outcome::Removed(len, Some((src, sport))))
}

fn reference_v2(data: &[u8]) -> Outcome {
    if data.len() < 16 {
        return Outcome::NeedMore;
    }
    let total = 16 + usize::from(u16::from_be_bytes([data[14], data[15]]));
    if total > MAX_HEADER_LEN {
        return Outcome::Refused(total);
    }
    let command = match data[12] {
        0x20 => 0,
        0x21 => 1,
        _ => return Outcome::Refused(total),
    };
    if command == 0 {
        return if data.len() < total {
            Outcome::NeedMore
        } else {
            Outcome::Removed(total, None)
        };
    }
    let addresses = match data[13] {
        0x00 => 0,
        0x11 | 0x12 => 12,
        0x21 | 0x22 => 36,
        0x31 | 0x32 => 216,
        _ => return Outcome::Refused(total),
    };
    if 16 + addresses > total {
        return Outcome::Refused(total);
    }
    if data.len() < total {
        return Outcome::NeedMore;
    }
    let body = &data[16..total];
    let client = match data[13] {
        0x11 | 0x12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some((IpAddr::V4(ip), u16::from_be_bytes([body[8], body[9]])))
        }
        0x21 | 0x22 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&body[..16]);
            Some((
                IpAddr::V6(Ipv6Addr::from(a)),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        _ => return Outcome::Removed(total, None),
    };
    // TLVs: each type, 2-byte length, value; they fill the rest exactly.
    let mut rest = &body[addresses..];
    let mut count = 0;
    while !rest.is_empty() {
        count += 1;
        if count > MAX_TLVS || rest.len() < 3 {
            return Outcome::Refused(total);
        }
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        if rest.len() < 3 + len {
            return Outcome::Refused(total);
        }
        rest = &rest[3 + len..];
    }
    let (ip, port) = client.expect("an address family with a client");
    if !plausible(ip) {
        return Outcome::Refused(total);
    }
    Outcome::Removed(total, Some((ip, port)))
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn random_ip(rng: &mut Rng, v6: bool) -> IpAddr {
    if v6 {
        let mut a = [0u8; 16];
        for b in &mut a {
            *b = if rng.below(3) == 0 { 0 } else { rng.byte() };
        }
        if rng.below(8) == 0 {
            a[..10].fill(0);
            a[10] = 0xff;
            a[11] = 0xff;
        }
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::new(
            rng.byte(),
            rng.byte(),
            rng.byte(),
            rng.byte(),
        ))
    }
}

/// A v1 line in one of the textual forms senders write.
fn v1_line(rng: &mut Rng) -> Vec<u8> {
    if rng.below(10) == 0 {
        return b"PROXY UNKNOWN\r\n".to_vec();
    }
    let v6 = rng.below(2) == 0;
    let (src, dst) = (random_ip(rng, v6), random_ip(rng, v6));
    let show = |ip: IpAddr, rng: &mut Rng| match ip {
        // Sometimes every group in full, as some senders write them.
        IpAddr::V6(v) if rng.below(3) == 0 => v
            .segments()
            .iter()
            .map(|g| format!("{g:x}"))
            .collect::<Vec<_>>()
            .join(":"),
        other => other.to_string(),
    };
    let src_text = show(src, rng);
    let dst_text = show(dst, rng);
    format!(
        "PROXY {} {src_text} {dst_text} {} {}\r\n",
        if v6 { "TCP6" } else { "TCP4" },
        rng.below(65_536),
        rng.below(65_536)
    )
    .into_bytes()
}

/// A v2 header with random family, command and TLVs.
fn v2_header(rng: &mut Rng) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(if rng.below(8) == 0 { 0x20 } else { 0x21 });
    let family = [0x11u8, 0x21, 0x11, 0x21, 0x00, 0x31, 0x12][rng.below(7) as usize];
    out.push(family);
    let mut body = Vec::new();
    match family {
        0x11 | 0x12 => {
            for _ in 0..12 {
                body.push(rng.byte());
            }
        }
        0x21 => {
            let (IpAddr::V6(a), IpAddr::V6(b)) = (random_ip(rng, true), random_ip(rng, true))
            else {
                unreachable!()
            };
            body.extend(a.octets());
            body.extend(b.octets());
            for _ in 0..4 {
                body.push(rng.byte());
            }
        }
        0x31 => body.extend(std::iter::repeat_n(b'/', 216)),
        _ => {}
    }
    for _ in 0..rng.below(4) {
        let len = rng.below(24) as usize;
        body.push([0x01u8, 0x02, 0x04, 0x05, 0xea, 0xee][rng.below(6) as usize]);
        body.extend((len as u16).to_be_bytes());
        body.extend((0..len).map(|_| rng.byte()));
    }
    out.extend((body.len() as u16).to_be_bytes());
    out.extend(body);
    out
}

/// A header, sometimes mutated: a byte changed, bytes cut or added.
fn generate(rng: &mut Rng) -> Vec<u8> {
    let mut h = if rng.below(2) == 0 {
        v1_line(rng)
    } else {
        v2_header(rng)
    };
    match rng.below(6) {
        0 => {
            let at = rng.below(h.len() as u64) as usize;
            h[at] = match rng.below(4) {
                0 => b' ',
                1 => b':',
                2 => b'0' + rng.below(10) as u8,
                _ => rng.byte(),
            };
        }
        1 => h.truncate(rng.below(h.len() as u64) as usize),
        2 => {
            let at = rng.below(h.len() as u64) as usize;
            h.insert(at, rng.byte());
        }
        _ => {}
    }
    // Data after the header, as in a segment that carries both.
    let tail = rng.below(16) as usize;
    h.extend((0..tail).map(|_| rng.byte()));
    h
}

#[test]
fn two_hundred_thousand_generated_headers_agree_with_the_reference_parser() {
    let mut rng = Rng(0x7474_6d5f_7072_6f78);
    let (mut removed, mut refused, mut unframed, mut compared) = (0, 0, 0, 0);
    for case in 0..200_000u32 {
        let data = generate(&mut rng);
        let got = outcome(parse(&HeaderBuf::from_slice(&data)));
        match reference(&data) {
            Some(expected) => {
                compared += 1;
                assert_eq!(
                    got,
                    expected,
                    "case {case}: {:?}",
                    String::from_utf8_lossy(&data)
                );
            }
            // An unfinished line: the kernel waits, or already refuses it.
            None => assert!(
                matches!(got, Outcome::NeedMore | Outcome::Unframed),
                "case {case}: {got:?} for {:?}",
                String::from_utf8_lossy(&data)
            ),
        }
        match got {
            Outcome::Removed(_, Some(_)) => removed += 1,
            Outcome::Refused(_) => refused += 1,
            Outcome::Unframed => unframed += 1,
            _ => {}
        }
    }
    eprintln!("{compared} compared: {removed} clients, {refused} refused, {unframed} unframed");
    assert!(compared > 170_000, "only {compared} compared");
    assert!(removed > 60_000, "only {removed} clients");
    assert!(refused > 5_000, "only {refused} refused");
    assert!(unframed > 5_000, "only {unframed} unframed");
}
