//! The app-facing hooks scoped apart from the decoder: `--compat-cgroup`
//! names the services that get the getsockopt shim and the
//! accept()/getpeername() rewrite; everything else keeps the kernel's own
//! answers, and pays nothing for them, while its connections are still
//! decoded and found by every lookup.

mod common;

use std::os::fd::AsFd;
use std::path::Path;

use common::{lab_bin, python_server_in, report, ttm, World, PIN_DIR};
use ttm_lab::lab;
use ttm_lab::process::spawn_in;

/// ENOPROTOOPT: what a host without ttm answers to getsockopt(SOL_IP, 1345).
const ENOPROTOOPT: i64 = 92;

/// ttm's program ids attached to `cgroup` itself at `attach_type`.
fn attached(cgroup: &Path, attach_type: u32) -> usize {
    let dir = std::fs::File::open(cgroup).expect("open cgroup");
    ttm::links::query_cgroup(dir.as_fd(), attach_type)
        .expect("query")
        .len()
}

/// One connection through the LB to the Python server in `cgroup` on
/// `port`; returns its report and the client's own address.
fn one_connection(world: &World, cgroup: &Path, port: u16) -> (serde_json::Value, String) {
    let server = python_server_in(cgroup, "0.0.0.0", port, 1, &[]);
    let clients = world.connect_to(
        &world.lab.client_cgroup(),
        &format!("{}:{port}", lab::VIP),
        1,
        0,
    );
    (report(&server), clients[0].to_string())
}

/// Asserts the app saw the client through every API.
fn sees_client(r: &serde_json::Value, client: &str) {
    assert_eq!(r["accept"], client, "{r}");
    assert_eq!(r["getpeername"], client, "{r}");
    assert_eq!(r["sockopt"]["client"], client, "{r}");
}

/// Asserts the app got the kernel's own answers from accept(),
/// getpeername() and getsockopt(SOL_IP, 1345).
fn sees_kernel(r: &serde_json::Value) {
    let peer = r["getpeername"].as_str().expect("peer");
    assert!(peer.starts_with(&format!("{}:", lab::LB_IP)), "{r}");
    assert_eq!(r["accept"], peer, "{r}");
    assert_eq!(r["sockopt"]["errno"], ENOPROTOOPT, "{r}");
}

/// Asserts a connection accepted in `cgroup` is decoded and found by fd,
/// cookie and tuple while it lives, whatever the app itself sees.
fn is_found(world: &World, cgroup: &Path, port: u16, app_sees_client: bool) {
    let socket = world.daemon.socket.to_string_lossy().into_owned();
    let listen = format!("0.0.0.0:{port}");
    let server = spawn_in(
        lab_bin(),
        cgroup,
        lab::RS_NS,
        &[
            "serve", "--listen", &listen, "--count", "1", "--lookup", &socket,
        ],
    )
    .expect("lab server");
    server
        .wait_for(std::time::Duration::from_secs(10), |l| {
            l.starts_with("listening")
        })
        .expect("listening");
    world.connect_to(
        &world.lab.client_cgroup(),
        &format!("{}:{port}", lab::VIP),
        1,
        0,
    );
    let a = &world.accepted(&server, 1)[0];
    assert_eq!(a.peer == a.claimed, app_sees_client, "{a:?}");
    a.assert_found_as(&a.claimed.to_string());
}

#[test]
fn only_the_compat_cgroups_see_the_client_and_every_connection_is_still_decoded() {
    let world = World::with_setup(|lab| {
        let a = lab.app_cgroup("app-a").expect("app-a");
        let b = lab.app_cgroup("app-b").expect("app-b");
        lab.app_cgroup("other").expect("other");
        vec![
            "--compat-cgroup".into(),
            a.display().to_string(),
            "--compat-cgroup".into(),
            b.display().to_string(),
        ]
    });
    let rs = world.lab.rs_cgroup();
    for (name, port) in [("app-a", 9201), ("app-b", 9202)] {
        let (r, client) = one_connection(&world, &rs.join(name), port);
        sees_client(&r, &client);
        is_found(&world, &rs.join(name), port + 10, true);
    }
    let (r, _) = one_connection(&world, &rs.join("other"), 9203);
    sees_kernel(&r);
    is_found(&world, &rs.join("other"), 9213, false);

    // Hooks are where they were asked for, and nowhere else.
    use ttm::links::attach_type::{GETPEERNAME4, GETSOCKOPT, SOCK_OPS};
    assert_eq!(attached(&rs, SOCK_OPS), 1, "the decoder on --cgroup");
    assert_eq!(attached(&rs, GETSOCKOPT), 0);
    assert_eq!(attached(&rs, GETPEERNAME4), 0);
    for name in ["app-a", "app-b"] {
        assert_eq!(attached(&rs.join(name), GETSOCKOPT), 1, "{name}");
        assert_eq!(
            attached(&rs.join(name), GETPEERNAME4),
            1,
            "{name}: no witness by default"
        );
    }
    assert_eq!(attached(&rs.join("other"), GETSOCKOPT), 0);

    // The audit knows all of them as ttm's (the lab's option writer, a
    // header-option writer, would be flagged: it goes first).
    world.lab.detach_writer().expect("detach the writer");
    let (code, out, err) = ttm(&["verify", "--json", "--pin-dir", PIN_DIR]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let ours = v["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .filter(|p| p["ttm"] == true)
        .filter(|p| {
            p["attach_point"]
                .as_str()
                .unwrap_or_default()
                .starts_with("cgroup ")
        })
        .count();
    assert_eq!(ours, 1 + 2 * 3, "sockops + (shim, rewrite v4, v6) × 2: {v}");

    // `ttm doctor` says where each hook is and what it costs.
    let (_, out, err) = ttm(&["doctor", "--json", "--pin-dir", PIN_DIR]);
    let probes: Vec<serde_json::Value> = serde_json::from_str(&out).expect(&err);
    let shims: Vec<&str> = probes
        .iter()
        .filter(|p| p["feature"] == "attached: ttm_getsockopt")
        .map(|p| p["detail"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(shims.len(), 2, "{probes:?}");
    for name in ["app-a", "app-b"] {
        let path = rs.join(name).display().to_string();
        assert!(
            shims
                .iter()
                .any(|d| d.starts_with(&path) && d.contains("getsockopt()")),
            "{name}: {shims:?}"
        );
    }
    let limits = probes
        .iter()
        .find(|p| p["feature"] == "limits of the running daemon")
        .expect("limits probe");
    assert_eq!(limits["ok"], true, "{limits}");
}

#[test]
fn without_the_shim_getsockopt_is_the_kernels_and_the_rewrite_stays() {
    let world = World::with_daemon_args(lab::LB_NET, &["--no-getsockopt"]);
    let rs = world.lab.rs_cgroup();
    assert_eq!(attached(&rs, ttm::links::attach_type::GETSOCKOPT), 0);
    let (r, client) = one_connection(&world, &rs, 9204);
    assert_eq!(r["getpeername"], client.as_str(), "{r}");
    assert_eq!(r["sockopt"]["errno"], ENOPROTOOPT, "{r}");
}

#[test]
fn upgrade_crash_adoption_and_detach_cover_every_compat_cgroup() {
    let mut world = World::with_setup(|lab| {
        let a = lab.app_cgroup("app-a").expect("app-a");
        let b = lab.app_cgroup("app-b").expect("app-b");
        vec![
            "--compat-cgroup".into(),
            a.display().to_string(),
            "--compat-cgroup".into(),
            b.display().to_string(),
            "--witness".into(),
        ]
    });
    let rs = world.lab.rs_cgroup();
    let (a, b) = (rs.join("app-a"), rs.join("app-b"));
    let args = [
        "--compat-cgroup",
        a.to_str().expect("path"),
        "--compat-cgroup",
        b.to_str().expect("path"),
        "--witness",
    ];
    let cgroup_links = || {
        let pins = ttm::pins::PinDir::new(PIN_DIR);
        let mut all = pins.cgroup_link_pins();
        all.push(pins.link("ttm_sockops"));
        all.sort();
        all
    };
    let links_before = cgroup_links();
    assert_eq!(links_before.len(), 1 + 2 * 5, "{links_before:?}");

    // An upgrade swaps every program in place: same links, no gap.
    let upgraded = ttm_lab::TtmDaemon::start(
        lab::LB_NET,
        &rs,
        Path::new(PIN_DIR),
        &[&args[..], &["--upgrade"]].concat(),
    )
    .expect("upgrade");
    let status = world.daemon.wait_handed_over().expect("old daemon exits");
    assert_eq!(
        status.code(),
        Some(i32::from(ttm::daemon::HANDED_OVER_EXIT)),
        "{status}"
    );
    world.daemon = upgraded;
    assert_eq!(cgroup_links(), links_before);
    for (cg, port) in [(&a, 9211), (&b, 9212)] {
        assert_eq!(
            attached(cg, ttm::links::attach_type::GETPEERNAME4),
            2,
            "rewrite + witness"
        );
        let (r, client) = one_connection(&world, cg, port);
        sees_client(&r, &client);
    }

    // A crash leaves everything working; the next daemon adopts it.
    world.daemon.crash_in_place();
    let (r, client) = one_connection(&world, &b, 9213);
    sees_client(&r, &client);
    world.restart_daemon(&args);
    assert_eq!(cgroup_links(), links_before);
    assert_eq!(attached(&a, ttm::links::attach_type::GETSOCKOPT), 1);

    // After another crash, `ttm detach` removes every attachment.
    world.daemon.crash_in_place();
    let (code, out, err) = ttm(&["detach", "--pin-dir", PIN_DIR]);
    assert_eq!(code, 0, "{out}{err}");
    use ttm::links::attach_type::{GETPEERNAME4, GETPEERNAME6, GETSOCKOPT, SOCK_OPS};
    for cg in [&rs, &a, &b] {
        for t in [SOCK_OPS, GETSOCKOPT, GETPEERNAME4, GETPEERNAME6] {
            assert_eq!(attached(cg, t), 0, "{} type {t}", cg.display());
        }
    }
    assert!(ttm::pins::PinDir::new(PIN_DIR).link_pins().is_empty());
    let _ = std::fs::remove_file(&world.daemon.socket);
}
