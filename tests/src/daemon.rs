//! Runs the real `ttm daemon` binary for a test or the demo.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::process::Guarded;

/// Path of the `ttm` binary: `$TTM_BIN`, else beside the running executable
/// in the cargo target directory.
pub fn ttm_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TTM_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("ttm");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("ttm binary not found — build it with `cargo build -p ttm-userspace` or set TTM_BIN")
}

/// The mode the lab's daemons run in: `$TTM_LAB_MODE` (`sockops`, the
/// default, `tc` or `both`). `cargo xtask test` runs the lab suite in each.
pub fn lab_mode() -> String {
    match std::env::var("TTM_LAB_MODE") {
        Ok(mode) if !mode.is_empty() => mode,
        _ => "sockops".to_string(),
    }
}

/// A running `ttm daemon`; stopped with SIGTERM on drop.
pub struct TtmDaemon {
    process: Guarded,
    /// Its pin directory.
    pub pin_dir: PathBuf,
    /// Its lookup socket.
    pub socket: PathBuf,
    /// The process is gone without cleaning up on purpose (crash, hand-over):
    /// dropping this value must not remove what the next daemon uses.
    keep_pins: bool,
}

/// The lookup socket of the daemon that pins in `pin_dir`: one per pin
/// directory, so a lab daemon never takes over a production daemon's socket.
pub fn socket_for(pin_dir: &Path) -> PathBuf {
    let name = pin_dir
        .file_name()
        .map_or_else(|| "ttm".to_string(), |n| n.to_string_lossy().into_owned());
    PathBuf::from(format!("/run/ttm/{name}.sock"))
}

impl TtmDaemon {
    /// Starts `ttm daemon --trust <trust> --cgroup <cgroup> --pin-dir <pin_dir>
    /// --socket <socket_for(pin_dir)>` plus `extra`, and waits until it reports ready.
    pub fn start(trust: &str, cgroup: &Path, pin_dir: &Path, extra: &[&str]) -> Result<TtmDaemon> {
        TtmDaemon::start_under(&[], trust, cgroup, pin_dir, extra)
    }

    /// Like [`TtmDaemon::start`], run through `wrapper` (e.g. `setpriv ...`).
    pub fn start_under(
        wrapper: &[String],
        trust: &str,
        cgroup: &Path,
        pin_dir: &Path,
        extra: &[&str],
    ) -> Result<TtmDaemon> {
        TtmDaemon::start_in_mode(&lab_mode(), wrapper, trust, cgroup, pin_dir, extra)
    }

    /// Like [`TtmDaemon::start_under`], in `mode` whatever `$TTM_LAB_MODE`
    /// says: `tc`, `both` and `auto` run in the real server's namespace with
    /// `--interface` its interface; `""` passes neither flag.
    pub fn start_in_mode(
        mode: &str,
        wrapper: &[String],
        trust: &str,
        cgroup: &Path,
        pin_dir: &Path,
        extra: &[&str],
    ) -> Result<TtmDaemon> {
        let socket = socket_for(pin_dir);
        let mode = mode.to_string();
        let mut wrapper = wrapper.to_vec();
        // An empty mode passes no --mode (the daemon's default, auto) and no interface.
        let mut mode_args: Vec<String> = Vec::new();
        if !mode.is_empty() {
            mode_args.extend(["--mode".into(), mode.clone()]);
        }
        // TC on the real server's interface: a mode with TC, or PROXY
        // headers sent up alone there.
        let tc = (!mode.is_empty() && mode != "sockops")
            || extra.contains(&"--proxy-interface")
            || extra.contains(&"--udp-interface");
        if tc {
            // The TC classifier watches the real server's interface, so the
            // daemon joins the real server's network namespace (only that:
            // bpffs and cgroupfs stay the host's).
            let mut prefix = vec![
                "nsenter".to_string(),
                format!("--net=/run/netns/{}", crate::lab::RS_NS),
            ];
            prefix.append(&mut wrapper);
            wrapper = prefix;
        }
        if !mode.is_empty() && mode != "sockops" {
            mode_args.extend(["--interface".into(), crate::lab::RS_IF.into()]);
        }
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(ttm_bin()?);
                c
            }
            None => Command::new(ttm_bin()?),
        };
        cmd.args(["daemon", "--trust", trust, "--cgroup"])
            .arg(cgroup)
            .arg("--pin-dir")
            .arg(pin_dir)
            .arg("--socket")
            .arg(&socket)
            .args(&mode_args)
            .args(extra)
            .stderr(Stdio::inherit());
        let process = Guarded::spawn(cmd)?;
        process
            .wait_for(Duration::from_secs(60), |l| l.contains("ttm: ready"))
            .context("ttm daemon did not become ready")?;
        Ok(TtmDaemon {
            process,
            pin_dir: pin_dir.to_path_buf(),
            socket,
            keep_pins: false,
        })
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Runs a `ttm` subcommand against this daemon (its socket; for `stats`
    /// also its pins); returns (exit code, stdout).
    pub fn cli(&self, args: &[&str]) -> Result<(i32, String)> {
        let mut cmd = Command::new(ttm_bin()?);
        cmd.args(args).arg("--socket").arg(&self.socket);
        if args.first() == Some(&"stats") {
            cmd.arg("--pin-dir").arg(&self.pin_dir);
        }
        let out = cmd.output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// Kills the daemon with SIGKILL and leaves what it left behind (pins,
    /// links, socket file), as a crash would.
    pub fn crash(mut self) {
        self.crash_in_place();
    }

    /// Like [`TtmDaemon::crash`], keeping this value (its Drop then cleans nothing).
    pub fn crash_in_place(&mut self) {
        self.process.signal(libc::SIGKILL);
        let _ = self.process.wait(Duration::from_secs(10));
        self.keep_pins = true;
    }

    /// Waits for the daemon to exit after handing over to an `--upgrade`
    /// daemon; its Drop then cleans nothing.
    pub fn wait_handed_over(&mut self) -> Result<std::process::ExitStatus> {
        self.keep_pins = true;
        self.process.wait(Duration::from_secs(20))
    }

    /// Stops the daemon with SIGTERM and returns its exit status.
    pub fn stop(mut self) -> Result<std::process::ExitStatus> {
        self.process.signal(libc::SIGTERM);
        self.process.wait(Duration::from_secs(20))
    }
}

impl Drop for TtmDaemon {
    fn drop(&mut self) {
        if self.keep_pins {
            return;
        }
        self.process.signal(libc::SIGTERM);
        let _ = self.process.wait(Duration::from_secs(20));
        ttm::daemon::remove_pins(&ttm::pins::PinDir::new(&self.pin_dir));
        let _ = std::fs::remove_file(&self.socket);
    }
}
