//! Where the peer address an application sees comes from: the kernel, the
//! client ttm recorded from a trusted LB, or something else.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;

use serde::Serialize;

/// Who vouches for the peer address an application sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// The kernel's own peer.
    #[serde(rename = "kernel")]
    Kernel,
    /// The client ttm recorded from a trusted load balancer's option.
    #[serde(rename = "ttm-client")]
    TtmClient,
    /// Neither: a program rewrote it. Do not trust it.
    #[serde(rename = "HIJACKED")]
    Hijacked,
}

/// The three views of one connection's peer, and the verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Provenance {
    /// What `getpeername()` returns to this application.
    pub app_peer: SocketAddr,
    /// The kernel's peer (the load balancer behind a full-NAT LB).
    pub kernel_peer: Option<SocketAddr>,
    /// The client in ttm's record, if there is one.
    pub ttm_client: Option<SocketAddr>,
    /// Who vouches for `app_peer`.
    pub verdict: Verdict,
}

/// `::ffff:a.b.c.d` → `a.b.c.d`.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(addr, |v4| SocketAddr::new(IpAddr::V4(v4), addr.port())),
        IpAddr::V4(_) => addr,
    }
}

/// Parses an address of `/proc/net/tcp` (`0102000A:1F90`, host-endian words)
/// or `/proc/net/tcp6` (32 hex digits).
pub fn parse_proc_net_addr(text: &str, v6: bool) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = if v6 {
        let mut bytes = [0u8; 16];
        for (i, chunk) in addr.as_bytes().chunks(8).enumerate() {
            let word = u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
            bytes
                .get_mut(i * 4..i * 4 + 4)?
                .copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(addr, 16).ok()?.to_ne_bytes(),
        ))
    };
    Some(canonical(SocketAddr::new(ip, port)))
}

/// Rows of `/proc/<who>/net/tcp{,6}` (`who` is a pid or `self`): socket
/// inode, local address, kernel peer — the kernel's view, which no BPF hook
/// rewrites.
fn proc_net_rows(who: &str) -> impl Iterator<Item = (u64, SocketAddr, SocketAddr)> + '_ {
    [("tcp", false), ("tcp6", true)]
        .into_iter()
        .flat_map(move |(file, v6)| {
            let text =
                std::fs::read_to_string(format!("/proc/{who}/net/{file}")).unwrap_or_default();
            let rows: Vec<_> = text
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let cols: Vec<&str> = line.split_whitespace().collect();
                    let local = parse_proc_net_addr(cols.get(1)?, v6)?;
                    let peer = parse_proc_net_addr(cols.get(2)?, v6)?;
                    let inode = cols.get(9)?.parse::<u64>().ok()?;
                    Some((inode, local, peer))
                })
                .collect();
            rows
        })
}

/// Socket inode → kernel peer, from `/proc/<who>/net/tcp{,6}` (`who` is a
/// pid or `self`): the kernel's view, which no BPF hook rewrites.
pub fn kernel_peers(who: &str) -> HashMap<u64, SocketAddr> {
    proc_net_rows(who)
        .map(|(inode, _, peer)| (inode, peer))
        .collect()
}

/// The (local, kernel peer) addresses of the socket with inode `inode` in
/// the network namespace of `who` (a pid or `self`), without calling
/// getpeername() (which BPF hooks may rewrite).
pub fn kernel_tuple(who: &str, inode: u64) -> Option<(SocketAddr, SocketAddr)> {
    proc_net_rows(who)
        .find(|(i, _, _)| *i == inode)
        .map(|(_, local, peer)| (local, peer))
}

/// The verdict for an app-visible peer given the other two views.
pub fn judge(
    app_peer: SocketAddr,
    kernel_peer: Option<SocketAddr>,
    ttm_client: Option<SocketAddr>,
) -> Verdict {
    let app_peer = canonical(app_peer);
    if ttm_client.map(canonical) == Some(app_peer) {
        Verdict::TtmClient
    } else if kernel_peer.map(canonical) == Some(app_peer) {
        Verdict::Kernel
    } else {
        Verdict::Hijacked
    }
}

/// The kernel's peer of `stream`, from this process's /proc/net.
pub fn kernel_peer_of(stream: &TcpStream) -> Option<SocketAddr> {
    use std::os::fd::AsRawFd;
    let inode = std::fs::metadata(format!("/proc/self/fd/{}", stream.as_raw_fd()))
        .ok()?
        .ino();
    kernel_peers("self").get(&inode).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_and_plain_spellings_match() {
        let a: SocketAddr = "[::ffff:10.0.2.2]:8080".parse().unwrap();
        assert_eq!(canonical(a), "10.0.2.2:8080".parse().unwrap());
        let b: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        assert_eq!(canonical(b), b);
    }

    #[test]
    fn proc_net_addresses_parse_in_both_families() {
        let v4 = format!("{:08X}:1F90", u32::from_ne_bytes([10, 0, 2, 1]));
        assert_eq!(
            parse_proc_net_addr(&v4, false),
            Some("10.0.2.1:8080".parse().unwrap())
        );
        let words: String = [
            [0u8, 0, 0, 0],
            [0, 0, 0, 0],
            [0, 0, 0xff, 0xff],
            [10, 0, 2, 1],
        ]
        .iter()
        .map(|w| format!("{:08X}", u32::from_ne_bytes(*w)))
        .collect();
        assert_eq!(
            parse_proc_net_addr(&format!("{words}:0050"), true),
            Some("10.0.2.1:80".parse().unwrap())
        );
    }

    #[test]
    fn verdicts() {
        let lb: SocketAddr = "10.0.2.1:5000".parse().unwrap();
        let client: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        assert_eq!(judge(lb, Some(lb), None), Verdict::Kernel);
        assert_eq!(judge(client, Some(lb), Some(client)), Verdict::TtmClient);
        assert_eq!(
            judge(
                "[::ffff:192.0.2.7]:5000".parse().unwrap(),
                Some(lb),
                Some(client)
            ),
            Verdict::TtmClient
        );
        assert_eq!(
            judge("127.0.0.1:65535".parse().unwrap(), Some(lb), Some(client)),
            Verdict::Hijacked
        );
        assert_eq!(judge(lb, None, None), Verdict::Hijacked, "nobody vouches");
    }
}
