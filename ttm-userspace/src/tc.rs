//! ttm's TC programs on interfaces — the ingress classifier on `--interface`s
//! and `--proxy-interface`s, the egress one on the latter: a pinned tcx link
//! where the kernel has tcx (6.6+), a netlink cls_bpf filter on the clsact
//! qdisc otherwise. Both outlive the daemon process, so a hand-over leaves them
//! in place and the next daemon swaps its program in without a gap.

use std::fs;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{Link as _, SchedClassifier, TcAttachType};
use log::info;
use serde::{Deserialize, Serialize};

use crate::links;
use crate::pins::PinDir;

/// The ingress classifier's name in the object.
pub const TC_PROGRAM: &str = "ttm_tc_ingress";
/// The ingress classifier's tails: PROXY header bytes cut out of segments,
/// and a connection's first header read.
pub const TC_CUT_PROGRAM: &str = "ttm_tc_cut";
/// See [`TC_CUT_PROGRAM`].
pub const TC_FIRST_PROGRAM: &str = "ttm_tc_first";
/// The egress classifier's name in the object (PROXY renumbering).
pub const TC_EGRESS_PROGRAM: &str = "ttm_tc_egress";

/// The UDP marking decoder, on the ingress of `--udp-interface`s.
pub const UDP_PROGRAM: &str = "ttm_udp_ingress";

/// Priority of ttm's netlink filters on clsact.
const NETLINK_PRIORITY: u16 = 0x7e11;

/// One of ttm's TC programs and the side of the interface it sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    /// Its name in the object.
    pub program: &'static str,
    /// Egress (else ingress).
    pub egress: bool,
    /// The two handles its netlink filter alternates between: a new daemon
    /// attaches on the free one, then removes the other (no gap).
    handles: [u16; 2],
}

/// The ingress classifier (options, PROXY headers cut).
pub const INGRESS: Hook = Hook {
    program: TC_PROGRAM,
    egress: false,
    handles: [0x7e1, 0x7e2],
};
/// The UDP marking decoder (DPVS's UOA).
pub const UDP_INGRESS: Hook = Hook {
    program: UDP_PROGRAM,
    egress: false,
    handles: [0x7e5, 0x7e6],
};
/// The egress classifier (PROXY acknowledgments renumbered).
pub const EGRESS: Hook = Hook {
    program: TC_EGRESS_PROGRAM,
    egress: true,
    handles: [0x7e3, 0x7e4],
};

impl Hook {
    fn side(&self) -> &'static str {
        if self.egress {
            "egress"
        } else {
            "ingress"
        }
    }
    fn attach_type(&self) -> TcAttachType {
        if self.egress {
            TcAttachType::Egress
        } else {
            TcAttachType::Ingress
        }
    }
}

/// How the operator wants the classifier attached (`--tc-attach`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TcAttach {
    /// tcx where the kernel has it (probed), netlink otherwise.
    #[default]
    Auto,
    /// tcx links only (Linux 6.6+).
    Tcx,
    /// cls_bpf filters on the clsact qdisc (any kernel; coexists with
    /// tools that manage tc filters themselves).
    Netlink,
}

/// How the classifier sits on one interface.
#[derive(Debug)]
pub enum Attachment {
    /// A tcx link pinned at `pin`.
    Tcx {
        /// Interface name.
        iface: String,
        /// Pin of the link.
        pin: PathBuf,
        /// Which program.
        hook: Hook,
    },
    /// A cls_bpf filter on the clsact qdisc.
    Netlink {
        /// Interface name.
        iface: String,
        /// Filter handle.
        handle: u16,
        /// Which program.
        hook: Hook,
    },
}

impl Attachment {
    /// `tcx` or `netlink`.
    pub fn kind(&self) -> &'static str {
        match self {
            Attachment::Tcx { .. } => "tcx",
            Attachment::Netlink { .. } => "netlink",
        }
    }

    /// `ingress` or `egress`.
    pub fn side(&self) -> &'static str {
        match self {
            Attachment::Tcx { hook, .. } | Attachment::Netlink { hook, .. } => hook.side(),
        }
    }

    /// The interface.
    pub fn iface(&self) -> &str {
        match self {
            Attachment::Tcx { iface, .. } | Attachment::Netlink { iface, .. } => iface,
        }
    }

    /// Removes it from the interface (an interface already gone is fine).
    pub fn detach(&self) {
        match self {
            Attachment::Tcx { pin, .. } => {
                let _ = fs::remove_file(pin);
            }
            Attachment::Netlink {
                iface,
                handle,
                hook,
            } => {
                detach_netlink(hook, iface, *handle);
            }
        }
    }
}

/// Pin path of the ingress classifier's tcx link on `iface`.
pub fn tcx_pin(pins: &PinDir, iface: &str) -> PathBuf {
    tcx_pin_of(&INGRESS, pins, iface)
}

/// Pin path of `hook`'s tcx link on `iface`.
pub fn tcx_pin_of(hook: &Hook, pins: &PinDir, iface: &str) -> PathBuf {
    pins.link(&format!("{}@{iface}", hook.program))
}

/// `hook`'s tcx links pinned in `pins` (a previous daemon's).
pub fn pinned_tcx_links(hook: &Hook, pins: &PinDir) -> Vec<PathBuf> {
    let prefix = format!("link_{}@", hook.program);
    fs::read_dir(pins.path())
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The index of `iface` in this network namespace, or an error saying where to look.
pub fn ifindex(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        anyhow::bail!(
            "interface {iface:?} not found in this network namespace — check `ip link`; the daemon must run in the namespace that owns it"
        );
    }
    Ok(index)
}

/// Attaches the loaded classifier `program` (`hook`'s) to every interface;
/// returns the attachments and how many were taken over.
pub fn attach_all(
    hook: &Hook,
    program: &mut SchedClassifier,
    interfaces: &[String],
    pins: &PinDir,
    how: TcAttach,
) -> Result<(Vec<Attachment>, usize)> {
    let prog = program.fd()?.as_fd().try_clone_to_owned()?;
    let tcx = match how {
        TcAttach::Auto => links::tcx_supported(),
        TcAttach::Tcx if !links::tcx_supported() => anyhow::bail!(
            "--tc-attach tcx: this kernel has no tcx (Linux 6.6+) — use --tc-attach netlink or auto"
        ),
        TcAttach::Tcx => true,
        TcAttach::Netlink => false,
    };
    let mut out = Vec::new();
    let mut adopted = 0;
    for iface in interfaces {
        let index = ifindex(iface)?;
        let pin = tcx_pin_of(hook, pins, iface);
        if tcx {
            if let Ok(link) = links::open_pinned(&pin) {
                let same_interface = links::info(link.as_fd())
                    .map(|i| i.cgroup_id as u32 == index)
                    .unwrap_or(false);
                if same_interface {
                    links::update(link.as_fd(), prog.as_fd()).with_context(|| {
                        format!("swapping the program behind {}", pin.display())
                    })?;
                    adopted += 1;
                    out.push(Attachment::Tcx {
                        iface: iface.clone(),
                        pin,
                        hook: *hook,
                    });
                    continue;
                }
                // The interface was re-created: that link is dead.
                let _ = fs::remove_file(&pin);
            }
            let link = links::create_tcx(prog.as_fd(), index, hook.egress).with_context(|| {
                format!(
                    "attaching {} to {iface} {} (tcx)",
                    hook.program,
                    hook.side()
                )
            })?;
            links::pin(link.as_fd(), &pin)
                .with_context(|| format!("pinning the tcx link at {}", pin.display()))?;
            out.push(Attachment::Tcx {
                iface: iface.clone(),
                pin,
                hook: *hook,
            });
            continue;
        }
        // A tcx link left by an earlier daemon would run the program twice.
        let _ = fs::remove_file(&pin);
        let (handle, took_over) = attach_netlink(hook, program, iface)?;
        adopted += usize::from(took_over);
        out.push(Attachment::Netlink {
            iface: iface.clone(),
            handle,
            hook: *hook,
        });
    }
    Ok((out, adopted))
}

/// cls_bpf on clsact: attach on a free handle of ttm's two, then remove
/// the other one (a previous daemon's). Returns the handle and whether an
/// old filter was replaced.
fn attach_netlink(hook: &Hook, program: &mut SchedClassifier, iface: &str) -> Result<(u16, bool)> {
    if let Err(e) = tc::qdisc_add_clsact(iface) {
        // Already there (ours from before, or another tool's) is fine.
        let exists =
            matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(e).with_context(|| format!("adding the clsact qdisc to {iface}"));
        }
    }
    let mut last_err = None;
    for (i, handle) in hook.handles.into_iter().enumerate() {
        let options = TcAttachOptions::Netlink(NlOptions {
            priority: NETLINK_PRIORITY,
            handle: TcHandle::new(0, handle),
            classid: None,
        });
        match program.attach_with_options(iface, hook.attach_type(), options) {
            Ok(id) => {
                // The filter must outlive this process (hand-over): ttm
                // removes it itself, by handle.
                std::mem::forget(program.take_link(id)?);
                let other = hook.handles[1 - i];
                let took_over = detach_netlink(hook, iface, other);
                return Ok((handle, took_over));
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.expect("two attempts")).with_context(|| {
        format!(
            "attaching {} to {iface} {} (netlink cls_bpf, priority {NETLINK_PRIORITY:#x})",
            hook.program,
            hook.side()
        )
    })
}

/// Removes ttm's netlink filter `handle` of `hook` from `iface`; true if one
/// was there.
fn detach_netlink(hook: &Hook, iface: &str, handle: u16) -> bool {
    match SchedClassifierLink::attached(
        iface,
        hook.attach_type(),
        NETLINK_PRIORITY,
        TcHandle::new(0, handle),
        None,
    ) {
        Ok(link) => link.detach().is_ok(),
        Err(_) => false,
    }
}

/// Removes every netlink filter ttm may have left on `iface` (`ttm detach`).
pub fn detach_netlink_filters(iface: &str) -> usize {
    [INGRESS, EGRESS, UDP_INGRESS]
        .iter()
        .flat_map(|hook| hook.handles.map(|h| (hook, h)))
        .filter(|(hook, h)| detach_netlink(hook, iface, *h))
        .count()
}

/// Logs each attachment.
pub fn log_attachments(attachments: &[Attachment]) {
    for a in attachments {
        match a {
            Attachment::Tcx { iface, pin, hook } => {
                info!(
                    "TC {} on {iface}: tcx link pinned at {}",
                    hook.side(),
                    pin.display()
                )
            }
            Attachment::Netlink {
                iface,
                handle,
                hook,
            } => info!(
                "TC {} on {iface}: cls_bpf filter (clsact, priority {NETLINK_PRIORITY:#x}, handle {handle:#x}): no tcx on this kernel, or --tc-attach netlink",
                hook.side()
            ),
        }
    }
}
