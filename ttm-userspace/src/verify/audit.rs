//! The static audit: cgroup hooks by `BPF_PROG_QUERY`, TC/XDP per network
//! namespace, program details and holders.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::insns::{analyse, Direction, Evidence, HelperNames, Hook, Insn, Layout};
use super::{Finding, Power, Report};
use crate::links;
use crate::pins::PinDir;

/// Why the audit could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// No cgroup v2 hierarchy.
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    /// Listing programs failed (usually: not root).
    #[error(
        "cannot list BPF programs: {0} — run as root (CAP_SYS_ADMIN or CAP_BPF + CAP_PERFMON)"
    )]
    Programs(String),
}

/// cgroup hooks worth auditing: (attach type, name). What a program on one
/// does is read from its instructions, not assumed from the hook.
const CGROUP_HOOKS: [(u32, &str); 21] = [
    (0, "ingress"),
    (1, "egress"),
    (2, "sock_create"),
    (3, "sock_ops"),
    (8, "bind4"),
    (9, "bind6"),
    (10, "connect4"),
    (11, "connect6"),
    (12, "post_bind4"),
    (13, "post_bind6"),
    (14, "sendmsg4"),
    (15, "sendmsg6"),
    (19, "recvmsg4"),
    (20, "recvmsg6"),
    (21, "getsockopt"),
    (22, "setsockopt"),
    (29, "getpeername4"),
    (30, "getpeername6"),
    (31, "getsockname4"),
    (32, "getsockname6"),
    (34, "sock_release"),
];

fn query(cgroup: &fs::File, attach_type: u32) -> std::io::Result<Vec<u32>> {
    use std::os::fd::AsFd;
    links::query_cgroup(cgroup.as_fd(), attach_type)
}

fn cgroups(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = fs::read_dir(&out[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// prog id → holders ("pid (comm)"), from the fdinfo of every process's
/// BPF program descriptors (other descriptors — a busy server's million
/// sockets — cost one readlink each, not a read).
fn holders() -> BTreeMap<u32, BTreeSet<String>> {
    let mut map: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return map;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let link = Path::new("/proc")
                .join(pid.to_string())
                .join("fd")
                .join(fd.file_name());
            if !fs::read_link(&link).is_ok_and(|t| t.as_os_str() == "anon_inode:bpf-prog") {
                continue;
            }
            let Ok(info) = fs::read_to_string(fd.path()) else {
                continue;
            };
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
            {
                map.entry(id)
                    .or_default()
                    .insert(format!("{pid} ({})", comm.trim()));
            }
        }
    }
    map
}

/// Program ids behind ttm's pinned links.
fn ttm_programs(pins: &PinDir) -> BTreeSet<u32> {
    pins.link_pins()
        .iter()
        .filter_map(|pin| links::open_pinned(pin).ok())
        .filter_map(|fd| {
            use std::os::fd::AsFd;
            links::info(fd.as_fd()).ok()
        })
        .map(|i| i.prog_id)
        .collect()
}

/// Network namespaces: named ones and every process's, by inode.
fn namespaces() -> BTreeMap<u64, PathBuf> {
    let mut out = BTreeMap::new();
    let mut add = |path: PathBuf| {
        if let Ok(meta) = fs::metadata(&path) {
            out.entry(meta.ino()).or_insert(path);
        }
    };
    if let Ok(named) = fs::read_dir("/run/netns") {
        for e in named.flatten() {
            add(e.path());
        }
    }
    if let Ok(procs) = fs::read_dir("/proc") {
        for p in procs.flatten() {
            if p.file_name().to_string_lossy().parse::<u32>().is_ok() {
                add(p.path().join("ns/net"));
            }
        }
    }
    out
}

/// (prog id, attach point, hook) for TC and XDP programs in the netns at `ns`.
fn netns_programs(ns: &Path) -> Result<Vec<(u32, String, Hook)>, String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["bpftool", "net", "show", "-j"])
        .output()
        .map_err(|e| format!("netns {}: running bpftool: {e}", ns.display()))?;
    if !out.status.success() {
        return Err(format!(
            "netns {}: bpftool net show failed: {}",
            ns.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("netns {}: bpftool output: {e}", ns.display()))?;
    let mut found = Vec::new();
    for section in v.as_array().into_iter().flatten() {
        for kind in ["xdp", "tc", "tcx"] {
            for entry in section[kind].as_array().into_iter().flatten() {
                if let Some(id) = entry["id"].as_u64() {
                    let dev = entry["devname"].as_str().unwrap_or("?");
                    let hook = entry["kind"]
                        .as_str()
                        .or(entry["mode"].as_str())
                        .unwrap_or(kind);
                    found.push((
                        id as u32,
                        format!("netns {} {dev} {kind} {hook}", ns.display()),
                        Hook::Packet,
                    ));
                }
            }
        }
    }
    Ok(found)
}

/// What program `id` on `hook` does, with the evidence; a program whose
/// instructions cannot be read is "cannot tell".
fn read_program(
    id: u32,
    hook: Hook,
    layout: &Layout,
    helpers: &HelperNames,
) -> (Power, Vec<Evidence>) {
    match links::translated_instructions(id) {
        Ok(raw) => {
            let insns: Vec<Insn> = raw.into_iter().map(Insn::decode).collect();
            let a = analyse(&insns, hook, layout, &|imm| helpers.name(imm));
            let power = if !a.writes.is_empty() {
                Power::RewritesPeer
            } else if !a.cannot_tell.is_empty() {
                Power::CannotTell
            } else {
                Power::Observes
            };
            (power, a.writes.into_iter().chain(a.cannot_tell).collect())
        }
        Err(e) => (
            Power::CannotTell,
            vec![Evidence {
                insn: 0,
                what: format!("its instructions could not be read: {e}"),
                direction: None,
            }],
        ),
    }
}

/// (prog id, attach point, hook) for programs attached with tcx in the
/// netns at `ns` (which `bpftool net` of older releases does not list):
/// every interface there, queried from a thread that joined the namespace.
fn tcx_programs(ns: &Path) -> Result<Vec<(u32, String, Hook)>, String> {
    let path = ns.to_path_buf();
    std::thread::spawn(move || -> Result<Vec<(u32, String, Hook)>, String> {
        use std::os::fd::AsRawFd;
        let file = fs::File::open(&path).map_err(|e| format!("netns {}: {e}", path.display()))?;
        // SAFETY: a namespace descriptor; changes only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "netns {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        let mut found = Vec::new();
        // SAFETY: if_nameindex returns a NULL-terminated array we free below.
        unsafe {
            let list = libc::if_nameindex();
            if list.is_null() {
                return Ok(found);
            }
            let mut at = list;
            while (*at).if_index != 0 && !(*at).if_name.is_null() {
                let name = std::ffi::CStr::from_ptr((*at).if_name)
                    .to_string_lossy()
                    .into_owned();
                for (attach_type, dir) in [
                    (links::TCX_INGRESS, "ingress"),
                    (links::TCX_EGRESS, "egress"),
                ] {
                    // EINVAL: no tcx on this kernel.
                    for id in links::query_tcx((*at).if_index, attach_type).unwrap_or_default() {
                        found.push((
                            id,
                            format!("netns {} {name} tcx {dir}", path.display()),
                            Hook::Packet,
                        ));
                    }
                }
                at = at.add(1);
            }
            libc::if_freenameindex(list);
        }
        Ok(found)
    })
    .join()
    .map_err(|_| format!("netns {}: the tcx query panicked", ns.display()))?
}

/// Audits the host; `pins` says which programs are ttm's.
pub fn audit(pins: &PinDir) -> Result<Report, AuditError> {
    audit_with(pins, true)
}

/// The audit without looking for the processes that hold each program (a
/// walk of every process's descriptors): what the daemon runs periodically.
pub fn audit_attachments(pins: &PinDir) -> Result<Report, AuditError> {
    audit_with(pins, false)
}

fn audit_with(pins: &PinDir, with_holders: bool) -> Result<Report, AuditError> {
    let root = crate::host::cgroup2_mount()?;
    let mut info = BTreeMap::new();
    for p in aya::programs::loaded_programs() {
        let p = p.map_err(|e| AuditError::Programs(e.to_string()))?;
        info.insert(p.id(), p);
    }
    let holders = if with_holders {
        holders()
    } else {
        BTreeMap::new()
    };
    let own = ttm_programs(pins);
    let mut attached: Vec<(u32, String, Hook)> = Vec::new();
    let mut unchecked = Vec::new();
    let all = cgroups(&root);
    for cg in &all {
        let Ok(file) = fs::File::open(cg) else {
            unchecked.push(format!("cgroup {}: cannot open", cg.display()));
            continue;
        };
        for (attach_type, hook) in CGROUP_HOOKS {
            match query(&file, attach_type) {
                Ok(ids) => {
                    for id in ids {
                        attached.push((
                            id,
                            format!("cgroup {} {hook}", cg.display()),
                            Hook::from_name(hook),
                        ));
                    }
                }
                // Hooks this kernel does not have.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => unchecked.push(format!("cgroup {} {hook}: {e}", cg.display())),
            }
        }
    }
    let namespaces = namespaces();
    for ns in namespaces.values() {
        match netns_programs(ns) {
            Ok(found) => {
                for f in found {
                    // bpftool releases that know tcx list it too: once is enough.
                    if !attached.iter().any(|a| a.0 == f.0 && a.1 == f.1) {
                        attached.push(f);
                    }
                }
            }
            Err(why) => unchecked.push(why),
        }
        match tcx_programs(ns) {
            Ok(found) => {
                for f in found {
                    if !attached.iter().any(|a| a.0 == f.0 && a.1.contains(" tcx")) {
                        attached.push(f);
                    }
                }
            }
            Err(why) => unchecked.push(why),
        }
    }
    // The kernel's layout does not change while it runs: read its BTF once.
    static LAYOUT: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();
    let layout = *LAYOUT.get_or_init(Layout::of_running_kernel);
    let helpers = HelperNames::read();
    let programs = attached
        .into_iter()
        .map(|(id, attach_point, hook)| {
            let p = info.get(&id);
            let (power, evidence) = read_program(id, hook, &layout, &helpers);
            let mut affects: Vec<Direction> = evidence.iter().filter_map(|e| e.direction).collect();
            affects.sort_by_key(|d| *d as u8);
            affects.dedup();
            Finding {
                id,
                name: p.and_then(|p| p.name_as_str()).unwrap_or("?").to_string(),
                tag: p.map_or_else(String::new, |p| format!("{:016x}", p.tag())),
                prog_type: p.map_or(0, |p| p.program_type() as u32),
                attach_point,
                loaded_at: p
                    .and_then(|p| p.loaded_at())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
                held_by: holders
                    .get(&id)
                    .map(|h| h.iter().cloned().collect())
                    .unwrap_or_default(),
                power,
                evidence,
                affects,
                ttm: own.contains(&id),
            }
        })
        .collect();
    Ok(Report {
        cgroups: all.len(),
        netns: namespaces.len(),
        programs,
        unchecked,
    })
}
