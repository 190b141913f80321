//! `ttm doctor`: what this host offers ttm, found by probing — loading each of
//! ttm's programs into the verifier — rather than by kernel version.

use std::path::Path;

use aya::programs::Program;
use aya::Ebpf;
use serde::Serialize;

use crate::pins::LINKED_PROGRAMS;

/// One probe's result.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    /// What was probed.
    pub feature: String,
    /// Whether it is there.
    pub ok: bool,
    /// What it means, or why not.
    pub detail: String,
}

fn probe(feature: &str, ok: bool, detail: impl Into<String>) -> Probe {
    Probe {
        feature: feature.to_string(),
        ok,
        detail: detail.into(),
    }
}

/// Every probe, in the order an operator reads them.
pub fn run() -> Vec<Probe> {
    let mut out = Vec::new();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    out.push(probe("kernel", true, release.trim()));
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    out.push(probe("BTF", btf, "/sys/kernel/btf/vmlinux"));
    out.push(probe(
        "bpffs",
        crate::host::check_bpffs(Path::new(crate::pins::DEFAULT_PIN_DIR)).is_ok(),
        "/sys/fs/bpf",
    ));
    match crate::host::cgroup2_mount() {
        Ok(path) => out.push(probe("cgroup v2", true, path.display().to_string())),
        Err(e) => out.push(probe("cgroup v2", false, e.to_string())),
    }
    match Ebpf::load(crate::EBPF_OBJECT) {
        Err(e) => out.push(probe(
            "ttm's maps (sk_storage, LRU hash, LPM trie)",
            false,
            e.to_string(),
        )),
        Ok(mut ebpf) => {
            out.push(probe(
                "ttm's maps (sk_storage, LRU hash, LPM trie)",
                true,
                "created",
            ));
            let mut names: Vec<&str> = LINKED_PROGRAMS.to_vec();
            names.push("ttm_tc_ingress");
            for name in names {
                let (what, result) = match ebpf.program_mut(name) {
                    Some(Program::SockOps(p)) => ("sockops header-option decoder", p.load()),
                    Some(Program::CgroupSockopt(p)) => ("getsockopt shim", p.load()),
                    Some(Program::CgroupSockAddr(p)) => ("getpeername hook", p.load()),
                    Some(Program::SchedClassifier(p)) => ("TC ingress decoder", p.load()),
                    _ => continue,
                };
                let ok = result.is_ok();
                let detail = match result {
                    Ok(()) => format!("{what}: the verifier accepts {name}"),
                    Err(e) => format!("{what}: {name} refused: {e}"),
                };
                out.push(probe(name, ok, detail));
            }
        }
    }
    out
}
