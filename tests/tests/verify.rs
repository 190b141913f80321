//! `ttm verify`: ttm's own programs are recognised, a foreign program that
//! rewrites peers is flagged with where it is attached and who holds it.

mod common;

use std::process::Command;

use common::{python_server, report, World, PIN_DIR};
use ttm_lab::daemon::ttm_bin;
use ttm_lab::hijacker::{Harmless, Hijacker};

fn verify() -> (i32, serde_json::Value) {
    let out = Command::new(ttm_bin().expect("ttm"))
        .args(["verify", "--json", "--pin-dir", PIN_DIR])
        .output()
        .expect("ttm verify");
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), v)
}

/// The programs attached to `cgroup` (exact path), from a report.
fn at(v: &serde_json::Value, cgroup: &str) -> Vec<serde_json::Value> {
    v["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .filter(|p| {
            p["attach_point"]
                .as_str()
                .and_then(|a| a.strip_prefix(&format!("cgroup {cgroup} ")))
                .is_some()
        })
        .cloned()
        .collect()
}

#[test]
fn ttm_is_recognised_and_a_foreign_peer_rewriter_is_flagged() {
    let world = World::with_daemon_args(ttm_lab::lab::LB_NET, &["--witness"]);
    let rs = world.lab.rs_cgroup().to_string_lossy().into_owned();
    // The lab's writer writes TCP header options on the client's
    // connections, as a forger would: flagged, with the helper named.
    let (code, v) = verify();
    assert_eq!(code, 1, "{v}");
    let client = world.lab.client_cgroup().to_string_lossy().into_owned();
    let writer = at(&v, &client);
    assert_eq!(writer.len(), 1, "{writer:?}");
    assert_eq!(writer[0]["ttm"], false);
    assert_eq!(writer[0]["power"], "rewrites_peer");
    assert_eq!(writer[0]["affects"], serde_json::json!(["remote_peers"]));
    assert!(
        writer[0]["evidence"][0]["what"]
            .as_str()
            .unwrap()
            .contains("bpf_sock_ops_store_hdr_opt"),
        "{writer:?}"
    );
    world.lab.detach_writer().expect("detach the writer");
    let (code, v) = verify();
    assert_eq!(code, 0, "only ttm attached: clean: {v}");
    let ours = at(&v, &rs);
    let hooks: Vec<&str> = ours
        .iter()
        .map(|p| {
            p["attach_point"]
                .as_str()
                .unwrap()
                .rsplit(' ')
                .next()
                .unwrap()
        })
        .collect();
    // sock_ops, getsockopt, and per family the rewrite and its witness.
    assert_eq!(ours.len(), 6, "{ours:?}");
    for (hook, n) in [
        ("sock_ops", 1),
        ("getsockopt", 1),
        ("getpeername4", 2),
        ("getpeername6", 2),
    ] {
        assert_eq!(
            hooks.iter().filter(|h| **h == hook).count(),
            n,
            "{hook}: {hooks:?}"
        );
    }
    assert!(ours.iter().all(|p| p["ttm"] == true), "{ours:?}");
    // ttm's own programs are analysed too: the rewrite stores the client.
    let rewrite = ours
        .iter()
        .find(|p| {
            p["name"] == "ttm_getpeername"
                && p["attach_point"]
                    .as_str()
                    .unwrap()
                    .ends_with("getpeername4")
        })
        .expect("the rewrite");
    assert_eq!(rewrite["power"], "rewrites_peer", "{rewrite}");
    assert_eq!(rewrite["affects"], serde_json::json!(["apps_on_this_host"]));

    // A harmless foreign program is listed, not flagged.
    let harmless = Harmless::attach(&world.lab.rs_cgroup()).expect("attach the harmless program");
    let (code, v) = verify();
    let listed: Vec<_> = at(&v, &rs)
        .into_iter()
        .filter(|p| p["ttm"] == false)
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        listed[0]["attach_point"],
        format!("cgroup {rs} sock_create").as_str()
    );
    assert_eq!(listed[0]["power"], "observes");
    assert_eq!(v["threats"], 0, "{v}");
    assert_eq!(code, 0);
    drop(harmless);

    let hijacker = Hijacker::attach(&world.lab.rs_cgroup()).expect("attach the hijacker");
    // The daemon moves its witness behind the newcomer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, v) = verify();
        let chain: Vec<String> = at(&v, &rs)
            .iter()
            .filter(|p| {
                p["attach_point"]
                    .as_str()
                    .unwrap()
                    .ends_with(" getpeername4")
            })
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        if chain.last().map(String::as_str) == Some("ttm_witness4") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "witness not moved last: {chain:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // It works: an unmodified app now sees 127.0.0.1...
    let server = python_server(&world, "0.0.0.0", 1, &[]);
    world.connect(&world.lab.client_cgroup(), 1, 0);
    let r = report(&server);
    assert!(
        r["getpeername"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{r}"
    );
    // ...and verify says so.
    let (code, v) = verify();
    assert_eq!(code, 1, "findings exit 1");
    let flagged: Vec<_> = at(&v, &rs)
        .into_iter()
        .filter(|p| p["ttm"] == false)
        .collect();
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    let h = &flagged[0];
    assert_eq!(
        h["attach_point"],
        format!("cgroup {rs} getpeername4").as_str()
    );
    assert_eq!(h["power"], "rewrites_peer");
    assert_eq!(h["name"], "hijack_getpeern");
    let me = std::process::id().to_string();
    assert!(
        h["held_by"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x.as_str().unwrap().starts_with(&me)),
        "held by this test process: {h}"
    );
    drop(hijacker);
    let (_, v) = verify();
    assert!(
        at(&v, &rs).iter().all(|p| p["ttm"] == true),
        "gone after detach"
    );
}

fn verify_pid(pid: u32) -> (i32, Vec<serde_json::Value>) {
    let out = Command::new(ttm_bin().expect("ttm"))
        .args([
            "verify",
            "--json",
            "--pin-dir",
            PIN_DIR,
            "--pid",
            &pid.to_string(),
        ])
        .output()
        .expect("ttm verify --pid");
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn a_process_audit_gives_each_socket_its_verdict() {
    let world = World::new();
    let server = world.serve(2);
    world.connect(&world.lab.client_cgroup(), 1, 0);
    world.connect(&world.lab.plain_cgroup(), 1, 0);
    let accepted = world.accepted(&server, 2);
    let (code, sockets) = verify_pid(server.id());
    assert_eq!(code, 0, "{sockets:?}");
    assert_eq!(sockets.len(), 2, "{sockets:?}");
    for a in &accepted {
        let s = sockets
            .iter()
            .find(|s| s["cookie"] == a.cookie)
            .unwrap_or_else(|| panic!("socket {a:?} in {sockets:?}"));
        let lb = s["kernel_peer"].as_str().unwrap();
        assert!(lb.starts_with(ttm_lab::lab::LB_IP), "{s}");
        if a.peer == a.claimed {
            assert_eq!(s["verdict"], "ttm-client", "{s}");
            assert_eq!(s["app_peer"], a.claimed.to_string().as_str());
        } else {
            assert_eq!(s["verdict"], "kernel", "{s}");
            assert_eq!(s["app_peer"], lb);
        }
    }
    let _hijacker = Hijacker::attach(&world.lab.rs_cgroup()).expect("attach the hijacker");
    let (code, sockets) = verify_pid(server.id());
    assert_eq!(code, 1, "{sockets:?}");
    assert!(
        sockets.iter().all(|s| s["verdict"] == "HIJACKED"),
        "{sockets:?}"
    );
    assert!(sockets.iter().all(|s| s["app_peer"] == "127.0.0.1:65535"));
}

/// A child cgroup of the real server's, removed (processes killed) on drop.
struct ChildCgroup(std::path::PathBuf);

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[test]
fn the_witness_catches_a_foreign_rewrite_that_runs_before_ttm() {
    let world = World::with_daemon_args(ttm_lab::lab::LB_NET, &["--witness"]);
    let child = ChildCgroup(world.lab.rs_cgroup().join("witness-child"));
    std::fs::create_dir_all(&child.0).expect("child cgroup");
    // Programs on a child cgroup run before the parent's (ttm's).
    let _hijacker = Hijacker::attach(&child.0).expect("attach the hijacker");
    let socket = world.daemon.socket.to_string_lossy().into_owned();
    let server = ttm_lab::process::spawn_in(
        common::lab_bin(),
        &child.0,
        ttm_lab::lab::RS_NS,
        &[
            "serve",
            "--listen",
            "0.0.0.0:8080",
            "--count",
            "2",
            "--lookup",
            &socket,
        ],
    )
    .expect("server in the child cgroup");
    server
        .wait_for(std::time::Duration::from_secs(10), |l| {
            l.starts_with("listening")
        })
        .expect("listening");
    world.connect(&world.lab.client_cgroup(), 1, 0);
    world.connect(&world.lab.plain_cgroup(), 1, 0);
    let accepted = world.accepted(&server, 2);
    // With a record ttm's rewrite runs last and the app sees the client;
    // without one the hijack stands — and the witness saw it.
    let with_record = accepted
        .iter()
        .find(|a| a.peer == a.claimed)
        .expect("decoded one");
    let hijacked = accepted
        .iter()
        .find(|a| a.peer.ip().to_string() == "127.0.0.1")
        .expect("hijacked one");
    let out = Command::new(ttm_bin().expect("ttm"))
        .args(["verify", "--live", "--json", "--pin-dir", PIN_DIR])
        .output()
        .expect("ttm verify --live");
    assert_eq!(out.status.code(), Some(1));
    let caught: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(caught.len(), 1, "{caught:?}");
    assert_eq!(caught[0]["cookie"], hijacked.cookie);
    assert_eq!(caught[0]["returned"], hijacked.peer.to_string().as_str());
    assert!(
        caught[0]["kernel_peer"]
            .as_str()
            .unwrap()
            .starts_with(ttm_lab::lab::LB_IP),
        "{caught:?}"
    );
    assert_eq!(caught[0]["pid"], server.id());
    assert!(caught.iter().all(|c| c["cookie"] != with_record.cookie));
    assert!(world.stats().get(ttm_common::Counter::PeerMismatch) >= 1);
    // The app-side check in the client library agrees.
    let p = &with_record.lookup["provenance"];
    assert_eq!(p["verdict"], "ttm-client", "{p}");
    assert_eq!(p["ttm_client"], with_record.claimed.to_string().as_str());
    let p = &hijacked.lookup["provenance"];
    assert_eq!(p["verdict"], "HIJACKED", "{p}");
    assert_eq!(p["app_peer"], "127.0.0.1:65535", "{p}");
    assert!(
        p["kernel_peer"]
            .as_str()
            .unwrap()
            .starts_with(ttm_lab::lab::LB_IP),
        "{p}"
    );
    drop(server);
}

#[test]
fn without_the_witness_one_program_runs_per_getpeername_and_the_audit_still_flags_a_hijacker() {
    let world = World::new();
    world.lab.detach_writer().expect("detach the writer");
    let rs = world.lab.rs_cgroup().to_string_lossy().into_owned();
    let (code, v) = verify();
    assert_eq!(code, 0, "{v}");
    let ours = at(&v, &rs);
    for hook in ["getpeername4", "getpeername6"] {
        let n = ours
            .iter()
            .filter(|p| p["attach_point"].as_str().unwrap().ends_with(hook))
            .count();
        assert_eq!(n, 1, "the rewrite alone on {hook}: {ours:?}");
    }
    // `--live` says the witness is off and what turns it on.
    let out = Command::new(ttm_bin().expect("ttm"))
        .args(["verify", "--live", "--pin-dir", PIN_DIR])
        .output()
        .expect("ttm verify --live");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("witness is off") && err.contains("--witness"),
        "{err}"
    );
    // The static audit flags the hijacker all the same.
    let _hijacker = Hijacker::attach(&world.lab.rs_cgroup()).expect("attach the hijacker");
    let (code, v) = verify();
    assert_eq!(code, 1, "{v}");
    assert!(v["threats"].as_u64().unwrap_or(0) >= 1, "{v}");
}

/// The attach points, powers and evidence of the foreign programs in a report.
fn foreign(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .filter(|p| p["ttm"] == false)
        .cloned()
        .collect()
}

fn by_name<'a>(programs: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    // The kernel keeps 15 characters of a program's name.
    let short: String = name.chars().take(15).collect();
    programs
        .iter()
        .find(|p| p["name"] == short.as_str())
        .unwrap_or_else(|| panic!("{name} not listed: {programs:?}"))
}

fn evidence(p: &serde_json::Value) -> Vec<String> {
    p["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .map(|e| e["what"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn what_each_foreign_program_writes_decides_its_verdict_not_its_hook() {
    use ttm_lab::hijacker::{Foreign, TestVeth};
    let world = World::new();
    world.lab.detach_writer().expect("detach the writer");
    let rs = world.lab.rs_cgroup();
    let veth = TestVeth::create("ttm-vtest").expect("test veth");

    // Harmless counters on every hook the writers use: observing only.
    let counters = [
        Foreign::on_cgroup("count_bind4", &rs).expect("count_bind4"),
        Foreign::on_cgroup("count_connect4", &rs).expect("count_connect4"),
        Foreign::on_cgroup("count_getsockname6", &rs).expect("count_getsockname6"),
        Foreign::on_tc("count_tc", &veth.0).expect("count_tc"),
    ];
    let (code, v) = verify();
    let listed = foreign(&v);
    assert_eq!(listed.len(), 4, "{listed:?}");
    for p in &listed {
        assert_eq!(p["power"], "observes", "{p}");
        assert!(p["evidence"].as_array().unwrap().is_empty(), "{p}");
    }
    assert_eq!(code, 0, "only counters: clean: {v}");

    // Writers on the same hooks: each flagged, with the field or helper named.
    let writers = [
        Foreign::on_cgroup("rewrite_bind4", &rs).expect("rewrite_bind4"),
        Foreign::on_cgroup("rewrite_connect4", &rs).expect("rewrite_connect4"),
        Foreign::on_cgroup("rewrite_getsockname6", &rs).expect("rewrite_getsockname6"),
        Foreign::on_tc("rewrite_tc_source", &veth.0).expect("rewrite_tc_source"),
    ];
    let (code, v) = verify();
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["threats"], 4, "exactly the writers: {v}");
    let listed = foreign(&v);
    for (name, fields, affects) in [
        (
            "rewrite_bind4",
            &["stores user_ip4", "stores user_port"][..],
            "remote_peers",
        ),
        (
            "rewrite_connect4",
            &["stores user_ip4", "stores user_port"][..],
            "remote_peers",
        ),
        (
            "rewrite_getsockname6",
            &["stores user_ip6[0]", "stores user_ip6[3]"][..],
            "apps_on_this_host",
        ),
        ("rewrite_tc_source", &["bpf_skb_store_bytes"][..], "both"),
    ] {
        let p = by_name(&listed, name);
        assert_eq!(p["power"], "rewrites_peer", "{p}");
        assert_eq!(p["affects"], serde_json::json!([affects]), "{p}");
        let found = evidence(p);
        for field in fields {
            assert!(
                found.iter().any(|e| e.contains(field)),
                "{name}: {field} in {found:?}"
            );
        }
        assert!(p["evidence"][0]["insn"].as_u64().is_some(), "{p}");
    }
    for name in [
        "count_bind4",
        "count_connect4",
        "count_getsockname6",
        "count_tc",
    ] {
        assert_eq!(by_name(&listed, name)["power"], "observes");
    }
    // The text says what each writes and whom it affects.
    let out = Command::new(ttm_bin().expect("ttm"))
        .args(["verify", "--pin-dir", PIN_DIR])
        .output()
        .expect("ttm verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FOREIGN: rewrites what remote peers see"),
        "{text}"
    );
    assert!(text.contains("stores user_port"), "{text}");
    drop(writers);
    drop(counters);
}
