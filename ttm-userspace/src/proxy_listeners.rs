//! `TCP_DEFER_ACCEPT` on the listeners of `--proxy-protocol` ports, so that
//! `accept()` hands out a PROXY connection only once its first bytes (the
//! header) are in: the client is then known before the app can first ask.
//!
//! A kernel program cannot set this option (`bpf_setsockopt` does not allow
//! it), so the daemon does, on the listener itself: it finds the listening
//! sockets of the processes in the decoder's cgroup, takes a copy of each fd
//! (`pidfd_getfd`: the same socket) and sets the option there. It does this
//! at start and whenever sockops reports a `listen()` on a PROXY port
//! (`Counter::ProxyListening`). A listener whose app already set a deferral
//! keeps it. Each socket is examined once (by inode).

use std::collections::HashSet;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use log::{debug, info, warn};

/// Seconds of `TCP_DEFER_ACCEPT`: how long a connection that sends nothing
/// (a direct client of a server-speaks-first protocol) waits before the
/// kernel hands it to `accept()` anyway (about this, plus one SYN-ACK
/// retransmission).
pub const DEFER_SECS: libc::c_int = 1;

/// Finds and defers the listeners of the PROXY ports.
pub struct ListenerDeferrer {
    ports: Vec<u16>,
    cgroup: PathBuf,
    examined: HashSet<u64>,
}

impl ListenerDeferrer {
    /// For the listeners on `ports` of processes under `cgroup`.
    pub fn new(ports: Vec<u16>, cgroup: PathBuf) -> ListenerDeferrer {
        ListenerDeferrer {
            ports,
            cgroup,
            examined: HashSet::new(),
        }
    }

    /// Looks at every socket not examined yet; returns how many listeners
    /// it deferred.
    pub fn scan(&mut self) -> usize {
        let mut deferred = 0;
        for pid in cgroup_pids(&self.cgroup) {
            let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            let mut pidfd: Option<OwnedFd> = None;
            for entry in fds.filter_map(Result::ok) {
                let Some(inode) = socket_inode(&entry.path()) else {
                    continue;
                };
                if self.examined.contains(&inode) {
                    continue;
                }
                let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if pidfd.is_none() {
                    pidfd = pidfd_open(pid);
                }
                let Some(pidfd) = &pidfd else { break };
                let Some(sock) = pidfd_getfd(pidfd, fd) else {
                    continue;
                };
                match defer_if_proxy_listener(&sock, &self.ports) {
                    Ok(Seen::NotYet) => {}
                    Ok(Seen::Other) => {
                        self.examined.insert(inode);
                    }
                    Ok(Seen::Deferred(port)) => {
                        self.examined.insert(inode);
                        deferred += 1;
                        info!(
                            "PROXY port {port}: TCP_DEFER_ACCEPT {DEFER_SECS}s set on the listener of pid {pid} \
                             (accept() now returns a connection once its header is in)"
                        );
                    }
                    Err(e) => {
                        self.examined.insert(inode);
                        warn!(
                        "PROXY listener of pid {pid} (fd {fd}): could not set TCP_DEFER_ACCEPT ({e}); \
                         its app may see a connection before ttm knows the client"
                        )
                    }
                }
            }
        }
        debug!("listener scan: {deferred} deferred");
        deferred
    }
}

/// Every process under `cgroup` (its subtree included).
fn cgroup_pids(cgroup: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.filter_map(Result::ok) {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                }
            }
        }
    }
    out
}

/// The inode of a `socket:[N]` fd link.
fn socket_inode(link: &Path) -> Option<u64> {
    let target = fs::read_link(link).ok()?;
    let text = target.to_str()?;
    text.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: a plain syscall; the fd returned is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_getfd(pidfd: &OwnedFd, fd: i32) -> Option<OwnedFd> {
    // SAFETY: a plain syscall; the fd returned is ours.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    (dup >= 0).then(|| unsafe { OwnedFd::from_raw_fd(dup as i32) })
}

fn get_int(sock: &OwnedFd, level: libc::c_int, name: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid fd and an int-sized buffer.
    let rc =
        unsafe { libc::getsockopt(sock.as_raw_fd(), level, name, (&raw mut v).cast(), &mut len) };
    if rc == 0 {
        Ok(v)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The local port of `sock`, if it is an IPv4 or IPv6 socket.
fn local_port(sock: &OwnedFd) -> Option<u16> {
    // SAFETY: a sockaddr_storage-sized, zeroed buffer.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let rc = unsafe { libc::getsockname(sock.as_raw_fd(), (&raw mut ss).cast(), &mut len) };
    if rc != 0 {
        return None;
    }
    match ss.ss_family as libc::c_int {
        // SAFETY: the family says which layout the kernel wrote.
        libc::AF_INET => Some(u16::from_be(unsafe {
            (*(&raw const ss).cast::<libc::sockaddr_in>()).sin_port
        })),
        libc::AF_INET6 => Some(u16::from_be(unsafe {
            (*(&raw const ss).cast::<libc::sockaddr_in6>()).sin6_port
        })),
        _ => None,
    }
}

/// What a socket turned out to be.
enum Seen {
    /// A TCP socket that is neither listening nor connected yet (it may
    /// listen later): looked at again next time.
    NotYet,
    /// Anything else but a PROXY listener without a deferral: never again.
    Other,
    /// A PROXY listener, now deferred.
    Deferred(u16),
}

/// `TCP_CLOSE` in `tcpi_state`: a TCP socket not yet listening or connecting.
const TCP_CLOSE: u8 = 7;

/// The TCP state of `sock` (`tcpi_state`, the first byte of `TCP_INFO`).
fn tcp_state(sock: &OwnedFd) -> Option<u8> {
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: a valid fd and a buffer of `len` bytes (the kernel copies at most that).
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0 && len >= 1).then_some(info[0])
}

/// Sets `TCP_DEFER_ACCEPT` on `sock` if it is a TCP listener on one of
/// `ports` without a deferral yet.
fn defer_if_proxy_listener(sock: &OwnedFd, ports: &[u16]) -> std::io::Result<Seen> {
    let Ok(protocol) = get_int(sock, libc::SOL_SOCKET, libc::SO_PROTOCOL) else {
        return Ok(Seen::Other);
    };
    if protocol != libc::IPPROTO_TCP {
        return Ok(Seen::Other);
    }
    if get_int(sock, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 1 {
        return Ok(if tcp_state(sock) == Some(TCP_CLOSE) {
            Seen::NotYet
        } else {
            Seen::Other
        });
    }
    let Some(port) = local_port(sock).filter(|p| ports.contains(p)) else {
        return Ok(Seen::Other);
    };
    if get_int(sock, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT)? > 0 {
        return Ok(Seen::Other);
    }
    let v: libc::c_int = DEFER_SECS;
    // SAFETY: a valid fd and an int.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const v).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Seen::Deferred(port))
}

/// The `TCP_DEFER_ACCEPT` value (seconds as the kernel reports it) of the
/// TCP listener on `port` that process `pid` holds, if it holds one: what
/// the daemon set, for tests and `ttm doctor`.
pub fn listener_deferral(pid: u32, port: u16) -> Option<i32> {
    let pidfd = pidfd_open(pid)?;
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(Result::ok)
    {
        if socket_inode(&entry.path()).is_none() {
            continue;
        }
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Some(sock) = pidfd_getfd(&pidfd, fd) else {
            continue;
        };
        let listening = get_int(&sock, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).ok() == Some(1);
        if listening && local_port(&sock) == Some(port) {
            return get_int(&sock, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT).ok();
        }
    }
    None
}
