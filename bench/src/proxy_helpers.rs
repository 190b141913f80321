//! The PROXY protocol section's own processes inside the lab: an HTTP
//! connection-rate client that times the first byte, a bulk sender, and a
//! sink server that counts what it read. Each prints one JSON line.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

/// `count` HTTP/1.0 GETs to `to`, a new connection each, from `parallel`
/// threads; prints {"seconds","ok","ttfb_us"} (the median time from the
/// start of `connect()` to the response's first byte).
pub fn http_rate(to: SocketAddr, count: usize, parallel: usize) -> Result<()> {
    let started = Instant::now();
    let per_thread = count.div_ceil(parallel);
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            std::thread::spawn(move || {
                let mut ttfb = Vec::with_capacity(per_thread);
                for _ in 0..per_thread {
                    let t0 = Instant::now();
                    let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) else {
                        continue;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    if s.write_all(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n").is_err() {
                        continue;
                    }
                    let mut buf = [0u8; 4096];
                    let Ok(n) = s.read(&mut buf) else { continue };
                    let first = t0.elapsed();
                    if n == 0 || !buf[..n].starts_with(b"HTTP/1.1 200") {
                        continue;
                    }
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                    ttfb.push(first.as_secs_f64() * 1e6);
                }
                ttfb
            })
        })
        .collect();
    let mut ttfb: Vec<f64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap_or_default())
        .collect();
    let seconds = started.elapsed().as_secs_f64();
    ttfb.sort_by(f64::total_cmp);
    let median = ttfb.get(ttfb.len() / 2).copied().unwrap_or(f64::MAX);
    println!(
        "{}",
        serde_json::json!({"seconds": seconds, "ok": ttfb.len(), "ttfb_us": median})
    );
    Ok(())
}

/// The bytes of a hex string (`--header`).
pub fn from_hex(text: &str) -> Result<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        anyhow::bail!("odd number of hex digits");
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).context("not hex"))
        .collect()
}

/// Sends `header` (a PROXY header, or nothing) and then `bytes` to `to` in
/// 64 KiB writes, then reads the sink's count; prints
/// {"seconds","bytes","counted"} (the header not counted in either).
pub fn bulk(to: SocketAddr, bytes: u64, header: &[u8]) -> Result<()> {
    let chunk = vec![0x5au8; 65536];
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .with_context(|| format!("connecting to {to}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let started = Instant::now();
    s.write_all(header)
        .with_context(|| format!("sending the header to {to}"))?;
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n])
            .with_context(|| format!("sending to {to} after {sent} bytes"))?;
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let seconds = started.elapsed().as_secs_f64();
    let mut words = answer
        .split_whitespace()
        .map(|w| w.parse::<u64>().unwrap_or(0));
    let (counted, eagain) = (words.next().unwrap_or(0), words.next().unwrap_or(0));
    println!(
        "{}",
        serde_json::json!({"seconds": seconds, "bytes": sent, "counted": counted, "eagain": eagain})
    );
    Ok(())
}

/// Accepts forever: reads each connection to its end with blocking reads,
/// answers how many bytes it read and how many reads returned EAGAIN, closes.
pub fn sink_server(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("listening");
    std::io::stdout().flush()?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 18];
            let mut total = 0u64;
            // A blocking read that returns EAGAIN is retried and counted:
            // the kernel's sockmap receive path can wake a blocked reader
            // with nothing to read (see the bench's PROXY section).
            let mut eagain = 0u64;
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => eagain += 1,
                    Err(e) => {
                        eprintln!("sink: read failed after {total} bytes: {e}");
                        break;
                    }
                }
            }
            let _ = conn.write_all(format!("{total} {eagain}\n").as_bytes());
        });
    }
    Ok(())
}

/// `hold-server`: accepts on `listen` and keeps every connection open,
/// unread, in one thread.
pub fn hold_server(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("listening");
    std::io::stdout().flush()?;
    let mut held = Vec::new();
    // A failed accept (out of files) is skipped: the sender then reports
    // fewer connections open at once and the measure fails.
    for conn in listener.incoming().flatten() {
        held.push(conn);
    }
    Ok(())
}
