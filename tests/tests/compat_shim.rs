//! Unmodified applications on the real server see the real client: the
//! getsockopt(SOL_IP, 1345) shim and the accept()/getpeername() rewrite,
//! exercised by a Python server, a C server and stock nginx.

mod common;

use common::{http_get, python_server, report, start_app, Nginx, World};
use ttm_common::Counter;
use ttm_lab::lab;

const ENOPROTOOPT: i64 = 92;
/// The errno of a short buffer on this kernel: EINVAL where cgroup
/// programs may choose the errno (a feature probe), else EFAULT.
fn short_buffer_errno() -> i64 {
    if ttm::links::sockopt_errno_supported() {
        22
    } else {
        14
    }
}
const AF_INET: i64 = 2;

#[test]
fn python_sees_the_client_through_getsockopt_accept_and_getpeername() {
    let world = World::new();
    let server = python_server(&world, "0.0.0.0", 4, &[]);
    let clients = world.connect(&world.lab.client_cgroup(), 3, 0);
    for _ in 0..3 {
        let r = report(&server);
        let claimed = r["claimed"].as_str().expect("claimed").to_string();
        assert!(clients.iter().any(|c| c.to_string() == claimed), "{r}");
        assert_eq!(r["accept"], claimed.as_str(), "{r}");
        assert_eq!(r["getpeername"], claimed.as_str(), "{r}");
        assert_eq!(r["sockopt"]["af"], AF_INET, "{r}");
        assert_eq!(r["sockopt"]["client"], claimed.as_str(), "{r}");
        assert_eq!(r["sockopt"]["len"], 20, "{r}");
        assert_eq!(
            r["short"]["errno"],
            short_buffer_errno(),
            "a 16-byte buffer: {r}"
        );
        // Unrelated options pass through.
        assert_eq!(r["so_type"], 1, "{r}");
        assert_eq!(r["nodelay"], 0, "{r}");
    }
    // A connection without the option: the LB, and ENOPROTOOPT.
    world.connect(&world.lab.plain_cgroup(), 1, 0);
    let r = report(&server);
    assert!(
        r["accept"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", lab::LB_IP)),
        "{r}"
    );
    assert_eq!(r["getpeername"], r["accept"], "{r}");
    assert_eq!(r["sockopt"]["errno"], ENOPROTOOPT, "{r}");
    let stats = world.stats();
    assert_eq!(stats.get(Counter::GetsockoptAnswered), 3);
    assert_eq!(stats.get(Counter::GetsockoptShortBuffer), 3);
    assert_eq!(stats.get(Counter::GetsockoptNoRecord), 2);
    // accept() and getpeername() of three connections.
    assert_eq!(stats.get(Counter::PeerRewritten), 6);
}

#[test]
fn a_dual_stack_listener_sees_the_client_v4_mapped() {
    let world = World::new();
    let server = python_server(&world, "::", 1, &[]);
    let clients = world.connect(&world.lab.client_cgroup(), 1, 0);
    let r = report(&server);
    let mapped = format!("[::ffff:{}]:{}", clients[0].ip(), clients[0].port());
    assert_eq!(r["accept"], mapped.as_str(), "{r}");
    assert_eq!(r["getpeername"], mapped.as_str(), "{r}");
    assert_eq!(r["sockopt"]["af"], AF_INET, "{r}");
    assert_eq!(r["sockopt"]["client"], clients[0].to_string().as_str());
}

#[test]
fn a_c_server_reads_struct_ttm_peer() {
    let world = World::new();
    let binary = common::c_server();
    let server = start_app(&world, binary.to_str().expect("path"), &["8080", "2"]);
    let clients = world.connect(&world.lab.client_cgroup(), 1, 0);
    let r = report(&server);
    assert_eq!(r["rc"], 0, "{r}");
    assert_eq!(r["len"], 20, "{r}");
    assert_eq!(r["af"], AF_INET, "{r}");
    assert_eq!(r["client"], clients[0].to_string().as_str(), "{r}");
    assert_eq!(r["accept"], clients[0].to_string().as_str(), "{r}");
    assert_eq!(r["tail_zero"], true, "no stale bytes after the IPv4: {r}");
    world.connect(&world.lab.plain_cgroup(), 1, 0);
    let r = report(&server);
    assert_eq!(r["rc"], -1, "{r}");
    assert_eq!(r["errno"], ENOPROTOOPT, "{r}");
    let _ = std::fs::remove_file(binary);
}

#[test]
fn nginx_logs_the_client_as_remote_addr() {
    let world = World::new();
    let nginx = Nginx::start(&world);
    let vip = |port: u16| format!("{}:{port}", lab::VIP);
    let v4 = http_get(&world.lab.client_cgroup(), &vip(8080));
    let dual = http_get(&world.lab.client_cgroup(), &vip(8081));
    let plain = http_get(&world.lab.plain_cgroup(), &vip(8080));
    let log = nginx.access_log(3);
    assert_eq!(log[0], format!("{} {} 8080", v4.ip(), v4.port()));
    assert_eq!(log[1], format!("::ffff:{} {} 8081", dual.ip(), dual.port()));
    // Without the option nginx sees the LB, as it would without ttm.
    assert_eq!(log[2], format!("{} {} 8080", lab::LB_IP, plain.port()));
}

#[test]
fn with_no_rewrite_accept_returns_the_lb_and_getsockopt_still_answers() {
    let world = World::with_daemon_args(lab::LB_NET, &["--no-rewrite"]);
    let server = python_server(&world, "0.0.0.0", 1, &[]);
    let clients = world.connect(&world.lab.client_cgroup(), 1, 0);
    let r = report(&server);
    let lb = format!("{}:{}", lab::LB_IP, clients[0].port());
    assert_eq!(r["accept"], lb.as_str(), "{r}");
    assert_eq!(r["getpeername"], lb.as_str(), "{r}");
    assert_eq!(
        r["sockopt"]["client"],
        clients[0].to_string().as_str(),
        "{r}"
    );
    assert_eq!(world.stats().get(Counter::PeerRewritten), 0);
}

#[test]
fn option_names_are_configurable_and_nat64_is_opt_in() {
    let world = World::with_daemon_args(
        lab::LB_NET,
        &["--getsockopt-name", "1346", "--nat64-getsockopt", "4096"],
    );
    // The Python server asks 1345 (now unanswered) and NAT64 4096.
    let server = python_server(&world, "0.0.0.0", 1, &["4096"]);
    let clients = world.connect(&world.lab.client_cgroup(), 1, 0);
    let r = report(&server);
    assert_eq!(
        r["sockopt"]["errno"], ENOPROTOOPT,
        "1345 is not ours now: {r}"
    );
    let ip = match clients[0].ip() {
        std::net::IpAddr::V4(v4) => v4.octets(),
        other => panic!("IPv4 client expected, got {other}"),
    };
    let expected = format!(
        "00000000000000000000ffff{:02x}{:02x}{:02x}{:02x}{:04x}0000",
        ip[0],
        ip[1],
        ip[2],
        ip[3],
        clients[0].port()
    );
    assert_eq!(r["nat64"], expected.as_str(), "{r}");
}
