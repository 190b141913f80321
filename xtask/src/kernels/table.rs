//! The README's compatibility table: one row per capability, one column
//! per kernel, each cell from that kernel's runs and its doctor's probes.

use std::fs;

use anyhow::{bail, Result};

use super::{kernels_dir, root, Outcome, KERNELS};

/// The capabilities of the README's table and the runs that show each.
const CAPABILITIES: [(&str, &[&str]); 9] = [
    ("4to4 decode", &["sockops/decode_4to4"]),
    ("6to4 and other formats", &["sockops/formats_6to4"]),
    (
        "getsockopt 1345 + accept()/getpeername() rewrite",
        &["sockops/compat_shim"],
    ),
    ("lookups (fd, cookie, 4-tuple)", &["sockops/lookup_service"]),
    (
        "TC mode",
        &[
            "sockops/tc_differential",
            "sockops/tc_mode",
            "tc/decode_4to4",
        ],
    ),
    (
        "IPv6 between LB and real server (6to6, 4to6)",
        &["sockops/ipv6_path", "tc/ipv6_path"],
    ),
    (
        "PROXY protocol v1/v2 (--proxy-protocol)",
        &["sockops/proxy_protocol", "cut/proxy_protocol"],
    ),
    (
        "UDP: DPVS's UOA marking, uoa.ko's getsockopt (--udp-interface)",
        &["sockops/udp_uoa", "sockops/udp_differential"],
    ),
    ("kernel", &[]),
];

/// Every kernel of the matrix, in table order.
pub fn all_names() -> Vec<String> {
    let mut names: Vec<String> = KERNELS.iter().map(|k| k.name.to_string()).collect();
    names.push("host".into());
    names
}

/// What the doctor said inside the kernel, by probe.
fn doctor(kernel: &str) -> Vec<serde_json::Value> {
    let path = kernels_dir()
        .map(|d| d.join(kernel).join("out").join("doctor.json"))
        .unwrap_or_default();
    fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn probe_ok(probes: &[serde_json::Value], feature: &str) -> Option<bool> {
    probes
        .iter()
        .find(|p| p["feature"] == feature)
        .and_then(|p| p["ok"].as_bool())
}

/// One table cell: works / works with the fallback / FAILS.
fn cell(kernel: &str, capability: &str, runs: &[&str], outcomes: &[Outcome]) -> String {
    let probes = doctor(kernel);
    if capability == "kernel" {
        return fs::read_to_string(
            kernels_dir()
                .map(|d| d.join(kernel).join("out").join("uname"))
                .unwrap_or_default(),
        )
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    }
    let ok = runs
        .iter()
        .all(|r| outcomes.iter().any(|o| o.label == *r && o.code == 0));
    if !ok {
        let failed: Vec<&str> = runs
            .iter()
            .filter(|r| !outcomes.iter().any(|o| o.label == **r && o.code == 0))
            .copied()
            .collect();
        return format!("FAILS ({})", failed.join(", "));
    }
    let retried: Vec<&str> = runs
        .iter()
        .filter(|r| outcomes.iter().any(|o| o.label == **r && o.attempts > 1))
        .copied()
        .collect();
    let verdict = verdict(capability, &probes);
    if retried.is_empty() {
        verdict
    } else {
        format!("{verdict}; passed on a 2nd try: {}", retried.join(", "))
    }
}

fn verdict(capability: &str, probes: &[serde_json::Value]) -> String {
    match capability {
        "TC mode" if probe_ok(probes, "tcx") == Some(false) => {
            "works (fallback: netlink cls_bpf, no tcx)".into()
        }
        "TC mode" => "works (tcx)".into(),
        "PROXY protocol v1/v2 (--proxy-protocol)"
            if probe_ok(probes, "ttm_proxy_verdict") == Some(false)
                || probe_ok(probes, "ttm_proxy_ingress") == Some(false) =>
        {
            "not on this kernel (`ttm doctor` says why: before 5.11, or the verifier refuses); \
             the daemon refuses --proxy-protocol at start (tested)"
                .into()
        }
        "PROXY protocol v1/v2 (--proxy-protocol)"
            if ["ttm_tc_first", "ttm_tc_cut", "ttm_tc_egress"]
                .iter()
                .any(|p| probe_ok(probes, p) == Some(false)) =>
        {
            "works on the sockmap path only: this verifier refuses the cut at the interface \
             (`ttm doctor`), and --proxy-interface falls back with a warning"
                .into()
        }
        "getsockopt 1345 + accept()/getpeername() rewrite"
            if probe_ok(probes, "getsockopt errno") == Some(false) =>
        {
            "works (short buffer: EFAULT, not EINVAL)".into()
        }
        _ => "works".into(),
    }
}

/// The compatibility table (markdown) for the kernels run.
pub fn table(results: &[(String, Vec<Outcome>)]) -> String {
    let mut s = String::from("| capability |");
    for (kernel, _) in results {
        s.push_str(&format!(" {kernel} |"));
    }
    s.push_str("\n| --- |");
    for _ in results {
        s.push_str(" --- |");
    }
    s.push('\n');
    for (capability, runs) in CAPABILITIES {
        let label = if capability == "kernel" {
            "kernel release"
        } else {
            capability
        };
        s.push_str(&format!("| {label} |"));
        for (kernel, outcomes) in results {
            s.push_str(&format!(" {} |", cell(kernel, capability, runs, outcomes)));
        }
        s.push('\n');
    }
    s
}

/// Writes `table` into README.md between its matrix markers.
pub fn update_readme(table: &str) -> Result<()> {
    const BEGIN: &str = "<!-- kernel-matrix:begin -->";
    const END: &str = "<!-- kernel-matrix:end -->";
    let path = root()?.join("README.md");
    let text = fs::read_to_string(&path)?;
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        bail!("README.md lacks the {BEGIN} … {END} markers");
    };
    let updated = format!("{}{BEGIN}\n{table}{}", &text[..b], &text[e..]);
    fs::write(&path, updated)?;
    println!("xtask: README.md's kernel table updated");
    Ok(())
}
