//! Trusted load-balancer networks: parsed from `--trust` and written into the
//! kernel's LPM trie.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use ttm_common::{addr::v4_mapped, TrustKey};

/// Error for a `--trust` value that is not a network.
#[derive(Debug, thiserror::Error)]
#[error("invalid trusted network {value:?}: expected a CIDR such as 10.0.2.0/24 or 2001:db8::/64, or a single address")]
pub struct BadNetwork {
    /// The rejected text.
    pub value: String,
}

/// The set of LB networks whose packets may carry the client address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedLbs {
    nets: Vec<IpNet>,
}

impl TrustedLbs {
    /// Parses CIDRs (or bare addresses, taken as /32 or /128). Each value may
    /// also hold a comma-separated list.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<TrustedLbs, BadNetwork> {
        let mut nets = Vec::new();
        for value in values {
            for part in value
                .as_ref()
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
            {
                let net = IpNet::from_str(part)
                    .or_else(|_| IpAddr::from_str(part).map(IpNet::from))
                    .map_err(|_| BadNetwork {
                        value: part.to_string(),
                    })?;
                nets.push(net.trunc());
            }
        }
        nets.sort();
        nets.dedup();
        Ok(TrustedLbs { nets })
    }

    /// The networks, normalised.
    pub fn networks(&self) -> &[IpNet] {
        &self.nets
    }

    /// True if no network is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// True if `addr` lies in one of the networks (the host-side twin of the
    /// kernel's trie lookup).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.nets.iter().any(|n| n.contains(&addr))
    }

    /// The trie entries: (prefix length in bits over 16 bytes, key).
    pub fn trie_entries(&self) -> Vec<(u32, TrustKey)> {
        self.nets
            .iter()
            .map(|net| match net {
                IpNet::V4(n) => (96 + u32::from(n.prefix_len()), v4_mapped(n.addr().octets())),
                IpNet::V6(n) => (u32::from(n.prefix_len()), n.addr().octets()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_bare_addresses() {
        let t = TrustedLbs::parse(&["10.0.2.0/24,192.0.2.7", "2001:db8::/32"]).unwrap();
        assert_eq!(t.networks().len(), 3);
        assert!(t.contains("10.0.2.1".parse().unwrap()));
        assert!(t.contains("::ffff:10.0.2.200".parse().unwrap()));
        assert!(t.contains("192.0.2.7".parse().unwrap()));
        assert!(!t.contains("192.0.2.8".parse().unwrap()));
        assert!(t.contains("2001:db8::1".parse().unwrap()));
        assert!(!t.contains("10.0.1.2".parse().unwrap()));
    }

    #[test]
    fn host_bits_are_cleared_and_duplicates_merged() {
        let t = TrustedLbs::parse(&["10.0.2.9/24", "10.0.2.0/24"]).unwrap();
        assert_eq!(t.networks(), &["10.0.2.0/24".parse::<IpNet>().unwrap()]);
        let (prefix, key) = t.trie_entries()[0];
        assert_eq!(prefix, 120);
        assert_eq!(key, v4_mapped([10, 0, 2, 0]));
    }

    #[test]
    fn garbage_is_rejected_with_the_value() {
        let err = TrustedLbs::parse(&["10.0.2.0/33"]).unwrap_err();
        assert_eq!(err.value, "10.0.2.0/33");
        assert!(TrustedLbs::parse(&["lb.example"]).is_err());
    }
}
