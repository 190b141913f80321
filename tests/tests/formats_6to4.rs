//! Every `--format` preset through the lab, and 6to4: an IPv6 client carried
//! in the option of an IPv4 LB→RS connection, seen by every API.

mod common;

use std::net::{Ipv6Addr, SocketAddr};

use common::{python_server, report, World};
use ttm_common::Counter;
use ttm_lab::lab;
use ttm_lab::writer::WriterConfig;

const AF_INET6: i64 = 10;
const CLIENT6: &str = "2001:db8::7";

fn client6() -> [u8; 16] {
    CLIENT6.parse::<Ipv6Addr>().expect("v6").octets()
}

/// One connection through the LB with `writer` under `--format` `formats`:
/// returns the record's (client, family) and what accept() returned.
fn decode_one(
    formats: &[&str],
    writer: WriterConfig,
) -> (Option<(SocketAddr, String)>, SocketAddr) {
    let mut args = Vec::new();
    for f in formats {
        args.extend(["--format", f]);
    }
    let world = World::with_daemon_args(lab::LB_NET, &args);
    world.lab.set_writer(writer).expect("configure the writer");
    let server = world.serve(1);
    world.connect(&world.lab.client_cgroup(), 1, 0);
    let a = world.accepted(&server, 1).pop().expect("accepted");
    let record = world
        .records()
        .by_cookie(a.cookie)
        .expect("read records")
        .map(|c| (c.client, c.family));
    (record, a.peer)
}

fn v6_client(port: u16) -> SocketAddr {
    SocketAddr::new(CLIENT6.parse().expect("v6"), port)
}

#[test]
fn six_to_four_is_seen_by_getsockopt_lookup_and_a_dual_stack_accept() {
    let world = World::new();
    let writer = WriterConfig::claim(254, 20, 4242, &client6()).expect("writer");
    world.lab.set_writer(writer).expect("configure the writer");
    let server = python_server(&world, "::", 1, &[]);
    world.connect(&world.lab.client_cgroup(), 1, 0);
    let r = report(&server);
    let expected = format!("[{CLIENT6}]:4242");
    // Something the kernel modules never offered: accept() returns the IPv6 client.
    assert_eq!(r["accept"], expected.as_str(), "{r}");
    assert_eq!(r["getpeername"], expected.as_str(), "{r}");
    assert_eq!(r["sockopt"]["af"], AF_INET6, "{r}");
    assert_eq!(r["sockopt"]["client"], expected.as_str(), "{r}");
    drop(server);
    // The lookup service, by fd, cookie and tuple, on a connection the
    // server holds open.
    let server = world.serve_looking_up(1);
    world.connect(&world.lab.client_cgroup(), 1, 0);
    let a = world.accepted(&server, 1).pop().expect("accepted");
    a.assert_found_as(&expected);
    let (code, out) = world
        .daemon
        .cli(&["lookup", "--cookie", &a.cookie.to_string(), "--json"])
        .expect("ttm lookup");
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["client"], expected.as_str());
    assert_eq!(v["family"], "6to4");
    assert_eq!(
        (v["option_kind"].as_u64(), v["option_len"].as_u64()),
        (Some(254), Some(20))
    );
}

#[test]
fn six_to_four_leaves_an_ipv4_listener_alone_but_getsockopt_answers() {
    let world = World::new();
    let writer = WriterConfig::claim(254, 20, 4243, &client6()).expect("writer");
    world.lab.set_writer(writer).expect("configure the writer");
    let server = python_server(&world, "0.0.0.0", 1, &[]);
    let clients = world.connect(&world.lab.client_cgroup(), 1, 0);
    let r = report(&server);
    let lb = format!("{}:{}", lab::LB_IP, clients[0].port());
    assert_eq!(
        r["accept"],
        lb.as_str(),
        "an IPv6 address cannot go in a sockaddr_in: {r}"
    );
    assert_eq!(r["sockopt"]["af"], AF_INET6, "{r}");
    assert_eq!(
        r["sockopt"]["client"],
        format!("[{CLIENT6}]:4243").as_str(),
        "{r}"
    );
    assert_eq!(world.stats().get(Counter::PeerRewritten), 0);
}

#[test]
fn preset_kind253_decodes_ipv6_clients() {
    let writer = WriterConfig::claim(253, 20, 5353, &client6()).expect("writer");
    let (record, accepted) = decode_one(&["kind253"], writer);
    assert_eq!(record, Some((v6_client(5353), "6to4".to_string())));
    assert_eq!(accepted.ip().to_string(), lab::LB_IP);
}

#[test]
fn preset_kind200_decodes_ipv4_clients() {
    let (record, accepted) = decode_one(&["kind200"], WriterConfig::own_address(200));
    let (client, family) = record.expect("a record");
    assert_eq!(client.ip().to_string(), lab::CLIENT_IP);
    assert_eq!(family, "4to4");
    assert_eq!(accepted, client, "accept() returns the client");
}

#[test]
fn an_unconfigured_kind_is_not_decoded() {
    // kind 200 under the default (toa) formats: a well-formed option nobody asked for.
    let (record, accepted) = decode_one(&[], WriterConfig::own_address(200));
    assert_eq!(record, None);
    assert_eq!(accepted.ip().to_string(), lab::LB_IP);
}

#[test]
fn custom_layouts_decode_both_families() {
    let writer = WriterConfig::claim(230, 12, 6000, &[198, 51, 100, 20]).expect("writer");
    let (record, _) = decode_one(&["custom:230/12/v4"], writer);
    assert_eq!(
        record,
        Some(("198.51.100.20:6000".parse().unwrap(), "4to4".to_string()))
    );
    let writer = WriterConfig::claim(231, 20, 6001, &client6()).expect("writer");
    let (record, _) = decode_one(&["toa", "custom:231/20/v6"], writer);
    assert_eq!(record, Some((v6_client(6001), "6to4".to_string())));
}

#[test]
fn ttm_formats_lists_every_preset_with_its_bytes() {
    let out = std::process::Command::new(ttm_lab::daemon::ttm_bin().expect("ttm"))
        .arg("formats")
        .output()
        .expect("ttm formats");
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "[254][8][port:2][IPv4:4]",
        "[254][20][port:2][IPv6:16]",
        "[253][20][port:2][IPv6:16]",
        "[200][8][port:2][IPv4:4]",
        "custom:KIND/LEN/v4|v6",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
}
