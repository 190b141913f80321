//! Go servers behind the full-NAT LB: the `ttm` Go module's listener gives
//! `r.RemoteAddr` the real client, also an IPv6 client on an IPv4 listener
//! (6to4), where accept() cannot carry it; a plain net/http server on an
//! IPv6 real server sees 6to6 and 4to6 clients through the rewrite alone;
//! the README's Go example builds and runs; the module is vetted and tested.

mod common;

use std::path::Path;
use std::time::Duration;

use common::receivers::{go_example_server as example_server, go_ok, repo};
use common::{http_get, World};
use ttm_lab::lab;
use ttm_lab::process::{spawn_in, Guarded};
use ttm_lab::writer::WriterConfig;

fn start(world: &World, binary: &Path, args: &[&str]) -> Guarded {
    let server = spawn_in(binary, &world.lab.rs_cgroup(), lab::RS_NS, args).expect("go server");
    server
        .wait_for(Duration::from_secs(10), |l| l == "listening")
        .expect("listening");
    server
}

/// One request to `to` (from the client's cgroup); what the server printed
/// as `r.RemoteAddr`.
fn remote_addr(world: &World, server: &Guarded, cgroup: &Path, to: &str) -> String {
    let _ = world;
    http_get(cgroup, to);
    server
        .line(Duration::from_secs(10))
        .expect("RemoteAddr line")
}

fn claim_6to4(world: &World) {
    let v6: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
    world
        .lab
        .set_writer(WriterConfig::claim(254, 20, 4242, &v6.octets()).expect("writer"))
        .expect("writer");
}

#[test]
fn the_module_is_vetted_and_its_tests_pass() {
    let module = repo().join("go/ttm");
    go_ok(&module, &["vet", "./..."]);
    go_ok(&module, &["test", "./..."]);
}

#[test]
fn ttm_listen_gives_remote_addr_the_real_client_also_6to4_on_an_ipv4_listener() {
    let world = World::new();
    let server = start(&world, &example_server(), &["0.0.0.0:8090"]);
    let client = world.lab.client_cgroup();
    let vip = format!("{}:8090", lab::VIP);
    // 4to4.
    let own = http_get(&client, &vip);
    assert_eq!(
        server.line(Duration::from_secs(10)).unwrap(),
        own.to_string()
    );
    // 6to4: an IPv6 client carried over IPv4, on an AF_INET listener.
    claim_6to4(&world);
    assert_eq!(
        remote_addr(&world, &server, &client, &vip),
        "[2001:db8::7]:4242"
    );
    // A direct client (no LB, untrusted) shows itself.
    world.lab.set_writer(WriterConfig::TOA_V4).expect("writer");
    let direct = format!("{}:8090", lab::RS_IP);
    let own = http_get(&client, &direct);
    assert_eq!(
        server.line(Duration::from_secs(10)).unwrap(),
        own.to_string()
    );
}

#[test]
fn a_plain_go_server_on_an_ipv6_real_server_sees_6to6_and_4to6_clients() {
    let world = World::with_daemon_args("10.0.2.0/24,fd00:2::/64", &[]);
    let server = start(&world, &example_server(), &["[::]:8091", "plain"]);
    let client = world.lab.client_cgroup();
    let vip6 = format!("[{}]:8091", lab::VIP6);
    let own = http_get(&client, &vip6);
    assert_eq!(
        server.line(Duration::from_secs(10)).unwrap(),
        own.to_string(),
        "6to6"
    );
    world
        .lab
        .set_writer(WriterConfig::v4_client(254, [10, 0, 1, 2]))
        .expect("writer");
    let own = http_get(&client, &vip6);
    // Go prints a v4-mapped peer as the IPv4 address.
    assert_eq!(
        server.line(Duration::from_secs(10)).unwrap(),
        format!("10.0.1.2:{}", own.port()),
        "4to6"
    );
}

#[test]
fn the_readme_go_example_builds_and_runs() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    let marker = "<!-- lookup-example: go -->";
    let after = &readme[readme.find(marker).expect("marker") + marker.len()..];
    let body = after
        .split_once("```go\n")
        .map(|(_, rest)| rest)
        .expect("go block");
    let code = &body[..body.find("```").expect("closing fence")];
    let dir = repo().join("target").join("go-readme-example");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("main.go"), code).expect("main.go");
    std::fs::write(
        dir.join("go.mod"),
        format!(
            "module readme\n\ngo 1.19\n\nrequire ttm v0.0.0\n\nreplace ttm => {}\n",
            repo().join("go/ttm").display()
        ),
    )
    .expect("go.mod");
    let binary = dir.join("readme-example");
    go_ok(&dir, &["build", "-o", binary.to_str().expect("path"), "."]);
    let world = World::new();
    let server = start(&world, &binary, &[]);
    claim_6to4(&world);
    let client = world.lab.client_cgroup();
    assert_eq!(
        remote_addr(&world, &server, &client, &format!("{}:8090", lab::VIP)),
        "[2001:db8::7]:4242"
    );
}
