//! The TLVs of a PROXY v2 header as the lookups show them: each named, its
//! value as text where the protocol says it is text, else as hex.

use ttm_client::protocol::ProxyTlv;
use ttm_common::proxy::{parse, tlvs, HeaderBuf, Parsed};

/// The TLVs of the v2 header held in `header` (none if it is not one).
pub fn describe(header: &HeaderBuf) -> Vec<ProxyTlv> {
    let Parsed::Header {
        len, tlv_offset, ..
    } = parse(header)
    else {
        return Vec::new();
    };
    tlvs(&header.bytes[usize::from(tlv_offset)..usize::from(len)])
        .map(|t| {
            let (name, value) = name_and_value(t.kind, t.value);
            ProxyTlv {
                kind: t.kind,
                name: name.to_string(),
                value,
            }
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        _ => hex(bytes),
    }
}

/// The name and the shown value of TLV `kind` (the protocol's PP2_TYPE_*
/// and the cloud providers' own types, whose value starts with a subtype).
fn name_and_value(kind: u8, value: &[u8]) -> (&'static str, String) {
    match kind {
        0x01 => ("alpn", text(value)),
        0x02 => ("authority", text(value)),
        0x03 => ("crc32c", hex(value)),
        0x04 => ("noop", hex(value)),
        0x05 => ("unique_id", hex(value)),
        0x20 => ("ssl", hex(value)),
        0x30 => ("netns", text(value)),
        0xea if value.first() == Some(&0x01) => ("aws_vpce_id", text(&value[1..])),
        0xee if value.first() == Some(&0x01) && value.len() == 5 => (
            "azure_link_id",
            u32::from_le_bytes([value[1], value[2], value[3], value[4]]).to_string(),
        ),
        0xe0 if value.len() == 8 => (
            "gcp_psc_id",
            u64::from_be_bytes(value.try_into().expect("8 bytes")).to_string(),
        ),
        _ => ("unknown", hex(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlvs_are_named_and_shown_as_their_kind_says() {
        let mut h = ttm_common::proxy::V2_SIGNATURE.to_vec();
        h.extend([0x21, 0x11]);
        let mut body = vec![198, 51, 100, 7, 10, 0, 2, 2, 0x9c, 0x41, 0x1f, 0x90];
        for (kind, value) in [
            (0x01u8, b"h2".to_vec()),
            (0x02, b"example.com".to_vec()),
            (0x05, vec![0xde, 0xad]),
            (0xea, [&[0x01u8][..], b"vpce-0123abc"].concat()),
            (0xee, vec![0x01, 0x2a, 0, 0, 0]),
            (0xe0, 7u64.to_be_bytes().to_vec()),
            (0x99, vec![1]),
        ] {
            body.push(kind);
            body.extend((value.len() as u16).to_be_bytes());
            body.extend(value);
        }
        h.extend((body.len() as u16).to_be_bytes());
        h.extend(body);
        let got: Vec<(String, String)> = describe(&HeaderBuf::from_slice(&h))
            .into_iter()
            .map(|t| (t.name, t.value))
            .collect();
        let want = [
            ("alpn", "h2"),
            ("authority", "example.com"),
            ("unique_id", "dead"),
            ("aws_vpce_id", "vpce-0123abc"),
            ("azure_link_id", "42"),
            ("gcp_psc_id", "7"),
            ("unknown", "01"),
        ];
        assert_eq!(
            got,
            want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
        );
        assert!(describe(&HeaderBuf::from_slice(b"GET /")).is_empty());
    }
}
