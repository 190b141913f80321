//! Pinned cgroup links: the attachments outlive the daemon process, so a
//! crash or an upgrade never leaves connections unrecorded. Raw `bpf(2)`
//! calls, because aya cannot pin the links of every program type ttm uses.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// Kernel attach types of ttm's programs.
pub mod attach_type {
    /// `BPF_CGROUP_SOCK_OPS`.
    pub const SOCK_OPS: u32 = 3;
    /// `BPF_CGROUP_INET4_GETPEERNAME`.
    pub const GETPEERNAME4: u32 = 29;
    /// `BPF_CGROUP_INET6_GETPEERNAME`.
    pub const GETPEERNAME6: u32 = 30;
    /// `BPF_CGROUP_GETSOCKOPT`.
    pub const GETSOCKOPT: u32 = 21;
    /// `BPF_CGROUP_UDP4_RECVMSG`.
    pub const UDP4_RECVMSG: u32 = 19;
    /// `BPF_CGROUP_UDP6_RECVMSG`.
    pub const UDP6_RECVMSG: u32 = 20;
    /// `BPF_CGROUP_INET_INGRESS`.
    pub const INET_INGRESS: u32 = 0;
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 8]) -> io::Result<i64> {
    // SAFETY: bpf(2) with a zeroed, 64-byte attribute holding the command's fields.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn u32s(a: u32, b: u32) -> u64 {
    u64::from(a) | (u64::from(b) << 32)
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this new descriptor to us.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Attaches `prog` to `cgroup` with a new bpf_link.
pub fn create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 8];
    attr[0] = u32s(prog.as_raw_fd() as u32, cgroup.as_raw_fd() as u32);
    attr[1] = u32s(attach_type, 0);
    bpf(BPF_LINK_CREATE, &mut attr).map(owned)
}

/// Pins `fd` (a link) at `path` on bpffs.
pub fn pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut attr = [0u64; 8];
    attr[0] = c.as_ptr() as u64;
    attr[1] = u32s(fd.as_raw_fd() as u32, 0);
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// Opens the object pinned at `path`.
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut attr = [0u64; 8];
    attr[0] = c.as_ptr() as u64;
    bpf(BPF_OBJ_GET, &mut attr).map(owned)
}

/// Atomically swaps the program behind `link` for `new_prog`.
pub fn update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = [0u64; 8];
    attr[0] = u32s(link.as_raw_fd() as u32, new_prog.as_raw_fd() as u32);
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// What a cgroup link is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLinkInfo {
    /// Link id.
    pub id: u32,
    /// Program id behind it.
    pub prog_id: u32,
    /// cgroup id (the cgroup directory's inode number).
    pub cgroup_id: u64,
    /// Attach type.
    pub attach_type: u32,
}

/// Reads a cgroup link's info.
pub fn info(link: BorrowedFd<'_>) -> io::Result<CgroupLinkInfo> {
    // struct bpf_link_info { u32 type, id, prog_id; union { struct { u64 cgroup_id; u32 attach_type; } cgroup; ... } }
    let mut raw = [0u64; 8];
    let mut attr = [0u64; 8];
    attr[0] = u32s(link.as_raw_fd() as u32, std::mem::size_of_val(&raw) as u32);
    attr[1] = raw.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(CgroupLinkInfo {
        id: (raw[0] >> 32) as u32,
        prog_id: raw[1] as u32,
        cgroup_id: raw[2],
        attach_type: raw[3] as u32,
    })
}

/// The id of the cgroup at `path` (its inode number on cgroup2).
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.ino())
}

const BPF_PROG_QUERY: libc::c_long = 16;

/// Ids of the programs attached to `cgroup` itself at `attach_type`, in the
/// order they run.
pub fn query_cgroup(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    // query: target_fd, attach_type, query_flags, attach_flags, prog_ids, prog_cnt
    let mut attr = [0u64; 8];
    attr[0] = u32s(cgroup.as_raw_fd() as u32, attach_type);
    attr[2] = ids.as_mut_ptr() as u64;
    attr[3] = ids.len() as u64;
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let count = (attr[3] as u32 as usize).min(ids.len());
    Ok(ids[..count].to_vec())
}

/// The id of the program behind `prog`.
pub fn prog_id(prog: BorrowedFd<'_>) -> io::Result<u32> {
    // struct bpf_prog_info { u32 type; u32 id; ... }
    let mut raw = [0u64; 32];
    let mut attr = [0u64; 8];
    attr[0] = u32s(prog.as_raw_fd() as u32, std::mem::size_of_val(&raw) as u32);
    attr[1] = raw.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok((raw[0] >> 32) as u32)
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

/// The translated instructions of the loaded program with id `id` (the
/// program as the kernel runs it), as raw 8-byte instructions.
pub fn translated_instructions(id: u32) -> io::Result<Vec<[u8; 8]>> {
    let mut attr = [0u64; 8];
    attr[0] = u64::from(id);
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).map(owned)?;
    // struct bpf_prog_info: xlated_prog_len at byte 20, xlated_prog_insns at 32.
    let info = |raw: &mut [u64; 32]| -> io::Result<()> {
        let mut attr = [0u64; 8];
        attr[0] = u32s(fd.as_raw_fd() as u32, std::mem::size_of_val(raw) as u32);
        attr[1] = raw.as_mut_ptr() as u64;
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(|_| ())
    };
    let mut raw = [0u64; 32];
    info(&mut raw)?;
    let len = (raw[2] >> 32) as usize;
    if len == 0 {
        return Err(io::Error::other(
            "the kernel hides this program's instructions (no CAP_SYS_ADMIN, or kernel.kptr_restrict)",
        ));
    }
    let mut insns = vec![[0u8; 8]; len / 8];
    let mut raw = [0u64; 32];
    raw[2] = (len as u64) << 32;
    raw[4] = insns.as_mut_ptr() as u64;
    info(&mut raw)?;
    Ok(insns)
}

/// `BPF_TCX_INGRESS`: TC ingress through a bpf_link (Linux 6.6+).
pub const TCX_INGRESS: u32 = 46;

/// Attaches `prog` at the ingress (or egress) of interface `ifindex` with a
/// new tcx link, after the programs already there.
pub fn create_tcx(prog: BorrowedFd<'_>, ifindex: u32, egress: bool) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 8];
    attr[0] = u32s(prog.as_raw_fd() as u32, ifindex);
    attr[1] = u32s(if egress { TCX_EGRESS } else { TCX_INGRESS }, 0);
    bpf(BPF_LINK_CREATE, &mut attr).map(owned)
}

/// `BPF_TCX_EGRESS`.
pub const TCX_EGRESS: u32 = 47;

/// Ids of the programs attached with tcx at `attach_type` on interface
/// `ifindex` of the calling thread's network namespace.
pub fn query_tcx(ifindex: u32, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = [0u64; 8];
    attr[0] = u32s(ifindex, attach_type);
    attr[2] = ids.as_mut_ptr() as u64;
    attr[3] = ids.len() as u64;
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let count = (attr[3] as u32 as usize).min(ids.len());
    Ok(ids[..count].to_vec())
}

/// Whether this kernel has tcx: a feature probe (querying the loopback
/// interface's tcx ingress chain), not a version check.
pub fn tcx_supported() -> bool {
    let mut ids = [0u32; 8];
    let mut attr = [0u64; 8];
    attr[0] = u32s(1, TCX_INGRESS);
    attr[2] = ids.as_mut_ptr() as u64;
    attr[3] = ids.len() as u64;
    bpf(BPF_PROG_QUERY, &mut attr).is_ok()
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_CGROUP_SOCKOPT: u32 = 25;
/// `bpf_set_retval`, added with the freedom for cgroup programs to set any
/// return value (Linux 5.18).
const BPF_FUNC_SET_RETVAL: i32 = 187;

/// Whether cgroup getsockopt programs may answer an arbitrary errno (e.g.
/// EINVAL for a short buffer). Older kernels only let them clear an error,
/// and turn any other value into EFAULT. A feature probe: loads a tiny
/// program calling `bpf_set_retval`.
pub fn sockopt_errno_supported() -> bool {
    // r1 = 0; call bpf_set_retval; r0 = 1; exit
    let insns: [u64; 4] = [
        0xb7 | (1 << 8),
        0x85 | ((BPF_FUNC_SET_RETVAL as u32 as u64) << 32),
        0xb7 | (1 << 32),
        0x95,
    ];
    let license = c"GPL";
    let mut attr = [0u64; 16];
    attr[0] = u32s(BPF_PROG_TYPE_CGROUP_SOCKOPT, insns.len() as u32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // expected_attach_type at byte 68.
    attr[8] = u32s(0, attach_type::GETSOCKOPT);
    // SAFETY: bpf(BPF_PROG_LOAD) with a zeroed attribute holding the fields above.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return false;
    }
    drop(owned(fd));
    true
}
