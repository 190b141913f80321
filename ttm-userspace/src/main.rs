//! `ttm`: recover the real client address behind full-NAT load balancers.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory as _, Parser, Subcommand};
use ttm::config::DaemonArgs;

#[derive(Parser)]
#[command(
    name = "ttm",
    version,
    about = "Recover the real client address behind full-NAT layer-4 load balancers, with eBPF"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the decoder, pin its maps and links, serve lookups;
    /// SIGINT/SIGTERM detach everything, SIGUSR2 hands over (see --upgrade).
    Daemon(DaemonArgs),
    /// Settings: `ttm config check [daemon flags]` validates the file and the
    /// flags and prints the effective settings as TOML.
    Config {
        #[command(subcommand)]
        action: cli::config::ConfigAction,
    },
    /// Print the real client of one connection on this host.
    Lookup(cli::lookup::LookupArgs),
    /// List the option layouts `--format` accepts, with their bytes.
    Formats,
    /// Write the man pages (ttm.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Manpages {
        /// Directory to write into.
        dir: PathBuf,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, ...).
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Probe what this host offers ttm (kernel, BTF, bpffs, cgroup v2, and
    /// each of ttm's programs through the verifier). Exit 1 if anything is missing.
    Doctor(cli::doctor::DoctorArgs),
    /// Audit who can change the peer address applications see: every BPF
    /// program on a cgroup hook or on TC/XDP, ttm's own marked, foreign
    /// peer-rewriters flagged. Exit 0 clean, 1 findings, 2 could not check.
    Verify(cli::verify::VerifyArgs),
    /// Remove everything a daemon attached and pinned (after a crash, or to
    /// stop using ttm). Refuses while a daemon runs: stop it with SIGTERM.
    Detach(cli::detach::DetachArgs),
    /// Print the decoder's counters.
    Stats(cli::stats::StatsArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Daemon(_)) {
        // A command whose reader goes away (`ttm stats | head -3`) ends
        // quietly, as CLI tools do, rather than panicking on the write. The
        // daemon keeps SIGPIPE ignored: a lookup client hanging up must
        // never end it.
        // SAFETY: restoring the default disposition of one signal, before
        // any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ttm: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Daemon(args) => cli::daemon::run(args),
        Command::Config { action } => cli::config::run(action),
        Command::Lookup(args) => cli::lookup::run(args),
        Command::Formats => cli::formats::run(),
        Command::Manpages { dir } => cli::docs::manpages(Cli::command(), &dir),
        Command::Completions { shell } => cli::docs::completions(Cli::command(), shell),
        Command::Doctor(args) => cli::doctor::run(args),
        Command::Verify(args) => cli::verify::run(args),
        Command::Detach(args) => cli::detach::run(args),
        Command::Stats(args) => cli::stats::run(args),
    }
}
