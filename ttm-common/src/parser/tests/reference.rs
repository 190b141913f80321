//! A straightforward reference parser, written independently of the walker
//! (plain loop over a slice, std's address classification), and a million
//! generated option areas on which both must agree.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::format::{AddrFamily, OptionFormat, OptionPosition};

/// What the reference parser concludes about one area.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Client {
        ip: IpAddr,
        port: u16,
        format: usize,
        repeated: bool,
        plausible: bool,
    },
    None,
    Conflict,
    Bad(Malformed),
}

/// The client an option at `at` of format `f` names.
fn claim(area: &[u8], at: usize, format: &OptionFormat) -> (IpAddr, u16) {
    let port = u16::from_be_bytes([area[at + 2], area[at + 3]]);
    let ip = if format.family == AddrFamily::Ipv4 as u8 {
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
    (ip, port)
}

pub(crate) fn reference(area: &[u8], formats: &[OptionFormat]) -> Verdict {
    let area = &area[..area.len().min(40)];
    // Every configured option, in order.
    let mut found: Vec<(usize, usize)> = Vec::new();
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
                    Some(f) => found.push((i, f)),
                    None => odd |= formats.iter().any(|f| f.kind == kind),
                }
                i += len;
            }
        }
    }
    let (Some(&first), Some(&last)) = (found.first(), found.last()) else {
        return if odd {
            Verdict::Bad(Malformed::UnexpectedLength)
        } else {
            Verdict::None
        };
    };
    let repeated = found.len() > 1;
    // The LBs' position is trusted only when every configured layout agrees.
    let positions: Vec<u8> = formats.iter().map(|f| f.position).collect();
    let agreed = if positions.iter().all(|p| *p == positions[0]) {
        positions[0]
    } else {
        OptionPosition::Unknown as u8
    };
    let (at, f) = if !repeated || agreed == OptionPosition::First as u8 {
        first
    } else if agreed == OptionPosition::Last as u8 {
        last
    } else if claim(area, first.0, &formats[first.1]) == claim(area, last.0, &formats[last.1]) {
        first
    } else {
        return Verdict::Conflict;
    };
    let (ip, port) = claim(area, at, &formats[f]);
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

pub(crate) fn walker(area: &[u8], table: &FormatTable) -> Verdict {
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
        Scan::Conflicting => Verdict::Conflict,
        Scan::Malformed(m) => Verdict::Bad(m),
    }
}

/// xorshift64*: deterministic, so a failure names a reproducible case.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(crate) fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// An option area built from plausible pieces (padding, TOA options of both
/// families, other options, broken lengths), then cut at a random length:
/// far more interesting than uniform noise, which is nearly always malformed.
pub(crate) fn generate(rng: &mut Rng, kinds: &[u8]) -> Vec<u8> {
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
    use OptionPosition::*;
    let kinds = [254, 253, 200, 2, 3, 4, 8];
    let mut rng = Rng(0x7474_6d5f_7365_6564);
    let (mut found, mut repeated, mut conflicts) = (0, 0, 0);
    // Every LB position, and layouts that disagree on it (then unknown).
    let positions = [
        [Unknown; 4],
        [First; 4],
        [Last; 4],
        [First, First, Last, First],
    ];
    for case in 0..1_000_000u32 {
        let p = positions[case as usize % positions.len()];
        let formats = [
            OptionFormat::new(254, AddrFamily::Ipv4).at(p[0]),
            OptionFormat::new(254, AddrFamily::Ipv6).at(p[1]),
            OptionFormat::new(200, AddrFamily::Ipv4).at(p[2]),
            OptionFormat::new(253, AddrFamily::Ipv6).at(p[3]),
        ];
        let table = FormatTable::from_slice(&formats).expect("table");
        let area = generate(&mut rng, &kinds);
        let expected = reference(&area, &formats);
        let got = walker(&area, &table);
        assert_eq!(got, expected, "case {case}: positions {p:?} area {area:?}");
        found += u32::from(matches!(expected, Verdict::Client { .. }));
        repeated += u32::from(matches!(expected, Verdict::Client { repeated: true, .. }));
        conflicts += u32::from(expected == Verdict::Conflict);
    }
    // The generator must exercise the interesting paths, not only rejections:
    // several configured options in one segment, and conflicting claims.
    eprintln!("{found} clients, {repeated} from several options, {conflicts} conflicts");
    assert!(found > 150_000, "only {found} areas held a client");
    assert!(
        repeated > 10_000,
        "only {repeated} areas held several options"
    );
    assert!(conflicts > 5_000, "only {conflicts} conflicting areas");
}
