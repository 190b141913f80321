//! The hidden `ttm manpages` and `ttm completions`: documents generated
//! from the command line itself, for the Debian package.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};

/// Writes ttm.1 and one page per subcommand into `dir`.
pub fn manpages(command: clap::Command, dir: &Path) -> Result<ExitCode> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the completion script of `shell`.
pub fn completions(mut command: clap::Command, shell: clap_complete::Shell) -> Result<ExitCode> {
    clap_complete::generate(shell, &mut command, "ttm", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
