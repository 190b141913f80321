//! `ttm stats`: the decoder's counters, and the lookup service's when it answers.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use ttm::pins::{PinDir, DEFAULT_PIN_DIR};
use ttm_client::{Client, DEFAULT_SOCKET};

#[derive(Args)]
pub struct StatsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// bpffs directory of the running daemon.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Unix socket of the daemon's lookup service (its counters are shown when it answers).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

/// Prints the counters, the live records and any limit reached.
pub fn run(args: StatsArgs) -> Result<ExitCode> {
    let StatsArgs {
        json,
        pin_dir,
        socket,
    } = args;
    let pins = PinDir::new(pin_dir);
    let stats = ttm::stats::read(&ttm::stats::open(&pins)?)?;
    let live = stats.live_records();
    // The service's counters live in the daemon; show them when it answers.
    let service = Client::connect(&socket)
        .and_then(|mut c| c.stats())
        .map(|s| s.service)
        .ok();
    if json {
        let mut v = stats.to_json();
        v["live_records"] = live.into();
        if let Some(service) = &service {
            v["service"] = serde_json::to_value(service)?;
        }
        println!("{v}");
    } else {
        for (name, total) in &stats.counters {
            println!("{name:<38} {total}");
        }
        println!("{:<38} {live}", "live_records");
        for limit in ttm::limits::reached(&stats) {
            println!(
                "LIMIT: {} connection(s) ({}): {}",
                limit.connections,
                limit.counter.name(),
                limit.advice
            );
        }
        match &service {
            Some(service) => {
                for (name, total) in service {
                    println!("{:<38} {total}", format!("service.{name}"));
                }
            }
            None => println!("(lookup service at {} not answering)", socket.display()),
        }
    }
    Ok(ExitCode::SUCCESS)
}
