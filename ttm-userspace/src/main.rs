//! `ttm`: recover the real client address behind full-NAT load balancers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use ttm::daemon::Daemon;
use ttm::pins::{PinDir, DEFAULT_PIN_DIR};

use ttm::config::{DaemonArgs, Settings};
use ttm::records::RecordStore;
use ttm_client::{Client, Connection, DEFAULT_SOCKET};

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
enum ConfigAction {
    /// Validate and print the effective settings.
    Check(DaemonArgs),
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
        action: ConfigAction,
    },
    /// Print the real client of one connection on this host.
    Lookup {
        /// Socket cookie (SO_COOKIE) of the accepted connection.
        #[arg(long, conflicts_with_all = ["local", "peer"], required_unless_present_all = ["local", "peer"])]
        cookie: Option<u64>,
        /// The socket's local address, IP:PORT.
        #[arg(long, requires = "peer")]
        local: Option<SocketAddr>,
        /// The peer address as the app sees it (the load balancer, or the client when ttm rewrote it), IP:PORT.
        #[arg(long, requires = "local")]
        peer: Option<SocketAddr>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Unix socket of the daemon's lookup service.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Read the pinned maps in this bpffs directory directly instead of asking
        /// the daemon (works while the daemon is down, needs root).
        #[arg(long, value_name = "DIR")]
        pin_dir: Option<PathBuf>,
    },
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
    Doctor {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// bpffs directory of a running daemon, whose limits and attachments are shown.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Audit who can change the peer address applications see: every BPF
    /// program on a cgroup hook or on TC/XDP, ttm's own marked, foreign
    /// peer-rewriters flagged. Exit 0 clean, 1 findings, 2 could not check.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// bpffs directory of ttm's pins (to recognise its programs).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Audit one process's TCP sockets instead: the peer it sees, the
        /// kernel's, ttm's record, and a verdict (kernel, ttm-client, HIJACKED).
        #[arg(long, value_name = "PID", conflicts_with = "live")]
        pid: Option<i32>,
        /// List the sockets whose getpeername()/accept() answer the witness
        /// caught being neither the kernel's peer nor ttm's client.
        #[arg(long)]
        live: bool,
    },
    /// Remove everything a daemon attached and pinned (after a crash, or to
    /// stop using ttm). Refuses while a daemon runs: stop it with SIGTERM.
    Detach {
        /// bpffs directory of the daemon.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Also remove ttm's netlink TC filters from this interface
        /// (repeatable; tcx links are pinned and go with the pins).
        #[arg(long = "interface", value_name = "IFACE")]
        interfaces: Vec<String>,
    },
    /// Print the decoder's counters.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// bpffs directory of the running daemon.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Unix socket of the daemon's lookup service (its counters are shown when it answers).
        #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
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
        Command::Daemon(args) => {
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
        Command::Config {
            action: ConfigAction::Check(args),
        } => {
            let settings = Settings::load(&args)?;
            settings.daemon_config(false)?;
            print!("{}", settings.to_toml());
            eprintln!("ttm: settings are valid");
            Ok(ExitCode::SUCCESS)
        }
        Command::Lookup {
            cookie,
            local,
            peer,
            json,
            socket,
            pin_dir,
        } => {
            let found = match pin_dir {
                Some(dir) => {
                    let store = RecordStore::open(&PinDir::new(dir))?;
                    match (cookie, local, peer) {
                        (Some(c), _, _) => store.by_cookie(c)?,
                        (None, Some(l), Some(p)) => store.by_tuple(l, p)?,
                        _ => unreachable!("clap requires --cookie or --local with --peer"),
                    }
                }
                None => {
                    let mut client = Client::connect(&socket)?;
                    match (cookie, local, peer) {
                        (Some(c), _, _) => client.lookup_cookie(c)?,
                        (None, Some(l), Some(p)) => client.lookup_tuple(l, p)?,
                        _ => unreachable!("clap requires --cookie or --local with --peer"),
                    }
                }
            };
            match found {
                Some(info) => {
                    print_info(&info, json)?;
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    if json {
                        println!("{}", serde_json::json!({"error": "not_found"}));
                    } else {
                        eprintln!("no record: the connection is unknown, closed, came from an untrusted peer, or carried no option");
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Detach {
            pin_dir,
            interfaces,
        } => {
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
        Command::Verify {
            json,
            pin_dir,
            live: true,
            ..
        } => {
            let pins = PinDir::new(pin_dir);
            if !ttm::verify::witness_attached(&pins) {
                eprintln!(
                    "ttm verify --live: the live witness is off on {} — start the daemon with \
                     --witness (or `witness = true` in its settings) to check every getpeername \
                     answer as it happens; `ttm verify` (the static audit) works without it",
                    pins.path().display()
                );
                return Ok(ExitCode::from(2));
            }
            let caught = ttm::verify::caught(&pins)?;
            if json {
                println!("{}", serde_json::to_string(&caught)?);
            } else {
                for c in &caught {
                    println!(
                        "cookie {:<8} pid {:<7} {:<16} was told {:<26} kernel peer {:<26} {:.1}s ago",
                        c.cookie,
                        c.pid,
                        c.command,
                        c.returned.to_string(),
                        c.kernel_peer.to_string(),
                        c.age
                    );
                }
                println!(
                    "{} socket(s) got a peer address that was neither the kernel's nor ttm's client",
                    caught.len()
                );
            }
            Ok(findings_exit(caught.len()))
        }
        Command::Verify {
            json,
            pin_dir,
            pid: Some(pid),
            ..
        } => {
            let sockets = ttm::verify::audit_process(pid, &PinDir::new(pin_dir))?;
            let hijacked = sockets
                .iter()
                .filter(|s| s.verdict == ttm::verify::Verdict::Hijacked)
                .count();
            if json {
                println!("{}", serde_json::to_string(&sockets)?);
            } else {
                for s in &sockets {
                    println!(
                        "fd {:<4} app sees {:<26} kernel peer {:<26} ttm record {:<26} {:?}",
                        s.fd,
                        s.app_peer.to_string(),
                        s.kernel_peer.map_or("?".into(), |p| p.to_string()),
                        s.ttm_client.map_or("-".into(), |p| p.to_string()),
                        s.verdict
                    );
                }
                println!("{} TCP socket(s), {hijacked} HIJACKED", sockets.len());
            }
            Ok(findings_exit(hijacked))
        }
        Command::Verify {
            json,
            pin_dir,
            pid: None,
            ..
        } => {
            let report = ttm::verify::audit(&PinDir::new(pin_dir))?;
            let threats = report.threats().count();
            if json {
                let mut v = serde_json::to_value(&report)?;
                v["threats"] = threats.into();
                println!("{v}");
            } else {
                println!(
                    "{} program attachment(s) in {} cgroup(s) and {} network namespace(s)",
                    report.programs.len(),
                    report.cgroups,
                    report.netns
                );
                let direction = |d: &ttm::verify::insns::Direction| match d {
                    ttm::verify::insns::Direction::AppsOnThisHost => "what apps on this host see",
                    ttm::verify::insns::Direction::RemotePeers => "what remote peers see",
                    ttm::verify::insns::Direction::Both => "packets either way",
                };
                for f in &report.programs {
                    let affects = f
                        .affects
                        .iter()
                        .map(direction)
                        .collect::<Vec<_>>()
                        .join(", ");
                    let verdict = match (f.ttm, f.power) {
                        (true, _) => "ttm".to_string(),
                        (false, ttm::verify::Power::RewritesPeer) => {
                            format!("FOREIGN: rewrites {affects}")
                        }
                        (false, ttm::verify::Power::CannotTell) => {
                            "FOREIGN: cannot tell what it does (flagged)".to_string()
                        }
                        (false, ttm::verify::Power::Observes) => {
                            "foreign, observes only".to_string()
                        }
                    };
                    println!(
                        "  id {:<6} {:<16} {:<60} held by {:<24} {verdict}",
                        f.id,
                        f.name,
                        f.attach_point,
                        if f.held_by.is_empty() {
                            "(pinned/kernel)".to_string()
                        } else {
                            f.held_by.join(", ")
                        },
                    );
                    for e in &f.evidence {
                        println!(
                            "      insn {:<5} {}{}",
                            e.insn,
                            e.what,
                            e.direction
                                .as_ref()
                                .map(|d| format!(" — changes {}", direction(d)))
                                .unwrap_or_default()
                        );
                    }
                }
                for why in &report.unchecked {
                    println!("  not checked: {why}");
                }
                if threats == 0 {
                    println!(
                        "no foreign program rewrites the addresses either side of a connection \
                         sees (each program's instructions were read)"
                    );
                } else {
                    println!(
                        "{threats} foreign program(s) rewrite addresses, answers, packets or \
                         options, or cannot be cleared"
                    );
                }
            }
            Ok(findings_exit(threats))
        }
        Command::Doctor { json, pin_dir } => {
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
        Command::Manpages { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "ttm", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Formats => {
            for preset in &ttm::formats::PRESETS {
                println!("{} — {}", preset.name, preset.about);
                for f in preset.formats {
                    println!("    {}", ttm::formats::layout(f));
                }
                println!("    {}", ttm::formats::position_note(&preset.formats[0]));
            }
            println!("custom:KIND/LEN/v4|v6[/first|/last] — any other load balancer");
            println!("    [KIND][LEN][port:2][address:4 or 16][ignored: the rest of LEN]");
            println!(
                "    /first or /last: where the LB writes its option among those in the segment; \
                 without it two options naming different clients give no record"
            );
            println!(
                "formats whose positions disagree (e.g. toa with kind200): no position is \
                 trusted, as if unknown"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats {
            json,
            pin_dir,
            socket,
        } => {
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
    }
}

/// `ttm verify`'s exit status: 0 clean, 1 with findings.
fn findings_exit(findings: usize) -> ExitCode {
    if findings == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_info(info: &Connection, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(info)?);
    } else {
        println!(
            "client {} ({}) via load balancer {} to {}, option kind {} len {}, age {:.3}s, cookie {}",
            info.client,
            info.family,
            info.kernel_peer,
            info.local,
            info.option_kind,
            info.option_len,
            info.age.as_secs_f64(),
            info.cookie
        );
    }
    Ok(())
}
