//! UDP flows at a real server's size: 100,000 flows marked by trusted LBs
//! (two LB addresses, one marking-only datagram each), each found by the
//! lookup service, none evicted, and every one expired after `--udp-idle`
//! with the live count back to 0.

mod common;

use std::time::{Duration, Instant};

use common::{lab_bin, World};
use ttm_common::Counter;
use ttm_lab::lab;
use ttm_lab::uoa_marker::{flood_flow, flood_until_filed};

const FLOWS: u32 = 100_000;
/// Long enough for the debug-build daemon to answer all 100,000 lookups first.
const IDLE_SECS: u64 = 60;

#[test]
fn a_hundred_thousand_udp_flows_are_each_found_none_evicted_and_all_expire() {
    let idle = IDLE_SECS.to_string();
    let world = World::with_daemon_args(
        lab::LB_NET,
        &["--udp-interface", lab::RS_IF, "--udp-idle", &idle],
    );
    let started = Instant::now();
    let (lbs, _) = flood_until_filed(
        &world.lab,
        lab_bin(),
        format!("{}:53", lab::RS_IP).parse().unwrap(),
        FLOWS,
        || Ok(world.stats().get(Counter::UdpDecoded)),
    )
    .expect("the flood");
    let filed = started.elapsed();
    let stats = world.stats();
    assert_eq!(
        stats.get(Counter::UdpDecoded),
        u64::from(FLOWS),
        "{stats:?}"
    );
    assert_eq!(stats.get(Counter::UdpRefused), 0, "{stats:?}");
    assert_eq!(
        stats.get(Counter::UdpExpired),
        0,
        "none expired yet: {stats:?}"
    );
    // Each found, by the lookup service, as an app would ask.
    let mut client = ttm_client::Client::connect(&world.daemon.socket).expect("lookup socket");
    let local = "0.0.0.0:53".parse().unwrap();
    for i in 0..FLOWS {
        let (lb, marked) = flood_flow(&lbs, i);
        let flow = client
            .lookup_udp(local, lb)
            .expect("udp lookup")
            .unwrap_or_else(|| panic!("flow {i} from {lb} not found"));
        assert_eq!(flow.client, marked, "flow {i}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(IDLE_SECS),
        "filing ({filed:?}) and the lookups took longer than the idle time"
    );
    // Idle past --udp-idle: every flow expires.
    let deadline = Instant::now() + Duration::from_secs(IDLE_SECS + 40);
    while world.stats().get(Counter::UdpExpired) < u64::from(FLOWS) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let stats = world.stats();
    assert_eq!(
        stats.get(Counter::UdpExpired),
        u64::from(FLOWS),
        "{stats:?}"
    );
    assert_eq!(
        stats.get(Counter::UdpDecoded) - stats.get(Counter::UdpExpired),
        0,
        "the live count is back to 0"
    );
    // A new connection: the daemon drops a client silent for 30 s.
    let mut client = ttm_client::Client::connect(&world.daemon.socket).expect("lookup socket");
    assert_eq!(
        client
            .lookup_udp(local, flood_flow(&lbs, 0).0)
            .expect("udp lookup"),
        None
    );
}
