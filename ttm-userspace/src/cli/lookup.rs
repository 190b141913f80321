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
    /// A UDP flow (`--udp-interface`): --local is the receiving socket's
    /// address (a wildcard address matches any), --peer the datagrams'
    /// source, the load balancer.
    #[arg(long, requires_all = ["local", "peer"])]
    udp: bool,
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
        udp,
        json,
        socket,
        pin_dir,
    } = args;
    if let (true, Some(local), Some(lb)) = (udp, local, peer) {
        return lookup_udp(local, lb, json, &socket, pin_dir);
    }
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

/// A UDP flow's client; exit 0 with one, 1 without.
fn lookup_udp(
    local: SocketAddr,
    lb: SocketAddr,
    json: bool,
    socket: &std::path::Path,
    pin_dir: Option<PathBuf>,
) -> Result<ExitCode> {
    let found = match pin_dir {
        // What the map holds: the daemon's expiry removes idle flows.
        Some(dir) => ttm::udp_flows::reply(
            &ttm::udp_flows::open(&PinDir::new(dir))?,
            local,
            lb,
            std::time::Duration::from_secs(u64::from(u32::MAX)),
        ),
        None => Client::connect(socket)?.lookup_udp(local, lb)?,
    };
    match &found {
        Some(flow) if json => println!("{}", serde_json::to_string(&flow)?),
        Some(flow) => println!(
            "client {} ({}) via load balancer {} to {}, UDP, idle {:.0}s",
            flow.client,
            flow.family,
            flow.lb,
            flow.local,
            flow.idle.as_secs_f64()
        ),
        None if json => println!("{}", serde_json::json!({"error": "not_found"})),
        None => eprintln!(
            "no UDP flow: none marked by a trusted LB from {lb} to {local}, it expired, or ttm \
             runs without --udp-interface"
        ),
    }
    Ok(if found.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
