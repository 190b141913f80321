//! `ttm-lab`: builds and removes the full-NAT lab, runs the lab's test
//! server and clients, and runs the end-to-end demo.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod hold;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use ttm_lab::lab::{self, Lab};
use ttm_lab::process::{spawn_in, Guarded};
use ttm_lab::TtmDaemon;

#[derive(Parser)]
#[command(name = "ttm-lab", about = "ttm's full-NAT veth lab")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the lab (namespaces, NAT, cgroups, option writer) and leave it up.
    Up,
    /// Remove everything the lab created.
    Down,
    /// Lab server: accept COUNT connections, report each as JSON, echo data,
    /// hold the sockets until stdin closes.
    Serve {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Ask the ttm daemon on this socket about each connection (by fd,
        /// cookie and 4-tuple) and add its answers to the report.
        #[arg(long, value_name = "SOCKET")]
        lookup: Option<PathBuf>,
    },
    /// Lab client: open COUNT concurrent connections that each send their own
    /// address and check the echo.
    Connect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Extra bytes each connection round-trips after the address line.
        #[arg(long, default_value_t = 0)]
        payload: usize,
    },
    /// Lab HTTP client: COUNT sequential `GET /` requests; reports each
    /// request's own address and status line.
    Http {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// Scale server: accept COUNT connections, check ttm finds each by fd,
    /// cookie and both tuples, report, hold them until stdin closes.
    HoldServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long, value_name = "SOCKET")]
        lookup: PathBuf,
    },
    /// Scale client: open COUNT connections and hold them until stdin closes.
    HoldClient {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: usize,
    },
    /// Test-only UOA marker (run in the LB's namespace): sends UDP from the
    /// LB to the real server marked as DPVS marks a flow, and prints the
    /// server's answers as one JSON line.
    UoaSend {
        #[arg(long)]
        from: SocketAddr,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, value_enum, default_value = "ipopt")]
        carrier: ttm_lab::uoa_marker::Carrier,
        /// The client to mark, as DPVS writes it.
        #[arg(long)]
        client: Option<SocketAddr>,
        /// The option bytes in hex instead (hostile shapes).
        #[arg(long)]
        option_hex: Option<String>,
        /// A marking-only datagram (empty payload) first, then the payload unmarked.
        #[arg(long)]
        marker_first: bool,
        #[arg(long, default_value = "hello")]
        payload: String,
        /// Unmarked datagrams of the flow sent after the first.
        #[arg(long, default_value_t = 0)]
        more: usize,
        /// Milliseconds to wait for each answer (default: do not wait).
        #[arg(long)]
        wait_ms: Option<u64>,
    },
    /// Test-only: COUNT marking-only datagrams from the LB addresses, one
    /// flow each (run in the LB's namespace).
    UoaFlood {
        #[arg(long, value_delimiter = ',')]
        lb: Vec<std::net::Ipv4Addr>,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u32,
    },
    /// The end-to-end demo: lab up, ttm daemon, connections, what ttm recovered, lab down.
    Demo {
        #[arg(long, default_value_t = 5)]
        connections: usize,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ttm-lab: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Up => {
            let lab = Lab::up()?;
            std::mem::forget(lab);
            println!(
                "lab up: client {} ({}) → VIP {} → LB {} → real server {} ({}); cgroups under {}/{}",
                lab::CLIENT_IP,
                lab::CLIENT_NS,
                lab::VIP,
                lab::LB_IP,
                lab::RS_IP,
                lab::RS_NS,
                lab::cgroup2_root()?.display(),
                lab::CGROUP_DIR
            );
            Ok(())
        }
        Cmd::Down => {
            Lab::down_quietly();
            println!("lab down");
            Ok(())
        }
        Cmd::Serve {
            listen,
            count,
            lookup,
        } => serve(listen, count, lookup),
        Cmd::Connect { to, count, payload } => connect(to, count, payload),
        Cmd::Http { to, count } => http(to, count),
        Cmd::HoldServer {
            listen,
            count,
            lookup,
        } => hold::hold_server(listen, count, &lookup),
        Cmd::HoldClient { to, count } => hold::hold_client(to, count),
        Cmd::Demo { connections } => demo(connections),
        Cmd::UoaFlood { lb, to, count } => {
            ttm_lab::uoa_marker::flood(&lb, to, count)?;
            println!("sent {count}");
            Ok(())
        }
        Cmd::UoaSend {
            from,
            to,
            carrier,
            client,
            option_hex,
            marker_first,
            payload,
            more,
            wait_ms,
        } => {
            let option = match (client, option_hex) {
                (Some(client), None) => ttm_lab::uoa_marker::marking(client),
                (None, Some(hex)) => (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .context("--option-hex: pairs of hex digits")?,
                (None, None) => Vec::new(),
                (Some(_), Some(_)) => anyhow::bail!("--client or --option-hex, not both"),
            };
            let answers = ttm_lab::uoa_marker::send(&ttm_lab::uoa_marker::Send {
                from,
                to,
                carrier,
                option,
                marker_first,
                payload: payload.into_bytes(),
                more,
                answer_wait: wait_ms.map(std::time::Duration::from_millis),
            })?;
            println!("{}", serde_json::json!({ "answers": answers }));
            Ok(())
        }
    }
}

/// What the daemon said about `stream`, asked three ways.
fn ask_daemon(socket: &Path, stream: &TcpStream, peer: SocketAddr) -> Result<serde_json::Value> {
    let mut client = ttm_client::Client::connect(socket)?;
    // The lab also runs inside QEMU without acceleration (`--kernel`), about
    // 50× slower than a host, where a hundred connections' lookups can queue
    // past the client's 2 s default; the answers, not their speed, are tested here.
    client.set_timeout(Duration::from_secs(20))?;
    let cookie = ttm_client::socket_cookie(stream)?;
    let local = stream.local_addr()?;
    let client_of = |c: Option<ttm_client::Connection>| {
        c.map_or(serde_json::Value::Null, |c| c.client.to_string().into())
    };
    Ok(serde_json::json!({
        "by_fd": client_of(client.lookup_fd(stream)?),
        "by_cookie": client_of(client.lookup_cookie(cookie)?),
        "by_tuple": client_of(client.lookup_tuple(local, peer)?),
        "provenance": serde_json::to_value(client.provenance(stream)?)?,
    }))
}

/// A blocking reader that counts and retries `EAGAIN`: the kernel's
/// sockmap receive path returns it to a blocking `read()` woken by a
/// segment that left no bytes for the app (ttm removing the last piece of a
/// PROXY header that came over several segments, after `accept()`).
struct RetryingReader {
    stream: TcpStream,
    empty_wakeups: Arc<std::sync::atomic::AtomicU64>,
}

impl std::io::Read for RetryingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.empty_wakeups
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                other => return other,
            }
        }
    }
}

fn serve(listen: SocketAddr, count: usize, lookup: Option<PathBuf>) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("listening {listen}");
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let mut workers = Vec::new();
    for _ in 0..count {
        let (stream, peer) = listener.accept()?;
        held.lock().expect("lock").push(stream.try_clone()?);
        let out = out.clone();
        let lookup = lookup.clone();
        workers.push(std::thread::spawn(move || -> Result<()> {
            let cookie = ttm_client::socket_cookie(&stream)?;
            let local = stream.local_addr()?;
            let wakeups = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut reader = BufReader::new(RetryingReader {
                stream: stream.try_clone()?,
                empty_wakeups: wakeups.clone(),
            });
            let mut claimed = String::new();
            reader.read_line(&mut claimed)?;
            let mut w = &stream;
            w.write_all(claimed.as_bytes())?;
            let mut line = serde_json::json!({
                "cookie": cookie,
                "peer": peer.to_string(),
                "local": local.to_string(),
                "claimed": claimed.trim(),
                "empty_wakeups": wakeups.load(std::sync::atomic::Ordering::Relaxed),
            });
            if let Some(socket) = &lookup {
                line["lookup"] = ask_daemon(socket, &stream, peer)?;
            }
            writeln!(out.lock().expect("lock"), "{line}")?;
            // Echo whatever follows until the client is done.
            let mut buf = [0u8; 65536];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                w.write_all(&buf[..n])?;
            }
            Ok(())
        }));
    }
    for w in workers {
        if let Err(e) = w.join().expect("worker panicked") {
            eprintln!("ttm-lab serve: connection failed: {e:#}");
        }
    }
    println!("done");
    // Hold the sockets open until told to finish, so records stay live.
    let mut sink = String::new();
    let _ = std::io::stdin().read_to_string(&mut sink);
    drop(held);
    Ok(())
}

fn http(to: SocketAddr, count: usize) -> Result<()> {
    for _ in 0..count {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let local = s.local_addr()?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: ttm-lab\r\n\r\n")?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        let status = response.lines().next().unwrap_or_default().to_string();
        let line = serde_json::json!({"local": local.to_string(), "status": status});
        println!("{line}");
    }
    Ok(())
}

fn connect(to: SocketAddr, count: usize, payload: usize) -> Result<()> {
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let workers: Vec<_> = (0..count)
        .map(|_| {
            let out = out.clone();
            std::thread::spawn(move || -> Result<()> {
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
                s.set_read_timeout(Some(Duration::from_secs(20)))?;
                let local = s.local_addr()?;
                s.write_all(format!("{local}\n").as_bytes())?;
                let mut reader = BufReader::new(s.try_clone()?);
                let mut echo = String::new();
                reader.read_line(&mut echo)?;
                let mut ok = echo.trim() == local.to_string();
                let mut sent = 0;
                let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
                while ok && sent < payload {
                    let n = chunk.len().min(payload - sent);
                    s.write_all(&chunk[..n])?;
                    let mut back = vec![0u8; n];
                    reader.read_exact(&mut back)?;
                    ok = back == chunk[..n];
                    sent += n;
                }
                s.shutdown(std::net::Shutdown::Write)?;
                let line = serde_json::json!({"local": local.to_string(), "ok": ok, "bytes": sent});
                writeln!(out.lock().expect("lock"), "{line}")?;
                Ok(())
            })
        })
        .collect();
    let mut failed = 0;
    for w in workers {
        if let Err(e) = w.join().expect("worker panicked") {
            eprintln!("ttm-lab connect: {e:#}");
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {count} connections failed");
    }
    Ok(())
}

/// This binary as a lab helper (`serve|connect ...`) in `cgroup` and `netns`.
fn helper(cgroup: &std::path::Path, netns: &str, args: &[&str]) -> Result<Guarded> {
    spawn_in(&std::env::current_exe()?, cgroup, netns, args)
}

/// The IPv6 client the demo's LB claims for its 6to4 connection.
const DEMO_CLIENT6: &str = "2001:db8::7";
const DEMO_PORT6: u16 = 4242;

fn demo(connections: usize) -> Result<()> {
    println!("== building the full-NAT lab");
    let lab = Lab::up()?;
    println!(
        "   client {} → VIP {} (LB: DNAT to {}, SNAT to {}) → real server {}",
        lab::CLIENT_IP,
        lab::VIP,
        lab::RS_IP,
        lab::LB_IP,
        lab::RS_IP
    );
    let pin_dir = std::path::PathBuf::from("/sys/fs/bpf/ttm-demo");
    println!(
        "== starting: ttm daemon --trust {},{} --cgroup {} --pin-dir {}",
        lab::LB_NET,
        lab::LB_NET6,
        lab.rs_cgroup().display(),
        pin_dir.display()
    );
    let trust = format!("{},{}", lab::LB_NET, lab::LB_NET6);
    let daemon = TtmDaemon::start(&trust, &lab.rs_cgroup(), &pin_dir, &[])?;
    // The 4to4 connections, one without the option, one 6to4.
    let total = connections + 2;
    let mut server = helper(
        &lab.rs_cgroup(),
        lab::RS_NS,
        &[
            "serve",
            "--listen",
            "0.0.0.0:8080",
            "--count",
            &total.to_string(),
        ],
    )?;
    server.wait_for(Duration::from_secs(10), |l| l.starts_with("listening"))?;
    let target = format!("{}:8080", lab::VIP);
    println!("== {connections} connections from the client through the LB, 1 without the option");
    let mut clients = helper(
        &lab.client_cgroup(),
        lab::CLIENT_NS,
        &[
            "connect",
            "--to",
            &target,
            "--count",
            &connections.to_string(),
        ],
    )?;
    let mut plain = helper(
        &lab.plain_cgroup(),
        lab::CLIENT_NS,
        &["connect", "--to", &target, "--count", "1"],
    )?;
    if !clients.wait(Duration::from_secs(30))?.success()
        || !plain.wait(Duration::from_secs(30))?.success()
    {
        bail!("lab clients failed");
    }
    println!("== 1 connection whose LB carries an IPv6 client, {DEMO_CLIENT6} (6to4)");
    let v6: std::net::Ipv6Addr = DEMO_CLIENT6.parse()?;
    lab.set_writer(
        ttm_lab::writer::WriterConfig::claim(254, 20, DEMO_PORT6, &v6.octets())
            .context("6to4 writer config")?,
    )?;
    let mut six = helper(
        &lab.client_cgroup(),
        lab::CLIENT_NS,
        &["connect", "--to", &target, "--count", "1"],
    )?;
    if !six.wait(Duration::from_secs(30))?.success() {
        bail!("6to4 lab client failed");
    }
    let six_truth = format!("[{DEMO_CLIENT6}]:{DEMO_PORT6}");
    println!();
    println!(
        "{:<24} {:<24} {:<24} {:<24} verdict",
        "app's getpeername()", "kernel peer (LB)", "ttm record", "client's true address"
    );
    let mut recovered = 0;
    let mut recovered6 = 0;
    for _ in 0..total {
        let line = server.line(Duration::from_secs(10))?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        // What accept() gave the unmodified server (rewritten by ttm when it has a record).
        let seen = v["peer"].as_str().unwrap_or_default().to_string();
        let local = v["local"].as_str().unwrap_or_default().to_string();
        let truth = v["claimed"].as_str().unwrap_or_default().to_string();
        let (code, out) = daemon.cli(&["lookup", "--local", &local, "--peer", &seen, "--json"])?;
        let (client, kernel_peer, family) = if code == 0 {
            let r: serde_json::Value = serde_json::from_str(&out)?;
            (
                r["client"].as_str().unwrap_or_default().to_string(),
                r["kernel_peer"].as_str().unwrap_or_default().to_string(),
                r["family"].as_str().unwrap_or_default().to_string(),
            )
        } else {
            ("(no record)".to_string(), seen.clone(), String::new())
        };
        let truth = if family == "6to4" {
            six_truth.clone()
        } else {
            truth
        };
        let verdict = if family == "6to4" && client == truth {
            recovered6 += 1;
            "6to4: AF_INET app sees the LB; getsockopt/lookup give the client"
        } else if client == truth && seen == truth {
            recovered += 1;
            "recovered"
        } else if code == 1 {
            "no option: app sees the LB"
        } else {
            "MISMATCH"
        };
        println!("{seen:<24} {kernel_peer:<24} {client:<24} {truth:<24} {verdict}");
    }
    server.close_stdin();
    let _ = server.wait(Duration::from_secs(10));
    let recovered_v6_server = demo_ipv6_real_server(&lab, &daemon)?;
    println!();
    let (_, stats) = daemon.cli(&["stats"])?;
    println!("== ttm stats\n{stats}");
    drop(daemon);
    drop(lab);
    println!("== lab torn down");
    if recovered != connections || recovered6 != 1 || recovered_v6_server != 2 {
        bail!(
            "recovered {recovered} of {connections} IPv4, {recovered6} of 1 6to4 and \
             {recovered_v6_server} of 2 clients on the IPv6 real server"
        );
    }
    println!(
        "ttm recovered {recovered}/{connections} real client addresses behind the full-NAT LB, \
         the 6to4 client, and on the IPv6 real server a 6to6 and a 4to6 client"
    );
    Ok(())
}

/// The IPv6 part of the demo: the LB reaches the real server over IPv6; one
/// IPv6 client (6to6) and one IPv4 client carried by a NAT46 LB (4to6), seen
/// by a dual-stack server on `[::]:8081`. Returns how many were recovered.
fn demo_ipv6_real_server(lab: &Lab, daemon: &TtmDaemon) -> Result<usize> {
    println!();
    println!(
        "== IPv6 between LB and real server: client {} → VIP {} → LB {} → real server {}",
        lab::CLIENT_IP6,
        lab::VIP6,
        lab::LB_IP6,
        lab::RS_IP6
    );
    let mut server = helper(
        &lab.rs_cgroup(),
        lab::RS_NS,
        &["serve", "--listen", "[::]:8081", "--count", "2"],
    )?;
    server.wait_for(Duration::from_secs(10), |l| l.starts_with("listening"))?;
    let target = format!("[{}]:8081", lab::VIP6);
    let cases = [
        (ttm_lab::writer::WriterConfig::TOA_V4, "6to6"),
        (
            ttm_lab::writer::WriterConfig::v4_client(254, [10, 0, 1, 2]),
            "4to6",
        ),
    ];
    for (writer, _) in &cases {
        lab.set_writer(*writer)?;
        let mut client = helper(
            &lab.client_cgroup(),
            lab::CLIENT_NS,
            &["connect", "--to", &target, "--count", "1"],
        )?;
        if !client.wait(Duration::from_secs(30))?.success() {
            bail!("IPv6 lab client failed");
        }
    }
    lab.set_writer(ttm_lab::writer::WriterConfig::TOA_V4)?;
    println!(
        "{:<30} {:<24} {:<30} {:<30} verdict",
        "app's getpeername()", "kernel peer (LB)", "ttm record", "client's true address"
    );
    let mut recovered = 0;
    for (_, family) in cases {
        let line = server.line(Duration::from_secs(10))?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        let seen = v["peer"].as_str().unwrap_or_default().to_string();
        let local = v["local"].as_str().unwrap_or_default().to_string();
        let own: std::net::SocketAddr = v["claimed"].as_str().unwrap_or_default().parse()?;
        let truth = if family == "4to6" {
            format!("10.0.1.2:{}", own.port())
        } else {
            own.to_string()
        };
        let (code, out) = daemon.cli(&["lookup", "--local", &local, "--peer", &seen, "--json"])?;
        let r: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let client = r["client"].as_str().unwrap_or("(no record)").to_string();
        let kernel_peer = r["kernel_peer"].as_str().unwrap_or_default().to_string();
        let ok = code == 0 && client == truth && r["family"] == family;
        recovered += usize::from(ok);
        println!(
            "{seen:<30} {kernel_peer:<24} {client:<30} {truth:<30} {}",
            if ok {
                format!("recovered ({family})")
            } else {
                "MISMATCH".to_string()
            }
        );
    }
    server.close_stdin();
    let _ = server.wait(Duration::from_secs(10));
    Ok(recovered)
}
