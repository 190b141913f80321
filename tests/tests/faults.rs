//! Bad days in the lab, each asserting that no connection failed and no
//! record went missing: a daemon killed under load, a full map, bpffs
//! missing, the cgroup removed under the daemon, new settings applied.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{steady_load, World, PIN_DIR};
use ttm_common::Counter;
use ttm_lab::daemon::ttm_bin;
use ttm_lab::lab;
use ttm_lab::TtmDaemon;

/// Every accepted connection has its own client's record.
fn assert_all_recorded(world: &World, accepted: &[common::Accepted]) {
    let records = world.records();
    for a in accepted {
        let r = records.by_cookie(a.cookie).expect("records");
        assert_eq!(
            r.map(|r| r.client),
            Some(a.claimed),
            "missing record for {a:?}"
        );
    }
}

#[test]
fn kill_9_under_load_then_restart_loses_nothing() {
    const ROUNDS: usize = 30;
    const PER_ROUND: usize = 5;
    let mut world = World::new();
    let server = world.serve(ROUNDS * PER_ROUND);
    let load = steady_load(&world, ROUNDS, PER_ROUND);
    std::thread::sleep(Duration::from_millis(150));
    world.daemon.crash_in_place();
    std::thread::sleep(Duration::from_millis(300));
    world.restart_daemon(&[]);
    load.join().expect("no connection failed");
    let accepted = world.accepted(&server, ROUNDS * PER_ROUND);
    assert_all_recorded(&world, &accepted);
    let stats = world.stats();
    assert_eq!(stats.get(Counter::Decoded), (ROUNDS * PER_ROUND) as u64);
    assert_eq!(
        stats.get(Counter::ConnectionsSeen),
        (ROUNDS * PER_ROUND) as u64
    );
}

#[test]
fn a_full_map_refuses_new_records_counted_keeps_the_old_and_traffic_is_unaffected() {
    const CONNECTIONS: usize = 40;
    const CAPACITY: usize = 8;
    let world = World::with_daemon_args(lab::LB_NET, &["--max-records", "8"]);
    let mut server = world.serve_looking_up(CONNECTIONS);
    world.connect(&world.lab.client_cgroup(), CONNECTIONS, 0);
    let accepted = world.accepted(&server, CONNECTIONS);
    let records = world.records();
    let (mut by_cookie, mut rewritten) = (0, 0);
    for a in &accepted {
        match records.by_cookie(a.cookie).expect("records") {
            Some(r) => {
                // A recorded connection: the app sees its client, everywhere.
                assert_eq!(r.client, a.claimed, "{a:?}");
                assert_eq!(a.peer, a.claimed, "accept() returns the client");
                assert_eq!(a.lookup["by_fd"], a.claimed.to_string().as_str(), "{a:?}");
                by_cookie += 1;
            }
            None => {
                // A refused one works as if ttm were not there: the LB.
                assert_ne!(a.peer, a.claimed, "no record, no rewrite: {a:?}");
                assert_ne!(a.lookup["by_fd"], a.claimed.to_string().as_str(), "{a:?}");
            }
        }
        rewritten += usize::from(a.peer == a.claimed);
    }
    assert_eq!(by_cookie, CAPACITY, "the map holds exactly its capacity");
    assert_eq!(
        rewritten, CAPACITY,
        "only recorded connections are rewritten"
    );
    let stats = world.stats();
    assert_eq!(stats.get(Counter::Decoded), CONNECTIONS as u64);
    assert_eq!(stats.get(Counter::RecordsStored), CAPACITY as u64);
    assert_eq!(
        stats.get(Counter::MapInsertFailed),
        (CONNECTIONS - CAPACITY) as u64,
        "each refused record is counted"
    );
    assert_eq!(stats.live_records(), CAPACITY as u64);
    // Closing every connection removes exactly the stored records; nothing
    // was evicted.
    server.close_stdin();
    let _ = server.wait(Duration::from_secs(10));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats = world.stats();
        if stats.get(Counter::RecordsRemoved) == CAPACITY as u64 {
            assert_eq!(stats.live_records(), 0);
            assert_eq!(stats.get(Counter::RecordsEvicted), 0, "{stats:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{stats:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bpffs_missing_is_refused_clearly_and_traffic_flows() {
    let world = World::new();
    let out = Command::new(ttm_bin().expect("ttm"))
        .args([
            "daemon",
            "--trust",
            lab::LB_NET,
            "--pin-dir",
            "/tmp/ttm-not-bpffs",
            "--socket",
            "/run/ttm/ttm-not-bpffs.sock",
        ])
        .output()
        .expect("run ttm");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not on a bpf filesystem"), "{err}");
    assert!(err.contains("mount -t bpf"), "{err}");
    assert!(!Path::new("/tmp/ttm-not-bpffs").exists());
    // The running daemon is untouched.
    let server = world.serve(3);
    world.connect(&world.lab.client_cgroup(), 3, 0);
    assert_all_recorded(&world, &world.accepted(&server, 3));
}

#[test]
fn the_cgroup_removed_under_a_running_daemon() {
    let world = World::new();
    let doomed = world
        .lab
        .rs_cgroup()
        .parent()
        .expect("lab cgroups")
        .join("doomed");
    std::fs::create_dir_all(&doomed).expect("create cgroup");
    let daemon = TtmDaemon::start(
        lab::LB_NET,
        &doomed,
        Path::new("/sys/fs/bpf/ttm-doomed"),
        &[],
    )
    .expect("daemon on the doomed cgroup");
    std::fs::remove_dir(&doomed).expect("remove the cgroup under the daemon");
    // Its service still answers; the other daemon's traffic is untouched.
    let mut client = ttm_client::Client::connect(&daemon.socket).expect("client");
    client.stats().expect("stats after the cgroup is gone");
    let server = world.serve(2);
    world.connect(&world.lab.client_cgroup(), 2, 0);
    assert_all_recorded(&world, &world.accepted(&server, 2));
    let status = daemon.stop().expect("stop");
    assert!(status.success(), "clean exit: {status}");
    assert!(
        !Path::new("/sys/fs/bpf/ttm-doomed").exists(),
        "pins removed"
    );
}

#[test]
fn new_settings_applied_by_hand_over_keep_every_record() {
    let mut world = World::new();
    let server = world.serve(2);
    world.connect(&world.lab.client_cgroup(), 1, 0);
    let before = world.accepted(&server, 1);
    assert_eq!(before[0].peer, before[0].claimed, "rewrite on at first");
    // New settings: no rewrite, kind 200 as well.
    let upgraded = TtmDaemon::start(
        lab::LB_NET,
        &world.lab.rs_cgroup(),
        Path::new(PIN_DIR),
        &[
            "--upgrade",
            "--no-rewrite",
            "--format",
            "toa",
            "--format",
            "kind200",
        ],
    )
    .expect("daemon with new settings");
    world.daemon.wait_handed_over().expect("old daemon exits");
    world.daemon = upgraded;
    world.connect(&world.lab.client_cgroup(), 1, 0);
    let after = world.accepted(&server, 1);
    assert_eq!(
        after[0].peer.ip().to_string(),
        lab::LB_IP,
        "rewrite now off"
    );
    // Both connections, before and after, have their records.
    assert_all_recorded(&world, &before);
    assert_all_recorded(&world, &after);
    assert_eq!(
        world.stats().get(Counter::Decoded),
        2,
        "counters carried over"
    );
}
