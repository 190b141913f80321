//! The LB's option, never the client's: a client behind an LB that keeps
//! client options adds its own option claiming another address to its
//! handshake ACK, and the LB adds the true one before it (LVS, DPVS) or
//! after it (the kind-200 DPDK LBs). For every preset and both positions,
//! the app and every lookup see the true client — or, where the position is
//! unknown, no record at all — never the claimed address.
//!
//! Experimental kinds (253, 254) are paired by the lab's writer, the true
//! option carrying the client's own address. The kernel lets a sender write
//! only one option of any other kind, so for kind 200 and custom kinds the
//! LB's nftables writes both options over a placeholder, the true one
//! naming a fixed client the LB vouches for.

mod common;

use std::net::SocketAddr;

use common::{python_server, report, World};
use ttm_common::Counter;
use ttm_lab::lab;
use ttm_lab::writer::WriterConfig;

const ENOPROTOOPT: i64 = 92;
/// What the client claims to be.
const CLAIMED_V4: [u8; 4] = [203, 0, 113, 9];
const CLAIMED_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xba, 0xd0,
];
const CLAIMED_PORT: u16 = 4444;

/// The client the LB vouches for where its nftables writes the options.
const VOUCHED_V4: [u8; 4] = [10, 0, 1, 77];
const VOUCHED_PORT: u16 = 7777;

/// One case: the daemon's `--format`, the option layout both sides use, and
/// whether the LB writes its option after the client's.
struct Case {
    format: &'static str,
    kind: u8,
    len: u8,
    lb_after: bool,
    /// The LB's option is the one ttm must take; false: no record.
    recorded: bool,
}

impl Case {
    /// Experimental kinds are paired by the writer; others by the LB.
    fn by_writer(&self) -> bool {
        self.kind == 253 || self.kind == 254
    }
}

/// The client's claim in the case's layout.
fn claim(case: &Case) -> Vec<u8> {
    let mut o = vec![case.kind, case.len];
    o.extend_from_slice(&CLAIMED_PORT.to_be_bytes());
    if case.len == 20 {
        o.extend_from_slice(&CLAIMED_V6);
    } else {
        o.extend_from_slice(&CLAIMED_V4);
    }
    o
}

/// The 20 bytes the LB writes over the placeholder: both 8-byte options in
/// the case's order, then padding.
fn lb_area(case: &Case) -> [u8; 20] {
    let mut vouched = vec![case.kind, 8];
    vouched.extend_from_slice(&VOUCHED_PORT.to_be_bytes());
    vouched.extend_from_slice(&VOUCHED_V4);
    let (a, b) = if case.lb_after {
        (claim(case), vouched)
    } else {
        (vouched, claim(case))
    };
    let mut area = [1u8; 20];
    area[..8].copy_from_slice(&a);
    area[8..16].copy_from_slice(&b);
    area
}

fn run(case: &Case) {
    let world = World::with_daemon_args(lab::LB_NET, &["--format", case.format]);
    if case.by_writer() {
        // Two 20-byte options leave no room for timestamps in a 40-byte option area.
        lab::in_ns(
            lab::CLIENT_NS,
            &["sysctl", "-qw", "net.ipv4.tcp_timestamps=0"],
        )
        .expect("timestamps off");
        let writer = WriterConfig::pair(&claim(case), case.kind, case.len, case.lb_after)
            .expect("a valid pair");
        world.lab.set_writer(writer).expect("configure the writer");
    } else {
        assert_eq!(case.len, 8, "the LB's area holds two 8-byte options");
        world
            .lab
            .send_handshake_option_area(Some(lb_area(case)))
            .expect("the LB writes both options");
    }
    let what = format!(
        "--format {} with the LB's option {} the client's",
        case.format,
        if case.lb_after { "after" } else { "before" }
    );

    // An unmodified app: accept(), getpeername(), getsockopt(SOL_IP, 1345).
    let server = python_server(&world, "0.0.0.0", 1, &[]);
    let clients = world.connect(&world.lab.client_cgroup(), 1, 0);
    let r = report(&server);
    let truth = if case.by_writer() {
        clients[0].to_string()
    } else {
        SocketAddr::from((VOUCHED_V4, VOUCHED_PORT)).to_string()
    };
    if case.recorded {
        assert_eq!(r["accept"], truth.as_str(), "{what}: {r}");
        assert_eq!(r["getpeername"], truth.as_str(), "{what}: {r}");
        assert_eq!(r["sockopt"]["client"], truth.as_str(), "{what}: {r}");
    } else {
        let peer = r["getpeername"].as_str().expect("peer");
        assert!(peer.starts_with(&format!("{}:", lab::LB_IP)), "{what}: {r}");
        assert_eq!(r["sockopt"]["errno"], ENOPROTOOPT, "{what}: {r}");
    }
    let text = r.to_string();
    assert!(
        !text.contains("203.0.113.9") && !text.contains("2001:db8::bad0"),
        "{what}: the claimed address reached the app: {r}"
    );

    // Every lookup, while the connection lives.
    let looking = world.serve_looking_up(1);
    world.connect(&world.lab.client_cgroup(), 1, 0);
    let a = &world.accepted(&looking, 1)[0];
    let truth = if case.by_writer() {
        a.claimed.to_string()
    } else {
        truth
    };
    for how in ["by_fd", "by_cookie", "by_tuple"] {
        if case.recorded {
            assert_eq!(a.lookup[how], truth.as_str(), "{what}: {how}: {a:?}");
        } else {
            assert!(a.lookup[how].is_null(), "{what}: {how}: {a:?}");
        }
    }
    let stats = world.stats();
    assert_eq!(stats.get(Counter::RepeatedOption), 2, "{what}: {stats:?}");
    let expected_conflicts = if case.recorded { 0 } else { 2 };
    assert_eq!(
        stats.get(Counter::ConflictingOptions),
        expected_conflicts,
        "{what}: {stats:?}"
    );
    assert_eq!(
        stats.get(Counter::Decoded),
        if case.recorded { 2 } else { 0 },
        "{what}: {stats:?}"
    );
}

#[test]
fn toa_believes_the_option_the_lb_writes_first_ipv4() {
    run(&Case {
        format: "toa",
        kind: 254,
        len: 8,
        lb_after: false,
        recorded: true,
    });
}

#[test]
fn toa_believes_the_option_the_lb_writes_first_ipv6_layout() {
    run(&Case {
        format: "toa",
        kind: 254,
        len: 20,
        lb_after: false,
        recorded: true,
    });
}

#[test]
fn kind253_believes_the_option_the_lb_writes_first() {
    run(&Case {
        format: "kind253",
        kind: 253,
        len: 20,
        lb_after: false,
        recorded: true,
    });
}

#[test]
fn kind200_believes_the_option_the_lb_appends() {
    run(&Case {
        format: "kind200",
        kind: 200,
        len: 8,
        lb_after: true,
        recorded: true,
    });
}

#[test]
fn a_custom_layout_written_first_or_last_believes_that_position() {
    for (format, lb_after) in [
        ("custom:230/8/v4/first", false),
        ("custom:230/8/v4/last", true),
    ] {
        run(&Case {
            format,
            kind: 230,
            len: 8,
            lb_after,
            recorded: true,
        });
    }
}

#[test]
fn with_the_position_unknown_two_claims_give_no_record_whichever_comes_first() {
    for lb_after in [false, true] {
        run(&Case {
            format: "custom:230/8/v4",
            kind: 230,
            len: 8,
            lb_after,
            recorded: false,
        });
    }
}
