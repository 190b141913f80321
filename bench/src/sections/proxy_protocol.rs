//! PROXY protocol: HAProxy `send-proxy-v2` in front of nginx, ttm removing
//! the header vs nginx parsing it itself, side by side; and bulk
//! throughput after the header against a plain proxied connection.

use super::*;

use ttm_lab::proxies::{hex, v2, Proxy, Sender};

/// nginx on the real server with a plain port (ttm's PROXY port) and a
/// `proxy_protocol` one (nginx parses the header itself).
struct Nginx {
    _process: Guarded,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nginx {
    fn start(lab: &Lab, plain: u16, parsing: u16) -> Result<Nginx> {
        let dir = std::env::temp_dir().join(format!("ttm-bench-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nworker_rlimit_nofile 8192;\n\
             events {{ worker_connections 4096; }}\nhttp {{\naccess_log off;\n\
             client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
             server {{ listen {plain}; location / {{ return 200 \"ok\\n\"; }} }}\n\
             server {{ listen {parsing} proxy_protocol; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-c").arg(dir.join("nginx.conf"));
        ttm_lab::process::place(&mut cmd, &lab.rs_cgroup(), lab::RS_NS);
        let process = Guarded::spawn(cmd)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.join("nginx.pid").exists() {
            if Instant::now() > deadline {
                bail!("nginx did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx {
            _process: process,
            dir,
        })
    }
}

fn proxy_at(port: u16) -> SocketAddr {
    format!("{}:{port}", lab::PROXY_IP)
        .parse()
        .expect("address")
}

fn rs_at(port: u16) -> SocketAddr {
    format!("{}:{port}", lab::RS_IP).parse().expect("address")
}

pub(super) fn proxy_protocol(lab: &Lab, sizes: &Sizes) -> Result<Section> {
    // ttm is told about 8091 (nginx plain) and 8093 (the sink); nginx parses
    // the header itself on 8092; 8094 is a sink behind a proxy with no header.
    // 8096 and 8097 hold connections for the kernel-bytes measures.
    // First with headers cut at the interface (what the README tells
    // operators to run), then, for the bulk measures only, without.
    let daemon_cut = daemon(
        lab,
        &[
            "--proxy-protocol",
            "8091,8093,8097",
            "--proxy-interface",
            lab::RS_IF,
        ],
    )?;
    let _nginx = Nginx::start(lab, 8091, 8092)?;
    let sink_ttm = in_rs(lab, &["sink-server", "--listen", "0.0.0.0:8093"])?;
    listening(&sink_ttm)?;
    let sink_plain = in_rs(lab, &["sink-server", "--listen", "0.0.0.0:8094"])?;
    listening(&sink_plain)?;
    // The floor: a sink whose sockets sit in a sockhash with a verdict that
    // passes everything, the kernel's own cost of the mechanism.
    let _floor = ttm_lab::hijacker::Foreign::sockhash_floor(&lab.rs_cgroup(), 8095)?;
    let sink_floor = in_rs(lab, &["sink-server", "--listen", "0.0.0.0:8095"])?;
    listening(&sink_floor)?;
    // The daemon defers the new listeners within a tick of listen().
    std::thread::sleep(Duration::from_millis(300));
    let _p1 = Proxy::start(Sender::HaproxyV2, proxy_at(9091), rs_at(8091))?;
    let _p2 = Proxy::start(Sender::HaproxyV2, proxy_at(9092), rs_at(8092))?;

    let http = [
        (
            "nginx parses the header itself (`listen proxy_protocol`)",
            9092u16,
        ),
        (
            "ttm cuts the header out at the interface, plain nginx",
            9091,
        ),
    ];
    let mut rates = vec![Vec::new(); http.len()];
    let mut ttfb = vec![Vec::new(); http.len()];
    let bulk = [
        ("a plain connection, a port ttm does not watch", 8094u16),
        ("after a PROXY header ttm cut at the interface", 8093),
        (
            "in a sockhash with an empty stream verdict (the floor), no header",
            8095,
        ),
    ];
    let bytes = if sizes.rounds == 1 {
        4u64 << 20
    } else {
        1 << 30
    };
    // More rounds than the other sections: one round is a few seconds, and
    // these ratios move by several percent from one to the next here.
    let rounds = if sizes.rounds == 1 { 1 } else { 15 };
    for round in 0..rounds {
        for k in 0..http.len() {
            let i = (k + round) % http.len();
            let (count, to) = (
                sizes.connections.to_string(),
                proxy_at(http[i].1).to_string(),
            );
            let client = in_client(
                lab,
                &[
                    "http-rate",
                    "--to",
                    &to,
                    "--count",
                    &count,
                    "--parallel",
                    "4",
                ],
            )?;
            let v = json_line(&client, Duration::from_secs(180))?;
            let ok = v["ok"].as_f64().unwrap_or(0.0);
            if ok < sizes.connections as f64 * 0.99 {
                bail!(
                    "{}: only {ok} of {} requests worked",
                    http[i].0,
                    sizes.connections
                );
            }
            rates[i].push(ok / v["seconds"].as_f64().unwrap_or(f64::MAX));
            ttfb[i].push(v["ttfb_us"].as_f64().unwrap_or(f64::MAX));
        }
    }
    let cut = Uploads::run(lab, &bulk, rounds, bytes, 8093)?;
    let held = if sizes.rounds == 1 { 200 } else { 5000 };
    let mut per_conn = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..sizes.rounds.min(3) {
        for k in 0..3 {
            let i = (k + round) % 3;
            per_conn[i].push(held_bytes(lab, held, i)?);
        }
    }
    // The sockmap path: the same daemon without --proxy-interface.
    drop(daemon_cut);
    let _daemon = daemon(lab, &["--proxy-protocol", "8091,8093,8097"])?;
    // The daemon defers the listeners within a tick of its start.
    std::thread::sleep(Duration::from_millis(500));
    let sockmap_kinds = [
        ("a plain connection, a port ttm does not watch", 8094u16),
        (
            "after a PROXY header the stream verdict removed (no --proxy-interface)",
            8093,
        ),
    ];
    let sockmap_rounds = if sizes.rounds == 1 { 1 } else { 5 };
    let sockmap = Uploads::run(lab, &sockmap_kinds, sockmap_rounds, bytes, 8093)?;

    let mut figures = Vec::new();
    let (_, base_rate) = min_median(&rates[0]);
    let (_, base_ttfb) = min_median(&ttfb[0]);
    figures.push(Figure::info(
        &format!(
            "requests/s (new connection each, 4 in parallel), {}",
            http[0].0
        ),
        format!("median {base_rate:.0}; time to first byte median {base_ttfb:.0} µs"),
        "the baseline: what an app configured for PROXY protocol gets",
    ));
    let (_, rate) = min_median(&rates[1]);
    let (_, first) = min_median(&ttfb[1]);
    let ratio = rate / base_rate;
    figures.push(Figure::judged(
        &format!("requests/s, {}", http[1].0),
        format!("median {rate:.0}, ratio {ratio:.3}"),
        "ratio ≥ 0.95",
        ratio >= 0.95,
        "per connection ttm holds the handshake's ACK back, cuts the header out at the \
         interface and renumbers each segment",
    ));
    let ttfb_ratio = base_ttfb / first;
    figures.push(Figure::judged(
        &format!("time to first byte, {}", http[1].0),
        format!("median {first:.0} µs, ratio (baseline ÷ this) {ttfb_ratio:.3}"),
        "ratio ≥ 0.95",
        ttfb_ratio >= 0.95,
        "the held ACK keeps the connection from accept() until the header is in, which through \
         a proxy is at once",
    ));
    let (_, base_bulk) = min_median(&cut.throughput[0]);
    figures.push(Figure::info(
        &format!("bulk MB/s from the LB's address, {}", bulk[0].0),
        format!("median {base_bulk:.0}"),
        "baseline: the kernel's own receive path",
    ));
    let (_, after) = min_median(&cut.throughput[1]);
    let (_, floor) = min_median(&cut.throughput[2]);
    let bulk_ratio = after / base_bulk;
    figures.push(Figure::judged(
        &format!("bulk MB/s, {}", bulk[1].0),
        format!("median {after:.0}, ratio to plain {bulk_ratio:.3}"),
        "ratio to plain ≥ 0.98",
        bulk_ratio >= 0.98,
        "the kernel's own receive path: each segment in pays one hash lookup and a sequence \
         number rewritten, each acknowledgment out the same",
    ));
    figures.push(Figure::info(
        &format!("bulk MB/s, {}", bulk[2].0),
        format!("median {floor:.0}, ratio to plain {:.3}", floor / base_bulk),
        "the kernel's sockmap receive path with no work in the program: every segment goes \
         through the psock's queue instead of the socket's own",
    ));
    let (_, sock_plain) = min_median(&sockmap.throughput[0]);
    let (_, sock_after) = min_median(&sockmap.throughput[1]);
    figures.push(Figure::info(
        &format!("bulk MB/s, {}", sockmap_kinds[1].0),
        format!(
            "median {sock_after:.0}, ratio to plain (same daemon, {sockmap_rounds} rounds) {:.3}",
            sock_after / sock_plain
        ),
        "the socket stays in the sockhash until it closes: each segment takes the sockmap path",
    ));
    let gib = |r: usize| (r as u64 * bytes) as f64 / f64::from(1u32 << 30);
    figures.push(Figure::info(
        "blocking reads that returned EAGAIN, per GiB: plain / after a header ttm cut / the floor",
        format!(
            "{:.2} / {:.2} / {:.2} ({:.0} GiB each)",
            cut.eagains[0] as f64 / gib(rounds),
            cut.eagains[1] as f64 / gib(rounds),
            cut.eagains[2] as f64 / gib(rounds),
            gib(rounds)
        ),
        "a socket in a sockhash: the kernel's sockmap receive path wakes a blocked reader and, \
         finding its queue empty, returns EAGAIN; the sink retries. A blocking server that \
         treats EAGAIN as an error drops such a connection",
    ));
    figures.push(Figure::info(
        "blocking reads that returned EAGAIN, per GiB, after a header the stream verdict removed",
        format!(
            "{:.2} ({:.0} GiB)",
            sockmap.eagains[1] as f64 / gib(sockmap_rounds),
            gib(sockmap_rounds)
        ),
        "why --proxy-interface: without it every PROXY connection reads through the sockmap path",
    ));
    for (k, (what, _)) in bulk.iter().enumerate() {
        let read = format!("{} of {rounds}", rounds as u32 - cut.wrong[k]);
        let measure = format!("uploads whose every byte the sink read exactly once, {what}");
        figures.push(if k == 2 {
            // The floor is the kernel's, not ttm's: reported, not judged.
            Figure::info(
                &measure,
                read,
                "the kernel's sockmap path under bulk load can deliver a segment twice (Linux \
                 6.18)",
            )
        } else {
            Figure::judged(
                &measure,
                read,
                "all",
                cut.wrong[k] == 0,
                "the sink counts what its blocking reads return; the header is not counted",
            )
        });
    }
    figures.push(Figure::info(
        &format!(
            "uploads whose every byte the sink read exactly once, {}",
            sockmap_kinds[1].0
        ),
        format!(
            "{} of {sockmap_rounds}",
            sockmap_rounds as u32 - sockmap.wrong[1]
        ),
        "the kernel's sockmap path under bulk load can deliver a segment twice (Linux 6.18)",
    ));
    let (_, plain) = min_median(&per_conn[0]);
    figures.push(Figure::info(
        "kernel bytes per held connection, a port ttm does not watch",
        format!("median {plain:.0}"),
        "the baseline: the kernel's own socket, buffers and slab rounding",
    ));
    for (i, what) in [
        (1, "header pending (in pieces: the sockmap path)"),
        (2, "after a header cut at the interface"),
    ] {
        let (_, bytes) = min_median(&per_conn[i]);
        figures.push(Figure::info(
            &format!("kernel bytes ttm adds per PROXY connection, {what}"),
            format!("median {:.0}", bytes - plain),
            if i == 1 {
                "the pending state (255 held bytes and the record), the socket's sockmap state \
                 (psock) and its sockhash entry, and the socket-storage slot"
            } else {
                "the record (one element of the record map) and the \
                 connection's renumbering (a PROXY_FLOWS entry); no psock, no sockhash entry"
            },
        ));
    }
    drop((sink_ttm, sink_plain, sink_floor));
    Ok(Section {
        title: "PROXY protocol".into(),
        method: format!(
            "HAProxy 2.6 `send-proxy-v2` in the LB namespace in front of the real server: nginx \
             parsing the header itself (`listen proxy_protocol`) against plain nginx on a port \
             given to `--proxy-protocol`, both under the same daemon (with `--proxy-interface`: \
             headers cut at the interface); {} rounds of {} HTTP/1.0 \
             requests, a new connection each, 4 in parallel. Bulk: one {} MiB upload per round \
             straight from the LB's address (no proxy between: only the header differs) to a \
             counting sink, after a v2 header ttm removed against a port ttm does not watch, and \
             against the same with the sink's sockets in a sockhash whose stream verdict passes \
             everything (a lab program: the floor of the sockmap mechanism); then {} rounds with \
             the daemon restarted without `--proxy-interface` (headers removed by the stream \
             verdict); the sink must count every byte after the header. Orders rotate each round; medians. Kernel bytes: {held} connections \
             held open at once from the LB's address by a one-thread server that never reads, `SUnreclaim` (unreclaimable slab) while \
             they are open minus before, per connection; to a port ttm does not watch, to a \
             PROXY port with 10 bytes of a v2 header sent (pending), and with the whole header \
             and a line sent (after); {} rounds, rotating.",
            rounds,
            sizes.connections,
            bytes >> 20,
            sockmap_rounds,
            sizes.rounds.min(3)
        ),
        figures,
    })
}

/// Bulk uploads from the LB's address, per kind: MB/s, blocking reads that
/// returned EAGAIN, uploads not read exactly once.
struct Uploads {
    throughput: Vec<Vec<f64>>,
    eagains: Vec<u64>,
    wrong: Vec<u32>,
}

impl Uploads {
    /// `rounds` uploads of `bytes` to each of `kinds` (rotating), a v2
    /// header first to `proxy_port`.
    fn run(
        lab: &Lab,
        kinds: &[(&str, u16)],
        rounds: usize,
        bytes: u64,
        proxy_port: u16,
    ) -> Result<Uploads> {
        let mut out = Uploads {
            throughput: vec![Vec::new(); kinds.len()],
            eagains: vec![0; kinds.len()],
            wrong: vec![0; kinds.len()],
        };
        for round in 0..rounds {
            for k in 0..kinds.len() {
                let i = (k + round) % kinds.len();
                let (to, n) = (rs_at(kinds[i].1), bytes.to_string());
                // Straight from the LB's address: only the header differs.
                let header = if kinds[i].1 == proxy_port {
                    hex(&v2(1, "198.51.100.9:40009".parse()?, to, &[]))
                } else {
                    String::new()
                };
                let client = in_lb(
                    lab,
                    &[
                        "bulk",
                        "--to",
                        &to.to_string(),
                        "--bytes",
                        &n,
                        "--header",
                        &header,
                    ],
                )?;
                let v = json_line(&client, Duration::from_secs(300))?;
                let counted = v["counted"].as_u64().unwrap_or(0);
                if counted != bytes {
                    eprintln!(
                        "bench: {}: the sink read {counted} bytes of {bytes} sent",
                        kinds[i].0
                    );
                    out.wrong[i] += 1;
                }
                out.eagains[i] += v["eagain"].as_u64().unwrap_or(0);
                out.throughput[i]
                    .push(bytes as f64 / v["seconds"].as_f64().unwrap_or(f64::MAX) / 1e6);
            }
        }
        Ok(out)
    }
}

/// `SUnreclaim` of /proc/meminfo, in bytes.
pub(super) fn slab_unreclaimable() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix("SUnreclaim:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("SUnreclaim in /proc/meminfo")
}

/// Kernel bytes per connection with `n` held open from the LB's address:
/// kind 0 to a plain port, 1 to a PROXY port with its header pending, 2
/// with the header through.
fn held_bytes(lab: &Lab, n: usize, kind: usize) -> Result<f64> {
    use std::io::Write as _;
    let port = if kind == 0 { 8096 } else { 8097 };
    let to = rs_at(port);
    // A server of its own for each measure: it never reads, so it would
    // hold the closed connections of earlier ones too.
    let server = in_rs(
        lab,
        &["hold-server", "--listen", &format!("0.0.0.0:{port}")],
    )?;
    listening(&server)?;
    // The daemon defers a PROXY port's new listener within a tick.
    std::thread::sleep(Duration::from_millis(300));
    let connections: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let client: SocketAddr = format!("198.51.{}.{}:{}", 100 + i / 250, 1 + i % 250, 10_000 + i)
                .parse()
                .expect("address");
            let header = v2(1, client, to, &[]);
            let chunks = match kind {
                0 => vec![hex(b"plain ")],
                1 => vec![hex(&header[..10])],
                _ => vec![hex(&header), hex(b"after ")],
            };
            serde_json::json!({"to": to.to_string(), "bind": lab::LB_IP, "chunks": chunks, "line": "x"})
        })
        .collect();
    let plan = serde_json::json!({"connections": connections, "hold": true});
    std::thread::sleep(Duration::from_millis(500));
    let before = slab_unreclaimable()?;
    let mut sender = Command::new("ip")
        .args(["netns", "exec", lab::LB_NS, "python3"])
        .arg(ttm_lab::proxies::sender_script())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the scripted sender")?;
    let mut stdin = sender.stdin.take().context("sender stdin")?;
    stdin.write_all(format!("{plan}\n").as_bytes())?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(sender.stdout.take().context("sender stdout")?),
        &mut line,
    )?;
    let v: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("sender said {line:?}"))?;
    if v["open_at_once"].as_u64() != Some(n as u64) {
        bail!("only {} of {n} connections opened", v["open_at_once"]);
    }
    std::thread::sleep(Duration::from_millis(500));
    let during = slab_unreclaimable()?;
    // The server closes first: TIME_WAIT then stays on the real server's
    // side, not on the LB ports the next measure needs.
    drop(server);
    std::thread::sleep(Duration::from_millis(200));
    drop(stdin);
    sender.wait()?;
    Ok(during.saturating_sub(before) as f64 / n as f64)
}
