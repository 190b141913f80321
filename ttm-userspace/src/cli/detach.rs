//! `ttm detach`: remove what a daemon attached and pinned.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use ttm::pins::{PinDir, DEFAULT_PIN_DIR};

#[derive(Args)]
pub struct DetachArgs {
    /// bpffs directory of the daemon.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Also remove ttm's netlink TC filters from this interface
    /// (repeatable; tcx links are pinned and go with the pins).
    #[arg(long = "interface", value_name = "IFACE")]
    interfaces: Vec<String>,
}

/// Removes the pins (which detaches the programs) and any named netlink filters.
pub fn run(args: DetachArgs) -> Result<ExitCode> {
    let DetachArgs {
        pin_dir,
        interfaces,
    } = args;
    let removed = ttm::daemon::detach(&PinDir::new(&pin_dir))?;
    println!(
        "removed {removed} pin(s) from {}: ttm's programs are detached",
        pin_dir.display()
    );
    for iface in interfaces {
        let filters = ttm::tc::detach_netlink_filters(&iface);
        println!("removed {filters} TC filter(s) from {iface}");
    }
    Ok(ExitCode::SUCCESS)
}
