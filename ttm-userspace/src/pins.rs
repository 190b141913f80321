//! Where the daemon pins the maps that `ttm lookup` and `ttm stats` open.

use std::path::{Path, PathBuf};

use ttm_common::maps;

/// Default pin directory on bpffs.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ttm";

/// The maps ttm pins, by name (the pin file has the map's name). A new
/// daemon reuses them, so records and counters survive restarts.
pub const PINNED_MAPS: [&str; 9] = [
    maps::RECORDS,
    maps::TUPLES,
    maps::PEER_STORAGE,
    maps::STATS,
    maps::CONFIG,
    maps::TRUSTED_LBS,
    maps::MISMATCHES,
    maps::TC_RECORDS,
    maps::TC_PENDING,
];

/// The programs ttm attaches, by name, in attach order (the witnesses after
/// the rewrite they check); each link is pinned as `link_<name>`.
pub const LINKED_PROGRAMS: [&str; 6] = [
    "ttm_sockops",
    "ttm_getsockopt",
    "ttm_getpeername4",
    "ttm_getpeername6",
    "ttm_witness4",
    "ttm_witness6",
];

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
}

impl Default for PinDir {
    fn default() -> Self {
        PinDir::new(DEFAULT_PIN_DIR)
    }
}
