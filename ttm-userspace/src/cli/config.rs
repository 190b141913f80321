//! `ttm config check`: validate the settings file and flags, print the effective settings.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use ttm::config::{DaemonArgs, Settings};

#[derive(Subcommand)]
pub enum ConfigAction {
    /// Validate and print the effective settings.
    Check(DaemonArgs),
}

/// Runs one `ttm config` action.
pub fn run(action: ConfigAction) -> Result<ExitCode> {
    let ConfigAction::Check(args) = action;
    let settings = Settings::load(&args)?;
    settings.daemon_config(false)?;
    print!("{}", settings.to_toml());
    eprintln!("ttm: settings are valid");
    Ok(ExitCode::SUCCESS)
}
