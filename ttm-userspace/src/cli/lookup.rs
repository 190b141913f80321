//! `ttm lookup`: the real client of one connection, from the daemon or the pinned maps.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use ttm::pins::PinDir;
use ttm::records::RecordStore;
use ttm_client::{Client, Connection, DEFAULT_SOCKET};

#[derive(Args)]
pub struct LookupArgs {
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
}

/// Prints the record; exit 0 with one, 1 without.
pub fn run(args: LookupArgs) -> Result<ExitCode> {
    let LookupArgs {
        cookie,
        local,
        peer,
        json,
        socket,
        pin_dir,
    } = args;
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
