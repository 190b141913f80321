//! Where the daemon pins the maps that `ttm lookup` and `ttm stats` open.

use std::path::{Path, PathBuf};

use ttm_common::maps;

/// Default pin directory on bpffs.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ttm";

/// The maps ttm pins, by name (the pin file has the map's name).
pub const PINNED_MAPS: [&str; 4] = [maps::RECORDS, maps::STATS, maps::CONFIG, maps::TRUSTED_LBS];

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
}

impl Default for PinDir {
    fn default() -> Self {
        PinDir::new(DEFAULT_PIN_DIR)
    }
}
