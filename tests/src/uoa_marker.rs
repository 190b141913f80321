//! Test-only UOA marker: sends UDP datagrams from the LB's address to the
//! real server marked as DPVS marks a flow's first datagrams — the client
//! in an IPv4 option, or in an opp header between the IP and UDP headers
//! (IPv4 and IPv6), optionally after a marking-only datagram with an empty
//! payload — and reads the server's answers on the same port, as the LB
//! would. Run inside the LB's namespace (`ttm-lab uoa-send`). The marking's
//! bytes are the caller's, so hostile shapes are written the same way.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use ttm_common::uoa::{IPOPT_UOA, IPPROTO_OPP, OPP_VERSION_V4, OPP_VERSION_V6};

/// How the marking travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Carrier {
    /// No marking at all.
    Plain,
    /// An IPv4 option (IPv4 only).
    Ipopt,
    /// An opp header.
    Opp,
}

/// The marking DPVS writes for `client`: `[0x9f][8|20][port][address]`.
pub fn marking(client: SocketAddr) -> Vec<u8> {
    let mut out = vec![IPOPT_UOA, 0];
    out.extend_from_slice(&client.port().to_be_bytes());
    match client.ip() {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
    out[1] = out.len() as u8;
    out
}

/// An opp header whose option area is `options` (version by the marking's
/// length: 20 bytes an IPv6 client), padded to 4-byte words with NOPs.
pub fn opp_header(options: &[u8]) -> Vec<u8> {
    let mut area = options.to_vec();
    while !area.len().is_multiple_of(4) {
        area.push(1);
    }
    let version = if options.get(1) == Some(&20) {
        OPP_VERSION_V6
    } else {
        OPP_VERSION_V4
    };
    let len = (4 + area.len()) as u16;
    let mut out = vec![version << 4, 17];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&area);
    out
}

/// One's-complement sum of `bytes` folded into `sum`.
fn ones_sum(mut sum: u32, bytes: &[u8]) -> u32 {
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    sum
}

/// A UDP header and `payload` from `from` to `to`, its checksum over the
/// pseudo-header of protocol 17 (what the socket sees once opp is gone).
pub fn udp_datagram(from: SocketAddr, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut out = Vec::with_capacity(usize::from(len));
    out.extend_from_slice(&from.port().to_be_bytes());
    out.extend_from_slice(&to.port().to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(payload);
    let mut sum = 0u32;
    match (from.ip(), to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = ones_sum(sum, &s.octets());
            sum = ones_sum(sum, &d.octets());
            sum = ones_sum(sum, &[0, 17]);
            sum = ones_sum(sum, &len.to_be_bytes());
        }
        (s, d) => {
            let six = |ip: IpAddr| match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                IpAddr::V6(a) => a.octets(),
            };
            sum = ones_sum(sum, &six(s));
            sum = ones_sum(sum, &six(d));
            sum = ones_sum(sum, &u32::from(len).to_be_bytes());
            sum = ones_sum(sum, &[0, 0, 0, 17]);
        }
    }
    sum = ones_sum(sum, &out);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut check = !(sum as u16);
    if check == 0 {
        check = 0xffff;
    }
    out[6..8].copy_from_slice(&check.to_be_bytes());
    out
}

/// What one `uoa-send` does.
#[derive(Clone, Debug)]
pub struct Send {
    /// The LB's address and port (the datagrams' source).
    pub from: SocketAddr,
    /// The real server's.
    pub to: SocketAddr,
    /// How the marking travels.
    pub carrier: Carrier,
    /// The option bytes (a marking, or a hostile shape).
    pub option: Vec<u8>,
    /// Send a marking-only datagram (empty payload) first, then the
    /// payload unmarked.
    pub marker_first: bool,
    /// The payload of the full datagram.
    pub payload: Vec<u8>,
    /// Also send this many more unmarked datagrams of the flow after it.
    pub more: usize,
    /// How long to wait for each answer (none: do not wait).
    pub answer_wait: Option<Duration>,
}

/// A raw socket of protocol 248 (opp) sending from `from`'s address.
fn raw_socket(from: IpAddr) -> Result<OwnedFd> {
    let family = if from.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW, i32::from(IPPROTO_OPP)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("a raw socket for opp (needs root)");
    }
    // SAFETY: a descriptor this call made.
    let raw = unsafe { OwnedFd::from_raw_fd(fd) };
    let (bind, len) = sockaddr_of(SocketAddr::new(from, 0));
    // SAFETY: a valid socket and address.
    if unsafe { libc::bind(raw.as_raw_fd(), (&raw const bind).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error()).context("binding the raw socket");
    }
    Ok(raw)
}

/// An opp datagram from `from` to `to`: the header around `option`, then
/// UDP with `payload`.
fn opp_datagram(option: &[u8], from: SocketAddr, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut packet = opp_header(option);
    packet.extend(udp_datagram(from, to, payload));
    packet
}

/// Sends `packet` (what follows the IP header) on raw socket `raw` to `to`.
fn send_raw(raw: &OwnedFd, packet: &[u8], to: SocketAddr) -> Result<()> {
    let (dest, len) = sockaddr_of(to);
    // SAFETY: a valid socket, buffer and address.
    let rc = unsafe {
        libc::sendto(
            raw.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const dest).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("sending an opp datagram");
    }
    Ok(())
}

fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as u16;
            // Raw sockets take no port (it would be read as the protocol).
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_addr.s6_addr = a.ip().octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn set_ip_options(socket: &UdpSocket, options: &[u8]) -> Result<()> {
    let mut padded = options.to_vec();
    while !padded.len().is_multiple_of(4) {
        padded.push(0);
    }
    // SAFETY: a valid socket and buffer of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            padded.as_ptr().cast(),
            padded.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setting IP_OPTIONS (needs root)");
    }
    Ok(())
}

/// Sends as `send` says; returns each answer the server sent back (as
/// text), in order.
pub fn send(send: &Send) -> Result<Vec<String>> {
    let socket = UdpSocket::bind(send.from).with_context(|| format!("binding {}", send.from))?;
    let answer_wait = send.answer_wait.filter(|d| !d.is_zero());
    socket.set_read_timeout(answer_wait.or(Some(Duration::from_millis(1))))?;
    let opp_raw = if send.carrier == Carrier::Opp {
        Some(raw_socket(send.from.ip())?)
    } else {
        None
    };
    let marked = |payload: &[u8]| -> Result<()> {
        match send.carrier {
            Carrier::Plain => {
                socket.send_to(payload, send.to)?;
            }
            Carrier::Ipopt => {
                if send.from.is_ipv6() {
                    bail!("an IPv4 option cannot travel over IPv6");
                }
                set_ip_options(&socket, &send.option)?;
                socket.send_to(payload, send.to)?;
                set_ip_options(&socket, &[])?;
            }
            Carrier::Opp => {
                let raw = opp_raw.as_ref().context("raw socket")?;
                let packet = opp_datagram(&send.option, send.from, send.to, payload);
                send_raw(raw, &packet, send.to)?;
            }
        }
        Ok(())
    };
    if send.marker_first {
        marked(&[])?;
        socket.send_to(&send.payload, send.to)?;
    } else {
        marked(&send.payload)?;
    }
    let mut answers = Vec::new();
    let read_answer = |answers: &mut Vec<String>| {
        if answer_wait.is_none() {
            return;
        }
        let mut buf = [0u8; 2048];
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            answers.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    read_answer(&mut answers);
    for i in 0..send.more {
        socket.send_to(format!("more {i}").as_bytes(), send.to)?;
        read_answer(&mut answers);
    }
    Ok(answers)
}

/// The `i`-th flow of a flood: its LB address and port, and its client.
pub fn flood_flow(lb_addrs: &[std::net::Ipv4Addr], i: u32) -> (SocketAddr, SocketAddr) {
    const PORTS: u32 = 60_000;
    let lb = lb_addrs[(i / PORTS) as usize % lb_addrs.len()];
    let port = 1_024 + (i % PORTS) as u16;
    let client = std::net::Ipv4Addr::new(198, 18 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
    (
        SocketAddr::new(lb.into(), port),
        SocketAddr::new(client.into(), (40_000 + i % 20_000) as u16),
    )
}

/// Sends `count` marking-only datagrams in opp headers from one raw socket
/// per LB address, one per flow (`flood_flow`), to `to`: a hundred thousand
/// flows without a socket each. Paced a little, so the receiving backlog
/// keeps up.
pub fn flood(lb_addrs: &[std::net::Ipv4Addr], to: SocketAddr, count: u32) -> Result<()> {
    let raws = lb_addrs
        .iter()
        .map(|lb| raw_socket(IpAddr::V4(*lb)))
        .collect::<Result<Vec<_>>>()?;
    for i in 0..count {
        let (lb, client) = flood_flow(lb_addrs, i);
        let raw = &raws[lb_addrs
            .iter()
            .position(|a| IpAddr::V4(*a) == lb.ip())
            .unwrap_or(0)];
        send_raw(raw, &opp_datagram(&marking(client), lb, to, &[]), to)?;
        if i % 256 == 255 {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    Ok(())
}

/// The second LB address a flood of more flows than one address has ports
/// sends from.
pub const SECOND_LB: &str = "10.0.2.3";

/// Gives the lab's LB [`SECOND_LB`] beside its own address, and floods
/// `count` flows to `to` from both (`ttm-lab uoa-flood`, from the LB's
/// namespace) until `filed()` says every one was filed — the veth backlog
/// may drop a marker under the burst, and a flow marked twice is the same
/// flow — at most four times. Returns the LB addresses and `filed()`.
pub fn flood_until_filed(
    lab: &crate::Lab,
    lab_bin: &std::path::Path,
    to: SocketAddr,
    count: u32,
    filed: impl Fn() -> Result<u64>,
) -> Result<(Vec<std::net::Ipv4Addr>, u64)> {
    use crate::lab;
    lab::in_ns(
        lab::LB_NS,
        &[
            "ip",
            "addr",
            "add",
            &format!("{SECOND_LB}/24"),
            "dev",
            "ttm-l1",
        ],
    )
    .context("a second LB address")?;
    let lbs: Vec<std::net::Ipv4Addr> = vec![lab::LB_IP.parse()?, SECOND_LB.parse()?];
    let (lb_list, to, n) = (
        format!("{},{SECOND_LB}", lab::LB_IP),
        to.to_string(),
        count.to_string(),
    );
    for _ in 0..4 {
        let flood = crate::process::spawn_in(
            lab_bin,
            &lab.plain_cgroup(),
            lab::LB_NS,
            &["uoa-flood", "--lb", &lb_list, "--to", &to, "--count", &n],
        )?;
        flood.wait_for(Duration::from_secs(300), |l| l.starts_with("sent"))?;
        if filed()? >= u64::from(count) {
            break;
        }
    }
    Ok((lbs, filed()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_udp_checksum_over_its_pseudo_header_sums_to_all_ones() {
        let from: SocketAddr = "10.0.2.1:40000".parse().unwrap();
        let to: SocketAddr = "10.0.2.2:6000".parse().unwrap();
        let d = udp_datagram(from, to, b"hello");
        let mut sum = ones_sum(0, &[10, 0, 2, 1, 10, 0, 2, 2, 0, 17]);
        sum = ones_sum(sum, &(d.len() as u16).to_be_bytes());
        sum = ones_sum(sum, &d);
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }

    #[test]
    fn an_opp_header_names_its_length_and_the_client_family() {
        let v4 = opp_header(&marking("192.0.2.7:5353".parse().unwrap()));
        assert_eq!(v4.len(), 12);
        assert_eq!(&v4[..4], &[0x10, 17, 0, 12]);
        let v6 = opp_header(&marking("[2001:db8::7]:53".parse().unwrap()));
        assert_eq!(v6.len(), 24);
        assert_eq!(&v6[..4], &[0x20, 17, 0, 24]);
    }
}
