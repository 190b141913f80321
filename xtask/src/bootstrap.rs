//! Brings a fresh machine up to what building and testing ttm need.
//! Idempotent: each check is cheap, and a line is printed only for a step
//! taken; what the installers print goes to the log of [`crate::step`].

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// The bpf-linker version known to build and work here (newer ones need a newer LLVM).
const BPF_LINKER_VERSION: &str = "0.10.4";
/// Commands the lab and the tests need, with the Debian package providing each.
const APT_COMMANDS: [(&str, &str); 11] = [
    ("nft", "nftables"),
    ("ip", "iproute2"),
    ("sysctl", "procps"),
    // The README's lookup examples are run by the tests.
    ("socat", "socat"),
    ("python3", "python3"),
    // The compatibility tests run real applications: a C server and stock nginx.
    ("gcc", "gcc"),
    ("nginx", "nginx"),
    // The benchmarks read kernel struct sizes from BTF.
    ("bpftool", "bpftool"),
    // The Go module (go/ttm) and the Go servers of the lab tests.
    ("go", "golang-go"),
    // Real PROXY protocol senders of the lab (with nginx's stream module below).
    ("haproxy", "haproxy"),
    // A PROXY test turns checksum offload off on the LB's side of the lab.
    ("ethtool", "ethtool"),
];

/// Files the lab needs that no command stands for, with the Debian package
/// providing each.
const APT_FILES: [(&str, &str); 1] = [(
    "/usr/lib/nginx/modules/ngx_stream_module.so",
    "libnginx-mod-stream",
)];

/// Runs every step.
pub fn ensure() -> Result<()> {
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    bpffs()?;
    promtool();
    python_venv()?;
    Ok(())
}

/// The virtualenv of the Python package's lab tests: an ASGI stack
/// (FastAPI, uvicorn) and a WebSocket client, from PyPI.
pub const PYTHON_VENV: &str = "target/pyenv";

fn python_venv() -> Result<()> {
    let venv = Path::new(PYTHON_VENV);
    if venv.join("bin/uvicorn").exists() {
        return Ok(());
    }
    run(
        &format!("creating {PYTHON_VENV} (FastAPI, uvicorn, websockets from PyPI)"),
        Command::new("python3").args(["-m", "venv", PYTHON_VENV]),
    )?;
    run(
        "installing fastapi uvicorn websockets",
        Command::new(venv.join("bin/pip")).args([
            "install",
            "-q",
            "fastapi",
            "uvicorn",
            "websockets",
        ]),
    )
}

/// Where the tests find `promtool` (Prometheus's rule checker).
pub const PROMTOOL: &str = "target/tools/promtool";

/// Fetches `promtool` from Debian's prometheus package without installing
/// the package (no service, no users): downloaded and unpacked into
/// `target/tools`. Optional: without it the alert-rule tests parse the rules
/// themselves, and say so.
fn promtool() {
    if Path::new(PROMTOOL).exists() {
        return;
    }
    println!("bootstrap: fetching promtool from Debian's prometheus package into {PROMTOOL}");
    let work = Path::new("target/tools/prometheus-deb");
    let fetched = (|| -> Result<()> {
        std::fs::create_dir_all(work)?;
        crate::step::quiet(
            Command::new("apt-get")
                .args(["download", "-qq", "prometheus"])
                .current_dir(work),
        )?;
        let deb = std::fs::read_dir(work)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("no .deb downloaded")?;
        let unpacked = work.join("root");
        crate::step::quiet(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
        std::fs::copy(unpacked.join("usr/bin/promtool"), PROMTOOL)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(work);
    if let Err(e) = fetched {
        println!(
            "bootstrap: promtool unavailable ({e:#}); the alert rules will be checked by parsing"
        );
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn run(what: &str, cmd: &mut Command) -> Result<()> {
    crate::step::run(&format!("bootstrap: {what}"), cmd).with_context(|| what.to_string())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_COMMANDS
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .chain(
            APT_FILES
                .iter()
                .filter(|(file, _)| !Path::new(file).exists())
                .map(|(_, pkg)| *pkg),
        )
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(
        "apt-get update",
        Command::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run(
        &format!("installing {}", missing.join(" ")),
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&toolchains.stdout)
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        run(
            "installing the nightly toolchain (the eBPF crates need -Z build-std)",
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
        )?;
    }
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        run(
            "adding rust-src to nightly",
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        )?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    if let Ok(out) = version {
        if String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION) {
            return Ok(());
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        &format!("installing bpf-linker {BPF_LINKER_VERSION} (about a minute)"),
        Command::new(cargo).args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ]),
    )
}

/// cargo-deb builds the Debian package in `cargo xtask dist`.
const CARGO_DEB_VERSION: &str = "3.8.0";

fn cargo_deb() -> Result<()> {
    let have = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return Ok(());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        &format!(
            "installing cargo-deb {CARGO_DEB_VERSION} (builds the .deb of `cargo xtask dist`)"
        ),
        Command::new(cargo).args([
            "install",
            &format!("cargo-deb@{CARGO_DEB_VERSION}"),
            "--locked",
        ]),
    )
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, point, kind) = (f.next(), f.next(), f.next());
        point == Some("/sys/fs/bpf") && kind == Some("bpf")
    }) {
        return Ok(());
    }
    if !Path::new("/sys/fs/bpf").is_dir() {
        bail!("/sys/fs/bpf does not exist: this kernel lacks bpffs support");
    }
    run(
        "mounting bpffs on /sys/fs/bpf",
        Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]),
    )
}
