//! Adoption, upgrade and detach: the lock that makes one daemon per pin
//! directory, the SIGUSR2 hand-over to a new daemon, and removing the pins
//! (which detaches everything) on shutdown or by `ttm detach`.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use log::info;

use crate::pins::{PinDir, PINNED_MAPS};

use super::Daemon;

/// Exit status of a daemon that handed over (SIGUSR2): non-zero, so that
/// systemd's `Restart=on-failure` starts the next daemon, which adopts the pins.
pub const HANDED_OVER_EXIT: u8 = 75;

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.keep_attached {
            info!(
                "handed over: programs stay attached to {}, pins kept in {}",
                self.cgroup.display(),
                self.pins.path().display()
            );
            return;
        }
        for attachment in &self.tc_attachments {
            attachment.detach();
        }
        remove_pins(&self.pins);
        info!("ttm detached from {}; pins removed", self.cgroup.display());
        // `ebpf` drops after this, closing the programs.
    }
}

/// Removes ttm's pins — links first, which detaches the programs — and the
/// directory if it is then empty. Missing pins are fine. Returns how many
/// pins were removed.
pub fn remove_pins(pins: &PinDir) -> usize {
    let mut removed = 0;
    // Every link: sockops, the app-facing programs of each compat cgroup,
    // the TC classifier's tcx links.
    for pin in pins.link_pins() {
        removed += usize::from(fs::remove_file(pin).is_ok());
    }
    for name in PINNED_MAPS {
        removed += usize::from(fs::remove_file(pins.map(name)).is_ok());
    }
    let _ = fs::remove_dir(pins.path());
    removed
}

/// `ttm detach`: removes everything a daemon on `pins` attached and pinned
/// (after a crash, or to stop using ttm), refusing while a daemon runs.
pub fn detach(pins: &PinDir) -> Result<usize> {
    let _lock = InstanceLock::acquire(pins.path()).context(
        "a daemon is running on this pin directory — stop it with SIGTERM (it detaches everything itself)",
    )?;
    Ok(remove_pins(pins))
}

/// Asks the daemon holding `pin_dir`'s lock to exit without detaching
/// (SIGUSR2), and takes the lock once it has let go.
pub(super) fn hand_over(pin_dir: &Path) -> Result<InstanceLock> {
    let lock = InstanceLock::path_for(pin_dir);
    let holder: Option<i32> = fs::read_to_string(&lock)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    match holder {
        // SAFETY: plain kill(2).
        Some(pid) if unsafe { libc::kill(pid, libc::SIGUSR2) } == 0 => {
            info!("--upgrade: asked daemon pid {pid} to hand over");
        }
        _ => info!("--upgrade: no running daemon on {}", pin_dir.display()),
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match InstanceLock::acquire(pin_dir) {
            Ok(lock) => return Ok(lock),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(
                    e.context("the running daemon did not hand over within 20 s — check its log")
                )
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// An exclusive lock per pin directory, so two daemons never share pins.
pub(super) struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// The lock file of `pin_dir`.
    fn path_for(pin_dir: &Path) -> PathBuf {
        let name = pin_dir
            .to_string_lossy()
            .trim_matches('/')
            .replace('/', "_");
        Path::new("/run/ttm").join(format!("{name}.lock"))
    }

    pub(super) fn acquire(pin_dir: &Path) -> Result<InstanceLock> {
        let dir = Path::new("/run/ttm");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = InstanceLock::path_for(pin_dir);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: valid fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "another ttm daemon (pid {}) already owns {} — stop it first, or use another --pin-dir",
                holder.trim(),
                pin_dir.display()
            );
        }
        file.set_len(0)?;
        std::io::Write::write_all(&mut file, std::process::id().to_string().as_bytes())?;
        Ok(InstanceLock { _file: file, path })
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
