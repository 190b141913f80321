//! Starting and stopping `ttm daemon`: refusals, and a clean exit.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{ttm, World, PIN_DIR};

fn ttm_programs_loaded() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(common::sockops_program()))
        .count()
}

#[test]
fn stopping_the_daemon_leaves_no_attachments_or_pins() {
    let world = World::new();
    assert_eq!(
        ttm_programs_loaded(),
        1,
        "exactly our program is loaded while running"
    );
    let server = world.serve(1);
    world.connect(&world.lab.client_cgroup(), 1, 0);
    let _ = world.accepted(&server, 1);
    let World { daemon, lab, .. } = world;
    let status = daemon.stop().expect("daemon exits");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(!Path::new(PIN_DIR).exists(), "pins removed");
    let deadline = Instant::now() + Duration::from_secs(5);
    while ttm_programs_loaded() != 0 {
        assert!(
            Instant::now() < deadline,
            "sockops program still loaded after stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _, err) = ttm(&["stats", "--pin-dir", PIN_DIR]);
    assert_eq!(code, 2);
    assert!(err.contains("is `ttm daemon` running"), "{err}");
    drop(lab);
}

#[test]
fn daemon_refuses_to_start_without_trusted_networks() {
    let (code, _, err) = ttm(&["daemon", "--pin-dir", "/sys/fs/bpf/ttm-refuse"]);
    assert_eq!(code, 2);
    assert!(err.contains("--trust CIDR"), "{err}");
    assert!(!Path::new("/sys/fs/bpf/ttm-refuse").exists());
}

#[test]
fn daemon_rejects_a_path_that_is_not_a_cgroup() {
    let (code, _, err) = ttm(&[
        "daemon",
        "--trust",
        "10.0.2.0/24",
        "--cgroup",
        "/tmp",
        "--pin-dir",
        "/sys/fs/bpf/ttm-refuse",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("not a cgroup v2 directory"), "{err}");
}

#[test]
fn daemon_rejects_a_malformed_network() {
    let (code, _, err) = ttm(&["daemon", "--trust", "10.0.2.0/33"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("invalid trusted network \"10.0.2.0/33\""),
        "{err}"
    );
}

#[test]
fn lookup_without_a_daemon_says_what_to_do() {
    let (code, _, err) = ttm(&[
        "lookup",
        "--cookie",
        "1",
        "--socket",
        "/run/ttm/ttm-no-daemon.sock",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot reach the ttm daemon"), "{err}");
    assert!(err.contains("is `ttm daemon` running"), "{err}");
}

#[test]
fn the_lookup_socket_is_group_only_and_removed_on_stop() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let world = World::with_daemon_args(ttm_lab::lab::LB_NET, &["--socket-group", "4242"]);
    let socket = world.daemon.socket.clone();
    let meta = std::fs::metadata(&socket).expect("socket exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 4242);
    let World { daemon, lab, .. } = world;
    assert!(daemon.stop().expect("daemon exits").success());
    assert!(!socket.exists(), "socket removed on stop");
    drop(lab);
}

#[test]
fn a_daemon_killed_hard_is_replaced_cleanly() {
    let world = World::new();
    let socket = world.daemon.socket.clone();
    let World { daemon, lab, .. } = world;
    daemon.crash();
    assert!(socket.exists(), "a killed daemon leaves its socket behind");
    assert!(Path::new(PIN_DIR).exists(), "and its pins");
    // The next daemon replaces the stale socket and pins and serves lookups.
    let again = ttm_lab::TtmDaemon::start(
        ttm_lab::lab::LB_NET,
        &lab.rs_cgroup(),
        Path::new(PIN_DIR),
        &[],
    )
    .expect("a new daemon starts over the stale socket");
    let mut client = ttm_client::Client::connect(&again.socket).expect("connect");
    assert_eq!(client.lookup_cookie(1).expect("lookup"), None);
    drop(again);
    drop(lab);
}

#[test]
fn a_second_daemon_refuses_and_names_the_running_one() {
    let world = World::new();
    let (code, _, err) = ttm(&[
        "daemon",
        "--trust",
        "10.0.2.0/24",
        "--cgroup",
        &world.lab.rs_cgroup().to_string_lossy(),
        "--pin-dir",
        PIN_DIR,
        "--socket",
        "/run/ttm/ttm-second.sock",
    ]);
    assert_eq!(code, 2);
    let pid = world.daemon.pid().to_string();
    assert!(
        err.contains(&format!("another ttm daemon (pid {pid}) already owns")),
        "{err}"
    );
    // The running one is untouched.
    let server = world.serve(1);
    world.connect(&world.lab.client_cgroup(), 1, 0);
    let a = world.accepted(&server, 1).pop().expect("accepted");
    assert!(world.records().by_cookie(a.cookie).unwrap().is_some());
}
