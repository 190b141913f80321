//! The audit where a fleet alerts: the daemon runs `ttm verify`'s static
//! audit periodically and exports it with `--metrics`; the shipped alert
//! rules use only what it exports and fire when they should.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::World;
use ttm_lab::hijacker::Hijacker;
use ttm_lab::lab;

const PORT: u16 = 19465;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rules() -> PathBuf {
    repo().join("packaging/prometheus/ttm-alerts.yml")
}

fn scrape() -> String {
    common::scrape(PORT)
}

/// The value of the sample `name` (with its labels, if any) in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until the scrape satisfies `done`, returning it.
fn scrape_until(what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape();
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `ttm_*` metric names the rules' expressions use.
fn metrics_in_rules() -> BTreeSet<String> {
    let text = std::fs::read_to_string(rules()).expect("rules file");
    let mut names = BTreeSet::new();
    for line in text.lines().filter(|l| l.trim_start().starts_with("expr:")) {
        let mut rest = line;
        while let Some(at) = rest.find("ttm_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.insert(name);
        }
    }
    names
}

#[test]
fn the_daemon_exports_the_audit_and_counts_a_foreign_peer_rewriter() {
    let port = PORT.to_string();
    let world = World::with_daemon_args(
        lab::LB_NET,
        &[
            "--metrics",
            &format!("127.0.0.1:{port}"),
            "--audit-interval",
            "1",
        ],
    );
    // The lab's option writer writes header options: flagged, then gone.
    let text = scrape_until("the writer counted", |t| {
        sample(t, "ttm_audit_foreign_peer_rewriters{hook=\"sock_ops\"}") == Some(1.0)
    });
    assert_eq!(
        sample(&text, "ttm_audit_foreign_peer_rewriters_all"),
        Some(1.0)
    );
    world.lab.detach_writer().expect("detach the writer");
    let text = scrape_until("a clean audit", |t| {
        sample(t, "ttm_audit_foreign_peer_rewriters_all") == Some(0.0)
    });
    // sockops, getsockopt, getpeername4, getpeername6 on the real server's cgroup.
    assert_eq!(sample(&text, "ttm_audit_own_programs"), Some(4.0), "{text}");
    assert_eq!(sample(&text, "ttm_audit_own_programs_expected"), Some(4.0));
    assert_eq!(
        sample(&text, "ttm_audit_foreign_peer_rewriters_all"),
        Some(0.0)
    );
    assert_eq!(sample(&text, "ttm_audit_failed"), Some(0.0));
    assert!(sample(&text, "ttm_audit_duration_seconds").is_some_and(|d| d > 0.0));
    // Every metric the alert rules use is exported.
    for name in metrics_in_rules() {
        assert!(
            text.contains(&format!("\n{name}")),
            "the rules use {name}, which the daemon does not export:\n{text}"
        );
    }

    let _hijacker = Hijacker::attach(&world.lab.rs_cgroup()).expect("attach the hijacker");
    let text = scrape_until("the hijacker counted", |t| {
        sample(t, "ttm_audit_foreign_peer_rewriters_all") == Some(1.0)
    });
    assert_eq!(
        sample(
            &text,
            "ttm_audit_foreign_peer_rewriters{hook=\"getpeername4\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "ttm_audit_own_programs"), Some(4.0));
}

#[test]
fn the_audit_can_be_turned_off() {
    let port = PORT.to_string();
    let _world = World::with_daemon_args(
        lab::LB_NET,
        &[
            "--metrics",
            &format!("127.0.0.1:{port}"),
            "--audit-interval",
            "0",
        ],
    );
    let text = scrape();
    assert!(text.contains("ttm_decoded_total"), "{text}");
    assert!(!text.contains("ttm_audit_"), "{text}");
}

#[test]
fn the_shipped_alert_rules_are_valid_and_fire_when_they_should() {
    let promtool = repo().join("target/tools/promtool");
    let names = metrics_in_rules();
    assert!(
        names.contains("ttm_audit_foreign_peer_rewriters_all")
            && names.contains("ttm_audit_own_programs"),
        "{names:?}"
    );
    if !promtool.exists() {
        // `cargo xtask bootstrap` fetches promtool from Debian; without it
        // the rules are at least parsed for their alerts.
        eprintln!("promtool unavailable: checking the rules by parsing them only");
        let text = std::fs::read_to_string(rules()).expect("rules");
        for alert in ["TtmForeignPeerRewriter", "TtmNotAttached"] {
            assert!(text.contains(&format!("- alert: {alert}")), "{alert}");
        }
        return;
    }
    let dir = repo().join("packaging/prometheus");
    for args in [
        ["check", "rules", "ttm-alerts.yml"],
        ["test", "rules", "ttm-alerts.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
