//! The TC path in the lab: `--mode tc` records every connection at the
//! real server's interface and sockops moves the records into the sockets;
//! sockets outside ttm's cgroup are found by their 4-tuple and swept by
//! age once closed; netlink attachment (kernels without tcx) hands over
//! without a gap; `auto` picks by what the kernel can do.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData};
use common::{lab_bin, ttm, World, PIN_DIR};
use ttm_common::maps::{self, TcKey};
use ttm_common::{Counter, PeerRecord};
use ttm_lab::lab;
use ttm_lab::process::spawn_in;
use ttm_lab::TtmDaemon;

/// Entries in the pinned 4-tuple map.
fn tc_records() -> usize {
    let data = MapData::from_pin(Path::new(PIN_DIR).join(maps::TC_RECORDS)).expect("TC_RECORDS");
    let map: HashMap<MapData, TcKey, PeerRecord> =
        HashMap::try_from(Map::LruHashMap(data)).expect("hash");
    map.keys().filter(Result::is_ok).count()
}

/// Waits up to `limit` for `done`.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// ttm's netlink filters on the lab's real-server interface.
fn netlink_filters() -> usize {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            lab::RS_NS,
            "tc",
            "filter",
            "show",
            "dev",
            lab::RS_IF,
            "ingress",
        ])
        .output()
        .expect("tc filter show");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(ttm::tc::TC_PROGRAM))
        .count()
}

fn tcx_pin() -> std::path::PathBuf {
    ttm::tc::tcx_pin(&ttm::pins::PinDir::new(PIN_DIR), lab::RS_IF)
}

/// The classifier sits on the lab's interface the way this kernel allows:
/// a pinned tcx link where tcx exists (probed), else one netlink filter.
fn assert_tc_attached() {
    if ttm::links::tcx_supported() {
        assert!(tcx_pin().exists(), "tcx link pinned");
        assert_eq!(netlink_filters(), 0);
    } else {
        assert!(!tcx_pin().exists());
        assert_eq!(netlink_filters(), 1, "no tcx here: a netlink filter");
    }
}

#[test]
fn tc_mode_records_every_connection_and_hands_it_to_the_socket() {
    let world = World::in_mode("tc", &[]);
    assert_tc_attached();
    let server = world.serve_looking_up(20);
    world.connect(&world.lab.client_cgroup(), 20, 1000);
    let accepted = world.accepted(&server, 20);
    let records = world.records();
    for a in &accepted {
        assert_eq!(a.peer, a.claimed, "accept() returns the client");
        let r = records.by_cookie(a.cookie).expect("records");
        assert_eq!(r.map(|r| r.client), Some(a.claimed), "{a:?}");
        a.assert_found_as(&a.claimed.to_string());
    }
    let stats = world.stats();
    assert_eq!(stats.get(Counter::TcDecoded), 20);
    assert_eq!(stats.get(Counter::TcJoined), 20, "sockops took each record");
    assert_eq!(stats.get(Counter::Decoded), 20);
    assert_eq!(
        tc_records(),
        0,
        "each socket took its record: the 4-tuple map keeps only handshakes in flight"
    );

    // Closing the sockets removes their records.
    drop(server);
    assert!(
        eventually(Duration::from_secs(10), || world
            .stats()
            .get(Counter::RecordsRemoved)
            == 20),
        "records left after close: {:?}",
        world.stats()
    );
    assert_eq!(tc_records(), 0);
    assert_eq!(
        world.stats().get(Counter::TcExpired),
        0,
        "nothing left to sweep"
    );
}

#[test]
fn sockets_outside_the_cgroup_are_found_by_4_tuple_and_swept_once_closed() {
    let world = World::in_mode("tc", &["--tc-max-age", "1"]);
    // A server outside the cgroup ttm attaches to: no sockops, no rewrite.
    let socket = world.daemon.socket.to_string_lossy().into_owned();
    let server = spawn_in(
        lab_bin(),
        &world.lab.plain_cgroup(),
        lab::RS_NS,
        &[
            "serve",
            "--listen",
            "0.0.0.0:8080",
            "--count",
            "1",
            "--lookup",
            &socket,
        ],
    )
    .expect("spawn server");
    server
        .wait_for(Duration::from_secs(10), |l| l.starts_with("listening"))
        .expect("listening");
    world.connect(&world.lab.client_cgroup(), 1, 0);
    let a = world.accepted(&server, 1).pop().expect("accepted");
    assert_eq!(
        a.peer.ip().to_string(),
        lab::LB_IP,
        "accept() not rewritten"
    );
    assert_eq!(a.lookup["by_fd"], a.claimed.to_string().as_str(), "{a:?}");
    assert_eq!(
        a.lookup["by_tuple"],
        a.claimed.to_string().as_str(),
        "{a:?}"
    );
    assert!(
        a.lookup["by_cookie"].is_null(),
        "sockops never saw it: {a:?}"
    );
    let stats = world.stats();
    assert_eq!(stats.get(Counter::TcDecoded), 1);
    assert_eq!(stats.get(Counter::TcJoined), 0);

    // Held open for several ages: the sweep keeps it (its socket is alive).
    std::thread::sleep(Duration::from_secs(3));
    let (code, out, err) = ttm(&[
        "lookup",
        "--local",
        &a.local.to_string(),
        "--peer",
        &a.peer.to_string(),
        "--socket",
        &socket,
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&a.claimed.to_string()), "{out}");
    assert_eq!(world.stats().get(Counter::TcExpired), 0);

    // Closed: swept within a few ages.
    drop(server);
    assert!(
        eventually(Duration::from_secs(10), || tc_records() == 0),
        "the closed connection's record stayed"
    );
    // The sweep counts what it removed right after removing it.
    assert!(
        eventually(Duration::from_secs(5), || world
            .stats()
            .get(Counter::TcExpired)
            == 1),
        "tc_expired: {}",
        world.stats().get(Counter::TcExpired)
    );
}

#[test]
fn netlink_filters_decode_hand_over_and_go_away() {
    let mut world = World::in_mode("tc", &["--tc-attach", "netlink"]);
    assert_eq!(netlink_filters(), 1);
    assert!(!tcx_pin().exists());
    let server = world.serve(6);
    world.connect(&world.lab.client_cgroup(), 3, 0);

    // An upgrade attaches the new program beside the old, then removes the old.
    let upgraded = TtmDaemon::start_in_mode(
        "tc",
        &[],
        lab::LB_NET,
        &world.lab.rs_cgroup(),
        Path::new(PIN_DIR),
        &["--tc-attach", "netlink", "--upgrade"],
    )
    .expect("upgrade");
    let status = world.daemon.wait_handed_over().expect("old daemon exits");
    assert_eq!(
        status.code(),
        Some(i32::from(ttm::daemon::HANDED_OVER_EXIT))
    );
    world.daemon = upgraded;
    assert_eq!(
        netlink_filters(),
        1,
        "exactly one ttm filter after the upgrade"
    );
    world.connect(&world.lab.client_cgroup(), 3, 0);

    let accepted = world.accepted(&server, 6);
    for (i, a) in accepted.iter().enumerate() {
        world.assert_recorded(a, &format!("connection {i} of 6 (3 before the upgrade)"));
    }
    assert_eq!(world.stats().get(Counter::TcJoined), 6);
    drop(server);

    let World { daemon, lab, .. } = world;
    assert!(daemon.stop().expect("stop").success());
    assert_eq!(netlink_filters(), 0, "SIGTERM removes the filter");
    drop(lab);
}

#[test]
fn auto_reads_headers_in_sockops_and_adds_tc_with_an_interface() {
    // No interface: sockops alone.
    let world = World::in_mode("", &[]);
    assert!(!tcx_pin().exists());
    assert_eq!(netlink_filters(), 0);
    let server = world.serve(2);
    world.connect(&world.lab.client_cgroup(), 2, 0);
    let _ = world.accepted(&server, 2);
    let stats = world.stats();
    assert_eq!(
        (stats.get(Counter::Decoded), stats.get(Counter::TcDecoded)),
        (2, 0),
        "{}",
        stats.to_json()
    );
    drop(server);
    drop(world);

    // With an interface: both, sockops first.
    let world = World::in_mode("auto", &[]);
    assert_tc_attached();
    let server = world.serve(2);
    world.connect(&world.lab.client_cgroup(), 2, 0);
    for a in &world.accepted(&server, 2) {
        world.assert_recorded(a, "both modes");
    }
    let stats = world.stats();
    assert_eq!(stats.get(Counter::Decoded), 2);
    assert_eq!(stats.get(Counter::TcDecoded), 2, "TC recorded them too");
    assert_eq!(
        stats.get(Counter::TcJoined),
        0,
        "sockops found the option itself"
    );
}

#[test]
fn tc_mode_needs_an_interface_and_says_so() {
    let (code, _, err) = ttm(&[
        "daemon",
        "--trust",
        lab::LB_NET,
        "--mode",
        "tc",
        "--pin-dir",
        "/sys/fs/bpf/ttm-test-refused",
        "--socket",
        "/run/ttm/ttm-test-refused.sock",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("needs --interface"), "{err}");
    let (code, _, err) = ttm(&[
        "daemon",
        "--trust",
        lab::LB_NET,
        "--mode",
        "tc",
        "--interface",
        "ttm-nosuch0",
        "--pin-dir",
        "/sys/fs/bpf/ttm-test-refused",
        "--socket",
        "/run/ttm/ttm-test-refused.sock",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("ttm-nosuch0") && err.contains("not found"),
        "{err}"
    );
    assert!(
        !Path::new("/sys/fs/bpf/ttm-test-refused").exists(),
        "nothing left behind"
    );
}
