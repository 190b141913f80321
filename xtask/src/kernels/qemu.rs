//! Debian's kernels, fetched with an apt configuration of their own, and
//! booted under QEMU with virtme-ng.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::{kernels_dir, Kernel};

/// The virtme-ng release this was verified with.
const VIRTME_NG: &str = "virtme-ng==1.42";

/// Installs QEMU and virtme-ng (in a venv under target/kernels) if missing.
fn ensure_qemu() -> Result<PathBuf> {
    if !Path::new("/usr/bin/qemu-system-x86_64").exists() || !Path::new("/usr/bin/busybox").exists()
    {
        crate::step::run(
            "xtask: installing qemu-system-x86 kmod busybox-static (for the kernel matrix)",
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "qemu-system-x86",
                    "kmod",
                    "busybox-static",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    let venv = kernels_dir()?.join("venv");
    let vng = venv.join("bin").join("vng");
    if !vng.exists() {
        println!("xtask: installing {VIRTME_NG} into {}", venv.display());
        crate::step::quiet(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        crate::step::quiet(
            Command::new(venv.join("bin").join("pip")).args(["install", "-q", VIRTME_NG]),
        )?;
    }
    Ok(venv.join("bin"))
}

/// The kernel image of `spec`, downloaded once into target/kernels with an
/// apt configuration of its own (the system's is left untouched).
pub(super) fn fetch(spec: &Kernel) -> Result<PathBuf> {
    let dir = kernels_dir()?.join(spec.name);
    let extracted = dir.join("root");
    if let Some(found) = vmlinuz_in(&extracted) {
        return Ok(found);
    }
    let apt = kernels_dir()?.join("apt").join(spec.name);
    for sub in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(apt.join(sub))?;
    }
    let sources: String = spec
        .suites
        .iter()
        .map(|(archive, suite)| {
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {archive} {suite} main\n"
            )
        })
        .collect();
    fs::write(apt.join("sources.list"), sources)?;
    let options = [
        format!(
            "Dir::Etc::SourceList={}",
            apt.join("sources.list").display()
        ),
        "Dir::Etc::SourceParts=/dev/null".to_string(),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        format!("Dir::Cache={}", apt.join("cache").display()),
    ];
    let with_options = |tool: &str| {
        let mut c = Command::new(tool);
        for o in &options {
            c.arg("-o").arg(o);
        }
        c
    };
    println!("xtask: fetching Debian's {} kernel list", spec.name);
    crate::step::quiet(with_options("apt-get").args(["-q", "update"]))?;
    let search = with_options("apt-cache")
        .args(["search", "--names-only", "^linux-image-.*-amd64-unsigned$"])
        .output()?;
    let package =
        newest(&String::from_utf8_lossy(&search.stdout), spec.prefix).with_context(|| {
            format!(
                "no {}*-amd64-unsigned package in {:?}",
                spec.prefix, spec.suites
            )
        })?;
    println!("xtask: downloading {package}");
    fs::create_dir_all(&dir)?;
    crate::step::quiet(
        with_options("apt-get")
            .args(["-q", "download", &package])
            .current_dir(&dir),
    )?;
    let deb = fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("the downloaded .deb is missing")?;
    crate::step::quiet(Command::new("dpkg").arg("-x").arg(&deb).arg(&extracted))?;
    let _ = fs::remove_file(&deb);
    vmlinuz_in(&extracted).context("no vmlinuz in the kernel package")
}

fn vmlinuz_in(root: &Path) -> Option<PathBuf> {
    fs::read_dir(root.join("boot"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// The newest generic-flavour package whose name starts with `prefix`,
/// from `apt-cache search` output.
fn newest(search: &str, prefix: &str) -> Option<String> {
    search
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| {
            n.starts_with(prefix)
                && n.ends_with("-amd64-unsigned")
                && !n.contains("-cloud-")
                && !n.contains("-rt-")
        })
        .max_by_key(|n| version_key(n))
        .map(str::to_string)
}

/// Numeric runs of a name, for ordering `5.10.0-9` before `5.10.0-46`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Boots `vmlinuz` under QEMU (TCG: KVM hangs on this machine) with the
/// host's root filesystem and runs `script`; `out` is the only writable
/// host directory. vng's own exit status is meaningless here (255 when the
/// console is the fallback), so results come from the files the script writes.
pub(super) fn boot(
    vmlinuz: &Path,
    script: &Path,
    out: &Path,
    console: &Path,
    limit: Duration,
) -> Result<()> {
    let bin = ensure_qemu()?;
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    println!(
        "xtask: booting {} in QEMU (TCG; the lab tests run ~50x slower than on the host)",
        vmlinuz.display()
    );
    let log = fs::File::create(console)?;
    let mut child = Command::new(bin.join("vng"))
        .env("PATH", path)
        .arg("--run")
        .arg(vmlinuz)
        .args([
            "--disable-kvm",
            "--memory",
            "2G",
            "--cpus",
            "2",
            "--verbose",
        ])
        .arg("--rwdir")
        .arg(out)
        .arg("--exec")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting vng")?;
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("xtask: the guest ran past {limit:?} and was stopped");
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_generic_kernel_is_picked() {
        let search = "linux-image-5.10.0-9-amd64-unsigned - Linux\n\
                      linux-image-5.10.0-46-amd64-unsigned - Linux\n\
                      linux-image-5.10.0-46-cloud-amd64-unsigned - Linux\n\
                      linux-image-5.10.0-46-rt-amd64-unsigned - Linux\n\
                      linux-image-6.1.0-56-amd64-unsigned - Linux\n";
        assert_eq!(
            newest(search, "linux-image-5.10.").as_deref(),
            Some("linux-image-5.10.0-46-amd64-unsigned")
        );
        assert_eq!(newest(search, "linux-image-6.12."), None);
    }
}
