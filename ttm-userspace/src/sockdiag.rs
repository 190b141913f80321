//! The kernel's own socket table, asked about one socket at a time.
//!
//! Used for lookups by fd of sockets sockops did not see (TC mode, sockets
//! outside the decoder's cgroup): the daemon reads the passed socket's
//! addresses, then has the kernel confirm them with one exact `sock_diag`
//! lookup that also checks the socket cookie (`SOCK_DIAG_BY_FAMILY`
//! without `NLM_F_DUMP`: a hash lookup in the kernel, `ESTALE` when the
//! cookie differs). A foreign getpeername program that rewrote the
//! addresses therefore cannot steer the lookup to another connection's
//! record, and no socket table is walked or parsed.
//!
//! `sock_diag` answers for one network namespace: the socket's own is found
//! with `SIOCGSKNS`, and a diag socket made in it is kept per namespace.
//!
//! The request is one fixed 72-byte message and the answer is read only
//! for its type, so it is written here with `libc` rather than through a
//! netlink message crate.

use std::collections::HashMap;
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use ttm_client::provenance::canonical;

/// `NETLINK_SOCK_DIAG` message type for an inet socket request.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `ioctl` giving a socket's network namespace as a new descriptor.
const SIOCGSKNS: libc::c_ulong = 0x894C;
/// Namespaces whose diag sockets are kept; past this the cache starts over.
const MAX_NAMESPACES: usize = 256;

/// `struct inet_diag_sockid`: ports and addresses in network order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: [u32; 2],
}

/// `struct nlmsghdr` + `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// The request for the socket `local` ↔ `peer` of `family` with `cookie`.
fn request(family: u8, local: SocketAddr, peer: SocketAddr, cookie: u64) -> Request {
    let bytes = |a: IpAddr| -> [u8; 16] {
        let mut out = [0u8; 16];
        match a {
            IpAddr::V4(v4) if family == libc::AF_INET as u8 => {
                out[..4].copy_from_slice(&v4.octets())
            }
            IpAddr::V4(v4) => out = v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => out = v6.octets(),
        }
        out
    };
    Request {
        len: size_of::<Request>() as u32,
        kind: SOCK_DIAG_BY_FAMILY,
        flags: libc::NLM_F_REQUEST as u16,
        seq: 1,
        pid: 0,
        family,
        protocol: libc::IPPROTO_TCP as u8,
        ext: 0,
        pad: 0,
        states: u32::MAX,
        id: SockId {
            sport: local.port().to_be_bytes(),
            dport: peer.port().to_be_bytes(),
            src: bytes(local.ip()),
            dst: bytes(peer.ip()),
            ifindex: 0,
            cookie: [cookie as u32, (cookie >> 32) as u32],
        },
    }
}

/// True when the kernel has a socket `local` ↔ `peer` with `cookie`.
fn confirm(diag: &OwnedFd, request: &Request) -> io::Result<bool> {
    // SAFETY: `request` is a plain repr(C) value of the length given.
    let sent = unsafe {
        libc::send(
            diag.as_raw_fd(),
            std::ptr::from_ref(request).cast(),
            size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 1024];
    // SAFETY: a valid buffer of the length given.
    let got = unsafe { libc::recv(diag.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    // The answer's type: the socket itself, or an error (ENOENT: no such
    // socket; ESTALE: a socket with another cookie).
    Ok(got as usize >= 16 && u16::from_ne_bytes([reply[4], reply[5]]) == SOCK_DIAG_BY_FAMILY)
}

/// A new `NETLINK_SOCK_DIAG` socket in the calling thread's namespace.
fn diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A diag socket made inside the namespace `netns` (on a short-lived thread:
/// `setns` changes only the calling thread, and a socket keeps the namespace
/// it was made in).
fn diag_socket_in(netns: OwnedFd) -> io::Result<OwnedFd> {
    std::thread::spawn(move || {
        // SAFETY: a namespace descriptor; affects this thread only.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        diag_socket()
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}

/// Inode of a namespace descriptor: its identity.
fn inode(fd: &OwnedFd) -> Option<u64> {
    // SAFETY: an all-zero `stat` is a valid out-buffer; a live descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0).then_some(st.st_ino)
}

/// Diag sockets by namespace inode.
type Cache = Mutex<HashMap<u64, Arc<Mutex<OwnedFd>>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Cache::default)
}

/// The diag socket for the namespace of socket `fd`.
fn diag_for(fd: BorrowedFd<'_>) -> Option<Arc<Mutex<OwnedFd>>> {
    // SAFETY: ioctl on a live socket; returns a new descriptor or -1.
    let ns = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSKNS as _) };
    if ns < 0 {
        return None;
    }
    // SAFETY: a descriptor the kernel just gave us.
    let ns = unsafe { OwnedFd::from_raw_fd(ns) };
    let key = inode(&ns)?;
    let mut cache = cache().lock().ok()?;
    if let Some(found) = cache.get(&key) {
        return Some(found.clone());
    }
    if cache.len() >= MAX_NAMESPACES {
        cache.clear();
    }
    let made = Arc::new(Mutex::new(diag_socket_in(ns).ok()?));
    cache.insert(key, made.clone());
    Some(made)
}

/// The (local, kernel peer) addresses of TCP socket `fd` whose cookie is
/// `cookie`, confirmed by the kernel's socket table; `None` if the socket
/// is not connected or the kernel does not confirm them.
pub fn kernel_tuple(fd: BorrowedFd<'_>, cookie: u64) -> Option<(SocketAddr, SocketAddr)> {
    let stream = TcpStream::from(fd.try_clone_to_owned().ok()?);
    let (local, peer) = (stream.local_addr().ok()?, stream.peer_addr().ok()?);
    let family = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    let diag = diag_for(fd)?;
    let diag = diag.lock().ok()?;
    confirm(&diag, &request(family, local, peer, cookie))
        .ok()?
        .then(|| (canonical(local), canonical(peer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_laid_out_as_the_kernel_reads_it() {
        assert_eq!(size_of::<SockId>(), 48);
        assert_eq!(size_of::<Request>(), 16 + 56);
        let r = request(
            libc::AF_INET as u8,
            "10.0.2.2:8080".parse().unwrap(),
            "10.0.2.1:50000".parse().unwrap(),
            0x1_0000_0002,
        );
        assert_eq!(r.id.sport, 8080u16.to_be_bytes());
        assert_eq!(r.id.dport, 50000u16.to_be_bytes());
        assert_eq!(&r.id.src[..4], &[10, 0, 2, 2]);
        assert_eq!(&r.id.dst[..4], &[10, 0, 2, 1]);
        assert_eq!(r.id.cookie, [2, 1]);
        let mapped = request(
            libc::AF_INET6 as u8,
            "[::ffff:10.0.2.2]:8080".parse().unwrap(),
            "10.0.2.1:1".parse().unwrap(),
            0,
        );
        assert_eq!(
            mapped.id.dst,
            "::ffff:10.0.2.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }

    #[test]
    fn a_loopback_socket_is_confirmed_only_with_its_own_cookie() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let cookie = ttm_client::socket_cookie(&server).unwrap();
        use std::os::fd::AsFd;
        let (local, peer) = kernel_tuple(server.as_fd(), cookie).expect("confirmed");
        assert_eq!(local, server.local_addr().unwrap());
        assert_eq!(peer, client.local_addr().unwrap());
        assert_eq!(
            kernel_tuple(server.as_fd(), cookie + 1),
            None,
            "another cookie"
        );
    }
}
