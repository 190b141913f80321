//! Operating ttm: the settings file with flags over it, `ttm config check`,
//! and the Prometheus endpoint.

mod common;

use common::{scrape, ttm, World};
use ttm_lab::lab;

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ttm-{}-{name}", std::process::id()));
    std::fs::write(&path, text).expect("write temp file");
    path
}

#[test]
fn config_check_merges_the_file_and_the_flags() {
    let file = temp_file(
        "good.toml",
        "trust = [\"10.0.2.0/24\"]\nformats = [\"toa\", \"kind200\"]\nmax_records = 1000\nrewrite = false\n",
    );
    let (code, out, err) = ttm(&[
        "config",
        "check",
        "--config",
        file.to_str().unwrap(),
        "--max-records",
        "777",
    ]);
    assert_eq!(code, 0, "{err}");
    let effective: toml::Table = out.parse().expect("TOML out");
    assert_eq!(
        effective["max_records"].as_integer(),
        Some(777),
        "the flag wins"
    );
    assert_eq!(effective["formats"].as_array().map(Vec::len), Some(2));
    assert_eq!(effective["rewrite"].as_bool(), Some(false));
    assert_eq!(effective["trust"][0].as_str(), Some("10.0.2.0/24"));
    let _ = std::fs::remove_file(file);

    for (text, expected) in [
        (
            "trust = [\"10.0.2.0/24\"]\nmax_clients = 0\n",
            "key `max_clients`",
        ),
        (
            "trust = [\"10.0.2.0/24\"]\nformats = [\"tao\"]\n",
            "key `formats`",
        ),
        (
            "trust = [\"10.0.2.0/24\"]\nmax_recrods = 5\n",
            "unknown field `max_recrods`",
        ),
    ] {
        let file = temp_file("bad.toml", text);
        let (code, _, err) = ttm(&["config", "check", "--config", file.to_str().unwrap()]);
        assert_eq!(code, 2, "{text}");
        assert!(err.contains(expected), "{text}: {err}");
        let _ = std::fs::remove_file(file);
    }
}

#[test]
fn the_daemon_reads_its_settings_file() {
    // The file asks for kind 200 only and no rewrite; the flags add the rest.
    let file = temp_file("daemon.toml", "formats = [\"kind200\"]\nrewrite = false\n");
    let world = World::with_daemon_args(lab::LB_NET, &["--config", file.to_str().unwrap()]);
    world
        .lab
        .set_writer(ttm_lab::writer::WriterConfig::own_address(200))
        .expect("writer");
    let server = world.serve(1);
    world.connect(&world.lab.client_cgroup(), 1, 0);
    let a = world.accepted(&server, 1).pop().expect("accepted");
    let record = world.records().by_cookie(a.cookie).expect("records");
    assert_eq!(
        record.map(|r| r.client),
        Some(a.claimed),
        "kind 200 decoded"
    );
    assert_eq!(a.peer.ip().to_string(), lab::LB_IP, "rewrite off");
    let _ = std::fs::remove_file(file);
}

#[test]
fn metrics_expose_every_counter_the_fill_level_and_build_info() {
    let world = World::with_daemon_args(lab::LB_NET, &["--metrics", "127.0.0.1:19464"]);
    let server = world.serve(2);
    world.connect(&world.lab.client_cgroup(), 2, 0);
    let _ = world.accepted(&server, 2);
    let text = scrape(19464);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    for line in [
        "ttm_decoded_total 2",
        "ttm_connections_seen_total 2",
        "ttm_untrusted_total 0",
        "ttm_live_records 2",
        "ttm_records_capacity 1048576",
        "ttm_build_info{version=\"0.1.0\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    for counter in ttm_common::Counter::ALL {
        assert!(
            text.contains(&format!("ttm_{}_total", counter.name())),
            "{} missing",
            counter.name()
        );
    }
    assert!(text.contains("ttm_lookup_clients_accepted_total"), "{text}");
}

/// The capabilities the systemd unit grants, as setpriv names them.
/// The value of `key=` in the systemd unit.
fn unit_setting(key: &str) -> &'static str {
    let unit = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/systemd/ttm.service"
    ));
    unit.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{key} in the unit"))
}

fn unit_capabilities() -> Vec<String> {
    unit_setting("CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// Runs the daemon as the unit would: its memlock limit (what kernels before
/// 5.11 charge maps to) and only `caps`. Where this process may not raise
/// the limit (no CAP_SYS_RESOURCE) the daemon keeps the inherited one, as
/// kernels that need it are booted with a full-capability root here.
fn setpriv(caps: &[String]) -> Vec<String> {
    assert_eq!(unit_setting("LimitMEMLOCK"), "infinity");
    let memlock = ["prlimit", "--memlock=unlimited:unlimited"];
    let may_raise = std::process::Command::new(memlock[0])
        .args([memlock[1], "true"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut wrapper: Vec<String> = Vec::new();
    if may_raise {
        wrapper.extend(memlock.map(String::from));
    }
    let list = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    wrapper.extend([
        "setpriv".into(),
        format!("--inh-caps={list}"),
        format!("--ambient-caps={list}"),
        format!("--bounding-set={list}"),
    ]);
    wrapper
}

#[test]
fn the_daemon_works_with_only_the_units_capabilities() {
    let caps = unit_capabilities();
    assert_eq!(caps, ["bpf", "net_admin", "perfmon", "chown"]);
    let serial = ttm_lab::process::serial();
    let lab = ttm_lab::Lab::up().expect("lab");
    let pin_dir = std::path::Path::new(common::PIN_DIR);
    let daemon = ttm_lab::TtmDaemon::start_under(
        &setpriv(&caps),
        lab::LB_NET,
        &lab.rs_cgroup(),
        pin_dir,
        &["--socket-group", "4242"],
    )
    .expect("the daemon starts with the unit's capabilities only");
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    // CAP_CHOWN 0, CAP_NET_ADMIN 12, CAP_PERFMON 38, CAP_BPF 39: nothing else.
    assert_eq!(
        eff,
        (1 << 0) | (1 << 12) | (1 << 38) | (1 << 39),
        "CapEff {eff:#x}"
    );
    drop(daemon);
    // One fewer is not enough: without CAP_PERFMON the verifier would
    // refuse the decoders, so ttm refuses to start and says which is missing.
    let without: Vec<String> = caps.iter().filter(|c| *c != "perfmon").cloned().collect();
    let refused = ttm_lab::TtmDaemon::start_under(
        &setpriv(&without),
        lab::LB_NET,
        &lab.rs_cgroup(),
        pin_dir,
        &[],
    );
    assert!(refused.is_err(), "starts without CAP_PERFMON?");
    drop(lab);
    drop(serial);
}

#[test]
fn doctor_probes_every_program_through_the_verifier() {
    let (code, out, err) = ttm(&["doctor", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let probes: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
    for feature in [
        "BTF",
        "bpffs",
        "cgroup v2",
        "ttm_sockops",
        "ttm_sockops_tc",
        "mode auto",
        "ttm_getsockopt",
        "ttm_getpeername4",
        "ttm_getpeername6",
        "ttm_witness4",
        "ttm_witness6",
        "ttm_tc_ingress",
    ] {
        let p = probes
            .iter()
            .find(|p| p["feature"] == feature)
            .unwrap_or_else(|| panic!("{feature} not probed: {out}"));
        assert_eq!(p["ok"], true, "{p}");
    }
    // Where a feature is missing, the probe names the fallback ttm uses.
    for (feature, fallback) in [("tcx", "netlink"), ("getsockopt errno", "EFAULT")] {
        let p = probes
            .iter()
            .find(|p| p["feature"] == feature)
            .unwrap_or_else(|| panic!("{feature} not probed: {out}"));
        assert_eq!(p["has_fallback"], true, "{p}");
        if p["ok"] == false {
            let detail = p["detail"].as_str().expect("detail");
            assert!(detail.contains(fallback), "{p}");
        }
    }
}
