//! `ttm verify --pid PID`: for each TCP socket of a process, the peer the app
//! sees (asked on a duplicate of its socket, so the same cgroup hooks
//! answer), the kernel's peer and ttm's record, and a verdict.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use serde::Serialize;

use ttm_client::provenance::{canonical, judge, kernel_peers};
pub use ttm_client::Verdict;

use crate::pins::PinDir;
use crate::records::RecordStore;

/// One socket of the audited process.
#[derive(Clone, Debug, Serialize)]
pub struct SocketView {
    /// The process's descriptor number.
    pub fd: i32,
    /// Socket cookie.
    pub cookie: u64,
    /// What getpeername() returns to the app.
    pub app_peer: SocketAddr,
    /// The kernel's peer (from the process's /proc/net/tcp).
    pub kernel_peer: Option<SocketAddr>,
    /// The client in ttm's record, if any.
    pub ttm_client: Option<SocketAddr>,
    /// Where the app's view comes from.
    pub verdict: Verdict,
}

/// Why a process could not be audited.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// pidfd_open failed.
    #[error("cannot open process {0}: {1} — is it running, and are we root?")]
    Open(i32, std::io::Error),
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) with no flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_getfd(pidfd: &OwnedFd, target: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd(2) with no flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn app_peer(fd: &OwnedFd) -> Option<SocketAddr> {
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid fd and out-pointers.
    if unsafe { libc::getpeername(fd.as_raw_fd(), (&raw mut storage).cast(), &mut len) } != 0 {
        return None;
    }
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel filled a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read((&raw const storage).cast()) };
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes())),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel filled a sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read((&raw const storage).cast()) };
            Some(canonical(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                u16::from_be(sin6.sin6_port),
            )))
        }
        _ => None,
    }
}

/// Audits every connected TCP socket of `pid`.
pub fn audit_process(pid: i32, pins: &PinDir) -> Result<Vec<SocketView>, ProcessError> {
    let pidfd = pidfd_open(pid).map_err(|e| ProcessError::Open(pid, e))?;
    let peers = kernel_peers(&pid.to_string());
    let records = RecordStore::open(pins).ok();
    let mut out = Vec::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Ok(out);
    };
    let mut fds: Vec<(i32, u64)> = fds
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let target = fs::read_link(e.path()).ok()?;
            let inode = target
                .to_string_lossy()
                .strip_prefix("socket:[")?
                .trim_end_matches(']')
                .parse()
                .ok()?;
            Some((fd, inode))
        })
        .collect();
    fds.sort_unstable();
    for (fd, inode) in fds {
        let Some(&kernel_peer) = peers.get(&inode) else {
            continue;
        };
        if kernel_peer.port() == 0 {
            continue; // a listener
        }
        let Ok(dup) = pidfd_getfd(&pidfd, fd) else {
            continue;
        };
        let Some(app_peer) = app_peer(&dup) else {
            continue;
        };
        let cookie = ttm_client::socket_cookie(&dup).unwrap_or(0);
        let ttm_client = records
            .as_ref()
            .and_then(|r| r.by_cookie(cookie).ok().flatten())
            .map(|c| canonical(c.client));
        let verdict = judge(app_peer, Some(kernel_peer), ttm_client);
        out.push(SocketView {
            fd,
            cookie,
            app_peer,
            kernel_peer: Some(kernel_peer),
            ttm_client,
            verdict,
        });
    }
    Ok(out)
}
