//! Connections never depend on the daemon being up: after a crash the
//! kernel side keeps decoding and answering, a new daemon adopts what is
//! pinned, `--upgrade` swaps programs without a gap, `ttm detach` cleans up.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    attached_programs, daemon_pins, python_server, report, sockops_program, steady_load, ttm,
    ttm_programs_loaded, World, PIN_DIR,
};
use ttm_common::Counter;
use ttm_lab::lab;
use ttm_lab::TtmDaemon;

#[test]
fn after_a_crash_the_kernel_keeps_decoding_and_a_new_daemon_adopts_it() {
    let mut world = World::new();
    world.daemon.crash_in_place();

    // Daemon down: an unmodified app still sees the client.
    let server = python_server(&world, "0.0.0.0", 1, &[]);
    let clients = world.connect(&world.lab.client_cgroup(), 1, 0);
    let r = report(&server);
    assert_eq!(r["accept"], clients[0].to_string().as_str(), "{r}");
    assert_eq!(
        r["sockopt"]["client"],
        clients[0].to_string().as_str(),
        "{r}"
    );
    drop(server);

    // A connection made during the downtime, held open.
    let server = world.serve(1);
    world.connect(&world.lab.client_cgroup(), 1, 0);
    let a = world.accepted(&server, 1).pop().expect("accepted");
    let (code, out, _) = ttm(&[
        "lookup",
        "--cookie",
        &a.cookie.to_string(),
        "--pin-dir",
        PIN_DIR,
        "--json",
    ]);
    assert_eq!(
        code, 0,
        "the pinned map answers while the daemon is down: {out}"
    );
    assert_eq!(world.stats().get(Counter::Decoded), 2);

    // A new daemon takes over the pinned links and maps...
    world.restart_daemon(&[]);
    assert_eq!(
        ttm_programs_loaded(),
        attached_programs().len(),
        "one copy of each program, the new ones"
    );
    // ...and answers for the connection made while it was down.
    let mut client = ttm_client::Client::connect(&world.daemon.socket).expect("client");
    let found = client
        .lookup_cookie(a.cookie)
        .expect("lookup")
        .expect("record from the downtime");
    assert_eq!(found.client, a.claimed);
    // Counters carried over.
    assert_eq!(world.stats().get(Counter::Decoded), 2);
}

#[test]
fn an_upgrade_swaps_programs_without_losing_a_connection() {
    const ROUNDS: usize = 30;
    const PER_ROUND: usize = 5;
    let mut world = World::new();
    let server = world.serve(ROUNDS * PER_ROUND);
    // Connections keep coming while the upgrade happens.
    let traffic = steady_load(&world, ROUNDS, PER_ROUND);
    std::thread::sleep(Duration::from_millis(200));
    let old_programs: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(sockops_program()))
        .map(|p| p.id())
        .collect();
    let upgraded = TtmDaemon::start(
        lab::LB_NET,
        &world.lab.rs_cgroup(),
        Path::new(PIN_DIR),
        &["--upgrade"],
    )
    .expect("upgrade");
    let status = world.daemon.wait_handed_over().expect("old daemon exits");
    assert_eq!(
        status.code(),
        Some(i32::from(ttm::daemon::HANDED_OVER_EXIT)),
        "the old daemon hands over: {status}"
    );
    world.daemon = upgraded;
    traffic.join().expect("traffic");

    let accepted = world.accepted(&server, ROUNDS * PER_ROUND);
    let records = world.records();
    for a in &accepted {
        let r = records.by_cookie(a.cookie).expect("records");
        assert_eq!(r.map(|r| r.client), Some(a.claimed), "{a:?}");
    }
    let stats = world.stats();
    assert_eq!(
        stats.get(Counter::ConnectionsSeen),
        (ROUNDS * PER_ROUND) as u64
    );
    assert_eq!(stats.get(Counter::Decoded), (ROUNDS * PER_ROUND) as u64);
    // The old programs are gone, the new ones attached.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| p.name_as_str() == Some(sockops_program()))
            .map(|p| p.id())
            .collect();
        if now.len() == 1 && !old_programs.contains(&now[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old {old_programs:?}, now {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_network_dropped_from_trust_is_untrusted_after_the_upgrade() {
    let mut world = World::trusting(&format!("{},192.0.2.0/24", lab::LB_NET));
    let server = world.serve(2);
    world.connect(&world.lab.client_cgroup(), 1, 0);
    // The new settings no longer trust the LB's network.
    let upgraded = TtmDaemon::start(
        "192.0.2.0/24",
        &world.lab.rs_cgroup(),
        Path::new(PIN_DIR),
        &["--upgrade"],
    )
    .expect("upgrade");
    world.daemon.wait_handed_over().expect("old daemon exits");
    world.daemon = upgraded;
    world.connect(&world.lab.client_cgroup(), 1, 0);
    let accepted = world.accepted(&server, 2);
    let records = world.records();
    let before = records.by_cookie(accepted[0].cookie).expect("records");
    assert_eq!(before.map(|r| r.client), Some(accepted[0].claimed));
    let after = records.by_cookie(accepted[1].cookie).expect("records");
    assert!(after.is_none(), "the LB is no longer trusted: {after:?}");
    assert_eq!(accepted[1].peer.ip().to_string(), lab::LB_IP);
    let stats = world.stats();
    assert_eq!(stats.get(Counter::Decoded), 1);
    assert_eq!(stats.get(Counter::Untrusted), 1);
}

#[test]
fn ttm_detach_removes_what_a_crashed_daemon_left() {
    let mut world = World::new();
    let (code, _, err) = ttm(&["detach", "--pin-dir", PIN_DIR]);
    assert_eq!(code, 2, "refuses while a daemon runs");
    assert!(err.contains("stop it with SIGTERM"), "{err}");

    world.daemon.crash_in_place();
    assert!(
        ttm_programs_loaded() > 0,
        "the crash left the programs attached"
    );
    let (code, out, err) = ttm(&["detach", "--pin-dir", PIN_DIR]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("removed {} pin(s)", daemon_pins())),
        "{out}"
    );
    assert!(!Path::new(PIN_DIR).exists());
    let deadline = Instant::now() + Duration::from_secs(5);
    while ttm_programs_loaded() != 0 {
        assert!(
            Instant::now() < deadline,
            "programs still loaded after detach"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing is decoded or rewritten any more.
    let server = world.serve(1);
    world.connect(&world.lab.client_cgroup(), 1, 0);
    let a = world.accepted(&server, 1).pop().expect("accepted");
    assert_eq!(a.peer.ip().to_string(), lab::LB_IP);
    // The crashed daemon's socket file (a next daemon would replace it).
    let _ = std::fs::remove_file(&world.daemon.socket);
}
