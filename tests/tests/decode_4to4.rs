//! The 4to4 path end to end: IPv4 client → full-NAT LB → IPv4 real server.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::World;
use ttm_common::Counter;
use ttm_lab::lab;
use ttm_lab::writer::WriterConfig;

fn lb_ip() -> IpAddr {
    lab::LB_IP.parse().unwrap()
}

fn client_ip() -> IpAddr {
    lab::CLIENT_IP.parse().unwrap()
}

#[test]
fn hundred_concurrent_connections_each_recover_their_own_client() {
    let world = World::new();
    let server = world.serve(100);
    world.connect(&world.lab.client_cgroup(), 100, 0);
    let accepted = world.accepted(&server, 100);
    let records = world.records();
    for a in &accepted {
        // accept() already returns the client: the rewrite is on by default.
        assert_eq!(a.peer, a.claimed);
        assert_eq!(a.claimed.ip(), client_ip());
        let info = records
            .by_cookie(a.cookie)
            .expect("read records")
            .unwrap_or_else(|| panic!("no record for {a:?}"));
        assert_eq!(info.client, a.claimed, "wrong client for {a:?}");
        // The kernel's peer is the LB: that is the problem ttm solves.
        assert_eq!(info.kernel_peer.ip(), lb_ip());
        assert_eq!(info.local, a.local);
        assert_eq!(info.family, "4to4");
        assert_eq!((info.option_kind, info.option_len), (254, 8));
    }
    let mut clients: Vec<SocketAddr> = accepted.iter().map(|a| a.claimed).collect();
    clients.sort();
    clients.dedup();
    assert_eq!(
        clients.len(),
        100,
        "every connection has its own client port"
    );
    let stats = world.stats();
    assert_eq!(stats.get(Counter::Decoded), 100);
    assert_eq!(stats.get(Counter::ConnectionsSeen), 100);
    assert_eq!(stats.get(Counter::Untrusted), 0);

    // The CLI answers the same, by cookie and by 4-tuple (with the kernel's
    // peer, or with the peer the app saw).
    let a = &accepted[17];
    let kernel_peer = records.by_cookie(a.cookie).unwrap().unwrap().kernel_peer;
    for peer in [kernel_peer, a.peer] {
        let (code, out) = world
            .daemon
            .cli(&[
                "lookup",
                "--local",
                &a.local.to_string(),
                "--peer",
                &peer.to_string(),
                "--json",
            ])
            .unwrap();
        assert_eq!(code, 0, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["client"], a.claimed.to_string());
    }
    let (code, out) = world
        .daemon
        .cli(&["lookup", "--cookie", &a.cookie.to_string(), "--json"])
        .unwrap();
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["client"], a.claimed.to_string());
    let (code, _) = world.daemon.cli(&["lookup", "--cookie", "1"]).unwrap();
    assert_eq!(code, 1, "unknown cookie exits 1");
}

#[test]
fn connection_without_option_gets_no_record_and_works_normally() {
    let world = World::new();
    let server = world.serve(1);
    // The plain cgroup has no option writer: like traffic from a non-TOA LB.
    world.connect(&world.lab.plain_cgroup(), 1, 64 * 1024);
    let a = &world.accepted(&server, 1)[0];
    // No record: accept() is left alone and returns the LB.
    assert_eq!(a.peer.ip(), lb_ip());
    assert_eq!(world.records().by_cookie(a.cookie).unwrap(), None);
    let stats = world.stats();
    assert_eq!(stats.get(Counter::NoOption), 1);
    assert_eq!(stats.get(Counter::Decoded), 0);
    let (code, _) = world
        .daemon
        .cli(&["lookup", "--cookie", &a.cookie.to_string()])
        .unwrap();
    assert_eq!(code, 1);
}

#[test]
fn options_from_an_untrusted_peer_are_ignored() {
    // Trust a network the LB is not in: every option must be ignored.
    let world = World::trusting("192.0.2.0/24");
    let server = world.serve(3);
    world.connect(&world.lab.client_cgroup(), 3, 0);
    for a in world.accepted(&server, 3) {
        assert_eq!(world.records().by_cookie(a.cookie).unwrap(), None, "{a:?}");
        // accept() is left alone: the app sees the LB, not a claimed address.
        assert_eq!(a.peer.ip(), lb_ip(), "{a:?}");
    }
    let stats = world.stats();
    assert_eq!(stats.get(Counter::Untrusted), 3);
    assert_eq!(stats.get(Counter::PeerRewritten), 0);
    assert_eq!(stats.get(Counter::Decoded), 0);
}

fn syncookies_sent() -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", lab::RS_NS, "cat", "/proc/net/netstat"])
        .output()
        .expect("read netstat");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names: Vec<&str> = lines
        .next()
        .expect("TcpExt header")
        .split_whitespace()
        .collect();
    let values: Vec<&str> = lines
        .next()
        .expect("TcpExt values")
        .split_whitespace()
        .collect();
    let i = names
        .iter()
        .position(|n| *n == "SyncookiesSent")
        .expect("SyncookiesSent");
    values[i].parse().expect("number")
}

#[test]
fn syn_cookies_forced_on_still_decode() {
    let world = World::new();
    world
        .lab
        .rs_sysctl("net.ipv4.tcp_syncookies=2")
        .expect("force syn cookies");
    let before = syncookies_sent();
    let server = world.serve(10);
    world.connect(&world.lab.client_cgroup(), 10, 0);
    let accepted = world.accepted(&server, 10);
    assert!(
        syncookies_sent() - before >= 10,
        "the handshakes really used SYN cookies"
    );
    for a in &accepted {
        let info = world
            .records()
            .by_cookie(a.cookie)
            .unwrap()
            .expect("record with syn cookies");
        assert_eq!(info.client, a.claimed);
    }
}

#[test]
fn a_lost_handshake_ack_is_made_up_by_the_option_on_the_first_data_segment() {
    let world = World::new();
    // The LB puts the option on the handshake ACK and, like LBs that repeat
    // it until the real server has acknowledged data, on later segments. The
    // later copy names another client, so the test can tell which one the
    // real server read.
    let (ip, port) = ([10, 0, 1, 99], 4242u16);
    let later = SocketAddr::from((ip, port));
    let p = port.to_be_bytes();
    let writer = WriterConfig::TOA_V4
        .then_on_every_segment(&[254, 8, p[0], p[1], ip[0], ip[1], ip[2], ip[3]])
        .expect("writer");
    world.lab.set_writer(writer).expect("configure the writer");
    world
        .lab
        .lose_handshake_acks_naming(lab::CLIENT_IP.parse().unwrap())
        .expect("lose handshake ACKs");
    let server = world.serve(3);
    world.connect(&world.lab.client_cgroup(), 3, 1000);
    let accepted = world.accepted(&server, 3);
    assert_eq!(
        world.lab.lost_handshake_acks().expect("counter"),
        3,
        "every handshake ACK was lost on the way"
    );
    for a in &accepted {
        let record = world
            .records()
            .by_cookie(a.cookie)
            .unwrap()
            .expect("a record from the first data segment");
        assert_eq!(record.client, later, "the data segment's option was read");
        assert_eq!(record.kernel_peer.ip(), lb_ip());
        assert_eq!(a.peer, later, "accept() returned that client");
    }
    assert_eq!(world.stats().get(Counter::Decoded), 3);
}

#[test]
fn record_disappears_after_close() {
    let world = World::new();
    let mut server = world.serve(5);
    world.connect(&world.lab.client_cgroup(), 5, 0);
    let accepted = world.accepted(&server, 5);
    for a in &accepted {
        assert!(world.records().by_cookie(a.cookie).unwrap().is_some());
    }
    // The server closes its sockets when its stdin closes.
    server.close_stdin();
    assert!(server.wait(Duration::from_secs(10)).unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while accepted
        .iter()
        .any(|a| world.records().by_cookie(a.cookie).unwrap().is_some())
    {
        assert!(
            Instant::now() < deadline,
            "records still present after close"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(world.map_entries(ttm_common::maps::RECORDS), 0);
    let stats = world.stats();
    assert_eq!(stats.live_records(), 0);
    assert_eq!(stats.get(Counter::RecordsRemoved), 5);
    assert_eq!(stats.get(Counter::RecordsEvicted), 0);
}

#[test]
fn data_round_trips_through_the_lb_with_ttm_attached() {
    let world = World::new();
    let server = world.serve(4);
    world.connect(&world.lab.client_cgroup(), 4, 1 << 20);
    for a in &world.accepted(&server, 4) {
        world.assert_recorded(a, "1 MiB each way");
    }
}
