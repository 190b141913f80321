//! One module per subcommand of the `ttm` binary; `main.rs` only parses
//! the command line and dispatches here.

pub mod config;
pub mod daemon;
pub mod detach;
pub mod docs;
pub mod doctor;
pub mod formats;
pub mod lookup;
pub mod stats;
pub mod verify;

use std::process::ExitCode;

/// The exit status of a check (`ttm verify`, `ttm doctor`): 0 clean, 1 with findings.
pub fn findings_exit(findings: usize) -> ExitCode {
    if findings == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
