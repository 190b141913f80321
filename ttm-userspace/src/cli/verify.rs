//! `ttm verify`: who can change the peer address apps see — the static
//! audit of every attachment, one process's sockets (`--pid`), or the live
//! witness's catches (`--live`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use ttm::pins::{PinDir, DEFAULT_PIN_DIR};

use super::findings_exit;

#[derive(Args)]
pub struct VerifyArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// bpffs directory of ttm's pins (to recognise its programs).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Audit one process's TCP sockets instead: the peer it sees, the
    /// kernel's, ttm's record, and a verdict (kernel, ttm-client, HIJACKED).
    #[arg(long, value_name = "PID", conflicts_with = "live")]
    pid: Option<i32>,
    /// List the sockets whose getpeername()/accept() answer the witness
    /// caught being neither the kernel's peer nor ttm's client.
    #[arg(long)]
    live: bool,
}

/// Exit 0 clean, 1 with findings (2, an error, is the caller's).
pub fn run(args: VerifyArgs) -> Result<ExitCode> {
    match args {
        VerifyArgs {
            json,
            pin_dir,
            live: true,
            ..
        } => live(json, pin_dir),
        VerifyArgs {
            json,
            pin_dir,
            pid: Some(pid),
            ..
        } => process(json, pin_dir, pid),
        VerifyArgs { json, pin_dir, .. } => attachments(json, pin_dir),
    }
}

/// `--live`: what the witness caught.
fn live(json: bool, pin_dir: PathBuf) -> Result<ExitCode> {
    let pins = PinDir::new(pin_dir);
    if !ttm::verify::witness_attached(&pins) {
        eprintln!(
            "ttm verify --live: the live witness is off on {} — start the daemon with \
             --witness (or `witness = true` in its settings) to check every getpeername \
             answer as it happens; `ttm verify` (the static audit) works without it",
            pins.path().display()
        );
        return Ok(ExitCode::from(2));
    }
    let caught = ttm::verify::caught(&pins)?;
    if json {
        println!("{}", serde_json::to_string(&caught)?);
    } else {
        for c in &caught {
            println!(
                "cookie {:<8} pid {:<7} {:<16} was told {:<26} kernel peer {:<26} {:.1}s ago",
                c.cookie,
                c.pid,
                c.command,
                c.returned.to_string(),
                c.kernel_peer.to_string(),
                c.age
            );
        }
        println!(
            "{} socket(s) got a peer address that was neither the kernel's nor ttm's client",
            caught.len()
        );
    }
    Ok(findings_exit(caught.len()))
}

/// `--pid`: one process's TCP sockets.
fn process(json: bool, pin_dir: PathBuf, pid: i32) -> Result<ExitCode> {
    let sockets = ttm::verify::audit_process(pid, &PinDir::new(pin_dir))?;
    let hijacked = sockets
        .iter()
        .filter(|s| s.verdict == ttm::verify::Verdict::Hijacked)
        .count();
    if json {
        println!("{}", serde_json::to_string(&sockets)?);
    } else {
        for s in &sockets {
            println!(
                "fd {:<4} app sees {:<26} kernel peer {:<26} ttm record {:<26} {:?}",
                s.fd,
                s.app_peer.to_string(),
                s.kernel_peer.map_or("?".into(), |p| p.to_string()),
                s.ttm_client.map_or("-".into(), |p| p.to_string()),
                s.verdict
            );
        }
        println!("{} TCP socket(s), {hijacked} HIJACKED", sockets.len());
    }
    Ok(findings_exit(hijacked))
}

/// The static audit of every attachment.
fn attachments(json: bool, pin_dir: PathBuf) -> Result<ExitCode> {
    let report = ttm::verify::audit(&PinDir::new(pin_dir))?;
    let threats = report.threats().count();
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["threats"] = threats.into();
        println!("{v}");
    } else {
        println!(
            "{} program attachment(s) in {} cgroup(s) and {} network namespace(s)",
            report.programs.len(),
            report.cgroups,
            report.netns
        );
        let direction = |d: &ttm::verify::insns::Direction| match d {
            ttm::verify::insns::Direction::AppsOnThisHost => "what apps on this host see",
            ttm::verify::insns::Direction::RemotePeers => "what remote peers see",
            ttm::verify::insns::Direction::Both => "packets either way",
        };
        for f in &report.programs {
            let affects = f
                .affects
                .iter()
                .map(direction)
                .collect::<Vec<_>>()
                .join(", ");
            let verdict = match (f.ttm, f.power) {
                (true, _) => "ttm".to_string(),
                (false, ttm::verify::Power::RewritesPeer) => {
                    format!("FOREIGN: rewrites {affects}")
                }
                (false, ttm::verify::Power::CannotTell) => {
                    "FOREIGN: cannot tell what it does (flagged)".to_string()
                }
                (false, ttm::verify::Power::Observes) => "foreign, observes only".to_string(),
            };
            println!(
                "  id {:<6} {:<16} {:<60} held by {:<24} {verdict}",
                f.id,
                f.name,
                f.attach_point,
                if f.held_by.is_empty() {
                    "(pinned/kernel)".to_string()
                } else {
                    f.held_by.join(", ")
                },
            );
            for e in &f.evidence {
                println!(
                    "      insn {:<5} {}{}",
                    e.insn,
                    e.what,
                    e.direction
                        .as_ref()
                        .map(|d| format!(" — changes {}", direction(d)))
                        .unwrap_or_default()
                );
            }
        }
        for why in &report.unchecked {
            println!("  not checked: {why}");
        }
        if threats == 0 {
            println!(
                "no foreign program rewrites the addresses either side of a connection \
                 sees (each program's instructions were read)"
            );
        } else {
            println!(
                "{threats} foreign program(s) rewrite addresses, answers, packets or \
                 options, or cannot be cleared"
            );
        }
    }
    Ok(findings_exit(threats))
}
