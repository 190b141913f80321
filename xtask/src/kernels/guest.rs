//! The script a kernel runs (bpffs, the doctor, each test binary with its
//! mode and one retry) and the results it leaves in `out/`.

use std::fs;
use std::path::Path;

use anyhow::Result;

use super::{kernels_dir, root, Outcome, Run};

/// Longest one test binary may run in the guest (5.10 under TCG needs about
/// 5 minutes for the slowest); past it the run is killed and counts as failed
/// (exit 124), so a hang costs one run, not the whole matrix.
pub(super) const RUN_LIMIT_SECS: u64 = 20 * 60;

/// Tests left to the host. Two load tests: under QEMU's emulation they show
/// no capability the functional tests of the same file do not, and would
/// take most of a run's time limit. One that builds Go and installs the
/// Python package, which the guest's read-only root filesystem cannot.
const HOST_ONLY_TESTS: [&str; 4] = [
    "ten_thousand_concurrent_connections_each_get_their_own_client",
    "a_hundred_thousand_udp_flows_are_each_found_none_evicted_and_all_expire",
    "a_gibibyte_through_haproxy_arrives_unchanged",
    "unmodified_receivers_behind_haproxy_see_the_client",
];

/// The script the guest (or the host) runs: bpffs, each test binary with
/// its mode, one result line per run, the doctor's view of the kernel.
/// `emulated`: inside QEMU, without [`HOST_ONLY_TESTS`].
pub(super) fn guest_script(runs: &[Run], out: &Path, emulated: bool) -> String {
    let out = out.display();
    let mut s = String::from("#!/bin/sh\n# Written by `cargo xtask test --kernel`.\n");
    s.push_str("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf\n");
    s.push_str(&format!("cd '{}'\n", root_display("tests")));
    s.push_str(&format!(
        "'{}' doctor --json > '{out}/doctor.json' 2> '{out}/doctor.err'\n",
        root_display("target/debug/ttm")
    ));
    s.push_str(&format!("uname -r > '{out}/uname'\n"));
    let skips: String = if emulated {
        let mut skips: String = HOST_ONLY_TESTS
            .iter()
            .map(|t| format!(" --skip {t}"))
            .collect();
        skips.push_str(" --exact");
        skips
    } else {
        String::new()
    };
    // Waits for a process's output take this many times longer in QEMU.
    let scale = if emulated { 4 } else { 1 };
    for run in runs {
        let log = run.label.replace('/', "-");
        // `cut`: the PROXY suite with headers cut at the interface.
        let env = match run.mode {
            "cut" => "TTM_LAB_MODE=sockops TTM_PROXY_CUT=1".to_string(),
            mode => format!("TTM_LAB_MODE={mode}"),
        };
        let test = format!(
            "{env} TTM_TIMEOUT_SCALE={scale} timeout -k 10 {RUN_LIMIT_SECS} '{bin}' --test-threads=1{skips} > '{out}/{log}.log' 2>&1",
            bin = run.binary.display(),
        );
        // A failed run gets one more try (QEMU's timing is not the host's);
        // both tries are reported.
        s.push_str(&format!(
            "START=$(date +%s); {test}; CODE=$?; TRIES=1; \
             if [ $CODE -ne 0 ]; then mv '{out}/{log}.log' '{out}/{log}.try1.log'; {test}; CODE=$?; TRIES=2; fi; \
             echo \"{label} $CODE $(( $(date +%s) - START )) $TRIES\" >> '{out}/results'\n",
            label = run.label,
        ));
    }
    s.push_str(&format!("echo done > '{out}/finished'\n"));
    s
}

fn root_display(rel: &str) -> String {
    root()
        .map(|r| r.join(rel).display().to_string())
        .unwrap_or_default()
}

pub(super) fn read_results(out: &Path, runs: &[Run]) -> Result<Vec<Outcome>> {
    let text = fs::read_to_string(out.join("results")).unwrap_or_default();
    let finished = out.join("finished").exists();
    let mut outcomes = parse_results(&text);
    // A run the guest never reported (it died, or timed out) failed.
    for run in runs {
        if !outcomes.iter().any(|o| o.label == run.label) {
            outcomes.push(Outcome {
                label: run.label.clone(),
                code: -1,
                seconds: 0,
                attempts: 1,
            });
        }
    }
    if !finished {
        eprintln!("xtask: the run did not finish: missing runs count as failed");
    }
    Ok(outcomes)
}

/// The outcomes of the last run on `kernel`, if it has one.
pub fn saved(kernel: &str) -> Option<Vec<Outcome>> {
    let out = kernels_dir().ok()?.join(kernel).join("out");
    let text = fs::read_to_string(out.join("results")).ok()?;
    Some(parse_results(&text))
}

/// The lines of a results file: `label code seconds [tries]` (runs saved
/// before retries existed have no tries: one).
fn parse_results(text: &str) -> Vec<Outcome> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some(Outcome {
                label: parts.next()?.to_string(),
                code: parts.next()?.parse().ok()?,
                seconds: parts.next()?.parse().ok()?,
                attempts: parts.next().and_then(|a| a.parse().ok()).unwrap_or(1),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_lines_parse_with_and_without_tries() {
        let got = parse_results("sockops/a 0 12 2\nsockops/b 101 7\ngarbage\n");
        let got: Vec<_> = got
            .iter()
            .map(|o| (o.label.as_str(), o.code, o.seconds, o.attempts))
            .collect();
        assert_eq!(got, [("sockops/a", 0, 12, 2), ("sockops/b", 101, 7, 1)]);
    }
}
