//! `ttm daemon`: load, attach and pin the decoder, serve lookups until a signal.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use ttm::config::{DaemonArgs, Settings};
use ttm::daemon::Daemon;

/// Runs the daemon until SIGINT/SIGTERM, or until it hands over (SIGUSR2).
pub fn run(args: DaemonArgs) -> Result<ExitCode> {
    let settings = Settings::load(&args)?;
    let config = settings.daemon_config(args.upgrade)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let handed_over = runtime.block_on(async {
        let mut daemon = Daemon::start(&config)?;
        if let Some(addr) = settings.metrics {
            daemon.serve_metrics(addr).await?;
        }
        daemon.run_until_signal().await
    })?;
    if handed_over {
        Ok(ExitCode::from(ttm::daemon::HANDED_OVER_EXIT))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}
