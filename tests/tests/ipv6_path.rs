//! IPv6 between the LB and the real server (sockops mode): the lab's IPv6
//! path (client `fd00:1::2` → VIP `fd00:1::1` → LB `fd00:2::1` → real server
//! `fd00:2::2`, full-NAT with nftables `ip6`). 6to6: an IPv6 client in a
//! 20-byte option; 4to6: an IPv4 client in an 8-byte option on an IPv6
//! connection, as an LB doing NAT46 sends it.

mod common;

use std::net::SocketAddr;

use common::{http_get, python_server, report, start_app, Accepted, Nginx, World};
use ttm_common::Counter;
use ttm_lab::lab;
use ttm_lab::writer::WriterConfig;

const ENOPROTOOPT: i64 = 92;
const TRUST_BOTH: &str = "10.0.2.0/24,fd00:2::/64";
/// The IPv4 client an LB doing NAT46 vouches for in the 4to6 tests.
const NAT46_CLIENT: [u8; 4] = [10, 0, 1, 2];

fn vip6() -> String {
    format!("[{}]:8080", lab::VIP6)
}

/// `count` concurrent connections to the IPv6 VIP, to a lab server on
/// `[::]:8080` that asks the daemon about each; returns what it accepted.
fn through_the_ipv6_lb(world: &World, count: usize) -> (ttm_lab::process::Guarded, Vec<Accepted>) {
    let socket = world.daemon.socket.to_string_lossy().into_owned();
    let count_s = count.to_string();
    let server = ttm_lab::process::spawn_in(
        common::lab_bin(),
        &world.lab.rs_cgroup(),
        lab::RS_NS,
        &[
            "serve",
            "--listen",
            "[::]:8080",
            "--count",
            &count_s,
            "--lookup",
            &socket,
        ],
    )
    .expect("lab server");
    server
        .wait_for(std::time::Duration::from_secs(10), |l| {
            l.starts_with("listening")
        })
        .expect("listening");
    world.connect_to(&world.lab.client_cgroup(), &vip6(), count, 0);
    let accepted = world.accepted(&server, count);
    (server, accepted)
}

#[test]
fn a_hundred_6to6_connections_each_recover_their_own_ipv6_client() {
    let world = World::with_daemon_args(TRUST_BOTH, &[]);
    let (server, accepted) = through_the_ipv6_lb(&world, 100);
    // The CLI: `ttm lookup` by an IPv6 tuple, `ttm verify --pid` on the server.
    let a = &accepted[0];
    let (code, out, err) = common::ttm(&[
        "lookup",
        "--local",
        &a.local.to_string(),
        "--peer",
        &a.claimed.to_string(),
        "--json",
        "--socket",
        &world.daemon.socket.display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let found: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(found["client"], a.claimed.to_string().as_str());
    assert_eq!(found["family"], "6to6");
    let (code, out, err) = common::ttm(&[
        "verify",
        "--pid",
        &server.id().to_string(),
        "--json",
        "--pin-dir",
        common::PIN_DIR,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let sockets: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
    let mine: Vec<_> = sockets
        .iter()
        .filter(|s| s["verdict"] == "ttm-client")
        .collect();
    assert_eq!(mine.len(), 100, "{out}");
    for a in &accepted {
        assert!(a.claimed.is_ipv6(), "{a:?}");
        assert_eq!(a.lookup["provenance"]["verdict"], "ttm-client", "{a:?}");
        assert_eq!(a.peer, a.claimed, "accept() returns the IPv6 client: {a:?}");
        a.assert_found_as(&a.claimed.to_string());
    }
    let stats = world.stats();
    assert_eq!(stats.get(Counter::Decoded), 100);
    let records = world.records();
    let r = records
        .by_cookie(accepted[0].cookie)
        .expect("records")
        .expect("a record");
    assert_eq!(r.family, "6to6");
    assert_eq!(r.kernel_peer.ip().to_string(), lab::LB_IP6);
    // Tuple lookups take IPv6 tuples, by the kernel's peer too.
    let by_kernel = records
        .by_tuple(r.local, r.kernel_peer)
        .expect("lookup")
        .expect("found by the kernel's tuple");
    assert_eq!(by_kernel.cookie, r.cookie);
}

#[test]
fn a_hundred_4to6_connections_each_recover_their_ipv4_client() {
    let world = World::with_daemon_args(TRUST_BOTH, &[]);
    world
        .lab
        .set_writer(WriterConfig::v4_client(254, NAT46_CLIENT))
        .expect("writer");
    let (_server, accepted) = through_the_ipv6_lb(&world, 100);
    for a in &accepted {
        // The IPv4 client, v4-mapped on the IPv6 socket (dual-stack servers
        // log `::ffff:a.b.c.d`), with the connection's own port.
        let expected: SocketAddr = format!("[::ffff:10.0.1.2]:{}", a.claimed.port())
            .parse()
            .unwrap();
        assert_eq!(a.peer, expected, "{a:?}");
        let canonical = format!("10.0.1.2:{}", a.claimed.port());
        a.assert_found_as(&canonical);
    }
    let r = world
        .records()
        .by_cookie(accepted[0].cookie)
        .expect("records")
        .expect("a record");
    assert_eq!(r.family, "4to6");
    assert_eq!(world.stats().get(Counter::Decoded), 100);
}

#[test]
fn getsockopt_on_an_ipv6_real_server_gives_the_family_the_layout_says() {
    // 6to6: AF_INET6 and the 16-byte address; the NAT64 layout too.
    let world = World::with_daemon_args(TRUST_BOTH, &["--nat64-getsockopt", "4096"]);
    let server = python_server(&world, "::", 1, &["4096"]);
    let clients = world.connect_to(&world.lab.client_cgroup(), &vip6(), 1, 0);
    let r = report(&server);
    let client = clients[0].to_string();
    assert_eq!(r["accept"], client.as_str(), "{r}");
    assert_eq!(r["getpeername"], client.as_str(), "{r}");
    assert_eq!(r["sockopt"]["af"], 10, "{r}");
    assert_eq!(r["sockopt"]["client"], client.as_str(), "{r}");
    let nat64 = r["nat64"].as_str().expect("nat64 layout");
    let addr: std::net::Ipv6Addr = lab::CLIENT_IP6.parse().unwrap();
    let hex: String = addr.octets().iter().map(|b| format!("{b:02x}")).collect();
    assert!(nat64.starts_with(&hex), "{nat64} vs {hex}");
    drop(server);
    // 4to6: AF_INET and the IPv4 client; NAT64 gives it v4-mapped.
    world
        .lab
        .set_writer(WriterConfig::v4_client(254, NAT46_CLIENT))
        .expect("writer");
    let server = python_server(&world, "::", 1, &["4096"]);
    let clients = world.connect_to(&world.lab.client_cgroup(), &vip6(), 1, 0);
    let r = report(&server);
    let port = clients[0].port();
    assert_eq!(
        r["getpeername"],
        format!("[::ffff:10.0.1.2]:{port}").as_str(),
        "{r}"
    );
    assert_eq!(r["sockopt"]["af"], 2, "{r}");
    assert_eq!(
        r["sockopt"]["client"],
        format!("10.0.1.2:{port}").as_str(),
        "{r}"
    );
    assert!(
        r["nat64"]
            .as_str()
            .unwrap()
            .starts_with("00000000000000000000ffff0a000102"),
        "{r}"
    );
}

#[test]
fn an_ipv6_client_reaching_the_server_directly_cannot_choose_its_address() {
    let world = World::with_daemon_args(TRUST_BOTH, &[]);
    // The client claims another IPv6 address in its own option.
    let mut forged = vec![254u8, 20, 0x11, 0x5c];
    forged.extend_from_slice(
        &"2001:db8::bad"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    world
        .lab
        .set_writer(WriterConfig::raw(&forged).expect("option"))
        .expect("writer");
    let server = python_server(&world, "::", 1, &[]);
    // Straight to the real server: routed through the LB, not NATed, so the
    // real server's peer is the client itself — outside --trust.
    let clients = world.connect_to(
        &world.lab.client_cgroup(),
        &format!("[{}]:8080", lab::RS_IP6),
        1,
        0,
    );
    let r = report(&server);
    let truth = clients[0].to_string();
    assert_eq!(r["getpeername"], truth.as_str(), "{r}");
    assert_eq!(r["sockopt"]["errno"], ENOPROTOOPT, "{r}");
    assert_eq!(world.stats().get(Counter::Untrusted), 1);
    assert_eq!(world.stats().get(Counter::Decoded), 0);
}

#[test]
fn implausible_ipv6_clients_are_refused() {
    let world = World::with_daemon_args(TRUST_BOTH, &[]);
    let claims: [&str; 4] = ["::", "::1", "ff02::1", "::ffff:127.0.0.1"];
    for (i, claim) in claims.iter().enumerate() {
        let mut option = vec![254u8, 20, 0x11, 0x5c];
        option.extend_from_slice(&claim.parse::<std::net::Ipv6Addr>().unwrap().octets());
        world
            .lab
            .set_writer(WriterConfig::raw(&option).expect("option"))
            .expect("writer");
        let server = python_server(&world, "::", 1, &[]);
        world.connect_to(&world.lab.client_cgroup(), &vip6(), 1, 0);
        let r = report(&server);
        let peer = r["getpeername"].as_str().expect("peer");
        assert!(
            peer.starts_with(&format!("[{}]:", lab::LB_IP6)),
            "{claim}: {r}"
        );
        assert_eq!(r["sockopt"]["errno"], ENOPROTOOPT, "{claim}: {r}");
        assert_eq!(
            world.stats().get(Counter::ImplausibleClient),
            i as u64 + 1,
            "{claim}"
        );
    }
    assert_eq!(world.stats().get(Counter::Decoded), 0);
}

#[test]
fn malformed_options_on_ipv6_segments_are_counted_like_on_ipv4() {
    let world = World::with_daemon_args(TRUST_BOTH, &[]);
    // A configured kind with a length no format has.
    world
        .lab
        .set_writer(WriterConfig::raw(&[254, 12, 0, 80, 1, 2, 3, 4, 5, 6, 7, 8]).expect("option"))
        .expect("writer");
    let server = python_server(&world, "::", 1, &[]);
    world.connect_to(&world.lab.client_cgroup(), &vip6(), 1, 0);
    let r = report(&server);
    assert_eq!(r["sockopt"]["errno"], ENOPROTOOPT, "{r}");
    assert_eq!(world.stats().get(Counter::MalformedUnexpectedLength), 1);
}

#[test]
fn a_c_server_and_nginx_on_an_ipv6_real_server_see_the_client() {
    let world = World::with_daemon_args(TRUST_BOTH, &[]);
    let binary = common::c_server();
    let server = start_app(&world, binary.to_str().expect("path"), &["8080", "1", "6"]);
    let clients = world.connect_to(&world.lab.client_cgroup(), &vip6(), 1, 0);
    let r = report(&server);
    let c = clients[0];
    assert_eq!(r["rc"], 0, "{r}");
    assert_eq!(r["af"], 10, "{r}");
    assert_eq!(r["accept"], c.to_string().as_str(), "{r}");
    assert_eq!(
        r["client"],
        format!("{}:{}", c.ip(), c.port()).as_str(),
        "{r}"
    );
    drop(server);
    let _ = std::fs::remove_file(binary);

    // nginx `listen [::]:8082;`: 6to6 logs the IPv6 client, 4to6 the
    // IPv4 client v4-mapped.
    let nginx = Nginx::start(&world);
    let target = format!("[{}]:8082", lab::VIP6);
    let six = http_get(&world.lab.client_cgroup(), &target);
    world
        .lab
        .set_writer(WriterConfig::v4_client(254, NAT46_CLIENT))
        .expect("writer");
    let four = http_get(&world.lab.client_cgroup(), &target);
    let log = nginx.access_log(2);
    assert_eq!(log[0], format!("{} {} 8082", six.ip(), six.port()));
    assert_eq!(log[1], format!("::ffff:10.0.1.2 {} 8082", four.port()));
}
