//! `cargo xtask test --kernel VERSION`: the lab tests on Debian's kernels
//! inside QEMU (virtme-ng, TCG, sharing the host's root filesystem so the
//! test binaries built here run unchanged), and on the host kernel. Each
//! run writes `target/kernels/<kernel>/results.json`; a run over all
//! kernels also rewrites the compatibility table in README.md.

use std::fs;
use std::path::{Path, PathBuf};
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

/// The virtme-ng release this was verified with.
const VIRTME_NG: &str = "virtme-ng==1.42";

/// One test binary run: a label (`mode/test`), the environment, the binary.
#[derive(Clone, Debug)]
pub struct Run {
    pub label: String,
    pub mode: &'static str,
    pub binary: PathBuf,
}

/// What each kernel must pass: one test file per capability the README's
/// table reports, in sockops mode, and the TC path's own tests.
const MATRIX_TESTS: [(&str, &str); 10] = [
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
];

/// The capabilities of the README's table and the runs that show each.
const CAPABILITIES: [(&str, &[&str]); 8] = [
    ("4to4 decode", &["sockops/decode_4to4"]),
    ("6to4 and other formats", &["sockops/formats_6to4"]),
    (
        "getsockopt 1345 + accept()/getpeername() rewrite",
        &["sockops/compat_shim"],
    ),
    ("lookups (fd, cookie, 4-tuple)", &["sockops/lookup_service"]),
    (
        "TC mode",
        &[
            "sockops/tc_differential",
            "sockops/tc_mode",
            "tc/decode_4to4",
        ],
    ),
    (
        "IPv6 between LB and real server (6to6, 4to6)",
        &["sockops/ipv6_path", "tc/ipv6_path"],
    ),
    (
        "PROXY protocol v1/v2 (--proxy-protocol)",
        &["sockops/proxy_protocol"],
    ),
    ("kernel", &[]),
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

/// Longest one test binary may run in the guest (5.10 under TCG needs about
/// 5 minutes for the slowest); past it the run is killed and counts as failed
/// (exit 124), so a hang costs one run, not the whole matrix.
const RUN_LIMIT_SECS: u64 = 20 * 60;

/// Tests left to the host. Two load tests: under QEMU's emulation they show
/// no capability the functional tests of the same file do not, and would
/// take most of a run's time limit. One that builds Go and installs the
/// Python package, which the guest's read-only root filesystem cannot.
const HOST_ONLY_TESTS: [&str; 3] = [
    "ten_thousand_concurrent_connections_each_get_their_own_client",
    "a_gibibyte_through_haproxy_arrives_unchanged",
    "unmodified_receivers_behind_haproxy_see_the_client",
];

/// The script the guest (or the host) runs: bpffs, each test binary with
/// its mode, one result line per run, the doctor's view of the kernel.
/// `emulated`: inside QEMU, without [`HOST_ONLY_TESTS`].
fn guest_script(runs: &[Run], out: &Path, emulated: bool) -> String {
    let out = out.display();
    let mut s = String::from("#!/bin/sh\n# Written by `cargo xtask test --kernel`.\n");
    s.push_str("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf\n");
    s.push_str(&format!("cd '{}'\n", root_display("tests")));
    s.push_str(&format!(
        "'{}' doctor --json > '{out}/doctor.json' 2> '{out}/doctor.err'\n",
        root_display("target/debug/ttm")
    ));
    s.push_str(&format!("uname -r > '{out}/uname'\n"));
    let skips: String = if emulated {
        let mut skips: String = HOST_ONLY_TESTS
            .iter()
            .map(|t| format!(" --skip {t}"))
            .collect();
        skips.push_str(" --exact");
        skips
    } else {
        String::new()
    };
    for run in runs {
        let log = run.label.replace('/', "-");
        let test = format!(
            "TTM_LAB_MODE={mode} timeout -k 10 {RUN_LIMIT_SECS} '{bin}' --test-threads=1{skips} > '{out}/{log}.log' 2>&1",
            mode = run.mode,
            bin = run.binary.display(),
        );
        // A failed run gets one more try (QEMU's timing is not the host's);
        // both tries are reported.
        s.push_str(&format!(
            "START=$(date +%s); {test}; CODE=$?; TRIES=1; \
             if [ $CODE -ne 0 ]; then mv '{out}/{log}.log' '{out}/{log}.try1.log'; {test}; CODE=$?; TRIES=2; fi; \
             echo \"{label} $CODE $(( $(date +%s) - START )) $TRIES\" >> '{out}/results'\n",
            label = run.label,
        ));
    }
    s.push_str(&format!("echo done > '{out}/finished'\n"));
    s
}

fn root_display(rel: &str) -> String {
    root()
        .map(|r| r.join(rel).display().to_string())
        .unwrap_or_default()
}

fn read_results(out: &Path, runs: &[Run]) -> Result<Vec<Outcome>> {
    let text = fs::read_to_string(out.join("results")).unwrap_or_default();
    let finished = out.join("finished").exists();
    let mut outcomes = parse_results(&text);
    // A run the guest never reported (it died, or timed out) failed.
    for run in runs {
        if !outcomes.iter().any(|o| o.label == run.label) {
            outcomes.push(Outcome {
                label: run.label.clone(),
                code: -1,
                seconds: 0,
                attempts: 1,
            });
        }
    }
    if !finished {
        eprintln!("xtask: the run did not finish: missing runs count as failed");
    }
    Ok(outcomes)
}

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
fn fetch(spec: &Kernel) -> Result<PathBuf> {
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
fn boot(vmlinuz: &Path, script: &Path, out: &Path, console: &Path, limit: Duration) -> Result<()> {
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

/// The outcomes of the last run on `kernel`, if it has one.
pub fn saved(kernel: &str) -> Option<Vec<Outcome>> {
    let out = kernels_dir().ok()?.join(kernel).join("out");
    let text = fs::read_to_string(out.join("results")).ok()?;
    Some(parse_results(&text))
}

/// The lines of a results file: `label code seconds [tries]` (runs saved
/// before retries existed have no tries: one).
fn parse_results(text: &str) -> Vec<Outcome> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some(Outcome {
                label: parts.next()?.to_string(),
                code: parts.next()?.parse().ok()?,
                seconds: parts.next()?.parse().ok()?,
                attempts: parts.next().and_then(|a| a.parse().ok()).unwrap_or(1),
            })
        })
        .collect()
}

/// Every kernel of the matrix, in table order.
pub fn all_names() -> Vec<String> {
    let mut names: Vec<String> = KERNELS.iter().map(|k| k.name.to_string()).collect();
    names.push("host".into());
    names
}

/// What the doctor said inside the kernel, by probe.
fn doctor(kernel: &str) -> Vec<serde_json::Value> {
    let path = kernels_dir()
        .map(|d| d.join(kernel).join("out").join("doctor.json"))
        .unwrap_or_default();
    fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn probe_ok(probes: &[serde_json::Value], feature: &str) -> Option<bool> {
    probes
        .iter()
        .find(|p| p["feature"] == feature)
        .and_then(|p| p["ok"].as_bool())
}

/// One table cell: works / works with the fallback / FAILS.
fn cell(kernel: &str, capability: &str, runs: &[&str], outcomes: &[Outcome]) -> String {
    let probes = doctor(kernel);
    if capability == "kernel" {
        return fs::read_to_string(
            kernels_dir()
                .map(|d| d.join(kernel).join("out").join("uname"))
                .unwrap_or_default(),
        )
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    }
    let ok = runs
        .iter()
        .all(|r| outcomes.iter().any(|o| o.label == *r && o.code == 0));
    if !ok {
        let failed: Vec<&str> = runs
            .iter()
            .filter(|r| !outcomes.iter().any(|o| o.label == **r && o.code == 0))
            .copied()
            .collect();
        return format!("FAILS ({})", failed.join(", "));
    }
    let retried: Vec<&str> = runs
        .iter()
        .filter(|r| outcomes.iter().any(|o| o.label == **r && o.attempts > 1))
        .copied()
        .collect();
    let verdict = verdict(capability, &probes);
    if retried.is_empty() {
        verdict
    } else {
        format!("{verdict}; passed on a 2nd try: {}", retried.join(", "))
    }
}

fn verdict(capability: &str, probes: &[serde_json::Value]) -> String {
    match capability {
        "TC mode" if probe_ok(probes, "tcx") == Some(false) => {
            "works (fallback: netlink cls_bpf, no tcx)".into()
        }
        "TC mode" => "works (tcx)".into(),
        "PROXY protocol v1/v2 (--proxy-protocol)"
            if probe_ok(probes, "ttm_proxy_verdict") == Some(false)
                || probe_ok(probes, "ttm_proxy_ingress") == Some(false) =>
        {
            "not on this kernel: the verifier refuses ttm's PROXY programs; the daemon refuses \
             --proxy-protocol at start (tested)"
                .into()
        }
        "getsockopt 1345 + accept()/getpeername() rewrite"
            if probe_ok(probes, "getsockopt errno") == Some(false) =>
        {
            "works (short buffer: EFAULT, not EINVAL)".into()
        }
        _ => "works".into(),
    }
}

/// The compatibility table (markdown) for the kernels run.
pub fn table(results: &[(String, Vec<Outcome>)]) -> String {
    let mut s = String::from("| capability |");
    for (kernel, _) in results {
        s.push_str(&format!(" {kernel} |"));
    }
    s.push_str("\n| --- |");
    for _ in results {
        s.push_str(" --- |");
    }
    s.push('\n');
    for (capability, runs) in CAPABILITIES {
        let label = if capability == "kernel" {
            "kernel release"
        } else {
            capability
        };
        s.push_str(&format!("| {label} |"));
        for (kernel, outcomes) in results {
            s.push_str(&format!(" {} |", cell(kernel, capability, runs, outcomes)));
        }
        s.push('\n');
    }
    s
}

/// Writes `table` into README.md between its matrix markers.
pub fn update_readme(table: &str) -> Result<()> {
    const BEGIN: &str = "<!-- kernel-matrix:begin -->";
    const END: &str = "<!-- kernel-matrix:end -->";
    let path = root()?.join("README.md");
    let text = fs::read_to_string(&path)?;
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        bail!("README.md lacks the {BEGIN} … {END} markers");
    };
    let updated = format!("{}{BEGIN}\n{table}{}", &text[..b], &text[e..]);
    fs::write(&path, updated)?;
    println!("xtask: README.md's kernel table updated");
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

    #[test]
    fn results_lines_parse_with_and_without_tries() {
        let got = parse_results("sockops/a 0 12 2\nsockops/b 101 7\ngarbage\n");
        let got: Vec<_> = got
            .iter()
            .map(|o| (o.label.as_str(), o.code, o.seconds, o.attempts))
            .collect();
        assert_eq!(got, [("sockops/a", 0, 12, 2), ("sockops/b", 101, 7, 1)]);
    }

    #[test]
    fn all_means_every_kernel_and_the_host() {
        assert_eq!(
            resolve(&["all".into()]).unwrap(),
            ["5.10", "6.1", "6.12", "host"]
        );
        assert!(resolve(&["4.19".into()]).is_err());
    }
}
