//! The bench's own processes inside the lab (started in a namespace and
//! cgroup by the orchestrator): a minimal server, a connection-rate client,
//! the per-call timer and the lookup load generator. Each prints one JSON line.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::stats::Summary;

/// Accepts forever: reads one byte, answers one byte, closes (the server
/// closes first, so TIME_WAIT stays on this side). With `getsockopt`, also
/// asks `getsockopt(SOL_IP, 1345)` per connection like a TOA-aware app.
pub fn echo_server(listen: SocketAddr, getsockopt: bool) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("listening");
    std::io::stdout().flush()?;
    loop {
        let (mut conn, _peer) = listener.accept()?;
        if getsockopt {
            let mut buf = [0u8; 20];
            let mut len = buf.len() as libc::socklen_t;
            // SAFETY: valid fd and buffer; failure (no record) is fine here.
            unsafe {
                libc::getsockopt(
                    conn.as_raw_fd(),
                    libc::SOL_IP,
                    1345,
                    buf.as_mut_ptr().cast(),
                    &mut len,
                )
            };
        }
        let mut byte = [0u8; 1];
        if conn.read_exact(&mut byte).is_ok() {
            let _ = conn.write_all(&byte);
        }
    }
}

/// Opens `count` connections to `to` from `parallel` threads, each sending
/// and receiving one byte; prints {"seconds":…,"ok":…}.
pub fn conn_rate(to: SocketAddr, count: usize, parallel: usize) -> Result<()> {
    let started = Instant::now();
    let per_thread = count.div_ceil(parallel);
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            std::thread::spawn(move || {
                let mut ok = 0usize;
                for _ in 0..per_thread {
                    let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) else {
                        continue;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut byte = [7u8; 1];
                    if s.write_all(&byte).is_ok() && s.read_exact(&mut byte).is_ok() {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let ok: usize = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    let seconds = started.elapsed().as_secs_f64();
    println!("{}", serde_json::json!({"seconds": seconds, "ok": ok}));
    Ok(())
}

/// Accepts one lab connection (reads its line, echoes it), returns it.
fn accept_lab_connection(listen: SocketAddr) -> Result<TcpStream> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("listening");
    std::io::stdout().flush()?;
    let (conn, _) = listener.accept()?;
    let mut line = String::new();
    BufReader::new(conn.try_clone()?).read_line(&mut line)?;
    (&conn).write_all(line.as_bytes())?;
    Ok(conn)
}

/// Nanoseconds per call of `f`, over `iterations` calls.
fn per_call(iterations: usize, mut f: impl FnMut() -> i32) -> f64 {
    let started = Instant::now();
    let mut sink = 0i64;
    for _ in 0..iterations {
        sink += i64::from(f());
    }
    std::hint::black_box(sink);
    started.elapsed().as_nanos() as f64 / iterations as f64
}

/// Times getpeername and getsockopt variants on one accepted lab connection;
/// prints {"getpeername":ns,"sockopt_1345":ns,"so_cookie":ns,"so_rcvbuf":ns}.
pub fn calls(listen: SocketAddr, iterations: usize) -> Result<()> {
    let conn = accept_lab_connection(listen)?;
    let fd = conn.as_raw_fd();
    let getsockopt = |level: i32, name: i32, size: usize| {
        move || {
            let mut buf = [0u8; 20];
            let mut len = size as libc::socklen_t;
            // SAFETY: valid fd, buffer of at least `len` bytes.
            unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut len) }
        }
    };
    let getpeername = || {
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: valid fd and out-pointers.
        unsafe { libc::getpeername(fd, (&raw mut addr).cast(), &mut len) }
    };
    // Warm up, then measure each.
    per_call(iterations / 10, getpeername);
    let report = serde_json::json!({
        "getpeername": per_call(iterations, getpeername),
        "sockopt_1345": per_call(iterations, getsockopt(libc::SOL_IP, 1345, 20)),
        "so_cookie": per_call(iterations, getsockopt(libc::SOL_SOCKET, libc::SO_COOKIE, 8)),
        "so_rcvbuf": per_call(iterations, getsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, 4)),
    });
    println!("{report}");
    std::io::stdout().flush()?;
    let mut rest = Vec::new();
    let _ = (&conn).read_to_end(&mut rest);
    Ok(())
}

/// Lookup load against the daemon on `socket` for one accepted lab
/// connection: `clients` threads, `requests` each, by fd then by cookie.
/// Prints {"fd":{…},"cookie":{…}} with throughput and latency percentiles.
pub fn lookup_load(
    listen: SocketAddr,
    socket: &Path,
    clients: usize,
    requests: usize,
) -> Result<()> {
    let conn = Arc::new(accept_lab_connection(listen)?);
    let cookie = ttm_client::socket_cookie(&*conn)?;
    let mut report = serde_json::Map::new();
    // Pipelined: batches of PIPELINE cookies per exchange.
    const PIPELINE: usize = 64;
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let socket = socket.to_path_buf();
            std::thread::spawn(move || -> Result<usize> {
                let mut client = ttm_client::Client::connect(&socket)?;
                let batch = vec![cookie; PIPELINE];
                let mut done = 0;
                while done < requests {
                    let found = client.lookup_cookies(&batch)?;
                    if found.iter().any(Option::is_none) {
                        bail!("the lab connection has no record");
                    }
                    done += PIPELINE;
                }
                Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    report.insert(
        "pipelined".to_string(),
        serde_json::json!({"per_second": total as f64 / started.elapsed().as_secs_f64(), "batch": PIPELINE}),
    );
    for by_fd in [true, false] {
        let started = Instant::now();
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let conn = conn.clone();
                let socket = socket.to_path_buf();
                std::thread::spawn(move || -> Result<Vec<u64>> {
                    let mut client = ttm_client::Client::connect(&socket)?;
                    let mut latencies = Vec::with_capacity(requests);
                    for _ in 0..requests {
                        let t = Instant::now();
                        let found = if by_fd {
                            client.lookup_fd(&*conn)?
                        } else {
                            client.lookup_cookie(cookie)?
                        };
                        latencies.push(t.elapsed().as_nanos() as u64);
                        if found.is_none() {
                            bail!("the lab connection has no record");
                        }
                    }
                    Ok(latencies)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(clients * requests);
        for w in workers {
            all.extend(w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??);
        }
        let seconds = started.elapsed().as_secs_f64();
        let s = Summary::of(&mut all);
        report.insert(
            (if by_fd { "fd" } else { "cookie" }).to_string(),
            serde_json::json!({
                "per_second": all.len() as f64 / seconds,
                "p50_us": s.p50 as f64 / 1000.0,
                "p99_us": s.p99 as f64 / 1000.0,
            }),
        );
    }
    println!("{}", serde_json::Value::Object(report));
    std::io::stdout().flush()?;
    let mut rest = Vec::new();
    let _ = (&*conn).read_to_end(&mut rest);
    Ok(())
}

/// One connection: sends a line, reads its echo, then waits for the server to close.
pub fn line_client(to: SocketAddr) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(b"bench\n")?;
    let mut line = String::new();
    BufReader::new(s.try_clone()?).read_line(&mut line)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok(())
}

/// Percentiles of `latencies` (ns) as JSON in µs.
fn summary_json(latencies: &mut [u64]) -> serde_json::Value {
    let s = Summary::of(latencies);
    serde_json::json!({"p50_us": s.p50 as f64 / 1000.0, "p99_us": s.p99 as f64 / 1000.0})
}

/// Lookups by fd at each scale level: holds one lab connection (with a
/// record) and one loopback connection (without), prints "ready", then for
/// each line on stdin asks the daemon `requests` times about each and
/// prints {"with":{…},"without":{…}}.
pub fn fd_probe(listen: SocketAddr, socket: &Path, requests: usize) -> Result<()> {
    let with = accept_lab_connection(listen)?;
    let loopback = TcpListener::bind("127.0.0.1:0")?;
    let _peer = TcpStream::connect(loopback.local_addr()?)?;
    let (without, _) = loopback.accept()?;
    let mut client = ttm_client::Client::connect(socket)?;
    println!("ready");
    std::io::stdout().flush()?;
    for line in std::io::stdin().lines() {
        line?;
        let mut report = serde_json::Map::new();
        for (name, conn, has_record) in [("with", &with, true), ("without", &without, false)] {
            let mut latencies = Vec::with_capacity(requests);
            for _ in 0..requests {
                let t = Instant::now();
                let found = client.lookup_fd(conn)?;
                latencies.push(t.elapsed().as_nanos() as u64);
                if found.is_some() != has_record {
                    bail!("lookup by fd of the connection {name} a record found {found:?}");
                }
            }
            report.insert(name.to_string(), summary_json(&mut latencies));
        }
        println!("{}", serde_json::Value::Object(report));
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// Bytes the floor server answers per request line.
pub const FLOOR_REPLY_BYTES: usize = 200;

/// The floor: a minimal thread-per-client Unix-socket line server that
/// answers every request line with a fixed 200-byte line — the same IPC as
/// the daemon's lookups, with no lookup behind it.
pub fn floor_server(socket: &Path) -> Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket)?;
    println!("listening");
    std::io::stdout().flush()?;
    let mut reply = vec![b'x'; FLOOR_REPLY_BYTES - 1];
    reply.push(b'\n');
    let reply: Arc<[u8]> = reply.into();
    for conn in listener.incoming() {
        let conn = conn?;
        let reply = reply.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(&conn);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if (&conn).write_all(&reply).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

/// Restricts every thread of process `pid` (and so the threads it starts
/// later) to `cpus`.
pub fn set_process_cpus(pid: u32, cpus: &[usize]) -> Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: i32 = task?.file_name().to_string_lossy().parse()?;
        if let Err(e) = set_thread_cpus(tid, cpus) {
            // A thread that ended since the listing (a client's) needs nothing.
            let gone = e
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.raw_os_error() == Some(libc::ESRCH));
            if !gone {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Restricts thread `tid` (0: the calling thread) to `cpus`.
pub fn set_thread_cpus(tid: i32, cpus: &[usize]) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and
    // sched_setaffinity get a valid set of the right size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sched_setaffinity({tid}, {cpus:?})"));
        }
    }
    Ok(())
}

/// `clients` threads, each sending `request` (one line) and waiting for
/// its answer line, `requests` times, over the Unix socket `socket`; on
/// `cpus` when given. Returns (requests per second, p50 µs, p99 µs).
pub fn line_load(
    socket: &Path,
    request: &str,
    clients: usize,
    requests: usize,
    cpus: Option<&[usize]>,
) -> Result<(f64, f64, f64)> {
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let socket = socket.to_path_buf();
            let request = format!("{request}\n").into_bytes();
            let cpus = cpus.map(<[usize]>::to_vec);
            std::thread::spawn(move || -> Result<Vec<u64>> {
                if let Some(cpus) = cpus {
                    set_thread_cpus(0, &cpus)?;
                }
                let conn = std::os::unix::net::UnixStream::connect(&socket)?;
                let mut reader = BufReader::new(&conn);
                let mut line = Vec::new();
                let mut latencies = Vec::with_capacity(requests);
                for _ in 0..requests {
                    let t = Instant::now();
                    (&conn).write_all(&request)?;
                    line.clear();
                    if reader.read_until(b'\n', &mut line)? == 0 {
                        bail!("the server hung up");
                    }
                    latencies.push(t.elapsed().as_nanos() as u64);
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(clients * requests);
    for w in workers {
        all.extend(w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??);
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    let s = Summary::of(&mut all);
    Ok((rate, s.p50 as f64 / 1000.0, s.p99 as f64 / 1000.0))
}

/// `memlock` of map descriptor `fd` in this process, from fdinfo: the
/// kernel's estimate of the map's memory.
pub fn fd_memlock(fd: std::os::fd::RawFd) -> Result<u64> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .context("memlock missing from fdinfo")
}

/// Counts UDP datagrams on `listen` until stdin closes; prints the count.
pub fn udp_sink(listen: SocketAddr) -> Result<()> {
    let socket = std::net::UdpSocket::bind(listen)?;
    socket.set_read_timeout(Some(std::time::Duration::from_millis(100)))?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    println!("listening");
    let (mut count, mut buf) = (0u64, [0u8; 2048]);
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        if socket.recv(&mut buf).is_ok() {
            count += 1;
        }
    }
    println!("{count}");
    Ok(())
}

/// Sends 64-byte datagrams to `to` for `millis`; prints how many.
pub fn udp_blast(to: SocketAddr, millis: u64) -> Result<()> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(to)?;
    let until = std::time::Instant::now() + std::time::Duration::from_millis(millis);
    let (mut sent, payload) = (0u64, [0x55u8; 64]);
    while std::time::Instant::now() < until {
        for _ in 0..64 {
            if socket.send(&payload).is_ok() {
                sent += 1;
            }
        }
    }
    println!("{sent}");
    Ok(())
}
