//! Options nobody should trust: forged by a client that bypasses the LB,
//! repeated on later segments, sent only in the SYN, malformed, or claiming
//! addresses no client can have. Each is sent through the lab and its
//! counter asserted; the app must never see an address the LB did not vouch for.

mod common;

use std::net::SocketAddr;

use common::{python_server, report, World};
use ttm::stats::Stats;
use ttm_common::{addr::v4_mapped, Counter};
use ttm_lab::lab;
use ttm_lab::writer::WriterConfig;

const ENOPROTOOPT: i64 = 92;
/// The address a hostile client claims.
const FORGED: [u8; 4] = [203, 0, 113, 9];
const FORGED_PORT: u16 = 4444;

fn toa4(port: u16, ip: [u8; 4]) -> [u8; 8] {
    let p = port.to_be_bytes();
    [254, 8, p[0], p[1], ip[0], ip[1], ip[2], ip[3]]
}

fn delta(before: &Stats, after: &Stats, counter: Counter) -> u64 {
    after.get(counter) - before.get(counter)
}

#[test]
fn a_forged_option_from_a_client_bypassing_the_lb_is_ignored() {
    let world = World::new();
    let forged = WriterConfig::raw(&toa4(FORGED_PORT, FORGED)).expect("writer");
    world.lab.set_writer(forged).expect("configure the writer");
    let server = python_server(&world, "0.0.0.0", 1, &[]);
    let sightings = world
        .lab
        .option_sightings(toa4(FORGED_PORT, FORGED))
        .expect("counter");
    assert_eq!(sightings, 0);
    // Straight to the real server: routed through the LB netns but not NATed,
    // so the real server sees the client itself as peer — outside --trust.
    let clients = world.connect_to(
        &world.lab.client_cgroup(),
        &format!("{}:8080", lab::RS_IP),
        1,
        0,
    );
    let r = report(&server);
    let truth = clients[0].to_string();
    assert_eq!(
        r["accept"],
        truth.as_str(),
        "the app sees the true address: {r}"
    );
    assert_eq!(r["getpeername"], truth.as_str(), "{r}");
    assert_eq!(r["sockopt"]["errno"], ENOPROTOOPT, "no record: {r}");
    assert_eq!(
        world
            .lab
            .option_sightings(toa4(FORGED_PORT, FORGED))
            .expect("counter"),
        1,
        "the forged option did reach the real server"
    );
    let stats = world.stats();
    assert_eq!(stats.get(Counter::Untrusted), 1);
    assert_eq!(stats.get(Counter::Decoded), 0);
}

#[test]
fn a_record_is_never_overwritten_by_options_on_later_segments() {
    let world = World::new();
    // The LB vouches for the handshake; the client then sends its own option
    // on every data segment.
    let writer = WriterConfig::TOA_V4
        .then_on_every_segment(&toa4(FORGED_PORT, FORGED))
        .expect("writer");
    world.lab.set_writer(writer).expect("configure the writer");
    world
        .lab
        .option_sightings(toa4(FORGED_PORT, FORGED))
        .expect("counter");
    let server = world.serve(1);
    world.connect(&world.lab.client_cgroup(), 1, 256 * 1024);
    let a = world.accepted(&server, 1).pop().expect("accepted");
    let record = world
        .records()
        .by_cookie(a.cookie)
        .expect("records")
        .expect("a record");
    assert_eq!(record.client, a.claimed, "the handshake's client stands");
    assert_eq!(
        a.peer, a.claimed,
        "accept() returned the handshake's client"
    );
    let forged_segments = world
        .lab
        .option_sightings(toa4(FORGED_PORT, FORGED))
        .expect("counter");
    assert!(
        forged_segments > 5,
        "data segments carried the forged option ({forged_segments})"
    );
    // Asked again after the data: still the handshake's client.
    let mut client = ttm_client::Client::connect(&world.daemon.socket).expect("client");
    let again = client
        .lookup_cookie(a.cookie)
        .expect("lookup")
        .expect("record");
    assert_eq!(again.client, a.claimed);
    assert_eq!(world.stats().get(Counter::Decoded), 1);
}

#[test]
fn an_option_only_in_the_syn_is_not_trusted() {
    let world = World::new();
    let writer = WriterConfig::raw(&toa4(FORGED_PORT, FORGED))
        .expect("writer")
        .on_syn_only();
    world.lab.set_writer(writer).expect("configure the writer");
    world
        .lab
        .option_sightings(toa4(FORGED_PORT, FORGED))
        .expect("counter");
    let server = world.serve(1);
    world.connect(&world.lab.client_cgroup(), 1, 0);
    let a = world.accepted(&server, 1).pop().expect("accepted");
    assert_eq!(world.records().by_cookie(a.cookie).expect("records"), None);
    assert_eq!(a.peer.ip().to_string(), lab::LB_IP);
    assert_eq!(
        world
            .lab
            .option_sightings(toa4(FORGED_PORT, FORGED))
            .expect("counter"),
        1,
        "the SYN carried the option"
    );
    let stats = world.stats();
    assert_eq!(stats.get(Counter::NoOption), 1);
    assert_eq!(stats.get(Counter::Decoded), 0);
}

/// The last 20 bytes of the handshake ACK's option area, as sent, and what
/// ttm must conclude.
struct Shape {
    name: &'static str,
    bytes: [u8; 20],
    counter: Counter,
    /// The client the record must hold, if one is made.
    client: Option<SocketAddr>,
}

/// Linux 6.7+ (with TCP-AO) drops a segment whose options hold a length of
/// 0 or 1 before any BPF program sees it (drop reason TCP_AUTH_HDR); the
/// handshake then completes on the client's next segment, which carries no
/// option. Older kernels hand it to ttm, which counts it as too short. True
/// when this kernel dropped it: no option, and nothing counted as too short.
fn kernel_dropped(shape: &Shape, before: &Stats, after: &Stats) -> bool {
    matches!(shape.counter, Counter::MalformedLengthTooShort)
        && delta(before, after, Counter::MalformedLengthTooShort) == 0
        && delta(before, after, Counter::NoOption) == 1
}

fn area(parts: &[&[u8]]) -> [u8; 20] {
    let mut out = [1u8; 20]; // NOP padding
    let mut at = 0;
    for p in parts {
        out[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    assert!(at <= 20);
    out
}

fn shapes() -> Vec<Shape> {
    let good = toa4(7001, [198, 51, 100, 7]);
    let other = toa4(7002, [198, 51, 100, 8]);
    let mut v6_unspecified = vec![254, 20, 0x1b, 0x59];
    v6_unspecified.extend_from_slice(&[0; 16]);
    let mut v6_mapped = vec![254, 20, 0x1b, 0x5a];
    v6_mapped.extend_from_slice(&v4_mapped([198, 51, 100, 9]));
    let client = |s: &str| Some(s.parse().expect("addr"));
    vec![
        // Where ttm sees it, counted as too short; Linux 6.7+ (with TCP-AO)
        // drops the segment first: see `kernel_dropped`.
        Shape {
            name: "length 0",
            bytes: area(&[&[254, 0]]),
            counter: Counter::MalformedLengthTooShort,
            client: None,
        },
        Shape {
            name: "length 1",
            bytes: area(&[&[254, 1]]),
            counter: Counter::MalformedLengthTooShort,
            client: None,
        },
        Shape {
            name: "length past the header",
            bytes: area(&[&[1; 16], &[254, 8, 0, 0]]),
            counter: Counter::MalformedPastEnd,
            client: None,
        },
        Shape {
            name: "truncated: a kind without its length",
            bytes: area(&[&[1; 19], &[254]]),
            counter: Counter::MalformedTruncated,
            client: None,
        },
        Shape {
            name: "wrong length for the kind",
            bytes: area(&[&[254, 12, 0x1b, 0x59, 198, 51, 100, 7, 0, 0, 0, 0]]),
            counter: Counter::MalformedUnexpectedLength,
            client: None,
        },
        Shape {
            name: "broken framing after a valid option",
            bytes: area(&[&good, &[99, 30]]),
            counter: Counter::MalformedPastEnd,
            client: None,
        },
        Shape {
            name: "unknown kinds around a valid option",
            bytes: area(&[&[99, 4, 0xaa, 0xbb], &good, &[98, 4, 0xcc, 0xdd]]),
            counter: Counter::Decoded,
            client: client("198.51.100.7:7001"),
        },
        Shape {
            name: "EOL before the option",
            bytes: area(&[&[0, 1, 1, 1], &good]),
            counter: Counter::NoOption,
            client: None,
        },
        Shape {
            name: "two TOA options: the first wins",
            bytes: area(&[&good, &other]),
            counter: Counter::RepeatedOption,
            client: client("198.51.100.7:7001"),
        },
        Shape {
            name: "loopback client",
            bytes: area(&[&toa4(7003, [127, 0, 0, 1])]),
            counter: Counter::ImplausibleClient,
            client: None,
        },
        Shape {
            name: "unspecified client",
            bytes: area(&[&toa4(7004, [0, 0, 0, 0])]),
            counter: Counter::ImplausibleClient,
            client: None,
        },
        Shape {
            name: "multicast client",
            bytes: area(&[&toa4(7005, [224, 0, 0, 1])]),
            counter: Counter::ImplausibleClient,
            client: None,
        },
        Shape {
            name: "broadcast client",
            bytes: area(&[&toa4(7006, [255, 255, 255, 255])]),
            counter: Counter::ImplausibleClient,
            client: None,
        },
        Shape {
            name: "unspecified IPv6 client",
            bytes: area(&[&v6_unspecified]),
            counter: Counter::ImplausibleClient,
            client: None,
        },
        Shape {
            name: "IPv4-mapped address in an IPv6 option",
            bytes: area(&[&v6_mapped]),
            counter: Counter::Decoded,
            client: client("198.51.100.9:7002"),
        },
    ]
}

#[test]
fn every_hostile_shape_from_a_trusted_lb_is_rejected_or_decoded_by_policy() {
    let world = World::new();
    let shapes = shapes();

    let server = world.serve(shapes.len() + 1);
    for shape in &shapes {
        world
            .lab
            .send_handshake_option_area(Some(shape.bytes))
            .expect("install the mangle rule");
        let before = world.stats();
        world.connect(&world.lab.client_cgroup(), 1, 0);
        let a = world.accepted(&server, 1).pop().expect("accepted");
        let after = world.stats();

        let record = world.records().by_cookie(a.cookie).expect("records");
        assert_eq!(
            delta(&before, &after, Counter::ConnectionsSeen),
            1,
            "{}",
            shape.name
        );
        let counter = if kernel_dropped(shape, &before, &after) {
            Counter::NoOption
        } else {
            shape.counter
        };
        assert_eq!(
            delta(&before, &after, counter),
            1,
            "{}: counter {:?}",
            shape.name,
            counter
        );
        match shape.client {
            Some(client) => {
                assert_eq!(record.map(|r| r.client), Some(client), "{}", shape.name);
                assert_eq!(
                    a.peer, client,
                    "{}: accept() returns the decoded client",
                    shape.name
                );
                assert_eq!(
                    delta(&before, &after, Counter::Decoded),
                    1,
                    "{}",
                    shape.name
                );
            }
            None => {
                assert_eq!(record, None, "{}: no record", shape.name);
                assert_eq!(
                    a.peer.ip().to_string(),
                    lab::LB_IP,
                    "{}: accept() untouched",
                    shape.name
                );
                assert_eq!(
                    delta(&before, &after, Counter::Decoded),
                    0,
                    "{}",
                    shape.name
                );
            }
        }
    }
    // Without the mangle rule the placeholder itself (kind 253) is just an
    // unconfigured option: the connection works, nothing is decoded.
    world
        .lab
        .send_handshake_option_area(None)
        .expect("remove the rule");
    let before = world.stats();
    world.connect(&world.lab.client_cgroup(), 1, 0);
    let a = world.accepted(&server, 1).pop().expect("accepted");
    assert_eq!(world.records().by_cookie(a.cookie).expect("records"), None);
    assert_eq!(delta(&before, &world.stats(), Counter::NoOption), 1);
}
