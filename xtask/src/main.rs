//! Developer and CI actions for ttm. Every command first brings a fresh
//! machine up to what it needs (see `bootstrap`), printing one line per step
//! it takes.

mod bootstrap;
mod kernels;
mod step;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "Build, lab, demo, tests and benchmarks for ttm"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh machine lacks (apt packages, rust-src, bpf-linker, bpffs).
    Bootstrap,
    /// Build the ttm binary (with its eBPF object) and the lab tools.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Bring the full-NAT veth lab up or down.
    Lab {
        #[arg(value_parser = ["up", "down"])]
        action: String,
    },
    /// The end-to-end demo: lab, ttm daemon, client connections, recovered addresses.
    Demo {
        /// Where the daemon reads the option: sockops, tc (TC ingress on the
        /// real server's interface) or both.
        #[arg(long, default_value = "sockops", value_parser = ["sockops", "tc", "both"])]
        mode: String,
    },
    /// Unit tests, the lab integration tests and a benchmark smoke run (needs root).
    Test {
        /// Run the lab tests on this kernel instead: 5.10, 6.1, 6.12 (Debian's,
        /// inside QEMU), host, or all (repeatable).
        #[arg(long, value_name = "VERSION")]
        kernel: Vec<String>,
        /// With --kernel: every lab test file, not only the capability set.
        #[arg(long, requires = "kernel")]
        full: bool,
    },
    /// Rewrite the kernel table (target/kernels/MATRIX.md, and README.md when
    /// every kernel has a run) from the saved results of `test --kernel`.
    MatrixTable,
    /// Build the release `ttm` binary (eBPF objects embedded) into target/dist/.
    Dist,
    /// Measure ttm's costs side by side and write BENCHMARKS.md (release build, needs root).
    Bench {
        /// A short smoke run; writes target/bench-quick/BENCHMARKS.md instead.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    bootstrap::ensure()?;
    match cli.command {
        Cmd::Bootstrap => Ok(()),
        Cmd::Build { release } => build(release),
        Cmd::Lab { action } => {
            build(false)?;
            ttm_lab(&action)
        }
        Cmd::Demo { mode } => {
            build(false)?;
            require_root("the demo builds network namespaces")?;
            // SAFETY: single-threaded here; the lab runner inherits it.
            unsafe { std::env::set_var("TTM_LAB_MODE", &mode) };
            ttm_lab("demo")
        }
        Cmd::Test { kernel, full } if !kernel.is_empty() => {
            require_root("the integration tests build network namespaces")?;
            build(false)?;
            matrix(&kernel, full)
        }
        Cmd::Test { .. } => {
            require_root("the integration tests build network namespaces")?;
            build(false)?;
            // Lab tests move processes between cgroups and namespaces: one at a time.
            cargo(&["test", "--", "--test-threads=1"])?;
            // The lab suite again with the TC path doing the decoding.
            println!("xtask: the lab suite in --mode tc");
            let mut args = vec!["test", "-p", "ttm-tests"];
            for t in TC_MODE_SUITE {
                args.extend(["--test", t]);
            }
            args.extend(["--", "--test-threads=1"]);
            cargo_env(&args, &[("TTM_LAB_MODE", "tc")])?;
            // The PROXY suite again with headers cut at the interface.
            println!("xtask: the PROXY suite with --proxy-interface");
            cargo_env(
                &[
                    "test",
                    "-p",
                    "ttm-tests",
                    "--test",
                    "proxy_protocol",
                    "--",
                    "--test-threads=1",
                ],
                &[("TTM_PROXY_CUT", "1")],
            )?;
            // The benchmark code must keep working: a smoke run of every section.
            bench(true)
        }
        Cmd::MatrixTable => write_matrix_table(&[]).map(|_| ()),
        Cmd::Dist => dist(),
        Cmd::Bench { quick } => {
            require_root("the benchmarks build network namespaces")?;
            bench(quick)
        }
    }
}

/// The kernel matrix: the lab tests on each kernel asked for, a table of
/// what works where (target/kernels/MATRIX.md, and README.md after `all`).
fn matrix(names: &[String], full: bool) -> Result<()> {
    let kernels = kernels::resolve(names)?;
    let runs = kernels::runs(full, &TC_MODE_SUITE)?;
    let mut results = Vec::new();
    for kernel in &kernels {
        let outcomes = kernels::run_on(kernel, &runs)?;
        for o in &outcomes {
            println!(
                "xtask: {kernel:>5} {:<28} {} ({} s)",
                o.label,
                if o.code == 0 { "ok" } else { "FAILED" },
                o.seconds
            );
        }
        results.push((kernel.clone(), outcomes));
    }
    write_matrix_table(&results)?;
    let failed: Vec<String> = results
        .iter()
        .flat_map(|(k, o)| {
            o.iter()
                .filter(|o| o.code != 0)
                .map(move |o| format!("{k} {}", o.label))
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "failed on the kernel matrix: {} (logs in target/kernels/<kernel>/out/)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Writes the kernel table: each column is that kernel's latest run (one
/// of `results`, or an earlier one saved under target/kernels).
fn write_matrix_table(results: &[(String, Vec<kernels::Outcome>)]) -> Result<String> {
    let columns: Vec<(String, Vec<kernels::Outcome>)> = kernels::all_names()
        .into_iter()
        .filter_map(|k| match results.iter().find(|(name, _)| *name == k) {
            Some(found) => Some(found.clone()),
            None => kernels::saved(&k).map(|o| (k, o)),
        })
        .collect();
    let table = kernels::table(&columns);
    println!("{table}");
    let dir = std::env::current_dir()?.join("target").join("kernels");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("MATRIX.md"), &table)?;
    if columns.len() == kernels::KERNELS.len() + 1 {
        kernels::update_readme(&table)?;
    }
    Ok(table)
}

/// One file is the whole product: the release binary with its programs inside.
fn dist() -> Result<()> {
    cargo(&["build", "--release", "-p", "ttm-userspace", "--bin", "ttm"])?;
    let root = std::env::current_dir()?;
    let dir = root.join("target").join("dist");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("ttm");
    std::fs::copy(root.join("target/release/ttm"), &out)
        .with_context(|| format!("copying to {}", out.display()))?;
    let size = std::fs::metadata(&out)?.len();
    println!(
        "{} ({:.1} MiB): `ttm daemon`, the lookup service and the CLI, eBPF programs embedded; \
         packaging/ has the systemd unit, a Containerfile and a Kubernetes DaemonSet",
        out.display(),
        size as f64 / (1024.0 * 1024.0)
    );
    debian_package(&root, &out)
}

/// Stages what the Debian package holds besides the binary — man pages
/// and completions generated from the CLI's definitions, the unit with the
/// packaged path, the example settings — and builds the .deb with cargo-deb.
fn debian_package(root: &std::path::Path, ttm: &std::path::Path) -> Result<()> {
    let stage = root.join("target/dist/deb");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage)?;
    let status = Command::new(ttm)
        .arg("manpages")
        .arg(stage.join("man"))
        .status()?;
    if !status.success() {
        bail!("ttm manpages failed");
    }
    for (shell, file) in [("bash", "ttm.bash"), ("zsh", "_ttm"), ("fish", "ttm.fish")] {
        let out = Command::new(ttm).args(["completions", shell]).output()?;
        if !out.status.success() {
            bail!("ttm completions {shell} failed");
        }
        std::fs::write(stage.join(file), out.stdout)?;
    }
    let unit = std::fs::read_to_string(root.join("packaging/systemd/ttm.service"))?
        .replace("/usr/local/bin/ttm", "/usr/bin/ttm");
    std::fs::write(stage.join("ttm.service"), unit)?;
    std::fs::copy(
        root.join("packaging/debian/ttm.toml"),
        stage.join("ttm.toml"),
    )?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out_dir = root.join("target/dist");
    let status = Command::new(cargo)
        .args([
            "deb",
            "-p",
            "ttm-userspace",
            "--no-build",
            "--no-strip",
            "-o",
        ])
        .arg(&out_dir)
        .status()
        .context("running cargo-deb (cargo xtask bootstrap installs it)")?;
    if !status.success() {
        bail!("cargo deb failed");
    }
    println!("Debian package written to {}", out_dir.display());
    Ok(())
}

/// Runs the benchmarks: release build for real figures, debug for the smoke run.
fn bench(quick: bool) -> Result<()> {
    build(!quick)?;
    let profile = if quick { "debug" } else { "release" };
    let root = std::env::current_dir()?;
    let target = root.join("target").join(profile);
    let out = if quick {
        let dir = root.join("target").join("bench-quick");
        std::fs::create_dir_all(&dir)?;
        dir.join("BENCHMARKS.md")
    } else {
        root.join("BENCHMARKS.md")
    };
    let mut args = vec!["run".to_string(), "--out".into(), out.display().to_string()];
    if quick {
        args.push("--quick".into());
    }
    let status = Command::new(target.join("ttm-bench"))
        .args(&args)
        .env("TTM_BIN", target.join("ttm"))
        .status()
        .context("running ttm-bench")?;
    if !status.success() {
        bail!("ttm-bench failed ({status})");
    }
    println!("benchmarks written to {}", out.display());
    Ok(())
}

fn build(release: bool) -> Result<()> {
    let mut args = vec![
        "build",
        "-p",
        "ttm-userspace",
        "-p",
        "ttm-tests",
        "-p",
        "ttm-bench",
        "--bins",
    ];
    if release {
        args.push("--release");
    }
    cargo(&args)
}

/// Runs the lab helper with one subcommand (`up`, `down`, `demo`).
fn ttm_lab(command: &str) -> Result<()> {
    cargo(&[
        "run",
        "--quiet",
        "-p",
        "ttm-tests",
        "--bin",
        "ttm-lab",
        "--",
        command,
    ])
}

fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: {why}");
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    cargo_env(args, &[])
}

/// The lab tests that run a second time with `TTM_LAB_MODE=tc`: everything
/// that does not test the sockops decoder itself (hostile_options counts
/// its per-reason counters; the TC program's own decisions on malformed
/// input are the differential test's).
const TC_MODE_SUITE: [&str; 12] = [
    "decode_4to4",
    "formats_6to4",
    "compat_shim",
    "compat_cgroups",
    "scale",
    "arbitration",
    "ipv6_path",
    "hostile_options",
    "lookup_service",
    "faults",
    "restart_survival",
    "daemon_lifecycle",
];

fn cargo_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .envs(env.iter().copied())
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
