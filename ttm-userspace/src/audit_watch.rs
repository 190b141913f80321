//! The static audit of `ttm verify`, run by the daemon every
//! `--audit-interval` so that a fleet can alert on it: its result feeds the
//! metrics endpoint, and each newly found foreign peer-rewriting program is
//! logged once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::warn;

use crate::pins::PinDir;
use crate::verify::Report;

/// Default of `--audit-interval`.
pub const DEFAULT_AUDIT_INTERVAL: Duration = Duration::from_secs(60);

/// What the last audit found, as the metrics show it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditSummary {
    /// When it finished, seconds since the epoch.
    pub finished_at: f64,
    /// How long it took.
    pub duration: Duration,
    /// Foreign programs that can rewrite peers, by hook.
    pub foreign_by_hook: BTreeMap<String, u64>,
    /// ttm's own programs found attached.
    pub own_present: u64,
    /// ttm's own programs this daemon attached.
    pub own_expected: u64,
    /// Why it could not run, if it could not.
    pub error: Option<String>,
}

impl AuditSummary {
    /// Foreign peer-rewriting programs, all hooks together.
    pub fn foreign_total(&self) -> u64 {
        self.foreign_by_hook.values().sum()
    }
}

/// The hook an attach point names: its last word (`getpeername4`, `tcx`, ...).
fn hook_of(attach_point: &str) -> String {
    attach_point
        .rsplit(' ')
        .next()
        .unwrap_or(attach_point)
        .to_string()
}

/// Summarises `report`; `own_extra` are ttm programs not behind a pin (a
/// netlink TC filter), counted as ttm's.
pub fn summarise(report: &Report, own_extra: &BTreeSet<u32>, own_expected: u64) -> AuditSummary {
    let mut summary = AuditSummary {
        own_expected,
        ..AuditSummary::default()
    };
    for f in &report.programs {
        if f.ttm || own_extra.contains(&f.id) {
            summary.own_present += 1;
        } else if f.is_threat() {
            *summary
                .foreign_by_hook
                .entry(hook_of(&f.attach_point))
                .or_default() += 1;
        }
    }
    summary
}

/// The audit loop's shared result and its stop switch.
pub struct AuditWatch {
    /// The last result, `None` until the first audit finished.
    pub last: Arc<Mutex<Option<AuditSummary>>>,
    stop: Arc<AtomicBool>,
}

impl AuditWatch {
    /// Starts auditing every `interval` on a thread of its own (the audit
    /// walks cgroups and namespaces: it never runs on the async workers).
    pub fn start(
        pins: PinDir,
        interval: Duration,
        own_extra: BTreeSet<u32>,
        own_expected: u64,
    ) -> AuditWatch {
        let last = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopping) = (last.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("ttm-audit".into())
            .spawn(move || {
                let mut logged: BTreeSet<(u32, String)> = BTreeSet::new();
                while !stopping.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let summary = match crate::verify::audit_attachments(&pins) {
                        Ok(report) => {
                            log_new_threats(&report, &own_extra, &mut logged);
                            summarise(&report, &own_extra, own_expected)
                        }
                        Err(e) => AuditSummary {
                            own_expected,
                            error: Some(e.to_string()),
                            ..AuditSummary::default()
                        },
                    };
                    let summary = AuditSummary {
                        duration: started.elapsed(),
                        finished_at: SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64()),
                        ..summary
                    };
                    if let Ok(mut slot) = shared.lock() {
                        *slot = Some(summary);
                    }
                    let next = Instant::now() + interval;
                    while Instant::now() < next && !stopping.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100).min(interval));
                    }
                }
            });
        if let Err(e) = spawned {
            warn!("periodic audit not started: {e}");
        }
        AuditWatch { last, stop }
    }
}

impl Drop for AuditWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Logs each foreign peer rewriter the first time it is seen where it is.
fn log_new_threats(
    report: &Report,
    own_extra: &BTreeSet<u32>,
    logged: &mut BTreeSet<(u32, String)>,
) {
    for f in report.threats().filter(|f| !own_extra.contains(&f.id)) {
        if logged.insert((f.id, f.attach_point.clone())) {
            warn!(
                "audit: foreign program {} (id {}, tag {}) at {}: {} — run `ttm verify` to \
                 inspect it",
                f.name,
                f.id,
                f.tag,
                f.attach_point,
                f.evidence
                    .first()
                    .map_or("cannot tell what it does", |e| e.what.as_str())
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{Finding, Power};

    fn finding(id: u32, at: &str, power: Power, ttm: bool) -> Finding {
        Finding {
            id,
            name: format!("p{id}"),
            tag: String::new(),
            prog_type: 0,
            attach_point: at.to_string(),
            loaded_at: None,
            held_by: Vec::new(),
            power,
            evidence: Vec::new(),
            affects: Vec::new(),
            ttm,
        }
    }

    #[test]
    fn foreign_rewriters_are_counted_by_hook_and_ttms_own_as_present() {
        let report = Report {
            cgroups: 3,
            netns: 1,
            programs: vec![
                finding(1, "cgroup /x sock_ops", Power::Observes, true),
                finding(2, "cgroup /x getpeername4", Power::RewritesPeer, true),
                finding(3, "cgroup /x getpeername4", Power::RewritesPeer, false),
                finding(4, "cgroup /y getpeername4", Power::RewritesPeer, false),
                finding(5, "cgroup /y sock_create", Power::Observes, false),
                finding(
                    6,
                    "netns /run/netns/a eth0 tc tcx",
                    Power::RewritesPeer,
                    false,
                ),
                finding(
                    7,
                    "netns /run/netns/a eth0 tc ingress",
                    Power::RewritesPeer,
                    false,
                ),
            ],
            unchecked: Vec::new(),
        };
        let own_tc: BTreeSet<u32> = [7].into();
        let s = summarise(&report, &own_tc, 3);
        assert_eq!(s.own_present, 3, "two pinned, one netlink TC filter");
        assert_eq!(s.own_expected, 3);
        assert_eq!(s.foreign_by_hook.get("getpeername4"), Some(&2));
        assert_eq!(s.foreign_by_hook.get("tcx"), Some(&1));
        assert_eq!(
            s.foreign_total(),
            3,
            "the harmless sock_create is not counted"
        );
    }
}
