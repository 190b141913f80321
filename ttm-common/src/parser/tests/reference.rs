//! A straightforward reference parser, written independently of the walker
//! (plain loop over a slice, std's address classification), and a million
//! generated option areas on which both must agree.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::format::{AddrFamily, OptionFormat};

/// What the reference parser concludes about one area.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Client {
        ip: IpAddr,
        port: u16,
        format: usize,
        repeated: bool,
        plausible: bool,
    },
    None,
    Bad(Malformed),
}

fn reference(area: &[u8], formats: &[OptionFormat]) -> Verdict {
    let area = &area[..area.len().min(40)];
    let mut first: Option<(usize, usize)> = None;
    let mut repeated = false;
    let mut odd = false;
    let mut i = 0;
    while i < area.len() {
        match area[i] {
            0 => break,
            1 => i += 1,
            kind => {
                if i + 1 >= area.len() {
                    return Verdict::Bad(Malformed::Truncated);
                }
                let len = area[i + 1] as usize;
                if len < 2 {
                    return Verdict::Bad(Malformed::LengthTooShort);
                }
                if i + len > area.len() {
                    return Verdict::Bad(Malformed::PastEnd);
                }
                match formats
                    .iter()
                    .position(|f| f.kind == kind && f.len as usize == len)
                {
                    Some(f) if first.is_none() => first = Some((i, f)),
                    Some(_) => repeated = true,
                    None => odd |= formats.iter().any(|f| f.kind == kind),
                }
                i += len;
            }
        }
    }
    let Some((at, f)) = first else {
        return if odd {
            Verdict::Bad(Malformed::UnexpectedLength)
        } else {
            Verdict::None
        };
    };
    let port = u16::from_be_bytes([area[at + 2], area[at + 3]]);
    let ip = if formats[f].family == AddrFamily::Ipv4 as u8 {
        IpAddr::V4(Ipv4Addr::new(
            area[at + 4],
            area[at + 5],
            area[at + 6],
            area[at + 7],
        ))
    } else {
        let mut b = [0u8; 16];
        b.copy_from_slice(&area[at + 4..at + 20]);
        let v6 = Ipv6Addr::from(b);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    };
    let plausible = match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_loopback() || v4.is_multicast() || v4.is_broadcast())
        }
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_loopback() || v6.is_multicast()),
    };
    Verdict::Client {
        ip,
        port,
        format: f,
        repeated,
        plausible,
    }
}

fn walker(area: &[u8], table: &FormatTable) -> Verdict {
    let repeated = match find_option(area, table) {
        Walk::Found(at) => at.repeated,
        _ => false,
    };
    let client = |c: ClientAddr, plausible: bool| {
        let v6 = Ipv6Addr::from(c.addr);
        Verdict::Client {
            ip: v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            port: c.port,
            format: c.format_index as usize,
            repeated,
            plausible,
        }
    };
    match find_client(area, table) {
        Scan::Found(c) => client(c, true),
        Scan::Implausible(c) => client(c, false),
        Scan::NotFound => Verdict::None,
        Scan::Malformed(m) => Verdict::Bad(m),
    }
}

/// xorshift64*: deterministic, so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// An option area built from plausible pieces (padding, TOA options of both
/// families, other options, broken lengths), then cut at a random length:
/// far more interesting than uniform noise, which is nearly always malformed.
fn generate(rng: &mut Rng, kinds: &[u8]) -> Vec<u8> {
    let mut area = Vec::with_capacity(64);
    let target = rng.below(41) as usize;
    while area.len() < target {
        match rng.below(32) {
            0 => area.push(0),
            1..=6 => area.push(1),
            7..=20 => {
                let v6 = rng.below(3) == 0;
                area.push(kinds[rng.below(kinds.len() as u64) as usize]);
                area.push(if v6 { 20 } else { 8 });
                for _ in 0..if v6 { 18 } else { 6 } {
                    area.push(if rng.below(4) == 0 { 0 } else { rng.byte() });
                }
            }
            21 => {
                // A configured kind with a random (often wrong) length.
                area.push(kinds[rng.below(kinds.len() as u64) as usize]);
                area.push(rng.below(24) as u8);
            }
            22..=30 => {
                let len = 2 + rng.below(8) as u8;
                area.push(2 + rng.below(250) as u8);
                area.push(len);
                for _ in 2..len {
                    area.push(rng.byte());
                }
            }
            _ => area.push(rng.byte()),
        }
    }
    // Sometimes cut anywhere (truncated options); the walker reads at most 40 bytes.
    if rng.below(4) == 0 {
        area.truncate(rng.below(45) as usize);
    }
    area
}

#[test]
fn a_million_generated_areas_agree_with_the_reference_parser() {
    let formats = [
        OptionFormat::new(254, AddrFamily::Ipv4),
        OptionFormat::new(254, AddrFamily::Ipv6),
        OptionFormat::new(200, AddrFamily::Ipv4),
        OptionFormat::new(253, AddrFamily::Ipv6),
    ];
    let table = FormatTable::from_slice(&formats).expect("table");
    let kinds = [254, 253, 200, 2, 3, 4, 8];
    let mut rng = Rng(0x7474_6d5f_7365_6564);
    let mut found = 0;
    for case in 0..1_000_000u32 {
        let area = generate(&mut rng, &kinds);
        let expected = reference(&area, &formats);
        let got = walker(&area, &table);
        assert_eq!(got, expected, "case {case}: area {area:?}");
        found += u32::from(matches!(expected, Verdict::Client { .. }));
    }
    // The generator must exercise the interesting path, not only rejections.
    assert!(found > 200_000, "only {found} areas held a client");
}
