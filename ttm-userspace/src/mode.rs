//! `--mode`: where ttm reads the option — in sockops (the segment that
//! completes the handshake, Linux 5.10+), at TC ingress on `--interface`s
//! (any kernel with clsact, and sockets outside the cgroup), or both — and
//! how `auto` picks from what the kernel can do.

use std::fmt;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// What the operator asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Probe the kernel: sockops where it can read TCP headers (plus TC on
    /// the given interfaces), TC alone where it cannot.
    #[default]
    Auto,
    /// sockops reads the option; no TC program.
    Sockops,
    /// The TC ingress classifier reads the option on `--interface`s; sockops
    /// only moves its records into the sockets.
    Tc,
    /// Both read it; a socket's record comes from sockops first, TC second.
    Both,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Sockops => "sockops",
            Mode::Tc => "tc",
            Mode::Both => "both",
        })
    }
}

/// What the daemon attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The mode in force (never `Auto`).
    pub mode: Mode,
    /// The sockops program reads TCP headers (`ttm_sockops`); otherwise the
    /// header-free `ttm_sockops_tc` is attached.
    pub sockops_reads_headers: bool,
    /// The TC classifier runs on the interfaces.
    pub tc: bool,
}

impl Plan {
    /// Resolves `mode` given whether this kernel lets sockops read the
    /// handshake segment (`header_access`, a verifier probe) and the
    /// interfaces given. Returns the plan and why it was chosen.
    pub fn resolve(
        mode: Mode,
        header_access: bool,
        interfaces: &[String],
    ) -> Result<(Plan, String)> {
        let has_if = !interfaces.is_empty();
        let plan = |mode, sockops_reads_headers, tc| Plan {
            mode,
            sockops_reads_headers,
            tc,
        };
        let no_header_why = "this kernel's sockops cannot read TCP headers (the skb_data field \
                             of bpf_sock_ops needs Linux 5.10+)";
        match mode {
            Mode::Sockops | Mode::Both if !header_access => {
                bail!("--mode {mode}: {no_header_why} — use --mode tc with --interface IFACE")
            }
            Mode::Sockops if has_if => bail!(
                "--interface is for --mode tc, both or auto; --mode sockops attaches no TC program"
            ),
            Mode::Tc | Mode::Both if !has_if => bail!(
                "--mode {mode} needs --interface IFACE (repeatable): the interfaces the load \
                 balancers' packets arrive on"
            ),
            Mode::Sockops => Ok((plan(Mode::Sockops, true, false), "requested".into())),
            Mode::Tc => Ok((plan(Mode::Tc, false, true), "requested".into())),
            Mode::Both => Ok((plan(Mode::Both, true, true), "requested".into())),
            Mode::Auto => match (header_access, has_if) {
                (true, false) => Ok((
                    plan(Mode::Sockops, true, false),
                    "sockops can read TCP headers on this kernel; no --interface given".into(),
                )),
                (true, true) => Ok((
                    plan(Mode::Both, true, true),
                    "sockops can read TCP headers on this kernel, and --interface adds TC for \
                     sockets sockops does not see"
                        .into(),
                )),
                (false, true) => Ok((
                    plan(Mode::Tc, false, true),
                    format!("{no_header_why}; decoding at TC ingress instead"),
                )),
                (false, false) => bail!(
                    "{no_header_why}: give --interface IFACE so ttm decodes at TC ingress \
                     (--mode tc)"
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ifs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("eth{i}")).collect()
    }

    #[test]
    fn auto_follows_the_kernel_and_the_interfaces() {
        let pick = |header, n| Plan::resolve(Mode::Auto, header, &ifs(n)).map(|(p, _)| p.mode);
        assert_eq!(pick(true, 0).unwrap(), Mode::Sockops);
        assert_eq!(pick(true, 1).unwrap(), Mode::Both);
        assert_eq!(pick(false, 2).unwrap(), Mode::Tc);
        let err = format!("{:#}", pick(false, 0).unwrap_err());
        assert!(err.contains("--interface"), "{err}");
    }

    #[test]
    fn explicit_modes_check_what_they_need() {
        let (p, _) = Plan::resolve(Mode::Tc, true, &ifs(1)).unwrap();
        assert_eq!((p.sockops_reads_headers, p.tc), (false, true));
        let (p, _) = Plan::resolve(Mode::Both, true, &ifs(1)).unwrap();
        assert_eq!((p.sockops_reads_headers, p.tc), (true, true));
        let (p, _) = Plan::resolve(Mode::Sockops, true, &[]).unwrap();
        assert_eq!((p.sockops_reads_headers, p.tc), (true, false));
        for (mode, header, n, needle) in [
            (Mode::Tc, true, 0, "needs --interface"),
            (Mode::Both, true, 0, "needs --interface"),
            (Mode::Sockops, true, 1, "attaches no TC"),
            (Mode::Sockops, false, 0, "5.10"),
            (Mode::Both, false, 1, "5.10"),
        ] {
            let err = format!("{:#}", Plan::resolve(mode, header, &ifs(n)).unwrap_err());
            assert!(err.contains(needle), "{mode} {header} {n}: {err}");
        }
    }
}
