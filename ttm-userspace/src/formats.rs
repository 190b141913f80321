//! `--format NAME`: the option layouts real load balancers send, by name, and
//! `custom:KIND/LEN/v4|v6` for any other.

use ttm_common::format::{AddrFamily, FormatTable, OptionFormat, OptionPosition, MAX_FORMATS};

/// A named set of layouts.
pub struct Preset {
    /// Name given to `--format`.
    pub name: &'static str,
    /// Who sends it.
    pub about: &'static str,
    /// Its layouts, in priority order.
    pub formats: &'static [OptionFormat],
}

/// Every preset; the first is the default.
pub const PRESETS: [Preset; 3] = [
    Preset {
        name: "toa",
        about: "the common TOA layout (LVS FULLNAT, DPVS, most cloud SLBs); the default",
        formats: &[
            OptionFormat::new(254, AddrFamily::Ipv4).at(OptionPosition::First),
            OptionFormat::new(254, AddrFamily::Ipv6).at(OptionPosition::First),
        ],
    },
    Preset {
        name: "kind253",
        about: "IPv6 clients under kind 253",
        formats: &[OptionFormat::new(253, AddrFamily::Ipv6).at(OptionPosition::First)],
    },
    Preset {
        name: "kind200",
        about: "IPv4 clients under kind 200 (another cloud family)",
        formats: &[OptionFormat::new(200, AddrFamily::Ipv4).at(OptionPosition::Last)],
    },
];

/// A `--format` value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Not a preset and not `custom:`.
    #[error("unknown format {0:?} — use one of toa, kind253, kind200 or custom:KIND/LEN/v4|v6 (see `ttm formats`)")]
    Unknown(String),
    /// A malformed `custom:` value.
    #[error("invalid custom format {0:?}: {1}")]
    BadCustom(String, &'static str),
    /// More layouts than the kernel side checks.
    #[error("{0} layouts given; at most {MAX_FORMATS} can be active (presets count their layouts: toa is 2)")]
    TooMany(usize),
    /// The same kind and length twice.
    #[error("kind {0} length {1} is given twice")]
    Duplicate(u8, u8),
}

/// Parses one `--format` value into its layouts.
pub fn parse_one(value: &str) -> Result<Vec<OptionFormat>, FormatError> {
    if let Some(spec) = value.strip_prefix("custom:") {
        let bad = |why| FormatError::BadCustom(value.to_string(), why);
        let parts: Vec<&str> = spec.split('/').collect();
        let (kind, len, family, position) = match parts[..] {
            [kind, len, family] => (kind, len, family, OptionPosition::Unknown),
            [kind, len, family, "first"] => (kind, len, family, OptionPosition::First),
            [kind, len, family, "last"] => (kind, len, family, OptionPosition::Last),
            [_, _, _, _] => return Err(bad("the position must be first or last")),
            _ => {
                return Err(bad(
                    "expected custom:KIND/LEN/v4|v6, optionally /first or /last (where the LB \
                     writes its option)",
                ))
            }
        };
        let kind: u8 = kind.parse().map_err(|_| bad("KIND must be 2..=255"))?;
        if kind < 2 {
            return Err(bad("KIND 0 and 1 are end-of-list and padding"));
        }
        let len: u8 = len.parse().map_err(|_| bad("LEN must be a number"))?;
        let family = match family {
            "v4" => AddrFamily::Ipv4,
            "v6" => AddrFamily::Ipv6,
            _ => return Err(bad("the family must be v4 or v6")),
        };
        let format = OptionFormat::with_len(kind, family, len);
        if format.family().is_none() {
            return Err(bad(
                "LEN must hold kind, length, port and address (at least 8 for v4, 20 for v6) and be at most 40",
            ));
        }
        return Ok(vec![format.at(position)]);
    }
    PRESETS
        .iter()
        .find(|p| p.name == value)
        .map(|p| p.formats.to_vec())
        .ok_or_else(|| FormatError::Unknown(value.to_string()))
}

/// The table for `--format` values in priority order; empty means the default.
pub fn table(values: &[String]) -> Result<FormatTable, FormatError> {
    let mut formats = Vec::new();
    if values.is_empty() {
        formats.extend_from_slice(PRESETS[0].formats);
    }
    for value in values {
        for f in parse_one(value)? {
            if formats
                .iter()
                .any(|g: &OptionFormat| g.kind == f.kind && g.len == f.len)
            {
                return Err(FormatError::Duplicate(f.kind, f.len));
            }
            formats.push(f);
        }
    }
    FormatTable::from_slice(&formats).ok_or(FormatError::TooMany(formats.len()))
}

/// Which of several configured options in one segment `format`'s LB vouches
/// for, and why, for `ttm formats`.
pub fn position_note(format: &OptionFormat) -> &'static str {
    match format.position() {
        OptionPosition::First => {
            "trusted position: first — the LB moves existing options down and writes its own \
             right after the TCP header, so an option a client added comes after it"
        }
        OptionPosition::Last => {
            "trusted position: last — the LB appends its option after the existing ones, so an \
             option a client added comes before it"
        }
        OptionPosition::Unknown => {
            "trusted position: unknown — two options naming different clients give no record \
             (add /first or /last when you know where the LB writes)"
        }
    }
}

/// The byte layout of `format`, e.g. `[254][8][port:2][IPv4:4]`.
pub fn layout(format: &OptionFormat) -> String {
    let (name, size) = match format.family() {
        Some(AddrFamily::Ipv6) => ("IPv6", 16),
        _ => ("IPv4", 4),
    };
    let tail = usize::from(format.len).saturating_sub(4 + size);
    let mut text = format!("[{}][{}][port:2][{name}:{size}]", format.kind, format.len);
    if tail > 0 {
        text.push_str(&format!("[ignored:{tail}]"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_default_is_toa_for_both_families() {
        assert_eq!(table(&[]).unwrap(), FormatTable::DEFAULT);
        assert_eq!(table(&names(&["toa"])).unwrap(), FormatTable::DEFAULT);
    }

    #[test]
    fn presets_and_custom_layouts_combine_in_priority_order() {
        let t = table(&names(&["kind200", "custom:230/12/v4", "kind253"])).unwrap();
        assert_eq!(t.count, 3);
        assert_eq!((t.formats[0].kind, t.formats[0].len), (200, 8));
        assert_eq!((t.formats[1].kind, t.formats[1].len), (230, 12));
        assert_eq!((t.formats[2].kind, t.formats[2].len), (253, 20));
        assert_eq!(
            layout(&t.formats[1]),
            "[230][12][port:2][IPv4:4][ignored:4]"
        );
        assert_eq!(layout(&t.formats[2]), "[253][20][port:2][IPv6:16]");
    }

    #[test]
    fn every_preset_knows_where_its_lb_writes_and_custom_takes_it_as_a_parameter() {
        use OptionPosition::*;
        let pos = |v: &str| table(&names(&[v])).unwrap().position();
        assert_eq!(pos("toa"), First);
        assert_eq!(pos("kind253"), First);
        assert_eq!(pos("kind200"), Last);
        assert_eq!(pos("custom:230/8/v4"), Unknown);
        assert_eq!(pos("custom:230/8/v4/first"), First);
        assert_eq!(pos("custom:230/20/v6/last"), Last);
        // LBs that disagree: nothing can be trusted by position.
        assert_eq!(
            table(&names(&["toa", "kind200"])).unwrap().position(),
            Unknown
        );
        assert!(position_note(&PRESETS[2].formats[0]).contains("last"));
    }

    #[test]
    fn bad_values_say_what_is_allowed() {
        let err = |v: &[&str]| table(&names(v)).unwrap_err().to_string();
        assert!(err(&["tao"]).contains("use one of toa, kind253, kind200"));
        assert!(err(&["custom:254/7/v4"]).contains("at least 8 for v4"));
        assert!(err(&["custom:254/8/v5"]).contains("v4 or v6"));
        assert!(err(&["custom:1/8/v4"]).contains("padding"));
        assert!(err(&["custom:x/8/v4"]).contains("KIND"));
        assert!(err(&["custom:254/8"]).contains("custom:KIND/LEN/v4"));
        assert!(err(&["custom:254/8/v4/middle"]).contains("first or last"));
        assert!(err(&["toa", "custom:254/8/v4"]).contains("given twice"));
        assert!(err(&["toa", "kind200", "kind253", "custom:9/8/v4"]).contains("at most 4"));
    }
}
