//! PROXY protocol end to end: real senders (HAProxy v1/v2, nginx stream) and
//! a scripted trusted sender in the LB namespace, a plain server on the real
//! server that never heard of PROXY protocol, and ttm removing the header.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{lab_bin, World};
use serde_json::{json, Value};
use ttm_common::Counter;
use ttm_lab::lab;
use ttm_lab::process::{spawn_in, Guarded};
use ttm_lab::proxies::{hex, sender_script, v1, v2, Proxy, Sender};

const PORT: &str = "8080";

/// Why this kernel cannot run `--proxy-protocol`, from `ttm doctor` (which
/// asks the verifier about both PROXY programs), or `None`.
fn kernel_lacks_proxy() -> Option<String> {
    // Asked once per test binary: the doctor loads every program.
    static ANSWER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ANSWER.get_or_init(ask_doctor).clone()
}

fn ask_doctor() -> Option<String> {
    let out = Command::new(ttm_lab::daemon::ttm_bin().expect("ttm binary"))
        .args(["doctor", "--json"])
        .output()
        .expect("run ttm doctor");
    let probes: Vec<Value> = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    let missing: Vec<String> = probes
        .iter()
        .filter(|p| {
            (p["feature"] == "ttm_proxy_verdict" || p["feature"] == "ttm_proxy_ingress")
                && p["ok"] == false
        })
        .map(|p| p["detail"].as_str().unwrap_or_default().to_string())
        .collect();
    (!missing.is_empty()).then(|| missing.join("; "))
}

/// Returns from the test with a SKIP line where the kernel lacks PROXY
/// protocol support (`a_kernel_without_the_programs_refuses_at_start`
/// checks the refusal there).
macro_rules! require_proxy_support {
    () => {
        if let Some(why) = kernel_lacks_proxy() {
            println!("SKIP: this kernel cannot run --proxy-protocol: {why}");
            return;
        }
    };
}

fn world() -> World {
    World::with_daemon_args(lab::LB_NET, &proxy_args(PORT))
}

/// The lab server on 0.0.0.0:`port`, once ttm has deferred its listener.
fn serve_on(world: &World, port: u16, count: usize) -> Guarded {
    serve_port(world, &format!("0.0.0.0:{port}"), port, count)
}

/// The lab server on `listen`, once ttm has deferred its listener.
fn serve(world: &World, listen: &str, count: usize) -> Guarded {
    serve_port(world, listen, 8080, count)
}

fn serve_port(world: &World, listen: &str, port: u16, count: usize) -> Guarded {
    let server = serve_unwaited(world, listen, count);
    wait_deferred(&server, port);
    server
}

/// The lab server on `listen`, at once.
fn serve_unwaited(world: &World, listen: &str, count: usize) -> Guarded {
    let count = count.to_string();
    let server = spawn_in(
        lab_bin(),
        &world.lab.rs_cgroup(),
        lab::RS_NS,
        &["serve", "--listen", listen, "--count", &count],
    )
    .expect("spawn lab server");
    server
        .wait_for(Duration::from_secs(10), |l| l.starts_with("listening"))
        .expect("server listening");
    server
}

/// One report of the lab server per connection, by the first line it read.
fn reports(server: &Guarded, n: usize) -> Vec<Value> {
    (0..n)
        .map(|_| {
            let line = server.line(Duration::from_secs(30)).expect("server report");
            serde_json::from_str(&line).expect("server JSON")
        })
        .collect()
}

/// Starts the scripted sender in `ns` with `plan`; see [`finish`].
fn send_async(ns: &str, plan: &Value) -> std::process::Child {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "python3"])
        .arg(sender_script())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the scripted sender");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(plan.to_string().as_bytes())
        .unwrap();
    child
}

/// The scripted sender's reports, one per connection, once it is done.
fn finish(child: std::process::Child) -> Vec<Value> {
    let out = child.wait_with_output().expect("sender output");
    assert!(out.status.success(), "sender failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("sender JSON"))
        .collect()
}

/// The Python server of `tests/apps` (accept, getpeername and the TOA
/// getsockopt per connection), once ttm has deferred its listener.
fn python_server(world: &World, host: &str, count: usize) -> Guarded {
    let script = common::app("peer_server.py");
    let count = count.to_string();
    let server = spawn_in(
        std::path::Path::new("/usr/bin/python3"),
        &world.lab.rs_cgroup(),
        lab::RS_NS,
        &[script.to_str().unwrap(), host, PORT, &count],
    )
    .expect("spawn python server");
    server
        .wait_for(Duration::from_secs(10), |l| l.starts_with("listening"))
        .expect("server listening");
    wait_deferred(&server, 8080);
    server
}

/// Waits until ttm has set `TCP_DEFER_ACCEPT` on `server`'s listener.
fn wait_deferred(server: &Guarded, port: u16) {
    wait_deferred_pid(server.pid(), port)
}

/// Whether this run has ttm cut headers at the interface
/// (`TTM_PROXY_CUT=1`, `--proxy-interface`) instead of removing them on the
/// sockmap path.
fn cutting() -> bool {
    std::env::var("TTM_PROXY_CUT").is_ok_and(|v| v == "1")
}

/// The daemon's PROXY flags for `ports`, by [`cutting`].
fn proxy_args(ports: &'static str) -> Vec<&'static str> {
    let mut args = vec!["--proxy-protocol", ports];
    if cutting() {
        args.extend(["--proxy-interface", lab::RS_IF]);
    }
    args
}

/// Waits until ttm has set `TCP_DEFER_ACCEPT` on the listener of `pid`
/// (when cutting at the interface, ttm holds the handshake itself and sets
/// nothing: there is nothing to wait for).
fn wait_deferred_pid(pid: u32, port: u16) {
    if cutting() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ttm::proxy_listeners::listener_deferral(pid, port) {
            Some(v) if v > 0 => return,
            other => assert!(
                Instant::now() < deadline,
                "ttm did not set TCP_DEFER_ACCEPT on the server's listener: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the scripted sender in `ns` with `plan`; one report per connection.
fn send(ns: &str, plan: &Value) -> Vec<Value> {
    finish(send_async(ns, plan))
}

fn rs() -> SocketAddr {
    format!("{}:{PORT}", lab::RS_IP).parse().unwrap()
}

fn by_claimed<'a>(reports: &'a [Value], line: &str) -> &'a Value {
    reports
        .iter()
        .find(|r| r["claimed"] == line)
        .unwrap_or_else(|| panic!("no connection whose app read {line:?} first: {reports:?}"))
}

#[test]
fn real_senders_reach_a_plain_server_with_the_client_and_the_exact_bytes() {
    require_proxy_support!();
    let world = world();
    let n = 8;
    for (i, sender) in [Sender::HaproxyV1, Sender::HaproxyV2, Sender::NginxStream]
        .into_iter()
        .enumerate()
    {
        let listen: SocketAddr = format!("{}:{}", lab::PROXY_IP, 9000 + i).parse().unwrap();
        let _proxy = Proxy::start(sender, listen, rs()).expect("start proxy");
        let server = serve(&world, "0.0.0.0:8080", n);
        let before = world.stats();
        // Each client round-trips 200 kB after its own address line: the
        // echo proves the app read exactly the client's bytes.
        let clients = world.connect_to(&world.lab.client_cgroup(), &listen.to_string(), n, 200_000);
        let accepted = world.accepted(&server, n);
        let records = world.records();
        for a in &accepted {
            assert!(clients.contains(&a.claimed), "{sender:?}: {a:?}");
            let info = records.by_cookie(a.cookie).unwrap().expect("a record");
            assert_eq!(a.peer, a.claimed, "{sender:?}: accept() names the client");
            assert_eq!(info.client, a.claimed);
            assert_eq!(info.carrier, sender.carrier(), "{sender:?}");
            assert_eq!(info.kernel_peer.ip().to_string(), lab::LB_IP);
            assert_eq!((info.option_kind, info.option_len), (0, 0));
        }
        let after = world.stats();
        let delta = |c| after.get(c) - before.get(c);
        assert_eq!(delta(Counter::ProxyDecoded), n as u64, "{sender:?}");
        assert_eq!(delta(Counter::ProxyAbsent), 0, "{sender:?}");
        if cutting() {
            // Each header cut at the interface: never on the sockmap path.
            assert_eq!(delta(Counter::ProxyCut), n as u64, "{sender:?}");
            assert_eq!(delta(Counter::ProxyKept), 0, "{sender:?}");
            assert_eq!(delta(Counter::ProxyWatched), 0, "{sender:?}");
        } else {
            assert_eq!(delta(Counter::ProxyWatched), n as u64, "{sender:?}");
        }
        drop(server);
    }
}

#[test]
fn one_port_serves_proxied_trusted_plain_and_direct_clients_at_once() {
    require_proxy_support!();
    let world = world();
    let listen: SocketAddr = format!("{}:9000", lab::PROXY_IP).parse().unwrap();
    let _proxy = Proxy::start(Sender::HaproxyV2, listen, rs()).expect("start haproxy");
    let server = serve(&world, "0.0.0.0:8080", 12);
    let before = world.stats();
    let proxied = world.connect_to(&world.lab.client_cgroup(), &listen.to_string(), 4, 10_000);
    // Straight to the real server: an untrusted peer, left alone.
    let direct = world.connect_to(&world.lab.client_cgroup(), &rs().to_string(), 4, 10_000);
    // From the trusted LB address, without a header: passed as it is.
    let plain: Vec<Value> = (0..4)
        .map(|i| json!({"to": rs().to_string(), "bind": lab::LB_IP, "line": format!("plain-{i}")}))
        .collect();
    let plain = send(lab::LB_NS, &Value::Array(plain));
    let accepted = world.accepted(&server, 8);
    let rest = reports(&server, 4);
    for a in &accepted {
        assert!(
            proxied.contains(&a.claimed) || direct.contains(&a.claimed),
            "{a:?}"
        );
        assert_eq!(a.peer, a.claimed, "{a:?}");
    }
    for (i, p) in plain.iter().enumerate() {
        assert_eq!(p["echo"], format!("plain-{i}"), "{p}");
        let r = by_claimed(&rest, &format!("plain-{i}"));
        assert!(r["peer"].as_str().unwrap().starts_with(lab::LB_IP), "{r}");
    }
    let after = world.stats();
    let delta = |c| after.get(c) - before.get(c);
    assert_eq!(delta(Counter::ProxyDecoded), 4);
    assert_eq!(delta(Counter::ProxyAbsent), 4);
    if cutting() {
        // Cut at the interface; the plain ones' first segment showed no
        // header before their sockets existed: none was ever watched.
        assert_eq!(delta(Counter::ProxyCut), 4);
        assert_eq!(delta(Counter::ProxyWatched), 0);
    } else {
        assert_eq!(delta(Counter::ProxyWatched), 8);
    }
}

#[test]
fn a_header_split_at_every_byte_is_joined_and_data_after_it_in_its_segment_kept() {
    require_proxy_support!();
    let world = world();
    let client: SocketAddr = "198.51.100.20:40000".parse().unwrap();
    let mut plan = Vec::new();
    for (name, header) in [("v1", v1(client, rs())), ("v2", v2(1, client, rs(), &[]))] {
        for cut in 1..header.len() {
            plan.push(json!({
                "to": rs().to_string(), "bind": lab::LB_IP,
                "chunks": [hex(&header[..cut]), hex(&header[cut..])],
                "line": format!("{name}-cut-{cut}"),
                "line_with_last_chunk": cut % 2 == 0,
            }));
        }
        plan.push(json!({
            "to": rs().to_string(), "bind": lab::LB_IP,
            "chunks": [hex(&header)], "line": format!("{name}-whole"),
            "line_with_last_chunk": true,
        }));
    }
    let n = plan.len();
    let server = serve(&world, "0.0.0.0:8080", n);
    let before = world.stats();
    let sent = send(lab::LB_NS, &Value::Array(plan));
    let got = reports(&server, n);
    let records = world.records();
    for s in &sent {
        let line = s["line"].as_str().unwrap();
        assert_eq!(s["echo"], line, "the app read other bytes first: {s}");
        let r = by_claimed(&got, line);
        let info = records
            .by_cookie(r["cookie"].as_u64().unwrap())
            .unwrap()
            .unwrap_or_else(|| panic!("{line}: no record: {r}"));
        assert_eq!(info.client, client, "{line}");
        if line.ends_with("-whole") {
            // Whole in its segment: read before the socket existed.
            assert_eq!(r["peer"], client.to_string(), "{line}: {r}");
            assert_eq!(
                r["empty_wakeups"], 0,
                "a whole header never wakes the app for nothing: {r}"
            );
        } else {
            // Split: known from the app's first read, never a wrong client before.
            let peer = r["peer"].as_str().unwrap();
            assert!(
                peer == client.to_string() || peer.starts_with(lab::LB_IP),
                "{line}: {r}"
            );
        }
    }
    let after = world.stats();
    assert_eq!(
        after.get(Counter::ProxyDecoded) - before.get(Counter::ProxyDecoded),
        n as u64
    );
    // Most cases reached ttm split (segments that arrive close together may
    // be merged on the way, the more so on a loaded machine).
    let split = after.get(Counter::ProxySplit) - before.get(Counter::ProxySplit);
    assert!(
        split >= (n / 2) as u64,
        "only {split} of {n} headers arrived split"
    );
}

/// (name, sender's namespace, its address to bind, the header, whether ttm
/// removes it).
type HostileCase = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    bool,
);

#[test]
fn forged_headers_and_malformations_are_never_believed() {
    require_proxy_support!();
    let world = world();
    let forged: SocketAddr = "203.0.113.66:666".parse().unwrap();
    let good = v2(1, forged, rs(), &[]);
    let mut bad_version = good.clone();
    bad_version[12] = 0x31;
    let mut bad_family = good.clone();
    bad_family[13] = 0x51;
    let truncated_tlv = v2(1, forged, rs(), &[0x01, 0x00, 0x09, b'h']);
    let mut short = good.clone();
    short[15] = 4;
    short.truncate(20);
    let mut oversized = ttm_common::proxy::V2_SIGNATURE.to_vec();
    oversized.extend([0x21, 0x11, 0x01, 0x2c]);
    oversized.extend(std::iter::repeat_n(0u8, 300));
    let local = v2(0, forged, rs(), &[]);
    let overlong_v1 = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 120], b"\r\n"].concat();
    let bad_v1 = b"PROXY TCP4 203.0.113.66 10.0.2.2 666\r\n".to_vec();
    // (name, sender namespace and address, header, what the app must read
    // first: the line itself when the header is removed, else the header)
    let cases: Vec<HostileCase> = vec![
        (
            "direct-forged-v2",
            lab::CLIENT_NS,
            None,
            good.clone(),
            false,
        ),
        (
            "direct-forged-v1",
            lab::CLIENT_NS,
            None,
            v1(forged, rs()),
            false,
        ),
        (
            "v2-bad-version",
            lab::LB_NS,
            Some(lab::LB_IP),
            bad_version,
            true,
        ),
        (
            "v2-unknown-family",
            lab::LB_NS,
            Some(lab::LB_IP),
            bad_family,
            true,
        ),
        (
            "v2-truncated-tlv",
            lab::LB_NS,
            Some(lab::LB_IP),
            truncated_tlv,
            true,
        ),
        (
            "v2-short-addresses",
            lab::LB_NS,
            Some(lab::LB_IP),
            short,
            true,
        ),
        (
            "v2-oversized",
            lab::LB_NS,
            Some(lab::LB_IP),
            oversized,
            true,
        ),
        ("v2-local", lab::LB_NS, Some(lab::LB_IP), local, true),
        (
            "v1-overlong",
            lab::LB_NS,
            Some(lab::LB_IP),
            overlong_v1,
            false,
        ),
        ("v1-bad-field", lab::LB_NS, Some(lab::LB_IP), bad_v1, false),
    ];
    let server = serve(&world, "0.0.0.0:8080", cases.len());
    let before = world.stats();
    for (name, ns, bind, header, removed) in &cases {
        let mut conn = json!({
            "to": rs().to_string(), "chunks": [hex(header)], "line": name,
        });
        if let Some(b) = bind {
            conn["bind"] = json!(b);
        }
        let sent = send(ns, &json!([conn]));
        let echo = sent[0]["echo"].as_str().unwrap_or_default().to_string();
        if *removed {
            assert_eq!(echo, *name, "{name}: the header should be gone");
        } else {
            let header_text = String::from_utf8_lossy(header);
            assert!(
                echo.as_bytes().starts_with(&header[..header.len().min(8)])
                    || echo.starts_with(header_text.as_ref()),
                "{name}: the app should read the bytes as sent, got {echo:?}"
            );
        }
    }
    let got = reports(&server, cases.len());
    for r in &got {
        assert_ne!(
            r["peer"],
            forged.to_string(),
            "a forged client was believed: {r}"
        );
    }
    let after = world.stats();
    let delta = |c| after.get(c) - before.get(c);
    assert_eq!(delta(Counter::ProxyDecoded), 0);
    assert_eq!(delta(Counter::ProxyRefused), 5);
    assert_eq!(delta(Counter::ProxyNoClient), 1);
    assert_eq!(delta(Counter::ProxyUnframed), 2);
    // The trusted ones: watched for the verdict program, or cut at the
    // interface; direct clients are never either.
    assert_eq!(
        delta(Counter::ProxyWatched) + delta(Counter::ProxyCut),
        8,
        "direct clients are never watched"
    );
}

#[test]
fn an_unfinished_header_holds_bounded_state_that_goes_with_the_connection() {
    require_proxy_support!();
    let world = world();
    let header = v2(1, "198.51.100.9:9".parse().unwrap(), rs(), &[]);
    let server = serve(&world, "0.0.0.0:8080", 1);
    let plan = json!([{
        "to": rs().to_string(), "bind": lab::LB_IP,
        "chunks": [hex(&header[..10])], "hold_ms": 300, "line": "never",
    }]);
    let sent = send(lab::LB_NS, &plan);
    assert_eq!(sent[0]["held"], true);
    // The app read nothing of the unfinished header, then the end of the
    // stream; closing freed the pending state.
    let r = reports(&server, 1);
    assert_eq!(r[0]["claimed"], "", "{r:?}");
    assert_eq!(
        world.map_entries(ttm_common::maps::PROXY_PENDING),
        1,
        "held while the app holds the socket"
    );
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(5);
    while world.map_entries(ttm_common::maps::PROXY_PENDING) != 0 {
        assert!(
            Instant::now() < deadline,
            "pending PROXY state outlived its connection"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(world.stats().get(Counter::ProxyDecoded), 0);
}

#[test]
fn an_ipv6_client_over_ipv4_reaches_getsockopt_and_lookups_but_never_an_af_inet_socket() {
    require_proxy_support!();
    let world = world();
    let client: SocketAddr = "[2001:db8::7]:4242".parse().unwrap();
    let server = python_server(&world, "0.0.0.0", 1);
    let plan = json!([{
        "to": rs().to_string(), "bind": lab::LB_IP,
        "chunks": [hex(&v2(1, client, rs(), &[]))], "line": "six-over-four",
        "line_with_last_chunk": true, "linger_ms": 1500,
    }]);
    let sender = send_async(lab::LB_NS, &plan);
    let report: Value =
        serde_json::from_str(&server.line(Duration::from_secs(15)).expect("report")).unwrap();
    assert_eq!(report["claimed"], "six-over-four", "{report}");
    // No IPv6 address fits a sockaddr_in: accept() and getpeername() keep the LB.
    let accepted = report["accept"].as_str().unwrap();
    assert!(accepted.starts_with(lab::LB_IP), "{report}");
    assert_eq!(report["getpeername"], accepted);
    assert_eq!(report["sockopt"]["client"], client.to_string(), "{report}");
    assert_eq!(report["sockopt"]["af"], 10);
    let (code, out) = world
        .daemon
        .cli(&[
            "lookup",
            "--local",
            &rs().to_string(),
            "--peer",
            accepted,
            "--json",
        ])
        .unwrap();
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["client"], client.to_string());
    assert_eq!(v["family"], "6to4");
    assert_eq!(v["carrier"], "proxy-v2");
    let sent = finish(sender);
    assert_eq!(sent[0]["echo"], "six-over-four");
}

#[test]
fn ipv6_real_server_path_through_haproxy_and_nginx() {
    require_proxy_support!();
    let trust = format!("{},{}", lab::LB_NET, lab::LB_NET6);
    let world = World::with_daemon_args(&trust, &proxy_args(PORT));
    let backend: SocketAddr = format!("[{}]:{PORT}", lab::RS_IP6).parse().unwrap();
    for (i, sender) in [Sender::HaproxyV2, Sender::NginxStream]
        .into_iter()
        .enumerate()
    {
        let listen: SocketAddr = format!("[{}]:{}", lab::PROXY_IP6, 9100 + i)
            .parse()
            .unwrap();
        let _proxy = Proxy::start(sender, listen, backend).expect("start proxy");
        let server = serve(&world, "[::]:8080", 4);
        let clients = world.connect_to(&world.lab.client_cgroup(), &listen.to_string(), 4, 50_000);
        let accepted = world.accepted(&server, 4);
        let records = world.records();
        for a in &accepted {
            assert!(clients.contains(&a.claimed), "{sender:?}: {a:?}");
            assert_eq!(a.claimed.ip().to_string(), lab::CLIENT_IP6);
            assert_eq!(a.peer, a.claimed, "{sender:?}: accept() names the client");
            let info = records.by_cookie(a.cookie).unwrap().expect("a record");
            assert_eq!(info.family, "6to6");
            assert_eq!(info.carrier, sender.carrier());
        }
    }
}

#[test]
fn a_daemon_restart_keeps_open_proxy_connections_and_watches_new_ones() {
    require_proxy_support!();
    let mut world = world();
    let first: SocketAddr = "198.51.100.31:3100".parse().unwrap();
    let second: SocketAddr = "198.51.100.32:3200".parse().unwrap();
    let server = serve(&world, "0.0.0.0:8080", 2);
    let plan = json!([{
        "to": rs().to_string(), "bind": lab::LB_IP,
        "chunks": [hex(&v2(1, first, rs(), &[]))], "line": "before-restart",
        "later": [{"after_ms": 3000, "line": "after-restart"}],
    }]);
    let open = send_async(lab::LB_NS, &plan);
    let got = reports(&server, 1);
    assert_eq!(got[0]["peer"], first.to_string());
    world.daemon.crash_in_place();
    world.restart_daemon(&proxy_args(PORT));
    let sent = send(
        lab::LB_NS,
        &json!([{
            "to": rs().to_string(), "bind": lab::LB_IP,
            "chunks": [hex(&v1(second, rs()))], "line": "new-daemon",
            "line_with_last_chunk": true,
        }]),
    );
    assert_eq!(sent[0]["echo"], "new-daemon");
    let got = reports(&server, 1);
    assert_eq!(got[0]["peer"], second.to_string(), "{got:?}");
    let sent = finish(open);
    assert_eq!(sent[0]["echo"], "before-restart");
    assert_eq!(sent[0]["later_echo"], json!(["after-restart"]), "{sent:?}");
}

#[test]
fn a_kernel_without_the_programs_refuses_at_start() {
    let _serial = ttm_lab::process::serial();
    let lab = ttm_lab::Lab::up().expect("bring the lab up");
    let pins = std::path::Path::new(common::PIN_DIR);
    let Some(why) = kernel_lacks_proxy() else {
        // The kernel has what it needs: the daemon starts with the flag.
        let daemon =
            ttm_lab::TtmDaemon::start(lab::LB_NET, &lab.rs_cgroup(), pins, &proxy_args(PORT))
                .expect("the daemon starts with --proxy-protocol");
        drop(daemon);
        return;
    };
    let out = Command::new(ttm_lab::daemon::ttm_bin().expect("ttm binary"))
        .args(["daemon", "--trust", lab::LB_NET, "--cgroup"])
        .arg(lab.rs_cgroup())
        .arg("--pin-dir")
        .arg(pins)
        .args([
            "--socket",
            "/run/ttm/ttm-refusal.sock",
            "--proxy-protocol",
            PORT,
        ])
        .output()
        .expect("run the daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started on a kernel that lacks it ({why})"
    );
    assert!(
        stderr.contains("--proxy-protocol needs Linux") || stderr.contains("verifier refused"),
        "not a clear refusal: {stderr}"
    );
    assert!(
        !pins.join("link_ttm_sockops").exists(),
        "a refused start left programs attached"
    );
    println!("this kernel refuses --proxy-protocol at start, as it should: {why}");
}

#[test]
fn stock_nginx_sees_the_client_and_its_own_proxy_protocol_port_is_left_alone() {
    require_proxy_support!();
    let world = world();
    // Port 8090 parses PROXY protocol itself; ttm was told only about 8080.
    let nginx = common::Nginx::start_with(
        &world,
        "log_format pp '$remote_addr $proxy_protocol_addr:$proxy_protocol_port';\n\
         server { listen 8090 proxy_protocol; access_log {d}/pp.log pp;\n\
         location / { return 200 \"ok\\n\"; } }",
    );
    let to_ttm_port: SocketAddr = format!("{}:9000", lab::PROXY_IP).parse().unwrap();
    let to_nginx_port: SocketAddr = format!("{}:9001", lab::PROXY_IP).parse().unwrap();
    let _v1 = Proxy::start(Sender::HaproxyV1, to_ttm_port, rs()).expect("haproxy v1");
    let _v2 = Proxy::start(
        Sender::HaproxyV2,
        to_nginx_port,
        format!("{}:8090", lab::RS_IP).parse().unwrap(),
    )
    .expect("haproxy v2");
    let proxied = common::http_get(&world.lab.client_cgroup(), &to_ttm_port.to_string());
    let direct = common::http_get(&world.lab.client_cgroup(), &rs().to_string());
    let log = nginx.access_log(2);
    assert!(
        log[0].starts_with(&format!("{} {} 8080", proxied.ip(), proxied.port())),
        "{log:?}"
    );
    assert!(
        log[1].starts_with(&format!("{} {} 8080", direct.ip(), direct.port())),
        "{log:?}"
    );
    let own = common::http_get(&world.lab.client_cgroup(), &to_nginx_port.to_string());
    let pp = nginx.log("pp.log", 1);
    assert_eq!(
        pp[0],
        format!("{} {}", lab::LB_IP, own),
        "nginx parsed its own header: {pp:?}"
    );
}

/// Three HTTP requests pipelined into the header's own segment reach stock
/// nginx as the client sent them: three answers, each logged with the
/// header's client.
#[test]
fn requests_pipelined_into_the_headers_segment_are_all_answered() {
    require_proxy_support!();
    let world = world();
    let nginx = common::Nginx::start(&world);
    wait_deferred_pid(nginx.pid(), 8080);
    let client: SocketAddr = "198.51.100.7:40007".parse().unwrap();
    let mut segment = v2(1, client, rs(), &[]);
    for path in ["/a", "/b", "/c"] {
        segment.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: lab\r\n\r\n").as_bytes());
    }
    let plan = json!([{
        "to": rs().to_string(), "bind": lab::LB_IP,
        "chunks": [hex(&segment)], "read_to_end": true,
    }]);
    let sent = send(lab::LB_NS, &plan);
    let reply = sent[0]["reply"].as_str().unwrap();
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 3, "{reply}");
    let log = nginx.access_log(3);
    for line in &log[..3] {
        assert_eq!(
            line,
            &format!("{} {} 8080", client.ip(), client.port()),
            "{log:?}"
        );
    }
}

#[test]
fn ten_thousand_concurrent_connections_each_get_their_own_client() {
    require_proxy_support!();
    // Two servers of 5,000 connections each: a process may hold at most
    // 20,000 files here, and the lab server holds three per connection.
    let world = World::with_daemon_args(lab::LB_NET, &proxy_args("8080,8081"));
    let n = 10_000usize;
    let client = |i: usize| -> SocketAddr {
        format!("198.51.{}.{}:{}", 100 + i / 250, 1 + i % 250, 10_000 + i)
            .parse()
            .unwrap()
    };
    let port = |i: usize| 8080 + (i % 2) as u16;
    let connections: Vec<Value> = (0..n)
        .map(|i| {
            let to: SocketAddr = format!("{}:{}", lab::RS_IP, port(i)).parse().unwrap();
            json!({
                "to": to.to_string(), "bind": lab::LB_IP,
                "chunks": [hex(&v2(1, client(i), to, &[]))], "line": format!("c{i}"),
            })
        })
        .collect();
    let servers = [
        serve(&world, "0.0.0.0:8080", n / 2),
        serve_on(&world, 8081, n / 2),
    ];
    let sender = send_async(
        lab::LB_NS,
        &json!({"connections": connections, "linger_ms": 2000}),
    );
    let got: Vec<Value> = servers.iter().flat_map(|s| reports(s, n / 2)).collect();
    let summary = finish(sender);
    assert_eq!(summary[0]["open_at_once"], n as u64);
    assert_eq!(summary[0]["ok"], n as u64, "{:?}", summary[0]["wrong"]);
    assert_eq!(got.len(), n);
    for r in &got {
        let i: usize = r["claimed"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(r["peer"], client(i).to_string(), "{r}");
    }
    assert!(world.stats().get(Counter::ProxyDecoded) >= n as u64);
}

#[test]
fn a_gibibyte_through_haproxy_arrives_unchanged() {
    require_proxy_support!();
    let world = world();
    let listen: SocketAddr = format!("{}:9000", lab::PROXY_IP).parse().unwrap();
    let _proxy = Proxy::start(Sender::HaproxyV2, listen, rs()).expect("start haproxy");
    let server = serve(&world, "0.0.0.0:8080", 1);
    let before = world.stats();
    // The lab client checks every echoed byte against what it sent.
    let clients = world.connect_to(&world.lab.client_cgroup(), &listen.to_string(), 1, 1 << 30);
    let a = &world.accepted(&server, 1)[0];
    assert_eq!(a.claimed, clients[0]);
    assert_eq!(a.peer, a.claimed);
    if cutting() {
        // The gibibyte took the kernel's own path, not the sockmap's.
        let cut = world.stats().get(Counter::ProxyCut) - before.get(Counter::ProxyCut);
        assert_eq!(cut, 1);
    }
}

#[test]
fn v2_tlvs_reach_the_lookups_and_go_with_the_connection() {
    require_proxy_support!();
    let world = world();
    let client: SocketAddr = "198.51.100.44:4444".parse().unwrap();
    let tlvs = [
        &[0x01u8, 0x00, 0x02][..],
        b"h2",
        &[0x02, 0x00, 0x0b],
        b"example.com",
        &[0xea, 0x00, 0x0d, 0x01],
        b"vpce-0123abc",
    ]
    .concat();
    let server = serve(&world, "0.0.0.0:8080", 1);
    let plan = json!([{
        "to": rs().to_string(), "bind": lab::LB_IP,
        "chunks": [hex(&v2(1, client, rs(), &tlvs))], "line": "GET / with tlvs",
        "line_with_last_chunk": true, "linger_ms": 1000,
    }]);
    let sender = send_async(lab::LB_NS, &plan);
    let r = &reports(&server, 1)[0];
    assert_eq!(r["peer"], client.to_string());
    let (code, out) = world
        .daemon
        .cli(&["lookup", "--cookie", &r["cookie"].to_string(), "--json"])
        .unwrap();
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let got: Vec<(String, String)> = v["tlvs"]
        .as_array()
        .unwrap_or_else(|| panic!("no tlvs: {v}"))
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().into(),
                t["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("alpn", "h2"),
            ("authority", "example.com"),
            ("aws_vpce_id", "vpce-0123abc")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .to_vec()
    );
    assert_eq!(finish(sender)[0]["echo"], "GET / with tlvs");
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(5);
    while world.map_entries(ttm_common::maps::PROXY_TLVS) != 0 {
        assert!(Instant::now() < deadline, "TLVs outlived their connection");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// HAProxy `send-proxy-v2` in front of `port` on the real server, twice: on
/// the IPv4 proxy address (`9000 + i`) and on the IPv6 one (`9100 + i`),
/// whose IPv6 clients reach the IPv4 real server as 6to4 headers.
fn haproxy_pair(i: u16, port: u16) -> ([SocketAddr; 2], [Proxy; 2]) {
    let backend: SocketAddr = format!("{}:{port}", lab::RS_IP).parse().unwrap();
    let v4: SocketAddr = format!("{}:{}", lab::PROXY_IP, 9000 + i).parse().unwrap();
    let v6: SocketAddr = format!("[{}]:{}", lab::PROXY_IP6, 9100 + i)
        .parse()
        .unwrap();
    let proxies = [
        Proxy::start(Sender::HaproxyV2, v4, backend).expect("haproxy on IPv4"),
        Proxy::start(Sender::HaproxyV2, v6, backend).expect("haproxy on IPv6"),
    ];
    ([v4, v6], proxies)
}

/// Receivers that never heard of PROXY protocol, each behind HAProxy v2,
/// each with an IPv4 client and an IPv6 client carried over the IPv4 path:
/// the C server (accept() and getsockopt 1345; an `AF_INET` socket), Go
/// net/http (the plain listener and the module's `ttm.Listen`), FastAPI behind uvicorn with the
/// package's middleware (HTTP and WebSocket). No IPv6 client ever appears on
/// an `AF_INET` socket; the APIs that can carry it give it.
#[test]
fn unmodified_receivers_behind_haproxy_see_the_client() {
    require_proxy_support!();
    let world = World::with_daemon_args(lab::LB_NET, &proxy_args("8080,8000,8090,8091"));
    let client = world.lab.client_cgroup();

    // The C server: accept() names the IPv4 client; for the IPv6 one it
    // keeps the LB, and getsockopt(SOL_IP, 1345) gives AF_INET6 and the client.
    let c_binary = common::c_server();
    let c = common::start_app(&world, c_binary.to_str().unwrap(), &["8080", "2"]);
    wait_deferred(&c, 8080);
    let ([v4, v6], _c_proxies) = haproxy_pair(0, 8080);
    for (to, family) in [(v4, 2), (v6, 10)] {
        let own = world.connect_to(&client, &to.to_string(), 1, 0)[0];
        let r = common::report(&c);
        assert_eq!(r["rc"], 0, "{r}");
        assert_eq!(r["af"], family, "{r}");
        assert_eq!(r["client"], format!("{}:{}", own.ip(), own.port()), "{r}");
        let accepted = r["accept"].as_str().unwrap();
        if family == 2 {
            assert_eq!(accepted, own.to_string(), "{r}");
        } else {
            assert!(accepted.starts_with(lab::LB_IP), "{r}");
        }
    }
    drop(c);
    let _ = std::fs::remove_file(c_binary);

    // Go net/http: the plain listener through the accept() rewrite alone;
    // the module's listener also for the IPv6 client.
    let go = common::receivers::go_example_server();
    let plain = common::start_app(&world, go.to_str().unwrap(), &["0.0.0.0:8090", "plain"]);
    let module = common::start_app(&world, go.to_str().unwrap(), &["0.0.0.0:8091"]);
    wait_deferred(&plain, 8090);
    wait_deferred(&module, 8091);
    let ([plain_v4, plain_v6], _plain_proxies) = haproxy_pair(1, 8090);
    let ([module_v4, module_v6], _module_proxies) = haproxy_pair(2, 8091);
    let remote = |server: &Guarded, to: SocketAddr| {
        let own = common::http_get(&client, &to.to_string());
        (
            own,
            server.line(Duration::from_secs(10)).expect("RemoteAddr"),
        )
    };
    // Go listens on "0.0.0.0" with a dual-stack AF_INET6 socket, so the
    // rewrite alone can give the plain server the IPv6 client too.
    for (server, to) in [
        (&plain, plain_v4),
        (&plain, plain_v6),
        (&module, module_v4),
        (&module, module_v6),
    ] {
        let (own, seen) = remote(server, to);
        assert_eq!(seen, own.to_string(), "Go net/http via {to}");
    }
    drop((plain, module));

    // FastAPI behind uvicorn, HTTP and WebSocket, with the middleware.
    let python = common::receivers::venv_python();
    let mut cmd = Command::new(&python);
    cmd.arg(common::app("asgi_app.py"))
        .args(["0.0.0.0", "8000"])
        .env("TTM_SOCKET", &world.daemon.socket);
    ttm_lab::process::place(&mut cmd, &world.lab.rs_cgroup(), lab::RS_NS);
    let uvicorn = Guarded::spawn(cmd).expect("uvicorn");
    uvicorn
        .wait_for(Duration::from_secs(30), |l| l == "listening")
        .expect("uvicorn listening");
    wait_deferred(&uvicorn, 8000);
    let ([app_v4, app_v6], _app_proxies) = haproxy_pair(3, 8000);
    for to in [app_v4, app_v6] {
        let ask = spawn_in(
            &python,
            &client,
            lab::CLIENT_NS,
            &[
                common::app("asgi_client.py").to_str().unwrap(),
                &to.ip().to_string(),
                &to.port().to_string(),
            ],
        )
        .expect("asgi client");
        let line = ask.line(Duration::from_secs(20)).expect("client report");
        let r: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        for kind in ["http", "ws"] {
            assert_eq!(r[kind][1], r[kind][0], "FastAPI {kind} via {to}: {r}");
        }
    }
}

/// A checksum offload (`tx` or `rx`) turned off on an interface of a
/// namespace, back on when dropped.
struct NoOffload(&'static str, &'static str, &'static str);

impl NoOffload {
    fn set(ns: &'static str, iface: &'static str, what: &'static str, on: bool) {
        let status = Command::new("ip")
            .args(["netns", "exec", ns, "ethtool", "-K", iface, what])
            .arg(if on { "on" } else { "off" })
            .stdout(Stdio::null())
            .status()
            .expect("run ethtool");
        assert!(status.success(), "ethtool -K {iface} {what} in {ns}");
    }

    fn off(ns: &'static str, iface: &'static str, what: &'static str) -> NoOffload {
        NoOffload::set(ns, iface, what, false);
        NoOffload(ns, iface, what)
    }
}

impl Drop for NoOffload {
    fn drop(&mut self) {
        NoOffload::set(self.0, self.1, self.2, true);
    }
}

#[test]
fn headers_cut_at_the_interface_keep_checksums_right_without_offload() {
    require_proxy_support!();
    // Cut here whatever the run: this is the cut's checksum test.
    let world = World::with_daemon_args(
        lab::LB_NET,
        &["--proxy-protocol", PORT, "--proxy-interface", lab::RS_IF],
    );
    // The LB computes every checksum itself and the real server's side
    // vouches for none: segments arrive with a full checksum that TCP
    // verifies, so a cut that sums wrong is dropped there (and the
    // connection stalls).
    let _tx = NoOffload::off(lab::LB_NS, "ttm-l1", "tx");
    let _rx = NoOffload::off(lab::RS_NS, lab::RS_IF, "rx");
    // v1 headers of odd and even lengths (the client port's digits), v2
    // ones of even length: the bytes after the cut move by odd and even
    // amounts.
    let mut plan = Vec::new();
    for port in [5u16, 50, 500, 5000, 50000] {
        let client: SocketAddr = format!("198.51.100.7:{port}").parse().unwrap();
        for (name, header) in [("v1", v1(client, rs())), ("v2", v2(1, client, rs(), &[]))] {
            plan.push(json!({
                "to": rs().to_string(), "bind": lab::LB_IP,
                "chunks": [hex(&header)], "line": format!("{name}-{port}-{}", header.len()),
                "line_with_last_chunk": true,
            }));
        }
    }
    let n = plan.len();
    let listen: SocketAddr = format!("{}:9000", lab::PROXY_IP).parse().unwrap();
    let _proxy = Proxy::start(Sender::HaproxyV1, listen, rs()).expect("start haproxy");
    let server = serve_unwaited(&world, "0.0.0.0:8080", n + 4);
    let before = world.stats();
    let sent = send(lab::LB_NS, &Value::Array(plan));
    let got = reports(&server, n);
    for s in &sent {
        let line = s["line"].as_str().unwrap();
        assert_eq!(s["echo"], line, "{s}");
        let r = by_claimed(&got, line);
        assert!(
            r["peer"].as_str().unwrap().starts_with("198.51.100.7:"),
            "{r}"
        );
    }
    // Through HAProxy too, with 200 kB echoed each way after the header.
    let clients = world.connect_to(&world.lab.client_cgroup(), &listen.to_string(), 4, 200_000);
    for a in world.accepted(&server, 4) {
        assert!(clients.contains(&a.claimed), "{a:?}");
        assert_eq!(a.peer, a.claimed);
    }
    let after = world.stats();
    let delta = |c| after.get(c) - before.get(c);
    assert_eq!(delta(Counter::ProxyCut), n as u64 + 4);
    assert_eq!(delta(Counter::ProxyKept), 0);
}

#[test]
fn a_trusted_peer_that_sends_nothing_is_accepted_after_the_hold() {
    require_proxy_support!();
    let world = world();
    // A server that speaks first (SMTP's banner), never reading.
    let script = "import socket, sys\n\
s = socket.socket()\n\
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('0.0.0.0', 8080))\n\
s.listen()\n\
print('listening', flush=True)\n\
c, a = s.accept()\n\
c.sendall(b'220 banner\\r\\n')\n\
print('accepted', a[0], flush=True)\n\
c.recv(1)\n";
    let server = spawn_in(
        std::path::Path::new("/usr/bin/python3"),
        &world.lab.rs_cgroup(),
        lab::RS_NS,
        &["-c", script],
    )
    .expect("spawn the banner server");
    server
        .wait_for(Duration::from_secs(10), |l| l.starts_with("listening"))
        .expect("server listening");
    wait_deferred(&server, 8080);
    // From the trusted LB's address, sending nothing: held (or deferred) as
    // long as a header could still come, then accepted.
    let client = "import socket, time\n\
t = time.time()\n\
s = socket.create_connection(('10.0.2.2', 8080), timeout=10)\n\
print(s.recv(100).decode().strip(), round(time.time() - t, 2))\n";
    let out = Command::new("ip")
        .args(["netns", "exec", lab::LB_NS, "python3", "-c", client])
        .output()
        .expect("run the client");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the client got no banner: {said} {:?}",
        out.stderr
    );
    let (banner, secs) = said.trim().rsplit_once(' ').expect("banner and time");
    assert_eq!(banner, "220 banner");
    let secs: f64 = secs.parse().unwrap();
    assert!(
        (0.9..5.0).contains(&secs),
        "accepted after {secs} s: the hold is about 1 s, then the next ACK goes through"
    );
    let line = server.line(Duration::from_secs(5)).expect("server report");
    assert_eq!(line, format!("accepted {}", lab::LB_IP));
}
