//! `ttm verify`: who can change the peer address an application sees.
//!
//! The static audit lists every BPF program attached where it can rewrite
//! or observe peers — each cgroup's sock_addr, sockopt and sock_ops hooks,
//! and TC/XDP in every network namespace — marks ttm's own (the programs
//! behind its pinned links) and flags foreign ones that can rewrite a peer.
//! `--pid` checks one process's sockets: what the app sees against the
//! kernel's peer and ttm's record.

mod audit;
pub mod insns;
mod live;
mod process;

use serde::Serialize;

pub use audit::{audit, audit_attachments, AuditError};
pub use live::{caught, witness_attached, Caught};
pub use process::{audit_process, ProcessError, SocketView, Verdict};

/// What a program was found to do to the addresses either side of a
/// connection relies on, read from its instructions (see [`insns`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Power {
    /// Writes an address a hook hands back or uses (what `accept()`,
    /// `getpeername()`, `getsockname()`, `recvmsg()` return, where a
    /// connection goes or what it binds to), a getsockopt answer, packet
    /// bytes, TCP header options, or redirects packets.
    RewritesPeer,
    /// No such write found: it can only observe.
    Observes,
    /// Its instructions could not be read, or it jumps where the analysis
    /// cannot follow (tail calls, kernel functions): flagged conservatively.
    CannotTell,
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
    /// What it was found to do.
    pub power: Power,
    /// The evidence: each write (instruction, field or helper, whose view
    /// it changes) and each place the analysis could not follow.
    pub evidence: Vec<insns::Evidence>,
    /// Whose view of addresses its writes change, in short.
    pub affects: Vec<insns::Direction>,
    /// Attached by this host's ttm.
    pub ttm: bool,
}

impl Finding {
    /// A foreign program that writes addresses, answers, packets or options
    /// someone relies on — or that the analysis cannot clear.
    pub fn is_threat(&self) -> bool {
        !self.ttm && self.power != Power::Observes
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
