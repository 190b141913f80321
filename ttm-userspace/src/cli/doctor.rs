//! `ttm doctor`: what this host offers ttm, probe by probe.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use ttm::pins::{PinDir, DEFAULT_PIN_DIR};

use super::findings_exit;

#[derive(Args)]
pub struct DoctorArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// bpffs directory of a running daemon, whose limits and attachments are shown.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

/// Prints every probe; exit 1 if anything ttm needs is missing.
pub fn run(args: DoctorArgs) -> Result<ExitCode> {
    let DoctorArgs { json, pin_dir } = args;
    let pins = PinDir::new(pin_dir);
    let mut probes = ttm::doctor::run();
    probes.extend(ttm::doctor::limits(&pins));
    probes.extend(ttm::doctor::attachments(&pins));
    if json {
        println!("{}", serde_json::to_string(&probes)?);
    } else {
        for p in &probes {
            println!(
                "{:<4} {:<46} {}",
                if p.ok {
                    "ok"
                } else if p.has_fallback {
                    "--"
                } else {
                    "NO"
                },
                p.feature,
                p.detail
            );
        }
    }
    Ok(findings_exit(
        probes.iter().filter(|p| p.is_missing()).count(),
    ))
}
