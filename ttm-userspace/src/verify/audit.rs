//! The static audit: cgroup hooks by `BPF_PROG_QUERY`, TC/XDP per network
//! namespace, program details and holders.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// cgroup hooks worth auditing: (attach type, name, power).
const CGROUP_HOOKS: [(u32, &str, Power); 21] = [
    (0, "ingress", Power::Observes),
    (1, "egress", Power::Observes),
    (2, "sock_create", Power::Observes),
    (3, "sock_ops", Power::Observes),
    (8, "bind4", Power::Observes),
    (9, "bind6", Power::Observes),
    (10, "connect4", Power::RewritesPeer),
    (11, "connect6", Power::RewritesPeer),
    (12, "post_bind4", Power::Observes),
    (13, "post_bind6", Power::Observes),
    (14, "sendmsg4", Power::RewritesPeer),
    (15, "sendmsg6", Power::RewritesPeer),
    (19, "recvmsg4", Power::RewritesPeer),
    (20, "recvmsg6", Power::RewritesPeer),
    (21, "getsockopt", Power::RewritesPeer),
    (22, "setsockopt", Power::Observes),
    (29, "getpeername4", Power::RewritesPeer),
    (30, "getpeername6", Power::RewritesPeer),
    (31, "getsockname4", Power::Observes),
    (32, "getsockname6", Power::Observes),
    (34, "sock_release", Power::Observes),
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

/// prog id → holders ("pid (comm)"), from every process's fdinfo.
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

/// (prog id, attach point, power) for TC and XDP programs in the netns at `ns`.
fn netns_programs(ns: &Path) -> Result<Vec<(u32, String, Power)>, String> {
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
        for (kind, power) in [
            ("xdp", Power::RewritesPeer),
            ("tc", Power::RewritesPeer),
            ("tcx", Power::RewritesPeer),
        ] {
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
                        power,
                    ));
                }
            }
        }
    }
    Ok(found)
}

/// Audits the host; `pins` says which programs are ttm's.
pub fn audit(pins: &PinDir) -> Result<Report, AuditError> {
    let root = crate::host::cgroup2_mount()?;
    let mut info = BTreeMap::new();
    for p in aya::programs::loaded_programs() {
        let p = p.map_err(|e| AuditError::Programs(e.to_string()))?;
        info.insert(p.id(), p);
    }
    let holders = holders();
    let own = ttm_programs(pins);
    let mut attached: Vec<(u32, String, Power)> = Vec::new();
    let mut unchecked = Vec::new();
    let all = cgroups(&root);
    for cg in &all {
        let Ok(file) = fs::File::open(cg) else {
            unchecked.push(format!("cgroup {}: cannot open", cg.display()));
            continue;
        };
        for (attach_type, hook, power) in CGROUP_HOOKS {
            match query(&file, attach_type) {
                Ok(ids) => {
                    for id in ids {
                        attached.push((id, format!("cgroup {} {hook}", cg.display()), power));
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
            Ok(found) => attached.extend(found),
            Err(why) => unchecked.push(why),
        }
    }
    let programs = attached
        .into_iter()
        .map(|(id, attach_point, power)| {
            let p = info.get(&id);
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
