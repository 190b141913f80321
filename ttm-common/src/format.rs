//! TOA-family option layouts: `[kind][len][port be16][address]`.

/// Address family of the client address an option carries.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrFamily {
    /// 4-byte IPv4 address after the port.
    Ipv4 = 4,
    /// 16-byte IPv6 address after the port.
    Ipv6 = 6,
}

impl AddrFamily {
    /// Length of an option of this family: kind + len + port + address.
    pub const fn option_len(self) -> u8 {
        match self {
            AddrFamily::Ipv4 => 2 + 2 + 4,
            AddrFamily::Ipv6 => 2 + 2 + 16,
        }
    }
}

/// One option layout the decoder accepts. The bytes after kind and length are
/// always the client port (big endian) followed by the client address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionFormat {
    /// TCP option kind (e.g. 254).
    pub kind: u8,
    /// Total option length including kind and length bytes (8 or 20).
    pub len: u8,
    /// `AddrFamily` as u8 (kept raw so the struct is plain old data).
    pub family: u8,
    /// [`OptionPosition`] as u8: where the LB writes this option among
    /// those already in the segment.
    pub position: u8,
}

/// Where a load balancer writes its option among the options the segment
/// already carries — which decides, when a segment holds two configured
/// options, which one is the LB's and which one a client put there.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionPosition {
    /// Not known: two configured options claiming different clients give no
    /// record (the app sees the LB), never a client's choice.
    Unknown = 0,
    /// Right after the 20-byte TCP header, moving existing options down (LVS
    /// FULLNAT, DPVS): the first configured option is the LB's.
    First = 1,
    /// After the existing options (the kind-200 DPDK LBs): the last
    /// configured option is the LB's.
    Last = 2,
}

impl OptionPosition {
    /// Parses the raw byte of an [`OptionFormat`].
    #[inline(always)]
    pub const fn from_raw(raw: u8) -> OptionPosition {
        match raw {
            1 => OptionPosition::First,
            2 => OptionPosition::Last,
            _ => OptionPosition::Unknown,
        }
    }

    /// The name `ttm formats` and `custom:.../first|last` use.
    pub const fn name(self) -> &'static str {
        match self {
            OptionPosition::Unknown => "unknown",
            OptionPosition::First => "first",
            OptionPosition::Last => "last",
        }
    }
}

impl OptionFormat {
    /// A layout for `family` under option `kind` with the family's natural length.
    pub const fn new(kind: u8, family: AddrFamily) -> Self {
        OptionFormat {
            kind,
            len: family.option_len(),
            family: family as u8,
            position: OptionPosition::Unknown as u8,
        }
    }

    /// The same layout, written by the LB at `position`.
    pub const fn at(mut self, position: OptionPosition) -> Self {
        self.position = position as u8;
        self
    }

    /// Where the LB writes this option.
    #[inline(always)]
    pub const fn position(&self) -> OptionPosition {
        OptionPosition::from_raw(self.position)
    }

    /// A layout with an explicit length: at least the family's natural
    /// length, at most 40; bytes after the address are ignored.
    pub const fn with_len(kind: u8, family: AddrFamily, len: u8) -> Self {
        OptionFormat {
            kind,
            len,
            family: family as u8,
            position: OptionPosition::Unknown as u8,
        }
    }

    /// The address family, or `None` for an invalid (e.g. zeroed) entry.
    #[inline(always)]
    pub fn family(&self) -> Option<AddrFamily> {
        let fits = |family: AddrFamily| self.len >= family.option_len() && self.len <= 40;
        match self.family {
            4 if fits(AddrFamily::Ipv4) => Some(AddrFamily::Ipv4),
            6 if fits(AddrFamily::Ipv6) => Some(AddrFamily::Ipv6),
            _ => None,
        }
    }
}

/// The common TOA layout for an IPv4 client: kind 254, length 8, written
/// first (LVS FULLNAT, DPVS).
pub const TOA_V4: OptionFormat = OptionFormat::new(254, AddrFamily::Ipv4).at(OptionPosition::First);
/// The common TOA layout for an IPv6 client: kind 254, length 20, written first.
pub const TOA_V6: OptionFormat = OptionFormat::new(254, AddrFamily::Ipv6).at(OptionPosition::First);

/// Filler for unused table entries (never matches: `count` excludes it).
const UNUSED: OptionFormat = OptionFormat {
    kind: 0,
    len: 0,
    family: 0,
    position: 0,
};

/// How many layouts the kernel side checks per option.
pub const MAX_FORMATS: usize = 4;
const _: () = assert!(
    MAX_FORMATS.is_power_of_two(),
    "indexes are masked with MAX_FORMATS - 1"
);

/// The layouts in force, in priority order. Shared with the kernel through
/// the config map, so it is fixed-size plain data.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatTable {
    /// Entries `0..count` are in use.
    pub formats: [OptionFormat; MAX_FORMATS],
    /// Number of entries in use (at most `MAX_FORMATS`).
    pub count: u32,
}

impl FormatTable {
    /// A table with no formats: nothing is decoded.
    pub const EMPTY: FormatTable = FormatTable {
        formats: [UNUSED; MAX_FORMATS],
        count: 0,
    };

    /// The default: kind 254 with length 8 (IPv4 client) or 20 (IPv6 client).
    pub const DEFAULT: FormatTable = FormatTable {
        formats: [TOA_V4, TOA_V6, UNUSED, UNUSED],
        count: 2,
    };

    /// Builds a table from `formats`; `None` if there are more than
    /// `MAX_FORMATS` or one of them is invalid.
    pub fn from_slice(formats: &[OptionFormat]) -> Option<FormatTable> {
        if formats.len() > MAX_FORMATS || formats.iter().any(|f| f.family().is_none()) {
            return None;
        }
        let mut table = FormatTable::EMPTY;
        table.formats[..formats.len()].copy_from_slice(formats);
        table.count = formats.len() as u32;
        Some(table)
    }

    /// Index of the first format with this kind and length.
    #[inline(always)]
    pub fn find(&self, kind: u8, len: u8) -> Option<usize> {
        (0..MAX_FORMATS).find(|&i| {
            (i as u32) < self.count && self.formats[i].kind == kind && self.formats[i].len == len
        })
    }

    /// Where the LB writes its option, if every format in force agrees; with
    /// layouts that disagree, no position can be trusted: `Unknown`.
    #[inline(always)]
    pub fn position(&self) -> OptionPosition {
        let mut common = OptionPosition::Unknown as u8;
        let mut i = 0;
        while i < MAX_FORMATS {
            if (i as u32) < self.count {
                let p = self.formats[i].position;
                if i == 0 {
                    common = p;
                } else if p != common {
                    return OptionPosition::Unknown;
                }
            }
            i += 1;
        }
        OptionPosition::from_raw(common)
    }

    /// True if some format uses option `kind` (with whatever length).
    #[inline(always)]
    pub fn has_kind(&self, kind: u8) -> bool {
        (0..MAX_FORMATS).any(|i| (i as u32) < self.count && self.formats[i].kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table_matches_kind_254_by_length() {
        let t = FormatTable::DEFAULT;
        assert_eq!(t.find(254, 8), Some(0));
        assert_eq!(t.find(254, 20), Some(1));
        assert_eq!(t.find(254, 4), None);
        assert_eq!(t.find(253, 8), None);
        assert!(t.has_kind(254));
        assert!(!t.has_kind(253));
    }

    #[test]
    fn the_table_trusts_a_position_only_when_every_layout_agrees() {
        use OptionPosition::*;
        assert_eq!(FormatTable::DEFAULT.position(), First);
        let v4 = OptionFormat::new(200, AddrFamily::Ipv4);
        let t = |f: &[OptionFormat]| FormatTable::from_slice(f).unwrap().position();
        assert_eq!(t(&[v4.at(Last)]), Last);
        assert_eq!(t(&[v4]), Unknown);
        assert_eq!(
            t(&[TOA_V4, TOA_V6, v4.at(Last)]),
            Unknown,
            "first and last disagree"
        );
        assert_eq!(t(&[TOA_V4, v4]), Unknown);
        assert_eq!(FormatTable::EMPTY.position(), Unknown);
        for p in [Unknown, First, Last] {
            assert_eq!(OptionPosition::from_raw(p as u8), p);
        }
    }

    #[test]
    fn entries_past_count_are_ignored() {
        let t = FormatTable::from_slice(&[OptionFormat::new(200, AddrFamily::Ipv4)]).unwrap();
        assert_eq!(t.count, 1);
        assert_eq!(t.find(200, 8), Some(0));
        // the unused slots are zeroed, and kind 0 never matches
        assert_eq!(t.find(0, 0), None);
    }

    #[test]
    fn invalid_tables_are_refused() {
        // Too short for its address, or longer than an option area.
        for (family, len) in [
            (AddrFamily::Ipv4, 7),
            (AddrFamily::Ipv6, 19),
            (AddrFamily::Ipv4, 41),
        ] {
            let bad = OptionFormat::with_len(254, family, len);
            assert!(FormatTable::from_slice(&[bad]).is_none(), "{bad:?}");
        }
        let zeroed = OptionFormat {
            kind: 254,
            len: 8,
            family: 0,
            position: 0,
        };
        assert!(FormatTable::from_slice(&[zeroed]).is_none());
        // Longer layouts are fine: bytes after the address are ignored.
        assert!(
            FormatTable::from_slice(&[OptionFormat::with_len(230, AddrFamily::Ipv4, 12)]).is_some()
        );
        assert!(FormatTable::from_slice(&[TOA_V4; MAX_FORMATS + 1]).is_none());
    }
}
