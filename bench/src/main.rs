//! `ttm-bench`: measures what ttm costs and how it scales, side by side in
//! one run against the veth lab, and writes BENCHMARKS.md. `cargo xtask
//! bench` runs it (release build); `--quick` is the smoke run inside
//! `cargo xtask test`. The other subcommands are its helpers inside the lab.

mod helpers;
mod proxy_helpers;
mod report;
mod sections;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ttm-bench", about = "ttm's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every benchmark and write the report.
    Run {
        /// Small counts: a smoke run that keeps the code working.
        #[arg(long)]
        quick: bool,
        /// Where to write the Markdown report (the SVG chart goes beside it).
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
        /// Run only these sections (repeatable): connection-rate, per-call,
        /// lookups, floor, scale, real-connections, cold-start, proxy-protocol, udp.
        #[arg(long)]
        only: Vec<String>,
    },
    /// Helper: accept forever, one byte each way.
    #[command(hide = true)]
    EchoServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        getsockopt: bool,
    },
    /// Helper: connection-rate client.
    #[command(hide = true)]
    ConnRate {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        parallel: usize,
    },
    /// Helper: HTTP connection-rate client timing the first byte.
    #[command(hide = true)]
    HttpRate {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        parallel: usize,
    },
    /// Helper: one bulk transfer to a sink server, after a PROXY header if given.
    #[command(hide = true)]
    Bulk {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bytes: u64,
        /// Bytes sent first, in hex.
        #[arg(long, default_value = "")]
        header: String,
    },
    /// Helper: accepts connections and holds them open unread, in one
    /// thread (no per-connection kernel state but the socket's own), until
    /// killed: the kernel-bytes measures.
    #[command(hide = true)]
    HoldServer {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Helper: a server that counts what each connection sent.
    #[command(hide = true)]
    SinkServer {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Helper: one connection that sends a line and waits for its echo.
    #[command(hide = true)]
    LineClient {
        #[arg(long)]
        to: SocketAddr,
    },
    /// Helper: per-call timings on one accepted connection.
    #[command(hide = true)]
    Calls {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        iterations: usize,
    },
    /// Helper: lookups by fd with and without a record, per stdin line.
    #[command(hide = true)]
    FdProbe {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        requests: usize,
    },
    /// Helper: the floor line server.
    #[command(hide = true)]
    FloorServer {
        #[arg(long)]
        socket: PathBuf,
    },
    /// Helper: counts the UDP datagrams it receives until stdin closes,
    /// then prints the count.
    #[command(hide = true)]
    UdpSink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Helper: sends 64-byte UDP datagrams to `to` as fast as it can for
    /// `millis`, then prints how many.
    #[command(hide = true)]
    UdpBlast {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        millis: u64,
    },
    /// Helper: lookup load on one accepted connection.
    #[command(hide = true)]
    LookupLoad {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        requests: usize,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Run { quick, out, only } => sections::run(quick, &out, &only),
        Cmd::EchoServer { listen, getsockopt } => helpers::echo_server(listen, getsockopt),
        Cmd::UdpSink { listen } => helpers::udp_sink(listen),
        Cmd::UdpBlast { to, millis } => helpers::udp_blast(to, millis),
        Cmd::ConnRate {
            to,
            count,
            parallel,
        } => helpers::conn_rate(to, count, parallel),
        Cmd::LineClient { to } => helpers::line_client(to),
        Cmd::HttpRate {
            to,
            count,
            parallel,
        } => proxy_helpers::http_rate(to, count, parallel),
        Cmd::Bulk { to, bytes, header } => proxy_helpers::from_hex(&header)
            .and_then(|header| proxy_helpers::bulk(to, bytes, &header)),
        Cmd::SinkServer { listen } => proxy_helpers::sink_server(listen),
        Cmd::HoldServer { listen } => proxy_helpers::hold_server(listen),
        Cmd::Calls { listen, iterations } => helpers::calls(listen, iterations),
        Cmd::LookupLoad {
            listen,
            socket,
            clients,
            requests,
        } => helpers::lookup_load(listen, &socket, clients, requests),
        Cmd::FdProbe {
            listen,
            socket,
            requests,
        } => helpers::fd_probe(listen, &socket, requests),
        Cmd::FloorServer { socket } => helpers::floor_server(&socket),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ttm-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
