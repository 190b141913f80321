//! Many live connections at once, for the scale test and bench: a server
//! that accepts COUNT connections on one port, checks that ttm finds every
//! one by fd, cookie and both tuples, and holds them; a client that opens
//! COUNT connections and holds them. A process may hold at most 20,000
//! descriptors here, so large counts are spread over several of each.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

/// Cookies asked per pipelined exchange.
const BATCH: usize = 256;

/// Waits until stdin closes (the orchestrator says "release them").
fn until_stdin_closes() {
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}

/// Accepts `count` connections on `listen`, then asks the daemon on
/// `socket` about each: by cookie (pipelined), by fd, by the tuple the app
/// saw (local, client) and by the kernel's (local, LB). Prints one JSON line
/// with how many of each were found with the client accept() returned,
/// then holds the sockets until stdin closes.
pub fn hold_server(listen: SocketAddr, count: usize, socket: &Path) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("listening {listen}");
    std::io::stdout().flush()?;
    let mut held = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        let (stream, peer) = listener.accept().context("accept")?;
        held.push((stream, peer));
    }
    let accept_seconds = started.elapsed().as_secs_f64();
    let mut client = ttm_client::Client::connect(socket)?;
    client.set_timeout(Duration::from_secs(30))?;
    let cookies: Vec<u64> = held
        .iter()
        .map(|(s, _)| ttm_client::socket_cookie(s))
        .collect::<Result<_, _>>()?;
    let (mut by_cookie, mut by_fd, mut by_client_tuple, mut by_kernel_tuple) = (0, 0, 0, 0);
    let mut rewritten = 0;
    let lookup_started = Instant::now();
    for (chunk, conns) in cookies.chunks(BATCH).zip(held.chunks(BATCH)) {
        let found = client.lookup_cookies(chunk)?;
        for (record, (stream, peer)) in found.iter().zip(conns) {
            if peer.ip().to_string() != ttm_lab::lab::LB_IP {
                rewritten += 1;
            }
            let Some(record) = record else { continue };
            if record.client != *peer {
                continue;
            }
            by_cookie += 1;
            if client.lookup_fd(stream)?.is_some_and(|r| r.client == *peer) {
                by_fd += 1;
            }
            let local = stream.local_addr()?;
            if client
                .lookup_tuple(local, *peer)?
                .is_some_and(|r| r.cookie == record.cookie)
            {
                by_client_tuple += 1;
            }
            if client
                .lookup_tuple(local, record.kernel_peer)?
                .is_some_and(|r| r.cookie == record.cookie)
            {
                by_kernel_tuple += 1;
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "accepted": held.len(),
            "accept_seconds": accept_seconds,
            "rewritten": rewritten,
            "by_cookie": by_cookie,
            "by_fd": by_fd,
            "by_client_tuple": by_client_tuple,
            "by_kernel_tuple": by_kernel_tuple,
            "lookup_seconds": lookup_started.elapsed().as_secs_f64(),
        })
    );
    std::io::stdout().flush()?;
    until_stdin_closes();
    Ok(())
}

/// Opens `count` connections to `to` and holds them until stdin closes.
/// Prints {"connected":N,"seconds":S} once all are up.
pub fn hold_client(to: SocketAddr, count: usize) -> Result<()> {
    let started = Instant::now();
    let mut held: Vec<TcpStream> = Vec::with_capacity(count);
    for i in 0..count {
        match TcpStream::connect_timeout(&to, Duration::from_secs(10)) {
            Ok(s) => held.push(s),
            Err(e) => bail!("connection {i} of {count} to {to}: {e}"),
        }
    }
    println!(
        "{}",
        serde_json::json!({"connected": held.len(), "seconds": started.elapsed().as_secs_f64()})
    );
    std::io::stdout().flush()?;
    until_stdin_closes();
    Ok(())
}
