//! `ttm doctor`: what this host offers ttm, found by probing — loading each of
//! ttm's programs into the verifier — rather than by kernel version.

use std::path::Path;

use aya::programs::Program;
use aya::Ebpf;
use serde::Serialize;

use crate::mode::{Mode, Plan};
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
    /// ttm has a fallback when this is missing (the detail names it), so
    /// its absence is reported but not counted as missing.
    pub has_fallback: bool,
}

impl Probe {
    /// Missing, with nothing to take its place.
    pub fn is_missing(&self) -> bool {
        !self.ok && !self.has_fallback
    }
}

fn probe(feature: &str, ok: bool, detail: impl Into<String>) -> Probe {
    Probe {
        feature: feature.to_string(),
        ok,
        detail: detail.into(),
        has_fallback: false,
    }
}

/// A probe of a feature ttm can do without (it falls back, as `detail` says).
fn probe_with_fallback(feature: &str, ok: bool, detail: impl Into<String>) -> Probe {
    Probe {
        has_fallback: true,
        ..probe(feature, ok, detail)
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
            "ttm's maps (hash, LRU hash, LPM trie, ring buffer)",
            false,
            e.to_string(),
        )),
        Ok(mut ebpf) => {
            out.push(probe(
                "ttm's maps (hash, LRU hash, LPM trie, ring buffer)",
                true,
                "created",
            ));
            let mut names: Vec<&str> = LINKED_PROGRAMS.to_vec();
            names.insert(1, crate::SOCKOPS_JOIN_PROGRAM);
            names.push(crate::tc::TC_PROGRAM);
            names.push(crate::PROXY_VERDICT_PROGRAM);
            names.push(crate::PROXY_INGRESS_PROGRAM);
            names.push(crate::tc::TC_FIRST_PROGRAM);
            names.push(crate::tc::TC_CUT_PROGRAM);
            names.push(crate::tc::TC_EGRESS_PROGRAM);
            names.push(crate::tc::UDP_PROGRAM);
            names.extend(crate::UDP_RECVMSG_PROGRAMS);
            let mut header_access = false;
            let proxy_programs = [
                crate::PROXY_VERDICT_PROGRAM,
                crate::PROXY_INGRESS_PROGRAM,
                crate::tc::TC_FIRST_PROGRAM,
                crate::tc::TC_CUT_PROGRAM,
                crate::tc::TC_EGRESS_PROGRAM,
            ];
            let proxy_refused = crate::host::proxy_protocol_unsupported();
            for name in names {
                let proxy = proxy_programs.contains(&name);
                if let (true, Some(why)) = (proxy, &proxy_refused) {
                    // Verifying these costs minutes on an emulated old kernel
                    // (ttm_tc_first runs into its 1M-instruction budget), and
                    // the daemon refuses --proxy-protocol here whatever the
                    // verifier says.
                    out.push(probe(name, false, format!("not loaded: {why}")));
                    continue;
                }
                let (what, result) = match ebpf.program_mut(name) {
                    Some(Program::SockOps(p)) if name == crate::SOCKOPS_PROGRAM => {
                        let result = p.load();
                        header_access = result.is_ok();
                        (
                            "sockops header callbacks (reads the handshake segment)",
                            result,
                        )
                    }
                    Some(Program::SockOps(p)) => {
                        ("sockops joining TC records (--mode tc)", p.load())
                    }
                    Some(Program::CgroupSockopt(p)) => ("getsockopt shim", p.load()),
                    Some(Program::CgroupSockAddr(p)) if name.starts_with("ttm_udp") => (
                        "--udp-interface: noting each UDP datagram's flow for the UOA lookup \
                         (recvmsg hook with socket storage)",
                        p.load(),
                    ),
                    Some(Program::CgroupSockAddr(p)) => ("getpeername hook", p.load()),
                    Some(Program::SchedClassifier(p)) if name == crate::tc::TC_PROGRAM => {
                        ("TC ingress decoder", p.load())
                    }
                    Some(Program::SchedClassifier(p)) if name == crate::tc::UDP_PROGRAM => (
                        "--udp-interface: reading DPVS's UOA marking of UDP flows, removing opp \
                         headers (TC ingress)",
                        p.load(),
                    ),
                    Some(Program::SchedClassifier(p)) => (
                        "--proxy-interface: cutting PROXY headers out at the interface and \
                         renumbering the connection (TC)",
                        p.load(),
                    ),
                    Some(Program::SkSkb(p)) => (
                        "--proxy-protocol: removing the PROXY header from the stream (stream \
                         verdict with bpf_skb_adjust_room, Linux 5.11+)",
                        p.load(),
                    ),
                    Some(Program::CgroupSkb(p)) => (
                        "--proxy-protocol: reading the PROXY header before the socket exists \
                         (cgroup ingress)",
                        p.load(),
                    ),
                    _ => continue,
                };
                let ok = result.is_ok();
                let detail = match result {
                    Ok(()) => format!("{what}: the verifier accepts {name}"),
                    Err(e) => format!("{what}: {name} refused: {}", brief(&e.to_string())),
                };
                out.push(probe(name, ok, detail));
            }
            let errno = crate::links::sockopt_errno_supported();
            out.push(probe_with_fallback(
                "getsockopt errno",
                errno,
                if errno {
                    "a buffer under 20 bytes for getsockopt(SOL_IP, 1345) gets EINVAL"
                } else {
                    "cgroup programs can only clear errors here (before 5.18): a buffer under 20 bytes gets EFAULT"
                },
            ));
            let tcx = crate::links::tcx_supported();
            out.push(probe_with_fallback(
                "tcx",
                tcx,
                if tcx {
                    "TC programs attach with tcx links (pinned)"
                } else {
                    "no tcx (before Linux 6.6): TC programs attach as netlink cls_bpf filters"
                },
            ));
            let choice = |interfaces: &[String]| match Plan::resolve(
                Mode::Auto,
                header_access,
                interfaces,
            ) {
                Ok((plan, why)) => format!("{} ({why})", plan.mode),
                Err(e) => format!("refuses to start: {e}"),
            };
            out.push(probe(
                "mode auto",
                header_access,
                format!(
                    "without --interface: {}; with --interface: {}",
                    choice(&[]),
                    choice(&["IFACE".to_string()])
                ),
            ));
        }
    }
    out
}

/// The running daemon's limits (pinned under `pins`), if one runs: which
/// limit connections hit and what to change. Reported, never counted as
/// a missing feature.
pub fn limits(pins: &crate::pins::PinDir) -> Option<Probe> {
    let stats = crate::stats::read(&crate::stats::open(pins).ok()?).ok()?;
    let reached = crate::limits::reached(&stats);
    let detail = if reached.is_empty() {
        format!("none reached ({} live records)", stats.live_records())
    } else {
        reached
            .iter()
            .map(|l| format!("{} connection(s): {}", l.connections, l.advice))
            .collect::<Vec<_>>()
            .join("; ")
    };
    Some(probe_with_fallback(
        "limits of the running daemon",
        reached.is_empty(),
        detail,
    ))
}

/// Where the running daemon (pinned under `pins`) attached its cgroup
/// programs, and what each costs the calls under it.
pub fn attachments(pins: &crate::pins::PinDir) -> Vec<Probe> {
    use std::os::fd::AsFd;
    let root = crate::host::cgroup2_mount().ok();
    pins.link_pins()
        .into_iter()
        .filter_map(|pin| {
            let file = pin.file_name()?.to_string_lossy().into_owned();
            let program = file.strip_prefix("link_")?.split('@').next()?.to_string();
            if program == crate::tc::TC_PROGRAM
                || program == crate::tc::TC_EGRESS_PROGRAM
                || program == crate::tc::UDP_PROGRAM
            {
                return None;
            }
            let link = crate::links::open_pinned(&pin).ok()?;
            let id = crate::links::info(link.as_fd()).ok()?.cgroup_id;
            let cgroup = root
                .as_deref()
                .and_then(|r| cgroup_path_by_id(r, id))
                .map_or_else(|| format!("cgroup id {id}"), |p| p.display().to_string());
            let cost = match program.as_str() {
                "ttm_sockops" | "ttm_sockops_tc" => "once per accepted connection",
                "ttm_proxy_ingress" => {
                    "every packet to a socket under it: a listener check, and a PROXY header \
                     read only on segments that complete a handshake on a --proxy-protocol port"
                }
                "ttm_getsockopt" => {
                    "every getsockopt() under it pays the kernel's copy in and out (≈ ×2 for \
                     unrelated options); narrow with --compat-cgroup or --no-getsockopt"
                }
                p if crate::pins::is_witness(p) => "a second program on every getpeername()",
                p if crate::UDP_RECVMSG_PROGRAMS.contains(&p) => {
                    "every recvfrom()/recvmsg() of a UDP socket under it: the datagram's flow \
                     noted in the socket's storage"
                }
                _ => "the socket's 4-tuple read and one hash lookup per getpeername()/accept()",
            };
            Some(probe(
                &format!("attached: {program}"),
                true,
                format!("{cgroup} — {cost}"),
            ))
        })
        .collect()
}

/// The directory under the cgroup2 mount `root` whose id (inode) is `id`.
fn cgroup_path_by_id(root: &Path, id: u64) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        if std::fs::metadata(&dir).ok()?.ino() == id {
            return Some(dir);
        }
        seen += 1;
        if seen > 100_000 {
            return None;
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    None
}

/// A refusal in a line: the verifier's whole log is long, its verdict is
/// the last line before the statistics.
fn brief(error: &str) -> String {
    let Some((head, log)) = error.split_once("Verifier output:") else {
        return error.to_string();
    };
    let verdict = log
        .lines()
        .map(str::trim)
        .rfind(|l| {
            !l.is_empty()
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
                && !l.starts_with("processed ")
                && !l.starts_with(':')
        })
        .unwrap_or("");
    format!("{}; verifier: {verdict}", head.trim().trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::brief;

    #[test]
    fn a_refusal_is_reduced_to_the_verifiers_verdict() {
        let e = "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). Verifier output: 0: (85) call pc+2\n7811: (0f) r2 += r1\nmath between map_value pointer and register with unbounded min value is not allowed\nverification time 237441 usec\nstack depth 0+248+0\nprocessed 3300 insns\n: Invalid argument";
        assert_eq!(
            brief(e),
            "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22); verifier: math between map_value pointer and register with unbounded min value is not allowed"
        );
        assert_eq!(brief("no such program"), "no such program");
    }
}
