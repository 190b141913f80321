//! The world each lab test builds: lab, ttm daemon, server and clients.
#![allow(dead_code)]

pub mod prog_test_run;
pub mod receivers;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use std::path::PathBuf;
use std::process::Command;
use ttm::pins::PinDir;
use ttm::records::RecordStore;
use ttm::stats::Stats;
use ttm_lab::lab::{self, Lab};
use ttm_lab::process::{place, serial, spawn_in, Guarded};
use ttm_lab::TtmDaemon;

/// Pin directory the tests' daemons use.
pub const PIN_DIR: &str = "/sys/fs/bpf/ttm-test";

/// Path of the lab helper binary.
pub fn lab_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ttm-lab"))
}

impl Accepted {
    /// Asserts that every lookup the server made (by fd, cookie and tuple)
    /// named `client`.
    pub fn assert_found_as(&self, client: &str) {
        for how in ["by_fd", "by_cookie", "by_tuple"] {
            assert_eq!(self.lookup[how], client, "{how}: {self:?}");
        }
    }
}

/// The C server of `tests/apps`, compiled for this test process.
pub fn c_server() -> PathBuf {
    c_app("peer_server.c")
}

/// The C program `source` of `tests/apps`, compiled for this test process.
pub fn c_app(source: &str) -> PathBuf {
    let stem = source.trim_end_matches(".c").replace('_', "-");
    let binary = std::env::temp_dir().join(format!("ttm-{stem}-{}", std::process::id()));
    let status = Command::new("gcc")
        .args(["-Wall", "-Werror", "-O2", "-o"])
        .arg(&binary)
        .arg(app(source))
        .status()
        .expect("run gcc");
    assert!(status.success(), "compiling {source}");
    binary
}

/// One accepted connection as the real server saw it.
#[derive(Debug)]
pub struct Accepted {
    pub cookie: u64,
    /// The kernel's peer (the LB after SNAT).
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// What the client said its own address is (its getsockname).
    pub claimed: SocketAddr,
    /// The server's own lookups (`serve --lookup`), else null.
    pub lookup: serde_json::Value,
}

/// Lab + daemon, torn down in that order... daemon first (field order).
pub struct World {
    pub daemon: TtmDaemon,
    pub lab: Lab,
    _serial: MutexGuard<'static, ()>,
}

impl World {
    /// Builds the lab and starts ttm trusting the LB network.
    pub fn new() -> World {
        World::trusting(lab::LB_NET)
    }

    /// Builds the lab and starts ttm trusting `trust`.
    pub fn trusting(trust: &str) -> World {
        World::with_daemon_args(trust, &[])
    }

    /// Builds the lab and starts ttm trusting `trust`, with `extra` flags.
    pub fn with_daemon_args(trust: &str, extra: &[&str]) -> World {
        let serial = serial();
        let lab = Lab::up().expect("bring the lab up");
        let daemon = TtmDaemon::start(trust, &lab.rs_cgroup(), Path::new(PIN_DIR), extra)
            .expect("start ttm daemon");
        World {
            daemon,
            lab,
            _serial: serial,
        }
    }

    /// Builds the lab, runs `setup` on it (making app cgroups, say), and
    /// starts ttm on the real server's cgroup with the flags it returns.
    pub fn with_setup(setup: impl FnOnce(&Lab) -> Vec<String>) -> World {
        let serial = serial();
        let lab = Lab::up().expect("bring the lab up");
        let extra = setup(&lab);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let daemon = TtmDaemon::start(lab::LB_NET, &lab.rs_cgroup(), Path::new(PIN_DIR), &extra)
            .expect("start ttm daemon");
        World {
            daemon,
            lab,
            _serial: serial,
        }
    }

    /// Builds the lab and starts ttm in `mode` (whatever `$TTM_LAB_MODE`
    /// says; see [`TtmDaemon::start_in_mode`]) trusting the LB network.
    pub fn in_mode(mode: &str, extra: &[&str]) -> World {
        let serial = serial();
        let lab = Lab::up().expect("bring the lab up");
        let daemon = TtmDaemon::start_in_mode(
            mode,
            &[],
            lab::LB_NET,
            &lab.rs_cgroup(),
            Path::new(PIN_DIR),
            extra,
        )
        .expect("start ttm daemon");
        World {
            daemon,
            lab,
            _serial: serial,
        }
    }

    /// Replaces the daemon with a new one (the old value must be gone: crashed
    /// or handed over).
    pub fn restart_daemon(&mut self, extra: &[&str]) {
        self.daemon = TtmDaemon::start(
            lab::LB_NET,
            &self.lab.rs_cgroup(),
            Path::new(PIN_DIR),
            extra,
        )
        .expect("start ttm daemon again");
    }

    /// Starts the lab server in the real server's cgroup and namespace.
    pub fn serve(&self, count: usize) -> Guarded {
        self.serve_with(count, &[])
    }

    /// Starts the lab server that also asks the daemon about each connection.
    pub fn serve_looking_up(&self, count: usize) -> Guarded {
        let socket = self.daemon.socket.to_string_lossy().into_owned();
        self.serve_with(count, &["--lookup", &socket])
    }

    fn serve_with(&self, count: usize, extra: &[&str]) -> Guarded {
        let count = count.to_string();
        let mut args = vec!["serve", "--listen", "0.0.0.0:8080", "--count", &count];
        args.extend_from_slice(extra);
        let server = spawn_in(lab_bin(), &self.lab.rs_cgroup(), lab::RS_NS, &args)
            .expect("spawn lab server");
        server
            .wait_for(Duration::from_secs(10), |l| l.starts_with("listening"))
            .expect("server listening");
        server
    }

    /// Runs `count` concurrent client connections from `cgroup` through the
    /// LB, each round-tripping `payload` bytes; asserts they all worked and
    /// returns each client's own address.
    pub fn connect(&self, cgroup: &Path, count: usize, payload: usize) -> Vec<SocketAddr> {
        self.connect_to(cgroup, &format!("{}:8080", lab::VIP), count, payload)
    }

    /// Like [`World::connect`], to `target` (the VIP, or the real server
    /// directly, bypassing the LB's NAT).
    pub fn connect_to(
        &self,
        cgroup: &Path,
        target: &str,
        count: usize,
        payload: usize,
    ) -> Vec<SocketAddr> {
        let mut client = spawn_in(
            lab_bin(),
            cgroup,
            lab::CLIENT_NS,
            &[
                "connect",
                "--to",
                target,
                "--count",
                &count.to_string(),
                "--payload",
                &payload.to_string(),
            ],
        )
        .expect("spawn lab clients");
        let mut ok = 0;
        let mut locals = Vec::with_capacity(count);
        for _ in 0..count {
            let line = client.line(Duration::from_secs(30)).expect("client report");
            let v: serde_json::Value = serde_json::from_str(&line).expect("client JSON");
            assert_eq!(v["ok"], true, "echo through the LB failed: {line}");
            assert_eq!(v["bytes"].as_u64(), Some(payload as u64), "{line}");
            locals.push(v["local"].as_str().expect("local").parse().expect("local"));
            ok += 1;
        }
        assert!(client
            .wait(Duration::from_secs(30))
            .expect("client exit")
            .success());
        assert_eq!(ok, count);
        locals
    }

    /// Reads `n` accepted-connection reports from the server.
    pub fn accepted(&self, server: &Guarded, n: usize) -> Vec<Accepted> {
        (0..n)
            .map(|_| {
                let line = server.line(Duration::from_secs(30)).expect("server report");
                let v: serde_json::Value = serde_json::from_str(&line).expect("server JSON");
                let addr = |k: &str| v[k].as_str().expect(k).parse::<SocketAddr>().expect(k);
                Accepted {
                    cookie: v["cookie"].as_u64().expect("cookie"),
                    peer: addr("peer"),
                    local: addr("local"),
                    claimed: addr("claimed"),
                    lookup: v["lookup"].clone(),
                }
            })
            .collect()
    }

    /// Asserts that `a` has a record naming the client it claimed; a failure
    /// says what the counters and every namespace's packet statistics show,
    /// to tell a packet the lab lost from one ttm missed.
    pub fn assert_recorded(&self, a: &Accepted, what: &str) {
        let found = self
            .records()
            .by_cookie(a.cookie)
            .expect("records")
            .map(|r| r.client);
        assert_eq!(
            found,
            Some(a.claimed),
            "{what}: {a:?}; counters {}\n{}",
            self.stats().to_json(),
            self.lab.packet_counters()
        );
    }

    /// The daemon's record map.
    pub fn records(&self) -> RecordStore {
        RecordStore::open(&PinDir::new(PIN_DIR)).expect("open pinned records")
    }

    /// Entries in the pinned map `name`, counted by walking it (a test's
    /// check that the kernel side left nothing behind; ttm never walks).
    pub fn map_entries(&self, name: &str) -> usize {
        let data =
            aya::maps::MapData::from_pin(PinDir::new(PIN_DIR).map(name)).expect("pinned map");
        let map = aya::maps::Map::from_map_data(data).expect("map");
        match name {
            ttm_common::maps::PROXY_TLVS => {
                aya::maps::HashMap::<_, u64, ttm_common::proxy::HeaderBuf>::try_from(map)
                    .expect("hash")
                    .keys()
                    .filter(Result::is_ok)
                    .count()
            }
            ttm_common::maps::PROXY_PENDING => {
                aya::maps::HashMap::<_, u64, ttm_common::maps::ProxyPending>::try_from(map)
                    .expect("hash")
                    .keys()
                    .filter(Result::is_ok)
                    .count()
            }
            _ => {
                aya::maps::HashMap::<_, ttm_common::maps::TcKey, ttm_common::PeerRecord>::try_from(
                    map,
                )
                .expect("hash")
                .keys()
                .filter(Result::is_ok)
                .count()
            }
        }
    }

    /// The daemon's counters.
    pub fn stats(&self) -> Stats {
        ttm::stats::read(&ttm::stats::open(&PinDir::new(PIN_DIR)).expect("open pinned stats"))
            .expect("read stats")
    }
}

// Real applications on the real server.

pub fn app(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("apps")
        .join(path)
}

/// Starts `program args` in the real server's cgroup and netns and waits for "listening".
pub fn start_app(world: &World, program: &str, args: &[&str]) -> Guarded {
    start_app_in(&world.lab.rs_cgroup(), program, args)
}

/// Starts an app in the real server's namespace, in `cgroup`.
pub fn start_app_in(cgroup: &Path, program: &str, args: &[&str]) -> Guarded {
    let mut cmd = Command::new(program);
    cmd.args(args);
    place(&mut cmd, cgroup, lab::RS_NS);
    let app = Guarded::spawn(cmd).expect("spawn app");
    app.wait_for(Duration::from_secs(10), |l| l == "listening")
        .expect("app listening");
    app
}

/// The Python peer server on `host`, accepting `count` connections.
pub fn python_server(world: &World, host: &str, count: usize, extra: &[&str]) -> Guarded {
    python_server_in(&world.lab.rs_cgroup(), host, 8080, count, extra)
}

/// The Python peer server in `cgroup` on `host`:`port`.
pub fn python_server_in(
    cgroup: &Path,
    host: &str,
    port: u16,
    count: usize,
    extra: &[&str],
) -> Guarded {
    let script = app("peer_server.py");
    let (count, port) = (count.to_string(), port.to_string());
    let mut args = vec![script.to_str().expect("path"), host, &port, &count];
    args.extend_from_slice(extra);
    start_app_in(cgroup, "python3", &args)
}

pub fn report(app: &Guarded) -> serde_json::Value {
    let line = app.line(Duration::from_secs(10)).expect("app report");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// Runs the `ttm` binary; returns (exit code, stdout, stderr).
pub fn ttm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(ttm_lab::daemon::ttm_bin().expect("ttm binary"))
        .args(args)
        .output()
        .expect("run ttm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Rounds of concurrent client connections through the LB, in a thread that
/// panics if any connection fails.
pub fn steady_load(world: &World, rounds: usize, per_round: usize) -> std::thread::JoinHandle<()> {
    let cgroup = world.lab.client_cgroup();
    std::thread::spawn(move || {
        let target = format!("{}:8080", lab::VIP);
        for round in 0..rounds {
            let mut c = spawn_in(
                lab_bin(),
                &cgroup,
                lab::CLIENT_NS,
                &[
                    "connect",
                    "--to",
                    &target,
                    "--count",
                    &per_round.to_string(),
                ],
            )
            .expect("spawn clients");
            let status = c.wait(Duration::from_secs(30)).expect("clients");
            assert!(status.success(), "round {round}: a connection failed");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// The sockops program a lab daemon attaches in this run's mode.
pub fn sockops_program() -> &'static str {
    if ttm_lab::daemon::lab_mode() == "tc" {
        ttm::SOCKOPS_JOIN_PROGRAM
    } else {
        ttm::SOCKOPS_PROGRAM
    }
}

/// The programs a lab daemon keeps attached in this run's mode.
pub fn attached_programs() -> Vec<&'static str> {
    // The default daemon attaches no witness (`--witness` does).
    let mut names: Vec<&'static str> = ttm::pins::LINKED_PROGRAMS
        .iter()
        .copied()
        .filter(|n| !ttm::pins::is_witness(n))
        .collect();
    names[0] = sockops_program();
    if ttm_lab::daemon::lab_mode() != "sockops" {
        names.push(ttm::tc::TC_PROGRAM);
    }
    names
}

/// How many pins a lab daemon makes in this run's mode: its maps, its
/// cgroup links and, with TC on tcx, one link for the lab's interface.
pub fn daemon_pins() -> usize {
    let tc = usize::from(ttm_lab::daemon::lab_mode() != "sockops" && ttm::links::tcx_supported());
    let cgroup_links = ttm::pins::LINKED_PROGRAMS
        .iter()
        .filter(|n| !ttm::pins::is_witness(n))
        .count();
    ttm::pins::PINNED_MAPS.len() + cgroup_links + tc
}

/// How many programs named like one of [`attached_programs`] are loaded
/// (the kernel keeps 15 characters of a name).
pub fn ttm_programs_loaded() -> usize {
    let names = attached_programs();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            p.name_as_str()
                .is_some_and(|n| names.iter().any(|full| &full[..full.len().min(15)] == n))
        })
        .count()
}

/// Stock nginx with `listen 8080;`, a dual-stack `listen [::]:8081` and an
/// IPv6-only `listen [::]:8082`.
pub struct Nginx {
    process: Guarded,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx in the real server's cgroup and namespace.
    pub fn start(world: &World) -> Nginx {
        Nginx::start_with(world, "")
    }

    /// Like [`Nginx::start`], with `extra` (`{d}` standing for nginx's
    /// directory) added inside `http {}`.
    pub fn start_with(world: &World, extra: &str) -> Nginx {
        let dir = std::env::temp_dir().join(format!("ttm-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n\
             client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
             log_format peer '$remote_addr $remote_port $server_port';\n\
             access_log {d}/access.log peer;\n\
             server {{\nlisten 8080;\nlisten [::]:8081 ipv6only=off;\nlisten [::]:8082;\n\
             location / {{ return 200 \"ok\\n\"; }}\n}}\n{extra}\n}}\n",
            extra = extra.replace("{d}", &d.to_string())
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
        let mut cmd = Command::new("nginx");
        cmd.arg("-c").arg(dir.join("nginx.conf"));
        place(&mut cmd, &world.lab.rs_cgroup(), lab::RS_NS);
        let process = Guarded::spawn(cmd).expect("spawn nginx");
        // nginx prints nothing when it is up: wait for its pid file.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.join("nginx.pid").exists() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { process, dir }
    }

    /// nginx's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Access-log lines "remote_addr remote_port server_port", waiting for `n`.
    pub fn access_log(&self, n: usize) -> Vec<String> {
        self.log("access.log", n)
    }

    /// Lines of the log file `name` in nginx's directory, waiting for `n`.
    pub fn log(&self, name: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let lines: Vec<String> = log.lines().map(str::to_string).collect();
            if lines.len() >= n {
                return lines;
            }
            assert!(Instant::now() < deadline, "access log: {lines:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One HTTP request to `to` from `cgroup` in the client's namespace; the
/// client's own address.
pub fn http_get(cgroup: &Path, to: &str) -> SocketAddr {
    let mut client = spawn_in(
        lab_bin(),
        cgroup,
        lab::CLIENT_NS,
        &["http", "--to", to, "--count", "1"],
    )
    .expect("spawn http client");
    let line = client.line(Duration::from_secs(20)).expect("http report");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert!(
        v["status"].as_str().is_some_and(|s| s.ends_with(" 200 OK")),
        "{line}"
    );
    assert!(client
        .wait(Duration::from_secs(10))
        .expect("exit")
        .success());
    v["local"].as_str().expect("local").parse().expect("addr")
}

/// One scrape of the metrics endpoint on 127.0.0.1:`port`: the whole HTTP response.
pub fn scrape(port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("response");
    response
}
