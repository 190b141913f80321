//! The lookup service against a real daemon in the lab: an application on
//! the real server asks by fd, cookie and 4-tuple; misbehaving clients get
//! their error while a well-behaved client keeps getting correct answers.

mod common;

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::UdpSocket;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{Accepted, World};
use std::process::Command;
use ttm_client::{AsyncClient, Client, ClientError};
use ttm_lab::lab;
use ttm_lab::process::place;
use ttm_lab::process::Guarded;

/// A world with one live connection through the LB, held open by the server.
struct Live {
    world: World,
    _server: Guarded,
    conn: Accepted,
}

impl Live {
    fn new(daemon_args: &[&str]) -> Live {
        let world = World::with_daemon_args(lab::LB_NET, daemon_args);
        let server = world.serve(1);
        world.connect(&world.lab.client_cgroup(), 1, 0);
        let conn = world.accepted(&server, 1).pop().expect("one connection");
        Live {
            world,
            _server: server,
            conn,
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.world.daemon.socket).expect("connect to the lookup socket")
    }

    /// A well-behaved client on its own connection gets the right answer.
    fn assert_served(&self) {
        let mut client = self.client();
        let found = client
            .lookup_cookie(self.conn.cookie)
            .expect("lookup by cookie")
            .expect("record for the live connection");
        assert_eq!(found.client, self.conn.claimed);
        let found = client
            .lookup_tuple(self.conn.local, self.conn.peer)
            .expect("lookup by tuple")
            .expect("record for the live connection");
        assert_eq!(found.client, self.conn.claimed);
    }

    fn service_counter(&self, name: &str) -> u64 {
        let stats = self.client().stats().expect("stats");
        *stats
            .service
            .get(name)
            .unwrap_or_else(|| panic!("counter {name}"))
    }

    /// A raw connection to the socket, for speaking the protocol badly.
    fn raw(&self) -> UnixStream {
        let s = UnixStream::connect(&self.world.daemon.socket).expect("raw connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        s
    }

    /// A raw connection that has been answered, so it holds a client slot
    /// (slots of closed clients free asynchronously: retry until one is ours).
    fn holding_a_slot(&self) -> UnixStream {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut raw = self.raw();
            // A refused client is answered and hung up on at once, so the
            // request may meet a closed socket (EPIPE): that is a refusal too.
            let answer = raw.write_all(b"{\"op\":\"version\"}\n").and_then(|()| {
                let mut line = String::new();
                BufReader::new(raw.try_clone()?).read_line(&mut line)?;
                Ok(line)
            });
            match answer {
                Ok(line)
                    if serde_json::from_str::<serde_json::Value>(&line)
                        .is_ok_and(|r| r["protocol"] == 1) =>
                {
                    return raw
                }
                Ok(line) => assert!(Instant::now() < deadline, "no slot freed: {line:?}"),
                Err(e) => assert!(Instant::now() < deadline, "no slot freed: {e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn daemon_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.world.daemon.pid()))
            .expect("daemon status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

fn reply(reader: &mut BufReader<UnixStream>) -> serde_json::Value {
    let mut line = String::new();
    reader.read_line(&mut line).expect("reply line");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_app_finds_each_connection_by_fd_cookie_and_tuple() {
    let world = World::new();
    let server = world.serve_looking_up(20);
    world.connect(&world.lab.client_cgroup(), 20, 0);
    let accepted = world.accepted(&server, 20);
    for a in &accepted {
        let truth = a.claimed.to_string();
        a.assert_found_as(&truth);
    }
    // The async client answers the same.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client = AsyncClient::connect(&world.daemon.socket)
            .await
            .expect("async connect");
        for a in &accepted {
            let found = client
                .lookup_cookie(a.cookie)
                .await
                .expect("async lookup")
                .expect("record");
            assert_eq!(found.client, a.claimed);
            assert_eq!(found.kernel_peer.ip().to_string(), lab::LB_IP);
            assert_eq!(found.family, "4to4");
        }
        assert_eq!(client.lookup_cookie(1).await.expect("lookup"), None);
        let version = client.version().await.expect("version");
        assert_eq!(version.protocol, ttm_client::protocol::PROTOCOL_VERSION);
    });
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let live = Live::new(&[]);
    let mut raw = live.raw();
    let batch = format!(
        "{{\"op\":\"cookie\",\"cookie\":{c}}}\n{{\"op\":\"cookie\",\"cookie\":1}}\n{{\"op\":\"version\"}}\n{{\"op\":\"tuple\",\"local\":\"{l}\",\"peer\":\"{p}\"}}\n",
        c = live.conn.cookie,
        l = live.conn.local,
        p = live.conn.peer
    );
    raw.write_all(batch.as_bytes()).expect("write batch");
    let mut reader = BufReader::new(raw);
    let claimed = live.conn.claimed.to_string();
    assert_eq!(reply(&mut reader)["client"], claimed.as_str());
    assert_eq!(reply(&mut reader)["error"], "not_found");
    assert_eq!(reply(&mut reader)["protocol"], 1);
    assert_eq!(reply(&mut reader)["client"], claimed.as_str());
}

/// Runs `f` while another client keeps asking; returns `f`'s result and the
/// slowest answer the other client got meanwhile.
fn while_served<T>(live: &Live, f: impl FnOnce() -> T) -> (T, Duration) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut client = live.client();
    let (cookie, claimed) = (live.conn.cookie, live.conn.claimed);
    let asking = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || answered == 0 {
                let t = Instant::now();
                let found = client
                    .lookup_cookie(cookie)
                    .expect("lookup")
                    .expect("record");
                assert_eq!(found.client, claimed);
                slowest = slowest.max(t.elapsed());
                answered += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            slowest
        })
    };
    let out = f();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (out, asking.join().expect("the other client"))
}

#[test]
fn garbage_gets_one_error_line_and_the_connection_is_closed_at_once() {
    let live = Live::new(&[]);
    let before = live.service_counter("clients_sent_garbage");
    // 2 MB of random bytes: thousands of "lines" a daemon that answered each
    // would block on, writing into a client that never reads.
    let mut random = vec![0u8; 2 << 20];
    File::open("/dev/urandom")
        .expect("urandom")
        .read_exact(&mut random)
        .expect("random bytes");
    let ((answer, freed), slowest) = while_served(&live, || {
        let raw = live.raw();
        let mut writer = raw.try_clone().expect("clone");
        let started = Instant::now();
        let flood = std::thread::spawn(move || {
            let _ = writer.write_all(&random);
        });
        let mut all = Vec::new();
        let _ = BufReader::new(raw).read_to_end(&mut all);
        let freed = started.elapsed();
        let _ = flood.join();
        (String::from_utf8_lossy(&all).into_owned(), freed)
    });
    let lines: Vec<&str> = answer.lines().collect();
    assert_eq!(lines.len(), 1, "one error line, then closed: {answer:?}");
    let r: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
    assert_eq!(r["error"], "bad_request", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("closing"), "{r}");
    // Bounds far below the 30 s idle timeout that used to free such a slot,
    // with room for kernels emulated under QEMU (the kernel matrix).
    assert!(freed < Duration::from_secs(5), "closed after {freed:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "others waited {slowest:?}"
    );
    assert_eq!(live.service_counter("clients_sent_garbage") - before, 1);
    // Invalid UTF-8 is garbage too.
    let mut raw = live.raw();
    raw.write_all(b"\xff\xfe\x00garbage\n").expect("write");
    let mut all = String::new();
    let _ = BufReader::new(raw).read_to_string(&mut all);
    assert!(all.contains("UTF-8") && all.lines().count() == 1, "{all}");
    live.assert_served();
}

#[test]
fn a_json_object_that_is_not_a_request_is_refused_and_the_connection_goes_on() {
    let live = Live::new(&[]);
    let bad_before = live.service_counter("requests_bad");
    let mut raw = live.raw();
    raw.write_all(b"{\"op\":\"cookie\"}\n{\"op\":\"cookie\",\"cookie\":1,\"extra\":2}\n{\"op\":\"teleport\"}\n")
        .expect("write");
    let mut reader = BufReader::new(raw.try_clone().expect("clone"));
    let replies: Vec<_> = (0..3).map(|_| reply(&mut reader)).collect();
    for r in &replies {
        assert_eq!(r["error"], "bad_request", "{r}");
    }
    assert!(replies[0]["reason"].as_str().unwrap().contains("cookie"));
    // The same connection still answers a good request.
    writeln!(raw, "{{\"op\":\"cookie\",\"cookie\":{}}}", live.conn.cookie).expect("write");
    assert_eq!(
        reply(&mut reader)["client"],
        live.conn.claimed.to_string().as_str()
    );
    assert_eq!(live.service_counter("requests_bad") - bad_before, 3);
}

#[test]
fn a_client_that_stops_reading_is_dropped_long_before_the_idle_timeout() {
    let live = Live::new(&[]);
    let before = live.service_counter("clients_not_reading");
    let ((), slowest) = while_served(&live, || {
        let mut raw = live.raw();
        raw.set_write_timeout(Some(Duration::from_secs(5)))
            .expect("write timeout");
        // Thousands of pipelined stats requests, never reading an answer:
        // the answers fill the socket and the daemon's write blocks.
        let request = b"{\"op\":\"stats\"}\n".repeat(4096);
        let _ = raw.write_all(&request);
        let started = Instant::now();
        while live.service_counter("clients_not_reading") == before {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the client was not dropped"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The write bound is 1 s; the idle timeout it replaces, 30 s.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        drop(raw);
    });
    assert!(
        slowest < Duration::from_secs(2),
        "others waited {slowest:?}"
    );
    assert_eq!(live.service_counter("clients_not_reading") - before, 1);
}

#[test]
fn a_cli_whose_reader_goes_away_exits_quietly() {
    let live = Live::new(&[]);
    let pins = common::PIN_DIR;
    let socket = live.world.daemon.socket.display().to_string();
    let ttm = ttm_lab::daemon::ttm_bin().expect("ttm");
    for args in [
        format!("stats --pin-dir {pins} --socket {socket}"),
        "formats".to_string(),
        format!("lookup --cookie {} --socket {socket}", live.conn.cookie),
        format!("doctor --pin-dir {pins}"),
    ] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{} {args} | true", ttm.display()))
            .output()
            .expect("sh");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "ttm {args}: {err}"
        );
    }
}

#[test]
fn an_overlong_request_is_refused_without_being_buffered() {
    let live = Live::new(&[]);
    let raw = live.raw();
    let mut writer = raw.try_clone().expect("clone");
    // 8 MiB without a newline; the daemon stops reading after its limit.
    let flood = std::thread::spawn(move || {
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..128 {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let mut reader = BufReader::new(raw);
    let r = reply(&mut reader);
    assert_eq!(r["error"], "bad_request", "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("longer than 4096"),
        "{r}"
    );
    let mut rest = Vec::new();
    match reader.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "nothing after the refusal"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    flood.join().expect("flood thread");
    live.assert_served();
    assert_eq!(live.service_counter("requests_too_long"), 1);
    let rss = live.daemon_rss_kib();
    assert!(rss < 64 * 1024, "daemon RSS {rss} KiB after an 8 MiB flood");
}

#[test]
fn a_silent_client_is_dropped_after_the_timeout_and_blocks_nobody() {
    let live = Live::new(&["--client-timeout", "1"]);
    let silent = live.raw();
    live.assert_served();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = (&silent)
        .read(&mut buf)
        .expect("read from dropped connection");
    assert_eq!(n, 0, "the daemon closes a silent client");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "dropped after {waited:?}"
    );
    assert_eq!(live.service_counter("clients_timed_out"), 1);
    live.assert_served();
}

#[test]
fn a_client_that_hangs_up_mid_request_is_counted() {
    let live = Live::new(&[]);
    {
        let mut raw = live.raw();
        raw.write_all(b"{\"op\":\"cook")
            .expect("write half a request");
    }
    wait_until("the hang-up to be counted", || {
        live.service_counter("clients_hung_up_mid_request") == 1
    });
    live.assert_served();
}

#[test]
fn descriptors_that_are_not_tcp_sockets_are_refused() {
    let live = Live::new(&[]);
    let mut client = live.client();
    let not_a_socket = File::open("/dev/null").expect("open /dev/null");
    match client.lookup_fd(&not_a_socket) {
        Err(ClientError::BadRequest(reason)) => {
            assert!(reason.contains("not a socket"), "{reason}")
        }
        other => panic!("a file must be refused: {other:?}"),
    }
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp socket on loopback");
    match client.lookup_fd(&udp) {
        Err(ClientError::BadRequest(reason)) => {
            assert!(reason.contains("not a TCP socket"), "{reason}")
        }
        other => panic!("a UDP socket must be refused: {other:?}"),
    }
    // An fd request without a descriptor attached.
    let mut raw = live.raw();
    raw.write_all(b"{\"op\":\"fd\"}\n").expect("write");
    let r = reply(&mut BufReader::new(raw));
    assert!(
        r["reason"].as_str().unwrap().contains("no descriptor"),
        "{r}"
    );
    live.assert_served();
    assert_eq!(live.service_counter("fds_not_tcp"), 2);
    assert_eq!(live.service_counter("fds_received"), 2);
}

#[test]
fn a_thousand_concurrent_clients_are_all_answered() {
    ttm::host::raise_open_files_limit();
    let live = Live::new(&[]);
    let rss_idle = live.daemon_rss_kib();
    let clients: Vec<UnixStream> = (0..1000).map(|_| live.raw()).collect();
    let request = format!("{{\"op\":\"cookie\",\"cookie\":{}}}\n", live.conn.cookie);
    for mut c in &clients {
        c.write_all(request.as_bytes()).expect("write request");
    }
    let claimed = live.conn.claimed.to_string();
    for c in clients {
        let r = reply(&mut BufReader::new(c));
        assert_eq!(r["client"], claimed.as_str(), "{r}");
    }
    live.assert_served();
    assert!(live.service_counter("clients_accepted") >= 1000);
    assert_eq!(live.service_counter("clients_overloaded"), 0);
    let rss = live.daemon_rss_kib();
    assert!(
        rss < 64 * 1024,
        "daemon RSS {rss} KiB after 1000 clients (idle {rss_idle} KiB)"
    );
}

#[test]
fn clients_beyond_the_limit_are_told_overloaded() {
    let live = Live::new(&["--max-clients", "3"]);
    live.assert_served();
    // Three clients that each got an answer hold all three slots.
    let mut held: Vec<UnixStream> = (0..3).map(|_| live.holding_a_slot()).collect();
    let refused = live.raw();
    let r = reply(&mut BufReader::new(refused));
    assert_eq!(r["error"], "overloaded", "{r}");
    drop(held.pop());
    // Once a slot frees, service resumes.
    wait_until("a slot to free", || {
        let mut c = live.client();
        matches!(c.lookup_cookie(live.conn.cookie), Ok(Some(found)) if found.client == live.conn.claimed)
    });
    drop(held);
    // The daemon frees the other slots as it notices the hang-ups.
    let mut overloaded = 0;
    wait_until("the held slots to free", || match live.client().stats() {
        Ok(stats) => {
            overloaded = stats.service["clients_overloaded"];
            true
        }
        Err(_) => false,
    });
    assert!(overloaded >= 1, "clients_overloaded = {overloaded}");
}

/// The fenced code block after `<!-- lookup-example: NAME -->` in the README.
fn readme_example(name: &str) -> String {
    let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
    let marker = format!("<!-- lookup-example: {name} -->");
    let after = &readme[readme.find(&marker).expect("example marker") + marker.len()..];
    let body = after
        .split_once("```")
        .and_then(|(_, rest)| rest.split_once('\n'))
        .map(|(_, rest)| rest)
        .expect("fenced block");
    body[..body.find("```").expect("closing fence")].to_string()
}

#[test]
fn the_readme_shell_example_talks_to_the_daemon() {
    let live = Live::new(&[]);
    let script = readme_example("shell").replace(
        ttm_client::DEFAULT_SOCKET,
        &live.world.daemon.socket.to_string_lossy(),
    );
    let out = Command::new("sh")
        .args(["-ec", &script])
        .output()
        .expect("run the shell example");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0]["live_records"], 1, "{text}");
    assert_eq!(lines[0]["kernel"]["decoded"], 1, "{text}");
    assert_eq!(lines[1]["protocol"], 1, "{text}");
    assert_eq!(lines[2]["error"], "not_found", "{text}");
}

#[test]
fn the_readme_python_example_recovers_the_client() {
    let world = World::new();
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &readme_example("python")])
        .env("TTM_SOCKET", &world.daemon.socket);
    place(&mut cmd, &world.lab.rs_cgroup(), lab::RS_NS);
    let server = Guarded::spawn(cmd).expect("spawn the Python example");
    server
        .wait_for(Duration::from_secs(10), |l| l == "listening")
        .expect("python server listening");
    let clients = world.connect(&world.lab.client_cgroup(), 1, 100);
    let line = server.line(Duration::from_secs(10)).expect("python report");
    assert!(
        line.starts_with(&format!(
            "real client {} via load balancer {}:",
            clients[0],
            lab::LB_IP
        )),
        "{line}"
    );
}
