//! The Python package (`python/`): its unit tests, its installation with
//! pip from the path, and an unmodified FastAPI app behind uvicorn with the
//! ASGI middleware in the lab — the IPv6 client of a 6to4 connection on an
//! `AF_INET` listener, over HTTP and WebSocket; the IPv4 client of 4to4; a
//! direct client as itself.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::receivers::{repo, venv_python};
use common::{app, World};
use ttm_lab::lab;
use ttm_lab::process::spawn_in;
use ttm_lab::writer::WriterConfig;

#[test]
fn the_package_unit_tests_pass() {
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests", "-v"])
        .current_dir(repo().join("python"))
        .env("PYTHONPATH", ".")
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Ran 6 tests"), "{text}");
}

/// One HTTP request and one WebSocket from the client's namespace to
/// `host:port`: (own address, what the app answered) for each.
fn ask(world: &World, python: &Path, host: &str, port: u16) -> serde_json::Value {
    let script = app("asgi_client.py");
    let port = port.to_string();
    let client = spawn_in(
        python,
        &world.lab.client_cgroup(),
        lab::CLIENT_NS,
        &[script.to_str().expect("path"), host, &port],
    )
    .expect("asgi client");
    let line = client.line(Duration::from_secs(20)).expect("client report");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[test]
fn fastapi_behind_the_middleware_sees_ipv6_clients_on_an_ipv4_listener() {
    let python = venv_python();
    let world = World::new();
    let script = app("asgi_app.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .args(["0.0.0.0", "8000"])
        .env("TTM_SOCKET", &world.daemon.socket);
    ttm_lab::process::place(&mut cmd, &world.lab.rs_cgroup(), lab::RS_NS);
    let server = ttm_lab::process::Guarded::spawn(cmd).expect("uvicorn");
    server
        .wait_for(Duration::from_secs(30), |l| l == "listening")
        .expect("uvicorn listening");

    // 4to4: the IPv4 client, port and all.
    let r = ask(&world, &python, lab::VIP, 8000);
    for kind in ["http", "ws"] {
        assert_eq!(r[kind][1], r[kind][0], "{kind}: {r}");
    }
    // 6to4: the LB carries an IPv6 client; the listener is AF_INET.
    let v6: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
    world
        .lab
        .set_writer(WriterConfig::claim(254, 20, 4242, &v6.octets()).expect("writer"))
        .expect("writer");
    let r = ask(&world, &python, lab::VIP, 8000);
    for kind in ["http", "ws"] {
        assert_eq!(r[kind][1], "2001:db8::7 4242", "{kind}: {r}");
    }
    // A direct client (no LB: untrusted, no record) is itself.
    world.lab.set_writer(WriterConfig::TOA_V4).expect("writer");
    let r = ask(&world, &python, lab::RS_IP, 8000);
    for kind in ["http", "ws"] {
        assert_eq!(r[kind][1], r[kind][0], "{kind}: {r}");
    }
}
