//! A real server's scale: many live connections through the full-NAT LB at
//! once, each decoded and found by fd, cookie and both tuples, nothing
//! evicted, and the live count back to exactly 0 once they close.
//! `cargo xtask test` runs it at 10,000 (`TTM_SCALE_CONNECTIONS` changes
//! that); `cargo xtask bench` runs the same at 100,000.

mod common;

use std::time::{Duration, Instant};

use common::{lab_bin, World};
use ttm_common::{maps, Counter};

fn connections() -> usize {
    std::env::var("TTM_SCALE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

#[test]
fn every_one_of_ten_thousand_live_connections_is_found_and_the_count_returns_to_zero() {
    let n = connections();
    let world = World::new();
    let held = ttm_lab::scale::hold(&world.lab, lab_bin(), &world.daemon.socket, n)
        .expect("hold the connections");
    let n64 = n as u64;
    assert_eq!(held.total("accepted"), n64, "{:?}", held.reports);
    assert_eq!(held.total("rewritten"), n64, "accept() returns the client");
    for how in ["by_cookie", "by_fd", "by_client_tuple", "by_kernel_tuple"] {
        assert_eq!(held.total(how), n64, "{how}: {:?}", held.reports);
    }
    let stats = world.stats();
    assert_eq!(stats.get(Counter::Decoded), n64);
    assert_eq!(stats.live_records(), n64);
    assert_eq!(stats.get(Counter::MapInsertFailed), 0);
    assert_eq!(stats.get(Counter::TupleIndexFailed), 0);
    assert_eq!(stats.get(Counter::RecordsEvicted), 0);
    assert_eq!(world.map_entries(maps::RECORDS), n);
    assert_eq!(
        stats.get(Counter::EventsLost),
        0,
        "every record told to the daemon"
    );
    eprintln!(
        "{n} connections set up in {:.1} s ({:.0}/s)",
        held.setup.as_secs_f64(),
        n as f64 / held.setup.as_secs_f64()
    );

    held.release();
    let deadline = Instant::now() + Duration::from_secs(60);
    while world.stats().live_records() != 0 {
        assert!(Instant::now() < deadline, "{:?}", world.stats());
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = world.stats();
    assert_eq!(stats.get(Counter::RecordsRemoved), n64, "{stats:?}");
    assert_eq!(world.map_entries(maps::RECORDS), 0);
}
