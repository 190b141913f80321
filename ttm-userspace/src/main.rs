//! `ttm`: recover the real client address behind full-NAT load balancers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use std::time::Duration;
use ttm::daemon::{Daemon, DaemonConfig};
use ttm::pins::{PinDir, DEFAULT_PIN_DIR};

use ttm::host;
use ttm::records::RecordStore;
use ttm::service::Limits;
use ttm::trust::TrustedLbs;
use ttm_client::{Client, Connection, DEFAULT_SOCKET};
use ttm_common::maps::DEFAULT_RECORDS_CAPACITY;

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
    /// Load and attach the decoder, pin its maps, run until SIGINT/SIGTERM.
    Daemon {
        /// Trusted load-balancer network (CIDR or address; repeatable, comma lists allowed).
        /// Options are decoded only from peers inside these networks.
        #[arg(long, value_name = "CIDR")]
        trust: Vec<String>,
        /// Decode options from any peer. UNSAFE: any client can then choose its own address.
        #[arg(long)]
        trust_any: bool,
        /// cgroup v2 directory whose sockets are decoded (default: the cgroup2 root, every socket).
        #[arg(long, value_name = "PATH")]
        cgroup: Option<PathBuf>,
        /// bpffs directory for the pinned maps.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Option layout to decode: a preset (toa, kind253, kind200) or
        /// custom:KIND/LEN/v4|v6; repeatable, in priority order (default: toa). See `ttm formats`.
        #[arg(long = "format", value_name = "NAME")]
        formats: Vec<String>,
        /// Capacity of the connection map (live decoded connections).
        #[arg(long, value_name = "N", default_value_t = DEFAULT_RECORDS_CAPACITY)]
        max_records: u32,
        /// Unix socket of the lookup service.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Group allowed to use the lookup socket (name or gid; the socket is mode 0660).
        #[arg(long, value_name = "GROUP")]
        socket_group: Option<String>,
        /// Lookup clients served at once; more are answered `overloaded`.
        #[arg(long, value_name = "N", default_value_t = Limits::default().max_clients)]
        max_clients: usize,
        /// Option name answered by `getsockopt(fd, SOL_IP, NAME)` with `struct ttm_peer`.
        #[arg(long, value_name = "NAME", default_value_t = ttm_common::compat::TTM_PEER_SOCKOPT)]
        getsockopt_name: u32,
        /// Also answer `getsockopt(fd, SOL_IP, NAME)` with the NAT64 layout
        /// `{ struct in6_addr saddr; be16 port; }` (DPVS uses 4096).
        #[arg(long, value_name = "NAME")]
        nat64_getsockopt: Option<u32>,
        /// Leave accept()/getpeername() alone (they then return the load balancer).
        #[arg(long)]
        no_rewrite: bool,
        /// Take over from the daemon running on this pin directory: it exits
        /// leaving its programs attached, and this one swaps in its programs
        /// atomically (no connection goes unrecorded).
        #[arg(long)]
        upgrade: bool,
        /// Seconds a lookup client may stay silent (or not read its answers) before it is dropped.
        #[arg(long, value_name = "SECS", default_value_t = Limits::default().idle_timeout.as_secs_f64())]
        client_timeout: f64,
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
    /// Remove everything a daemon attached and pinned (after a crash, or to
    /// stop using ttm). Refuses while a daemon runs: stop it with SIGTERM.
    Detach {
        /// bpffs directory of the daemon.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
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
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ttm: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Daemon {
            trust,
            trust_any,
            cgroup,
            pin_dir,
            formats,
            max_records,
            socket,
            socket_group,
            max_clients,
            client_timeout,
            getsockopt_name,
            nat64_getsockopt,
            no_rewrite,
            upgrade,
        } => {
            let idle_timeout = Duration::try_from_secs_f64(client_timeout)
                .ok()
                .filter(|d| !d.is_zero())
                .context("--client-timeout must be a positive number of seconds")?;
            let config = DaemonConfig {
                trust: TrustedLbs::parse(&trust)?,
                trust_any,
                cgroup,
                pins: PinDir::new(pin_dir),
                max_records,
                formats: ttm::formats::table(&formats)?,
                socket,
                socket_group: socket_group.as_deref().map(host::group_id).transpose()?,
                limits: Limits {
                    max_clients,
                    idle_timeout,
                    ..Limits::default()
                },
                getsockopt_name,
                nat64_getsockopt_name: nat64_getsockopt,
                rewrite: !no_rewrite,
                upgrade,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async {
                let daemon = Daemon::start(&config)?;
                daemon.run_until_signal().await
            })?;
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
        Command::Detach { pin_dir } => {
            let removed = ttm::daemon::detach(&PinDir::new(&pin_dir))?;
            println!(
                "removed {removed} pin(s) from {}: ttm's programs are detached",
                pin_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Formats => {
            for preset in &ttm::formats::PRESETS {
                println!("{} — {}", preset.name, preset.about);
                for f in preset.formats {
                    println!("    {}", ttm::formats::layout(f));
                }
            }
            println!("custom:KIND/LEN/v4|v6 — any other load balancer");
            println!("    [KIND][LEN][port:2][address:4 or 16][ignored: the rest of LEN]");
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats {
            json,
            pin_dir,
            socket,
        } => {
            let pins = PinDir::new(pin_dir);
            let stats = ttm::stats::read(&ttm::stats::open(&pins)?)?;
            let live = RecordStore::open(&pins)?.len();
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
