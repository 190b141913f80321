//! The Debian package `cargo xtask dist` builds: it installs with apt, ttm
//! runs from the installed path, the unit and the example settings are where
//! systemd and the README say, the service is not enabled until `trust` is
//! set, and removing then purging it leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Purges the package on drop, so a failed test leaves the host as it was.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("apt-get", &["purge", "-y", "-qq", "ttm"]);
    }
}

const FILES: [&str; 6] = [
    "/usr/bin/ttm",
    "/lib/systemd/system/ttm.service",
    "/usr/share/man/man1/ttm.1.gz",
    "/usr/share/man/man1/ttm-daemon.1.gz",
    "/usr/share/bash-completion/completions/ttm",
    "/usr/share/zsh/vendor-completions/_ttm",
];
const SETTINGS: &str = "/etc/ttm/ttm.toml";

#[test]
fn the_deb_installs_runs_and_removes_cleanly() {
    let _serial = ttm_lab::process::serial();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(["xtask", "dist"])
        .current_dir(repo())
        .status()
        .expect("cargo xtask dist");
    assert!(status.success(), "cargo xtask dist");
    let deb = std::fs::read_dir(repo().join("target/dist"))
        .expect("target/dist")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb in target/dist");

    let _ = run("apt-get", &["purge", "-y", "-qq", "ttm"]);
    let installed = Installed;
    let (ok, out) = run(
        "apt-get",
        &["install", "-y", "-qq", deb.to_str().expect("path")],
    );
    assert!(ok, "apt-get install ./ttm_*.deb: {out}");
    for file in FILES.iter().chain([&SETTINGS]) {
        assert!(Path::new(file).exists(), "{file} missing after install");
    }
    // ttm runs from the installed path.
    let (_, out) = run("/usr/bin/ttm", &["doctor", "--json"]);
    let probes: Vec<serde_json::Value> = serde_json::from_str(&out).expect("doctor JSON");
    assert!(probes.iter().any(|p| p["feature"] == "BTF"), "{out}");
    let unit = std::fs::read_to_string("/lib/systemd/system/ttm.service").expect("unit");
    assert!(unit.contains("ExecStart=/usr/bin/ttm daemon --config /etc/ttm/ttm.toml"));
    // Not enabled, and the example settings refuse to start until `trust` is set.
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/ttm.service").exists());
    let (ok, out) = run("/usr/bin/ttm", &["config", "check", "--config", SETTINGS]);
    assert!(!ok && out.contains("--trust"), "{out}");
    match run(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/ttm.service"],
    ) {
        (true, _) => {}
        (false, out) if out.contains("System has not been booted with systemd") => {
            eprintln!("systemd-analyze verify needs a running systemd here: {out}");
        }
        (false, out) => panic!("systemd-analyze verify: {out}"),
    }

    // Removing keeps the operator's settings (a conffile); purging drops them.
    let (ok, out) = run("apt-get", &["remove", "-y", "-qq", "ttm"]);
    assert!(ok, "{out}");
    for file in FILES {
        assert!(!Path::new(file).exists(), "{file} left after remove");
    }
    assert!(Path::new(SETTINGS).exists(), "remove keeps {SETTINGS}");
    let (ok, out) = run("apt-get", &["purge", "-y", "-qq", "ttm"]);
    assert!(ok, "{out}");
    assert!(!Path::new(SETTINGS).exists(), "purge removes {SETTINGS}");
    assert!(!Path::new("/etc/ttm").exists(), "purge removes /etc/ttm");
    drop(installed);
}
