//! Facts about the host the daemon needs before it loads anything:
//! privileges, bpffs, the cgroup v2 mount. Each failure says what to do.

use std::fs;
use std::path::{Path, PathBuf};

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `statfs` magic of cgroup v2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// A host precondition that is not met.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Missing privileges.
    #[error("missing privileges: ttm needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) and CAP_NET_ADMIN — run as root or grant them (e.g. AmbientCapabilities= in the systemd unit)")]
    NotPrivileged,
    /// bpffs is not mounted where the pins go.
    #[error("{0} is not on a bpf filesystem — mount it with `mount -t bpf bpf /sys/fs/bpf` or pass --pin-dir on a bpffs mount")]
    NoBpffs(PathBuf),
    /// No cgroup v2 hierarchy is mounted.
    #[error("no cgroup v2 mount found in /proc/self/mountinfo — mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified` or pass --cgroup")]
    NoCgroup2,
    /// The cgroup path is wrong.
    #[error("cannot attach to cgroup {0}: not a cgroup v2 directory — pass the cgroup2 mount or a directory below it")]
    NotCgroup2(PathBuf),
    /// The socket group does not exist.
    #[error("unknown group {0:?} for --socket-group — create it (groupadd) or pass a numeric gid")]
    UnknownGroup(String),
}

fn fs_magic(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_type as i64)
}

/// Checks the effective capabilities of this process.
pub fn check_privileges() -> Result<(), HostError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    // Without CAP_PERFMON the verifier refuses the packet-pointer arithmetic
    // the decoders need.
    let admin = has(CAP_SYS_ADMIN);
    if (admin || has(CAP_BPF) && has(CAP_PERFMON)) && has(CAP_NET_ADMIN) {
        Ok(())
    } else {
        Err(HostError::NotPrivileged)
    }
}

/// Checks that `dir`'s nearest existing ancestor is on bpffs.
pub fn check_bpffs(dir: &Path) -> Result<(), HostError> {
    let mut probe = dir;
    while !probe.exists() {
        probe = match probe.parent() {
            Some(p) => p,
            None => break,
        };
    }
    match fs_magic(probe) {
        Some(BPF_FS_MAGIC) => Ok(()),
        _ => Err(HostError::NoBpffs(dir.to_path_buf())),
    }
}

/// The mount point of the cgroup v2 hierarchy, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Result<PathBuf, HostError> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(|_| HostError::NoCgroup2)?;
    parse_cgroup2_mount(&info).ok_or(HostError::NoCgroup2)
}

/// Finds the first cgroup2 mount point in mountinfo text.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Checks that `path` is a cgroup v2 directory.
pub fn check_cgroup2(path: &Path) -> Result<(), HostError> {
    match fs_magic(path) {
        Some(CGROUP2_SUPER_MAGIC) if path.is_dir() => Ok(()),
        _ => Err(HostError::NotCgroup2(path.to_path_buf())),
    }
}

/// The gid of group `name` (a name known to NSS, or a number).
pub fn group_id(name: &str) -> Result<u32, HostError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let unknown = || HostError::UnknownGroup(name.to_string());
    let c_name = std::ffi::CString::new(name).map_err(|_| unknown())?;
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives its use.
    let rc = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(unknown());
    }
    Ok(group.gr_gid)
}

/// Raises the soft open-files limit to the hard limit, so that thousands of
/// lookup clients do not hit the default of 1024. Returns the new limit.
pub fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Why `--proxy-protocol` cannot work on the running kernel, if it cannot.
/// Before Linux 5.11 a sockmap runs a stream-verdict program only beside a
/// stream parser, so ttm's verdict (which has none) is never called and the
/// header would reach the app, although the verifier accepts the program
/// (seen on Debian's 5.10). The one capability ttm gates by version: its
/// absence shows in no load or attach result.
pub fn proxy_protocol_unsupported() -> Option<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let release = release.trim();
    kernel_before(release, (5, 11)).then(|| {
        format!(
            "Linux {release} runs a sockmap's stream verdict only beside a stream parser \
             (before 5.11), so the PROXY header would reach the app"
        )
    })
}

/// True if `release` (`uname -r`) names a kernel older than `major.minor`;
/// false if it cannot be read.
fn kernel_before(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) < (major, minor),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(kernel_before("5.10.0-46-amd64", (5, 11)));
        assert!(kernel_before("4.19.0", (5, 11)));
        assert!(!kernel_before("5.11.0", (5, 11)));
        assert!(!kernel_before("6.1.0-57-amd64", (5, 11)));
        assert!(!kernel_before("6.18.44-fc-v1045", (5, 11)));
        assert!(!kernel_before("garbage", (5, 11)));
    }

    #[test]
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let info = "\
35 25 0:30 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev - cgroup2 cgroup2 rw
37 35 0:32 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            parse_cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_cgroup2_mount("35 25 0:30 / /x rw - tmpfs tmpfs rw\n"),
            None
        );
    }

    #[test]
    fn groups_resolve_by_number_and_name() {
        assert_eq!(group_id("1234").unwrap(), 1234);
        assert_eq!(group_id("root").unwrap(), 0);
        let err = group_id("ttm-no-such-group").unwrap_err();
        assert!(err.to_string().contains("--socket-group"), "{err}");
    }

    #[test]
    fn a_plain_directory_is_not_a_cgroup() {
        let err = check_cgroup2(Path::new("/tmp")).unwrap_err();
        assert!(err.to_string().contains("not a cgroup v2 directory"));
        assert!(check_bpffs(Path::new("/tmp/ttm-not-bpffs")).is_err());
    }
}
