//! `cargo xtask test --kernel VERSION`: the lab tests on Debian's kernels
//! inside QEMU (virtme-ng, TCG, sharing the host's root filesystem so the
//! test binaries built here run unchanged), and on the host kernel. Each
//! run writes `target/kernels/<kernel>/out/results`; a run over all
//! kernels also rewrites the compatibility table in README.md.
//!
//! `guest`: the script each kernel runs and its results; `qemu`: fetching
//! Debian's kernels and booting them; `table`: the README's matrix.

mod guest;
mod qemu;
mod table;

use guest::{guest_script, read_results, RUN_LIMIT_SECS};
use qemu::{boot, fetch};

pub use guest::saved;
pub use table::{all_names, table, update_readme};

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

/// A Debian kernel of the matrix.
pub struct Kernel {
    /// What `--kernel` calls it.
    pub name: &'static str,
    /// Debian suites (with their archive) that carry it.
    suites: &'static [(&'static str, &'static str)],
    /// Package names start with this (generic `-amd64-unsigned` flavour:
    /// the cloud one lacks 9p, so the host filesystem cannot be mounted).
    prefix: &'static str,
}

const DEBIAN: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";

/// The Debian kernels of the matrix, oldest first.
pub const KERNELS: [Kernel; 3] = [
    Kernel {
        name: "5.10",
        suites: &[(DEBIAN, "bullseye"), (SECURITY, "bullseye-security")],
        prefix: "linux-image-5.10.",
    },
    Kernel {
        name: "6.1",
        suites: &[(DEBIAN, "bookworm"), (SECURITY, "bookworm-security")],
        prefix: "linux-image-6.1.",
    },
    Kernel {
        name: "6.12",
        suites: &[(DEBIAN, "trixie"), (SECURITY, "trixie-security")],
        prefix: "linux-image-6.12.",
    },
];

/// One test binary run: a label (`mode/test`), the environment, the binary.
#[derive(Clone, Debug)]
pub struct Run {
    pub label: String,
    pub mode: &'static str,
    pub binary: PathBuf,
}

/// What each kernel must pass: one test file per capability the README's
/// table reports, in sockops mode, the TC path's own tests, and the PROXY
/// suite with headers cut at the interface (`cut`).
const MATRIX_TESTS: [(&str, &str); 13] = [
    ("sockops", "decode_4to4"),
    ("sockops", "formats_6to4"),
    ("sockops", "compat_shim"),
    ("sockops", "lookup_service"),
    ("sockops", "tc_differential"),
    ("sockops", "tc_mode"),
    ("tc", "decode_4to4"),
    ("sockops", "ipv6_path"),
    ("tc", "ipv6_path"),
    ("sockops", "proxy_protocol"),
    ("cut", "proxy_protocol"),
    ("sockops", "udp_uoa"),
    ("sockops", "udp_differential"),
];

fn root() -> Result<PathBuf> {
    Ok(std::env::current_dir()?)
}

fn kernels_dir() -> Result<PathBuf> {
    Ok(root()?.join("target").join("kernels"))
}

/// Resolves `--kernel` values (`all` = every Debian kernel and the host).
pub fn resolve(names: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for name in names {
        if name == "all" {
            out.extend(KERNELS.iter().map(|k| k.name.to_string()));
            out.push("host".into());
        } else if name == "host" || KERNELS.iter().any(|k| k.name == name) {
            out.push(name.clone());
        } else {
            bail!(
                "--kernel {name}: known kernels are {}, host and all",
                KERNELS
                    .iter()
                    .map(|k| k.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    out.dedup();
    Ok(out)
}

/// The test binaries of the lab suite, built for this host (cargo's JSON
/// messages name each executable).
pub fn runs(full: bool, tc_suite: &[&str]) -> Result<Vec<Run>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args([
            "test",
            "-p",
            "ttm-tests",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .context("building the test binaries")?;
    if !out.status.success() {
        bail!(
            "building the test binaries failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|v| v == "test"));
        if message["reason"] == "compiler-artifact" && is_test {
            if let (Some(name), Some(exe)) = (
                message["target"]["name"].as_str(),
                message["executable"].as_str(),
            ) {
                binaries.push((name.to_string(), PathBuf::from(exe)));
            }
        }
    }
    binaries.sort();
    let wanted: Vec<(&'static str, String)> = if full {
        let mut all: Vec<(&'static str, String)> = binaries
            .iter()
            .map(|(n, _)| ("sockops", n.clone()))
            .collect();
        all.extend(tc_suite.iter().map(|t| ("tc", t.to_string())));
        all
    } else {
        MATRIX_TESTS
            .iter()
            .map(|(m, t)| (*m, t.to_string()))
            .collect()
    };
    wanted
        .into_iter()
        .map(|(mode, test)| {
            let binary = binaries
                .iter()
                .find(|(n, _)| *n == test)
                .map(|(_, p)| p.clone())
                .with_context(|| format!("no test binary named {test}"))?;
            Ok(Run {
                label: format!("{mode}/{test}"),
                mode,
                binary,
            })
        })
        .collect()
}

/// The outcome of one run.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub label: String,
    pub code: i32,
    pub seconds: u64,
    /// 2 when the first try failed and the run was repeated (the table
    /// says so; the first try's log is kept as `<label>.try1.log`).
    pub attempts: u32,
}

/// Runs the suite on `kernel` (a Debian kernel in QEMU, or `host`) and
/// returns each run's outcome; logs go to `target/kernels/<kernel>/`.
pub fn run_on(kernel: &str, runs: &[Run]) -> Result<Vec<Outcome>> {
    let dir = kernels_dir()?.join(kernel);
    let out = dir.join("out");
    // Only this directory is writable from the guest; the host clears it.
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    let script = guest_script(runs, &out, kernel != "host");
    let script_path = dir.join("run.sh");
    fs::write(&script_path, script)?;
    fs::set_permissions(
        &script_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let started = Instant::now();
    if kernel == "host" {
        let status = Command::new("sh").arg(&script_path).status()?;
        if !status.success() {
            bail!("the host run script failed ({status})");
        }
    } else {
        let spec = KERNELS
            .iter()
            .find(|k| k.name == kernel)
            .context("unknown kernel")?;
        let vmlinuz = fetch(spec)?;
        // Every run at its limit twice (a failed run is tried again), plus
        // boot and the doctor.
        let limit = Duration::from_secs(2 * RUN_LIMIT_SECS * runs.len() as u64 + 10 * 60);
        boot(
            &vmlinuz,
            &script_path,
            &out,
            &dir.join("console.log"),
            limit,
        )?;
    }
    let outcomes = read_results(&out, runs)?;
    println!(
        "xtask: {kernel}: {} run(s) in {:.0?}",
        outcomes.len(),
        started.elapsed()
    );
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_means_every_kernel_and_the_host() {
        assert_eq!(
            resolve(&["all".into()]).unwrap(),
            ["5.10", "6.1", "6.12", "host"]
        );
        assert!(resolve(&["4.19".into()]).is_err());
    }
}
