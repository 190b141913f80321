//! UDP behind a full-NAT LB that marks each flow's client as DPVS does
//! (UOA): the lab's LB namespace sends marked datagrams to the real server,
//! whose `--udp-interface` decoder files the flows, and a C server written
//! as uoa.ko's users write theirs asks `getsockopt(IPPROTO_IP, 2048)` after
//! each `recvfrom()`.

mod common;

use std::time::Duration;

use common::{c_app, lab_bin, report, start_app, World};
use ttm_common::Counter;
use ttm_lab::lab;
use ttm_lab::process::spawn_in;

const PORT: &str = "6000";

/// What a lookup without a flow gets: uoa.ko's ENOENT where the kernel lets
/// cgroup programs choose the errno (5.18+), else the kernel's ENOPROTOOPT.
fn no_flow_errno() -> i64 {
    if ttm::links::sockopt_errno_supported() {
        i64::from(libc::ENOENT)
    } else {
        i64::from(libc::ENOPROTOOPT)
    }
}

fn world(extra: &[&str]) -> World {
    let mut args = vec!["--udp-interface", lab::RS_IF, "--trust", lab::LB_NET6];
    args.extend_from_slice(extra);
    World::with_daemon_args(lab::LB_NET, &args)
}

/// Runs the test-only marker in namespace `ns`; returns the server's
/// answers to it.
fn uoa_send(world: &World, ns: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec!["uoa-send"];
    if !args.contains(&"--wait-ms") {
        all.extend(["--wait-ms", "3000"]);
    }
    all.extend_from_slice(args);
    let sender = spawn_in(lab_bin(), &world.lab.plain_cgroup(), ns, &all).expect("uoa-send");
    let line = sender
        .line(Duration::from_secs(30))
        .expect("uoa-send report");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    v["answers"]
        .as_array()
        .expect("answers")
        .iter()
        .map(|a| a.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Flows in the pinned UDP flow table.
fn live_flows() -> usize {
    use aya::maps::{HashMap, Map, MapData};
    use ttm_common::udp::{UdpFlow, UdpFlowKey};
    let data = MapData::from_pin(std::path::Path::new(common::PIN_DIR).join("UDP_FLOWS"))
        .expect("UDP_FLOWS pinned");
    let map: HashMap<MapData, UdpFlowKey, UdpFlow> =
        HashMap::try_from(Map::HashMap(data)).expect("hash");
    map.keys().filter(Result::is_ok).count()
}

fn from_lb(port: u16) -> String {
    format!("{}:{port}", lab::LB_IP)
}

fn to_rs() -> String {
    format!("{}:{PORT}", lab::RS_IP)
}

fn server(world: &World, count: usize, how: Option<&str>) -> ttm_lab::process::Guarded {
    let binary = c_app("uoa_server.c");
    let count = count.to_string();
    let mut args = vec![PORT, count.as_str()];
    args.extend(how);
    start_app(world, binary.to_str().expect("path"), &args)
}

#[test]
fn an_unmodified_uoa_server_gets_the_client_from_an_ipv4_option() {
    let world = world(&[]);
    let server = server(&world, 4, None);
    // An IPv4 client, then an IPv6 one over the same IPv4 path (20 bytes).
    for (port, client) in [(40_001, "192.0.2.7:5353"), (40_002, "[2001:db8::7]:443")] {
        let answers = uoa_send(
            &world,
            lab::LB_NS,
            &[
                "--from",
                &from_lb(port),
                "--to",
                &to_rs(),
                "--client",
                client,
            ],
        );
        let r = report(&server);
        assert_eq!(r["from"], from_lb(port), "{r}");
        assert_eq!(r["errno"], 0, "{r}");
        assert_eq!(r["len"], 58, "{r}");
        assert_eq!(r["real"], client, "{r}");
        assert_eq!(
            r["payload"], "hello",
            "the datagram is delivered unchanged: {r}"
        );
        assert_eq!(
            answers,
            vec![format!("{client} hello")],
            "the reply went back to the LB"
        );
    }
    // The lookup service and `ttm lookup` know the flows too.
    let mut client = ttm_client::Client::connect(&world.daemon.socket).expect("lookup socket");
    let wildcard = format!("0.0.0.0:{PORT}").parse().unwrap();
    let flow = client
        .lookup_udp(wildcard, from_lb(40_001).parse().unwrap())
        .expect("udp lookup")
        .expect("the flow is found");
    assert_eq!(flow.client.to_string(), "192.0.2.7:5353");
    assert_eq!(flow.family, "4to4");
    assert_eq!(flow.local.to_string(), to_rs());
    let six = client
        .lookup_udp(to_rs().parse().unwrap(), from_lb(40_002).parse().unwrap())
        .expect("udp lookup")
        .expect("the IPv6 client's flow");
    assert_eq!(six.client.to_string(), "[2001:db8::7]:443");
    assert_eq!(six.family, "6to4");
    let elsewhere = "10.0.2.9:6000".parse().unwrap();
    assert_eq!(
        client
            .lookup_udp(elsewhere, from_lb(40_001).parse().unwrap())
            .expect("udp lookup"),
        None,
        "another local address is another flow"
    );
    let (code, out, _) = common::ttm(&[
        "lookup",
        "--udp",
        "--local",
        &format!("0.0.0.0:{PORT}"),
        "--peer",
        &from_lb(40_001),
        "--pin-dir",
        common::PIN_DIR,
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"client\":\"192.0.2.7:5353\""), "{out}");
    // An unmarked flow from the LB: no client, ENOENT as uoa.ko says.
    uoa_send(
        &world,
        lab::LB_NS,
        &[
            "--from",
            &from_lb(40_003),
            "--to",
            &to_rs(),
            "--carrier",
            "plain",
        ],
    );
    let r = report(&server);
    assert_eq!(r["errno"], no_flow_errno(), "{r}");
    // A later datagram of the first flow, unmarked, is still its client's.
    uoa_send(
        &world,
        lab::LB_NS,
        &[
            "--from",
            &from_lb(40_001),
            "--to",
            &to_rs(),
            "--carrier",
            "plain",
        ],
    );
    let r = report(&server);
    assert_eq!(r["real"], "192.0.2.7:5353", "{r}");
    let stats = world.stats();
    assert_eq!(stats.get(Counter::UdpDecoded), 2, "{stats:?}");
    assert_eq!(stats.get(Counter::UdpLookupAnswered), 3, "{stats:?}");
    assert_eq!(stats.get(Counter::UdpLookupUnanswered), 1, "{stats:?}");
}

#[test]
fn opp_headers_are_removed_on_ipv4_and_ipv6_paths_and_markers_dropped() {
    let world = world(&[]);
    let v4 = server(&world, 2, None);
    let answers = uoa_send(
        &world,
        lab::LB_NS,
        &[
            "--from",
            &from_lb(40_010),
            "--to",
            &to_rs(),
            "--carrier",
            "opp",
            "--client",
            "198.51.100.4:9000",
        ],
    );
    let r = report(&v4);
    assert_eq!(r["real"], "198.51.100.4:9000", "{r}");
    assert_eq!(r["payload"], "hello", "unwrapped, checksum right: {r}");
    assert_eq!(answers.len(), 1, "{answers:?}");
    // A marking-only datagram ahead of the full one: the app gets only the full one.
    uoa_send(
        &world,
        lab::LB_NS,
        &[
            "--from",
            &from_lb(40_011),
            "--to",
            &to_rs(),
            "--client",
            "198.51.100.5:9001",
            "--marker-first",
            "--payload",
            "after-marker",
        ],
    );
    let r = report(&v4);
    assert_eq!(
        r["payload"], "after-marker",
        "the marker never reaches the app: {r}"
    );
    assert_eq!(r["real"], "198.51.100.5:9001", "{r}");
    drop(v4);
    // The IPv6 path: opp after the IPv6 header, a dual-stack server.
    let v6 = server(&world, 1, Some("6"));
    let from = format!("[{}]:40012", lab::LB_IP6);
    let to = format!("[{}]:{PORT}", lab::RS_IP6);
    uoa_send(
        &world,
        lab::LB_NS,
        &[
            "--from",
            &from,
            "--to",
            &to,
            "--carrier",
            "opp",
            "--client",
            "[2001:db8::9]:53",
        ],
    );
    let r = report(&v6);
    assert_eq!(r["from"], from, "{r}");
    assert_eq!(r["real"], "[2001:db8::9]:53", "{r}");
    assert_eq!(r["payload"], "hello", "{r}");
    let stats = world.stats();
    assert_eq!(stats.get(Counter::UdpUnwrapped), 2, "{stats:?}");
    assert_eq!(stats.get(Counter::UdpMarkersDropped), 1, "{stats:?}");
}

#[test]
fn no_client_can_choose_its_own_address() {
    let world = world(&[]);
    let server = server(&world, 5, None);
    // A live flow of client A.
    uoa_send(
        &world,
        lab::LB_NS,
        &[
            "--from",
            &from_lb(40_020),
            "--to",
            &to_rs(),
            "--client",
            "192.0.2.10:1000",
        ],
    );
    assert_eq!(report(&server)["real"], "192.0.2.10:1000");
    // A client straight to the real server, marking itself as someone else.
    let direct = format!("{}:40021", lab::CLIENT_IP);
    uoa_send(
        &world,
        lab::CLIENT_NS,
        &[
            "--from",
            &direct,
            "--to",
            &to_rs(),
            "--client",
            "192.0.2.10:1000",
        ],
    );
    let r = report(&server);
    assert_eq!(r["from"], direct, "{r}");
    assert_eq!(
        r["errno"],
        no_flow_errno(),
        "an untrusted marking files nothing: {r}"
    );
    // A malformed option from the LB (a length running past the area).
    uoa_send(
        &world,
        lab::LB_NS,
        &[
            "--from",
            &from_lb(40_022),
            "--to",
            &to_rs(),
            "--carrier",
            "opp",
            "--option-hex",
            "9f1600500a000001",
        ],
    );
    let r = report(&server);
    assert_eq!(r["errno"], no_flow_errno(), "{r}");
    assert_eq!(
        r["payload"], "hello",
        "a malformed marking leaves the datagram alone: {r}"
    );
    // The LB reuses a live flow's port for a new client: the newer one wins.
    uoa_send(
        &world,
        lab::LB_NS,
        &[
            "--from",
            &from_lb(40_020),
            "--to",
            &to_rs(),
            "--client",
            "192.0.2.11:1001",
        ],
    );
    assert_eq!(report(&server)["real"], "192.0.2.11:1001");
    // And the untrusted marking never touched it.
    uoa_send(
        &world,
        lab::LB_NS,
        &[
            "--from",
            &from_lb(40_020),
            "--to",
            &to_rs(),
            "--carrier",
            "plain",
        ],
    );
    assert_eq!(report(&server)["real"], "192.0.2.11:1001");
    let stats = world.stats();
    assert!(stats.get(Counter::UdpUntrusted) >= 1, "{stats:?}");
    assert_eq!(stats.get(Counter::UdpMalformed), 1, "{stats:?}");
    assert_eq!(stats.get(Counter::UdpReplaced), 1, "{stats:?}");
    assert_eq!(stats.get(Counter::UdpDecoded), 1, "{stats:?}");
}

#[test]
fn a_connected_socket_is_answered_by_its_own_tuple_and_idle_flows_expire() {
    let world = world(&["--udp-idle", "2"]);
    let server = server(&world, 2, Some("connect"));
    uoa_send(
        &world,
        lab::LB_NS,
        &[
            "--from",
            &from_lb(40_030),
            "--to",
            &to_rs(),
            "--client",
            "203.0.113.8:7000",
            "--more",
            "1",
        ],
    );
    // First asked right after connect(), then again on the connected socket.
    for _ in 0..2 {
        let r = report(&server);
        assert_eq!(r["real"], "203.0.113.8:7000", "{r}");
    }
    let stats = world.stats();
    assert_eq!(stats.get(Counter::UdpDecoded), 1, "{stats:?}");
    // Idle for longer than --udp-idle: expired, and the live count is 0.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while world.stats().get(Counter::UdpExpired) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let stats = world.stats();
    assert_eq!(stats.get(Counter::UdpExpired), 1, "{stats:?}");
    assert_eq!(
        stats.get(Counter::UdpDecoded) - stats.get(Counter::UdpExpired),
        0,
        "no flow left"
    );
}

#[test]
fn two_flows_before_a_lookup_answer_neither_and_a_full_table_refuses_new_flows() {
    let world = world(&["--max-udp-flows", "2"]);
    let server = server(&world, 2, Some("pairs"));
    // Two flows reach the socket before it asks: which one it means cannot
    // be told, so no answer (uoa.ko would read the tuple the app passed).
    for (port, client) in [(40_040, "192.0.2.40:4000"), (40_041, "192.0.2.41:4001")] {
        uoa_send(
            &world,
            lab::LB_NS,
            &[
                "--from",
                &from_lb(port),
                "--to",
                &to_rs(),
                "--client",
                client,
                "--wait-ms",
                "0",
            ],
        );
    }
    let r = report(&server);
    assert_eq!(r["from"], from_lb(40_041), "{r}");
    assert_eq!(r["errno"], no_flow_errno(), "{r}");
    // Two datagrams of one flow: that flow. The table is full (2): a third
    // flow is refused, and the two live ones stay.
    for _ in 0..2 {
        uoa_send(
            &world,
            lab::LB_NS,
            &[
                "--from",
                &from_lb(40_042),
                "--to",
                &to_rs(),
                "--client",
                "192.0.2.42:4002",
                "--wait-ms",
                "0",
            ],
        );
    }
    let r = report(&server);
    assert_eq!(
        r["errno"],
        no_flow_errno(),
        "the third flow found no room: {r}"
    );
    let stats = world.stats();
    assert_eq!(stats.get(Counter::UdpDecoded), 2, "{stats:?}");
    assert_eq!(stats.get(Counter::UdpRefused), 2, "{stats:?}");
    assert_eq!(live_flows(), 2, "no live flow was evicted");
}
