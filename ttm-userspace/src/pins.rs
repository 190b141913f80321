//! Where the daemon pins the maps that `ttm lookup` and `ttm stats` open.

use std::path::{Path, PathBuf};

use ttm_common::maps;

/// Default pin directory on bpffs.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ttm";

/// The maps ttm pins, by name (the pin file has the map's name). A new
/// daemon reuses them, so records and counters survive restarts.
pub const PINNED_MAPS: [&str; 14] = [
    maps::RECORDS,
    maps::RECORD_EVENTS,
    maps::STATS,
    maps::CONFIG,
    maps::TRUSTED_LBS,
    maps::MISMATCHES,
    maps::TC_RECORDS,
    maps::TC_PENDING,
    maps::PROXY_PORTS,
    maps::PROXY_SOCKS,
    maps::PROXY_PENDING,
    maps::PROXY_TLVS,
    maps::PROXY_FLOWS,
    maps::UDP_FLOWS,
];

/// The programs ttm attaches, by name, in attach order (the witnesses after
/// the rewrite they check); each link is pinned as `link_<name>` (the
/// app-facing ones on other cgroups than the decoder's as
/// `link_<name>@cg<cgroup id>`, see [`PinDir::compat_link`]).
pub const LINKED_PROGRAMS: [&str; 6] = [
    "ttm_sockops",
    "ttm_getsockopt",
    "ttm_getpeername4",
    "ttm_getpeername6",
    "ttm_witness4",
    "ttm_witness6",
];

/// Whether `program`, one of [`LINKED_PROGRAMS`], is a witness: attached
/// only with `--witness`.
pub fn is_witness(program: &str) -> bool {
    program.starts_with("ttm_witness")
}

/// A pin directory and the paths inside it.
#[derive(Clone, Debug)]
pub struct PinDir(PathBuf);

impl PinDir {
    /// Wraps `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PinDir(path.into())
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Path of the pin of map `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Path of the pinned link of program `name`.
    pub fn link(&self, name: &str) -> PathBuf {
        self.0.join(format!("link_{name}"))
    }

    /// Path of the pinned link of app-facing program `name` on the cgroup
    /// with id `cgroup_id`: `link_<name>` on the decoder's own cgroup (as
    /// before compat cgroups existed, so upgrades adopt it), else
    /// `link_<name>@cg<id>`.
    pub fn compat_link(&self, name: &str, cgroup_id: u64, decoder_cgroup: bool) -> PathBuf {
        if decoder_cgroup {
            self.link(name)
        } else {
            self.0.join(format!("link_{name}@cg{cgroup_id}"))
        }
    }

    /// Every pinned link here (cgroup and tcx links alike).
    pub fn link_pins(&self) -> Vec<PathBuf> {
        self.pins_starting("link_")
    }

    /// Pinned links of the app-facing cgroup programs (shim, rewrite,
    /// witness, UDP recvmsg notes), on every cgroup.
    pub fn cgroup_link_pins(&self) -> Vec<PathBuf> {
        LINKED_PROGRAMS[1..]
            .iter()
            .chain(&crate::UDP_RECVMSG_PROGRAMS)
            .flat_map(|name| {
                let exact = self.link(name);
                let mut found = self.pins_starting(&format!("link_{name}@cg"));
                if exact.exists() {
                    found.push(exact);
                }
                found
            })
            .collect()
    }

    fn pins_starting(&self, prefix: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return Vec::new();
        };
        let mut out: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path())
            .collect();
        out.sort();
        out
    }
}

impl Default for PinDir {
    fn default() -> Self {
        PinDir::new(DEFAULT_PIN_DIR)
    }
}
