//! `ttm verify`: who can change the peer address an application sees.
//!
//! The static audit lists every BPF program attached where it can rewrite
//! or observe peers — each cgroup's sock_addr, sockopt and sock_ops hooks,
//! and TC/XDP in every network namespace — marks ttm's own (the programs
//! behind its pinned links) and flags foreign ones that can rewrite a peer.
//! `--pid` checks one process's sockets: what the app sees against the
//! kernel's peer and ttm's record.

mod audit;
mod live;
mod process;

use serde::Serialize;

pub use audit::{audit, AuditError};
pub use live::{caught, witness_attached, Caught};
pub use process::{audit_process, ProcessError, SocketView, Verdict};

/// What a hook lets a program do to the peer an application sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Power {
    /// Can change the address `accept()`/`getpeername()`/`recvmsg()` return,
    /// where a connection goes, or what a peer getsockopt answers.
    RewritesPeer,
    /// Sees connections or packets; cannot change the peer an app reads.
    Observes,
}

/// One attached program.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// Program id.
    pub id: u32,
    /// Program name (as the kernel keeps it: 15 characters).
    pub name: String,
    /// Program tag (hash of its instructions), hex.
    pub tag: String,
    /// Kernel program type number.
    pub prog_type: u32,
    /// Where it is attached: `cgroup <path> <hook>` or `netns <ns> <dev> <hook>`.
    pub attach_point: String,
    /// Seconds since the epoch when it was loaded.
    pub loaded_at: Option<u64>,
    /// Processes holding it (pid and command).
    pub held_by: Vec<String>,
    /// What its hook allows.
    pub power: Power,
    /// Attached by this host's ttm.
    pub ttm: bool,
}

impl Finding {
    /// A foreign program that can rewrite what apps see as their peer.
    pub fn is_threat(&self) -> bool {
        !self.ttm && self.power == Power::RewritesPeer
    }
}

/// The audit's result.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// cgroups walked.
    pub cgroups: usize,
    /// Network namespaces inspected.
    pub netns: usize,
    /// Everything attached.
    pub programs: Vec<Finding>,
    /// Parts that could not be inspected, and why.
    pub unchecked: Vec<String>,
}

impl Report {
    /// Foreign programs that can rewrite peers.
    pub fn threats(&self) -> impl Iterator<Item = &Finding> {
        self.programs.iter().filter(|f| f.is_threat())
    }
}
