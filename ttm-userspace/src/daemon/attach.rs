//! Loading and attaching: the decoder's settings written into its maps, the
//! mode resolved by the verifier, every program attached through a pinned
//! link (taking over a previous daemon's links by an atomic swap), and the
//! witnesses kept last in their chains.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use aya::maps::{lpm_trie::Key, Array, LpmTrie};
use aya::Ebpf;
use log::{info, warn};
use std::os::fd::AsFd;
use ttm_common::{maps, Config, TrustKey};

use crate::mode::{Mode, Plan};
use crate::pins::{self, LINKED_PROGRAMS};
use crate::{GETSOCKOPT_PROGRAM, SOCKOPS_JOIN_PROGRAM, SOCKOPS_PROGRAM};

use super::DaemonConfig;

/// One program ttm attaches to the cgroup.
pub(super) struct Attachment {
    /// The program attached through it (also names the pinned link).
    program: &'static str,
    attach_type: u32,
    /// Where, and the link's pin.
    cgroup: PathBuf,
    pin: PathBuf,
}

/// A witness program, the cgroup it watches and where its link is pinned.
pub(super) struct Witness {
    name: &'static str,
    attach_type: u32,
    prog: std::os::fd::OwnedFd,
    prog_id: u32,
    cgroup: PathBuf,
    pin: PathBuf,
}

/// The app-facing programs (attached per compat cgroup), in attach order:
/// the witnesses after the rewrite they check.
const COMPAT_PROGRAMS: [(&str, u32); 5] = [
    (LINKED_PROGRAMS[1], crate::links::attach_type::GETSOCKOPT),
    (LINKED_PROGRAMS[2], crate::links::attach_type::GETPEERNAME4),
    (LINKED_PROGRAMS[3], crate::links::attach_type::GETPEERNAME6),
    (LINKED_PROGRAMS[4], crate::links::attach_type::GETPEERNAME4),
    (LINKED_PROGRAMS[5], crate::links::attach_type::GETPEERNAME6),
];

/// Where the app-facing hooks are and what they cost, for the startup log.
pub(super) fn compat_summary(config: &DaemonConfig, decoder: &Path) -> Vec<String> {
    let cgroups = compat_cgroups(config, decoder)
        .iter()
        .map(|c| c.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = Vec::new();
    out.push(if config.getsockopt {
        format!(
            "getsockopt shim on {cgroups}: every getsockopt() by processes under these cgroups,              whatever the option, pays for it (the kernel copies the option in and out for              any cgroup getsockopt program: about 300 ns here, see BENCHMARKS.md); narrow it              with --compat-cgroup, or --no-getsockopt if no app calls getsockopt(SOL_IP, {})",
            config.getsockopt_name
        )
    } else {
        "getsockopt shim off (--no-getsockopt): getsockopt(SOL_IP, 1345) answers ENOPROTOOPT,          no getsockopt pays anything"
            .to_string()
    });
    out.push(if config.rewrite {
        format!(
            "accept()/getpeername() rewrite on {cgroups}: the socket's 4-tuple read and one hash lookup per call under these cgroups"
        )
    } else {
        "accept()/getpeername() rewrite off (--no-rewrite)".to_string()
    });
    out.push(if config.witness {
        format!(
            "live witness on {cgroups} (--witness): a second program on every getpeername              there, checked by `ttm verify --live`"
        )
    } else {
        "live witness off: `ttm verify` audits attachments; --witness also checks every          getpeername answer as it happens"
            .to_string()
    });
    out
}

/// The cgroups whose apps get the shim and the rewrite: `--compat-cgroup`,
/// else the decoder's cgroup.
pub fn compat_cgroups(config: &DaemonConfig, decoder: &Path) -> Vec<PathBuf> {
    if config.compat_cgroups.is_empty() {
        vec![decoder.to_path_buf()]
    } else {
        config.compat_cgroups.clone()
    }
}

/// What `config` attaches, in order: sockops on the decoder's cgroup, then
/// per compat cgroup the shim, the rewrite and the witness as configured.
pub(super) fn planned_attachments(
    config: &DaemonConfig,
    plan: &Plan,
    decoder: &Path,
) -> Result<Vec<Attachment>> {
    use crate::links::{self, attach_type};
    let decoder_id = links::cgroup_id(decoder)?;
    let mut out = vec![Attachment {
        program: if plan.sockops_reads_headers {
            SOCKOPS_PROGRAM
        } else {
            SOCKOPS_JOIN_PROGRAM
        },
        attach_type: attach_type::SOCK_OPS,
        cgroup: decoder.to_path_buf(),
        pin: config.pins.link(LINKED_PROGRAMS[0]),
    }];
    if !config.proxy_ports.is_empty() {
        out.push(Attachment {
            program: crate::PROXY_INGRESS_PROGRAM,
            attach_type: attach_type::INET_INGRESS,
            cgroup: decoder.to_path_buf(),
            pin: config.pins.link(crate::PROXY_INGRESS_PROGRAM),
        });
    }
    for cgroup in compat_cgroups(config, decoder) {
        let id = links::cgroup_id(&cgroup)
            .with_context(|| format!("--compat-cgroup {}", cgroup.display()))?;
        for (program, attach_type) in COMPAT_PROGRAMS {
            let wanted = match program {
                p if p == GETSOCKOPT_PROGRAM => config.getsockopt,
                p if pins::is_witness(p) => config.witness,
                _ => config.rewrite,
            };
            if wanted {
                out.push(Attachment {
                    program,
                    attach_type,
                    cgroup: cgroup.clone(),
                    pin: config.pins.compat_link(program, id, id == decoder_id),
                });
            }
        }
        // The UOA lookup of unconnected sockets needs each datagram's flow.
        if !config.udp_interfaces.is_empty() && config.getsockopt {
            for (program, attach_type) in crate::UDP_RECVMSG_PROGRAMS.into_iter().zip([
                links::attach_type::UDP4_RECVMSG,
                links::attach_type::UDP6_RECVMSG,
            ]) {
                out.push(Attachment {
                    program,
                    attach_type,
                    cgroup: cgroup.clone(),
                    pin: config.pins.compat_link(program, id, id == decoder_id),
                });
            }
        }
    }
    Ok(out)
}

/// Loads every program and attaches it through a pinned link: an existing
/// link to the same cgroup gets the new program by an atomic swap, else a new
/// link is created and pinned. Links no longer wanted are unpinned (which
/// detaches them). Returns how many links were taken over, and the witnesses.
pub(super) fn attach_all(
    ebpf: &mut Ebpf,
    config: &DaemonConfig,
    plan: &Plan,
    cgroup: &Path,
) -> Result<(usize, Vec<Witness>)> {
    use crate::links;
    let wanted = planned_attachments(config, plan, cgroup)?;
    // Links of app-facing programs no longer wanted (a cgroup dropped from
    // --compat-cgroup, the shim or witness turned off) go first.
    for pin in config.pins.cgroup_link_pins() {
        if !wanted.iter().any(|a| a.pin == pin) {
            fs::remove_file(&pin).with_context(|| format!("unpinning {}", pin.display()))?;
            info!("{} detached (no longer configured)", pin.display());
        }
    }
    let ingress_pin = config.pins.link(crate::PROXY_INGRESS_PROGRAM);
    if config.proxy_ports.is_empty() && ingress_pin.exists() {
        fs::remove_file(&ingress_pin)
            .with_context(|| format!("unpinning {}", ingress_pin.display()))?;
        info!("{} detached (no --proxy-protocol)", ingress_pin.display());
    }
    let mut adopted = 0;
    let mut witnesses = Vec::new();
    for a in wanted {
        let cgroup_file = File::open(&a.cgroup)
            .with_context(|| format!("opening cgroup {}", a.cgroup.display()))?;
        let cgroup_id = links::cgroup_id(&a.cgroup)?;
        let existing = links::open_pinned(&a.pin).ok();
        let prog_fd = match load_program(ebpf, a.program) {
            Err(e) if crate::UDP_RECVMSG_PROGRAMS.contains(&a.program) => {
                warn!(
                    "{e:#}: without it the UOA lookup answers connected UDP sockets only \
                     (unconnected ones get ENOENT) — `ttm doctor` says what this kernel lacks"
                );
                continue;
            }
            fd => fd?,
        };
        if pins::is_witness(a.program) {
            witnesses.push(Witness {
                name: a.program,
                attach_type: a.attach_type,
                prog: prog_fd.try_clone()?,
                prog_id: links::prog_id(prog_fd.as_fd())?,
                cgroup: a.cgroup.clone(),
                pin: a.pin.clone(),
            });
        }
        match existing {
            Some(link) if links::info(link.as_fd())?.cgroup_id == cgroup_id => {
                links::update(link.as_fd(), prog_fd.as_fd())
                    .with_context(|| format!("swapping the program behind {}", a.pin.display()))?;
                adopted += 1;
            }
            other => {
                if other.is_some() {
                    // Attached to another cgroup before: move it.
                    fs::remove_file(&a.pin)
                        .with_context(|| format!("unpinning {}", a.pin.display()))?;
                }
                let link = links::create(prog_fd.as_fd(), cgroup_file.as_fd(), a.attach_type)
                    .with_context(|| {
                        format!("attaching {} to cgroup {}", a.program, a.cgroup.display())
                    })?;
                links::pin(link.as_fd(), &a.pin).with_context(|| {
                    format!("pinning the link of {} at {}", a.program, a.pin.display())
                })?;
            }
        }
    }
    Ok((adopted, witnesses))
}

/// Moves each witness to the end of its chain if a program was attached
/// after it on the same cgroup, so that it sees every rewrite there.
pub(super) fn keep_witnesses_last(witnesses: &[Witness]) -> Result<()> {
    use crate::links;
    for w in witnesses {
        let cgroup_file = File::open(&w.cgroup)?;
        let ids = links::query_cgroup(cgroup_file.as_fd(), w.attach_type)?;
        if ids.last() == Some(&w.prog_id) || !ids.contains(&w.prog_id) {
            continue;
        }
        let link = links::create(w.prog.as_fd(), cgroup_file.as_fd(), w.attach_type)?;
        let _ = fs::remove_file(&w.pin);
        links::pin(link.as_fd(), &w.pin)?;
        warn!(
            "a program (id {}) was attached after ttm's {} on {}: witness moved last — run `ttm verify` to see what it is",
            ids.last().copied().unwrap_or(0),
            w.name,
            w.cgroup.display()
        );
    }
    Ok(())
}

/// Loads program `name` (by its type) and returns a copy of its fd.
pub(super) fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<std::os::fd::OwnedFd> {
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("{name} missing from the object"))?;
    let hint = match name {
        n if n == SOCKOPS_PROGRAM => "the kernel rejected the sockops program (see the verifier log above); on kernels before 5.10 use --mode tc",
        n if n == SOCKOPS_JOIN_PROGRAM => "the kernel rejected the sockops join program (see the verifier log above)",
        n if n == GETSOCKOPT_PROGRAM => "the kernel rejected the getsockopt shim (needs Linux 5.3+)",
        n if pins::is_witness(n) => "the kernel rejected a witness program (getpeername hooks need Linux 5.8+)",
        n if crate::UDP_RECVMSG_PROGRAMS.contains(&n) => "--udp-interface: the kernel rejected a UDP recvmsg hook (socket storage in recvmsg hooks needs Linux 5.10+; see the verifier log above)",
        n if n == crate::PROXY_INGRESS_PROGRAM => "--proxy-protocol: the kernel rejected the cgroup ingress program that reads a PROXY header before the socket exists (see the verifier log above)",
        _ => "the kernel rejected a getpeername program (needs Linux 5.8+) — run with --no-rewrite to do without",
    };
    let fd = match program {
        // Loaded once: the mode probe may have loaded it already.
        aya::programs::Program::SockOps(p) => {
            if p.fd().is_err() {
                p.load().context(hint)?;
            }
            p.fd()?.as_fd().try_clone_to_owned()?
        }
        aya::programs::Program::CgroupSockopt(p) => {
            if p.fd().is_err() {
                p.load().context(hint)?;
            }
            p.fd()?.as_fd().try_clone_to_owned()?
        }
        aya::programs::Program::CgroupSkb(p) => {
            if p.fd().is_err() {
                p.load().context(hint)?;
            }
            p.fd()?.as_fd().try_clone_to_owned()?
        }
        aya::programs::Program::CgroupSockAddr(p) => {
            if p.fd().is_err() {
                p.load().context(hint)?;
            }
            p.fd()?.as_fd().try_clone_to_owned()?
        }
        _ => bail!("{name} has an unexpected program type"),
    };
    Ok(fd)
}

/// Resolves `--mode`: the feature probe is the verifier itself — whether it
/// accepts the sockops program that reads the handshake segment.
pub(super) fn choose_plan(ebpf: &mut Ebpf, config: &DaemonConfig) -> Result<Plan> {
    let header_access = match config.mode {
        Mode::Tc => false,
        // Asked for explicitly: the verifier's own words if it refuses.
        Mode::Sockops | Mode::Both => {
            load_program(ebpf, SOCKOPS_PROGRAM)?;
            true
        }
        Mode::Auto => match load_program(ebpf, SOCKOPS_PROGRAM) {
            Ok(_) => true,
            Err(e) => {
                warn!("sockops cannot read TCP headers on this kernel: {e:#}");
                false
            }
        },
    };
    let (plan, why) = Plan::resolve(config.mode, header_access, &config.interfaces)?;
    if config.mode == Mode::Auto {
        info!("--mode auto chose {}: {why}", plan.mode);
    }
    Ok(plan)
}

/// Writes the trusted networks and the [`Config`]; `tc_reads_options`: the
/// TC program, if attached, decodes options (else it only follows PROXY
/// handshakes).
pub(super) fn write_config(
    ebpf: &mut Ebpf,
    config: &DaemonConfig,
    tc_reads_options: bool,
) -> Result<()> {
    let mut trie: LpmTrie<_, TrustKey, u8> = LpmTrie::try_from(
        ebpf.map_mut(maps::TRUSTED_LBS)
            .context("TRUSTED_LBS missing")?,
    )?;
    let wanted = config.trust.trie_entries();
    for (prefix, addr) in &wanted {
        trie.insert(&Key::new(*prefix, *addr), 1, 0)
            .context("writing the trusted networks")?;
    }
    // The trie is pinned: a network a previous daemon trusted and this one
    // was not told stays trusted unless removed (after the inserts, so the
    // networks kept are never missing).
    let stale: Vec<Key<TrustKey>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
        .collect();
    for key in &stale {
        trie.remove(key)
            .context("removing a network no longer trusted")?;
    }
    if !stale.is_empty() {
        info!(
            "{} network(s) trusted before are no longer trusted",
            stale.len()
        );
    }
    let udp = !config.udp_interfaces.is_empty();
    let mut cfg: Array<_, Config> =
        Array::try_from(ebpf.map_mut(maps::CONFIG).context("CONFIG missing")?)?;
    cfg.set(
        0,
        Config {
            formats: config.formats,
            trust_any: u32::from(config.trust_any),
            getsockopt_name: config.getsockopt_name,
            nat64_getsockopt_name: config.nat64_getsockopt_name.unwrap_or(0),
            short_buffer_retval: short_buffer_retval(),
            proxy_flags: if config.proxy_ports.is_empty() {
                0
            } else {
                maps::proxy_flags::WATCHING
            } | if tc_reads_options {
                0
            } else {
                maps::proxy_flags::TC_NO_OPTIONS
            },
            udp_idle_secs: if udp {
                config.udp_idle.as_secs() as u32
            } else {
                0
            },
            uoa_getsockopt_name: if udp {
                ttm_common::uoa::UOA_SO_GET_LOOKUP as u32
            } else {
                0
            },
            uoa_missing_retval: if crate::links::sockopt_errno_supported() {
                -libc::ENOENT
            } else {
                0
            },
            _pad: 0,
        },
        0,
    )
    .context("writing the decoder config")?;
    write_proxy_ports(ebpf, &config.proxy_ports)
}

/// The `--proxy-protocol` ports into `PROXY_PORTS` (pinned: ports a previous
/// daemon watched and this one was not told go).
fn write_proxy_ports(ebpf: &mut Ebpf, ports: &[u16]) -> Result<()> {
    let mut map: aya::maps::HashMap<_, u16, u8> = aya::maps::HashMap::try_from(
        ebpf.map_mut(maps::PROXY_PORTS)
            .context("PROXY_PORTS missing")?,
    )?;
    for port in ports {
        map.insert(port, 1, 0)
            .context("writing the --proxy-protocol ports")?;
    }
    let stale: Vec<u16> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|p| !ports.contains(p))
        .collect();
    for port in &stale {
        map.remove(port)
            .context("removing a port no longer in --proxy-protocol")?;
    }
    Ok(())
}

/// With `--proxy-protocol`: loads the stream-verdict program and attaches it
/// to `PROXY_SOCKS`. The attachment belongs to the pinned map, not to this
/// process: it outlives the daemon, so a restart or an upgrade never leaves
/// a watched connection without its program; `ttm detach` removes both.
/// A kernel that refuses the program gets a refusal here, before any port is
/// watched (sockops only watches once the config says so).
pub(super) fn attach_proxy(ebpf: &mut Ebpf, config: &DaemonConfig) -> Result<()> {
    if config.proxy_ports.is_empty() {
        return Ok(());
    }
    if let Some(why) = crate::host::proxy_protocol_unsupported() {
        anyhow::bail!(
            "--proxy-protocol needs Linux 5.11+: {why} — see `ttm doctor`; drop --proxy-protocol \
             to run without it"
        );
    }
    let socks = aya::maps::SockHash::<_, u64>::try_from(
        ebpf.map(maps::PROXY_SOCKS).context("PROXY_SOCKS missing")?,
    )?;
    let map_fd = socks.fd().try_clone().context("PROXY_SOCKS fd")?;
    let program: &mut aya::programs::SkSkb = ebpf
        .program_mut(crate::PROXY_VERDICT_PROGRAM)
        .context("the PROXY protocol program is missing from the object")?
        .try_into()?;
    program.load().context(
        "--proxy-protocol: this kernel's verifier refused the stream-verdict program that \
         removes the header (bpf_skb_adjust_room on sk_skb) — see `ttm doctor`; drop \
         --proxy-protocol to run without it",
    )?;
    let link = program
        .attach(&map_fd)
        .context("attaching the PROXY protocol program to PROXY_SOCKS")?;
    // Kept attached past this process: see above.
    std::mem::forget(program.take_link(link)?);
    info!(
        "PROXY protocol on port(s) {}: connections from trusted peers may begin with a v1 or v2 \
         header, which is recorded and removed before the app reads",
        config
            .proxy_ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The getsockopt shim's answer to a buffer under 20 bytes on this kernel.
fn short_buffer_retval() -> i32 {
    if crate::links::sockopt_errno_supported() {
        -libc::EINVAL
    } else {
        warn!(
            "this kernel lets cgroup programs only clear getsockopt errors: a buffer under 20 \
             bytes for getsockopt(SOL_IP, 1345) gets EFAULT instead of EINVAL"
        );
        -libc::EFAULT
    }
}
