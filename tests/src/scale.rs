//! Holding many real connections through the lab at once (the scale test
//! and bench): servers in the real server's namespace, clients in the
//! client's, spread over processes because one may hold at most 20,000
//! descriptors here, one listening port per server process.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::lab::{self, Lab};
use crate::process::{spawn_in, Guarded};

/// Connections per server (and per client) process.
pub const PER_PROCESS: usize = 15_000;
/// First port the hold servers listen on.
const FIRST_PORT: u16 = 9100;

/// Connections held open through the lab, released on drop.
pub struct HeldConnections {
    servers: Vec<Guarded>,
    clients: Vec<Guarded>,
    /// Each server's report (see `ttm-lab hold-server`).
    pub reports: Vec<serde_json::Value>,
    /// From the first connect until every client had all its connections.
    pub setup: Duration,
}

impl HeldConnections {
    /// Sum of `key` over the servers' reports.
    pub fn total(&self, key: &str) -> u64 {
        self.reports.iter().filter_map(|r| r[key].as_u64()).sum()
    }

    /// Closes every connection (clients first) and waits for the processes.
    pub fn release(mut self) {
        for p in self.clients.iter_mut().chain(self.servers.iter_mut()) {
            p.close_stdin();
        }
        for p in self.clients.iter_mut().chain(self.servers.iter_mut()) {
            let _ = p.wait(Duration::from_secs(60));
        }
    }
}

/// Opens `total` connections from the lab's client through the LB to hold
/// servers that ask the daemon on `socket` about each. `lab_bin` is the
/// `ttm-lab` binary.
pub fn hold(lab: &Lab, lab_bin: &Path, socket: &Path, total: usize) -> Result<HeldConnections> {
    // One (client, VIP, port) triple offers as many source ports as the range.
    lab::in_ns(
        lab::CLIENT_NS,
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"],
    )?;
    let processes = total.div_ceil(PER_PROCESS);
    let share = |i: usize| total / processes + usize::from(i < total % processes);
    let socket = socket.to_string_lossy().into_owned();
    let mut servers = Vec::with_capacity(processes);
    for i in 0..processes {
        let (listen, count) = (
            format!("0.0.0.0:{}", FIRST_PORT + i as u16),
            share(i).to_string(),
        );
        let server = spawn_in(
            lab_bin,
            &lab.rs_cgroup(),
            lab::RS_NS,
            &[
                "hold-server",
                "--listen",
                &listen,
                "--count",
                &count,
                "--lookup",
                &socket,
            ],
        )?;
        server.wait_for(Duration::from_secs(10), |l| l.starts_with("listening"))?;
        servers.push(server);
    }
    let started = Instant::now();
    let mut clients = Vec::with_capacity(processes);
    for i in 0..processes {
        let (to, count) = (
            format!("{}:{}", lab::VIP, FIRST_PORT + i as u16),
            share(i).to_string(),
        );
        clients.push(spawn_in(
            lab_bin,
            &lab.client_cgroup(),
            lab::CLIENT_NS,
            &["hold-client", "--to", &to, "--count", &count],
        )?);
    }
    let limit = Duration::from_secs(60 + (total / 500) as u64);
    for c in &clients {
        let line = c
            .wait_for(limit, |l| l.starts_with('{'))
            .context("a hold client did not connect all its connections")?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        if v["connected"].as_u64().is_none() {
            bail!("hold client: {line}");
        }
    }
    let setup = started.elapsed();
    let mut reports = Vec::with_capacity(processes);
    for s in &servers {
        let line = s
            .wait_for(limit, |l| l.starts_with('{'))
            .context("a hold server did not report")?;
        reports.push(serde_json::from_str(&line)?);
    }
    Ok(HeldConnections {
        servers,
        clients,
        reports,
        setup,
    })
}
