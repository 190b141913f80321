//! `ttm verify`: ttm's own programs are recognised, a foreign program that
//! rewrites peers is flagged with where it is attached and who holds it.

mod common;

use std::process::Command;

use common::{python_server, report, World, PIN_DIR};
use ttm_lab::daemon::ttm_bin;
use ttm_lab::hijacker::Hijacker;

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
    let world = World::new();
    let rs = world.lab.rs_cgroup().to_string_lossy().into_owned();
    let (_, v) = verify();
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
    assert_eq!(ours.len(), 4, "{ours:?}");
    for hook in ["sock_ops", "getsockopt", "getpeername4", "getpeername6"] {
        assert!(hooks.contains(&hook), "{hook} missing: {hooks:?}");
    }
    assert!(ours.iter().all(|p| p["ttm"] == true), "{ours:?}");
    // The lab's option writer: foreign, but it only observes.
    let client = world.lab.client_cgroup().to_string_lossy().into_owned();
    let writer = at(&v, &client);
    assert_eq!(writer.len(), 1, "{writer:?}");
    assert_eq!(writer[0]["ttm"], false);
    assert_eq!(writer[0]["power"], "observes");

    let hijacker = Hijacker::attach(&world.lab.rs_cgroup()).expect("attach the hijacker");
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
    assert!(sockets
        .iter()
        .all(|s| s["app_peer"].as_str().unwrap().starts_with("127.0.0.1:")));
}
