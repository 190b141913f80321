//! The benchmark sections, run in order against one lab: one file per
//! section; this file holds the sizes, the run order and what sections share.

mod cold_start;
mod connection_rate;
mod floor;
mod lookups;
mod per_call;
mod proxy_protocol;
mod real_connections;
mod scale;
mod udp;

use cold_start::cold_start;
use connection_rate::connection_rate;
use floor::service_floor;
use lookups::lookups;
use per_call::per_call;
use proxy_protocol::proxy_protocol;
use real_connections::real_connections;
use scale::scale;
use udp::udp;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use ttm::pins::PinDir;
use ttm_common::{addr::v4_mapped, maps, ClientFamily, PeerRecord};
use ttm_lab::hijacker::Foreign;
use ttm_lab::lab::{self, Lab};
use ttm_lab::process::{spawn_in, Guarded};
use ttm_lab::TtmDaemon;

use crate::report::{self, Figure, Section};
use crate::stats::{min_median, Summary};

const PIN_DIR: &str = "/sys/fs/bpf/ttm-bench";
const PORT: u16 = 8080;

/// Counts for a full run and for the smoke run.
struct Sizes {
    rounds: usize,
    connections: usize,
    call_iterations: usize,
    lookups_one_client: usize,
    lookups_per_client_of_16: usize,
    /// Alternating daemon/floor rounds of the floor comparison.
    floor_rounds: usize,
    /// Requests per client per round of the floor comparison.
    floor_requests: usize,
    scale_levels: &'static [u64],
    scale_lookups: usize,
    real_connections: u64,
    /// How long each round of the UDP throughput comparison sends.
    udp_blast_ms: u64,
    /// Flows the marker files for the UDP kernel-bytes measure.
    udp_flows: u32,
    /// Flow-table sizes the UDP lookups are measured at.
    udp_levels: &'static [u64],
}

const FULL: Sizes = Sizes {
    rounds: 7,
    connections: 2000,
    call_iterations: 200_000,
    lookups_one_client: 20_000,
    lookups_per_client_of_16: 2_000,
    floor_rounds: 21,
    floor_requests: 5_000,
    scale_levels: &[1_000, 100_000, 1_000_000],
    scale_lookups: 5_000,
    real_connections: 100_000,
    udp_blast_ms: 1_000,
    udp_flows: 100_000,
    udp_levels: &[1_000, 100_000, 1_000_000],
};

const QUICK: Sizes = Sizes {
    rounds: 1,
    connections: 50,
    call_iterations: 2_000,
    lookups_one_client: 200,
    lookups_per_client_of_16: 20,
    floor_rounds: 1,
    floor_requests: 200,
    scale_levels: &[1_000, 10_000],
    scale_lookups: 200,
    real_connections: 2_000,
    udp_blast_ms: 200,
    udp_flows: 2_000,
    udp_levels: &[1_000, 10_000],
};

/// Runs every section and writes the report to `out`.
/// `only` names the sections to run (all when empty): connection-rate,
/// per-call, lookups, floor, scale, real-connections, cold-start,
/// proxy-protocol, udp.
pub fn run(quick: bool, out: &Path, only: &[String]) -> Result<()> {
    let sizes = if quick { &QUICK } else { &FULL };
    let lab = Lab::up().context("bringing the lab up")?;
    // Thousands of short connections: widen the client's port range.
    for setting in [
        "net.ipv4.ip_local_port_range=1024 65000",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        netns_sysctl(lab::CLIENT_NS, setting)?;
    }
    let mut sections = Vec::new();
    let mut chart = Vec::new();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let mut section = |name: &str, run: &mut dyn FnMut() -> Result<Section>| -> Result<()> {
        if wanted(name) {
            eprintln!("bench: {name}");
            sections.push(run()?);
        }
        Ok(())
    };
    section("connection-rate", &mut || connection_rate(&lab, sizes))?;
    section("per-call", &mut || per_call(&lab, sizes))?;
    section("lookups", &mut || lookups(&lab, sizes))?;
    section("floor", &mut || service_floor(&lab, sizes))?;
    section("scale", &mut || scale(&lab, sizes, &mut chart))?;
    section("real-connections", &mut || real_connections(&lab, sizes))?;
    section("cold-start", &mut || cold_start(&lab, sizes))?;
    section("proxy-protocol", &mut || proxy_protocol(&lab, sizes))?;
    section("udp", &mut || udp(&lab, sizes))?;
    drop(lab);
    report::write(out, quick, &sections, &chart)?;
    eprintln!("bench: wrote {}", out.display());
    Ok(())
}

fn netns_sysctl(ns: &str, setting: &str) -> Result<()> {
    let status = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw", setting])
        .status()?;
    if !status.success() {
        bail!("sysctl {setting} in {ns} failed");
    }
    Ok(())
}

fn me() -> Result<PathBuf> {
    std::env::current_exe().context("locating ttm-bench")
}

fn in_rs(lab: &Lab, args: &[&str]) -> Result<Guarded> {
    spawn_in(&me()?, &lab.rs_cgroup(), lab::RS_NS, args)
}

/// Runs a helper in the LB's namespace (its connections to the real server
/// come from the LB's address, which ttm trusts).
fn in_lb(lab: &Lab, args: &[&str]) -> Result<Guarded> {
    spawn_in(&me()?, &lab.plain_cgroup(), lab::LB_NS, args)
}

fn in_client(lab: &Lab, args: &[&str]) -> Result<Guarded> {
    spawn_in(&me()?, &lab.client_cgroup(), lab::CLIENT_NS, args)
}

fn daemon(lab: &Lab, extra: &[&str]) -> Result<TtmDaemon> {
    TtmDaemon::start(lab::LB_NET, &lab.rs_cgroup(), Path::new(PIN_DIR), extra)
}

fn json_line(p: &Guarded, timeout: Duration) -> Result<serde_json::Value> {
    let line = p.line(timeout)?;
    serde_json::from_str(&line).with_context(|| format!("helper said {line:?}"))
}

fn listening(p: &Guarded) -> Result<()> {
    p.wait_for(Duration::from_secs(10), |l| l == "listening")
        .map(|_| ())
}

fn vip() -> String {
    format!("{}:{PORT}", lab::VIP)
}

fn listen_all() -> String {
    format!("0.0.0.0:{PORT}")
}

// ---------------------------------------------------------------------------

/// Extra cgroups under the lab's, removed (with any process left) on drop.
struct ExtraCgroups(Vec<PathBuf>);

impl ExtraCgroups {
    fn create(lab: &Lab, names: &[&str]) -> Result<ExtraCgroups> {
        let base = lab
            .rs_cgroup()
            .parent()
            .context("the lab's cgroup directory")?
            .to_path_buf();
        let mut made = ExtraCgroups(Vec::new());
        for name in names {
            let dir = base.join(name);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            made.0.push(dir);
        }
        Ok(made)
    }
}

impl Drop for ExtraCgroups {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// What several sections measure with.

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `memlock` of a map fd, from fdinfo: the kernel's estimate of its memory.
fn map_memlock(map: &MapData) -> Result<u64> {
    use std::os::fd::{AsFd, AsRawFd};
    crate::helpers::fd_memlock(map.fd().as_fd().as_raw_fd())
}

/// Size of a kernel struct from vmlinux BTF, via bpftool.
fn kernel_struct_size(name: &str) -> Option<u64> {
    let out = Command::new("bpftool")
        .args(["btf", "dump", "file", "/sys/kernel/btf/vmlinux"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let needle = format!("STRUCT '{name}' size=");
    text.lines()
        .find_map(|l| l.split_once(&needle).map(|(_, rest)| rest.to_string()))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// The i-th synthetic record: every one has its own local address and
/// client, so both of its tuples are unique.
fn synthetic_record(i: u64) -> PeerRecord {
    let client = (u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) + i as u32).to_be_bytes();
    PeerRecord {
        client_addr: v4_mapped(client),
        peer_addr: v4_mapped([10, 0, 2, 1]),
        local_addr: v4_mapped([10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8]),
        established_ns: 1,
        client_port: 40_000,
        peer_port: 50_000,
        local_port: PORT,
        client_family: ClientFamily::FourToFour as u8,
        format_index: 0,
        option_kind: 254,
        option_len: 8,
        _pad: [0; 5],
        shared: 0,
        cookie: SYNTHETIC_COOKIES + i,
    }
}

/// (local, peer) socket addresses of a record, with the peer being the
/// client (`app_view`) or the kernel's peer.
fn synthetic_tuple(r: &PeerRecord, app_view: bool) -> (SocketAddr, SocketAddr) {
    let local = SocketAddr::new(ttm::records::to_ip(&r.local_addr), r.local_port);
    let peer = if app_view {
        SocketAddr::new(ttm::records::to_ip(&r.client_addr), r.client_port)
    } else {
        SocketAddr::new(ttm::records::to_ip(&r.peer_addr), r.peer_port)
    };
    (local, peer)
}

/// Tells the daemon that records were filed without events (the bench's
/// synthetic ones), as the kernel does when its ring is full: the daemon
/// then rebuilds its cookie and client index from the record map.
fn mark_events_lost(pins: &PinDir) -> Result<()> {
    let mut stats: aya::maps::PerCpuArray<MapData, u64> = aya::maps::PerCpuArray::try_from(
        Map::from_map_data(MapData::from_pin(pins.map(maps::STATS))?)?,
    )?;
    ttm::stats::add(&mut stats, ttm_common::Counter::EventsLost, 1)?;
    Ok(())
}

/// Files the i-th synthetic record in the pinned record map.
fn file_synthetic(records: &mut HashMap<MapData, maps::TcKey, PeerRecord>, i: u64) -> Result<()> {
    let r = synthetic_record(i);
    let (local, peer) = synthetic_tuple(&r, false);
    records.insert(ttm::records::tc_key(local, peer), r, 0)?;
    Ok(())
}

/// Synthetic cookies stay far from real ones (which count up from 1).
const SYNTHETIC_COOKIES: u64 = 1 << 48;
/// Where the scale daemon serves metrics (host namespace, loopback).
const METRICS_ADDR: &str = "127.0.0.1:9477";

/// Median of `n` timings of `f`, in ms.
fn median_ms(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(min_median(&times).1)
}

/// One scrape of the metrics endpoint.
fn scrape() -> Result<()> {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(METRICS_ADDR)?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    conn.read_to_string(&mut body)?;
    if !body.contains("ttm_live_records") {
        bail!("the metrics answer lacks ttm_live_records");
    }
    Ok(())
}

/// Batches per scale measurement (see [`latencies`]).
const BATCHES: usize = 5;

/// p50 and p99 (µs) of `n` timings of `f`, after `n / 4` untimed warm-up
/// calls, taken in [`BATCHES`] batches a moment apart: the p50 is the best
/// batch's, the p99 the median batch's. A round trip's latency here depends
/// mostly on whether the client and the daemon's thread share a CPU (same
/// CPU ≈ 15 µs, a wake-up across CPUs ≈ 50 µs, as the scheduler places them
/// batch by batch), which would otherwise swamp what the table size does.
fn latencies(n: usize, mut f: impl FnMut(u64) -> Result<()>) -> Result<(f64, f64)> {
    for k in 0..(n / 4) as u64 {
        f(k)?;
    }
    let per = (n / BATCHES).max(1);
    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    for b in 0..BATCHES {
        std::thread::sleep(Duration::from_millis(100));
        let mut all = Vec::with_capacity(per);
        for k in 0..per as u64 {
            let t = Instant::now();
            f(k + (b * per) as u64)?;
            all.push(t.elapsed().as_nanos() as u64);
        }
        let s = Summary::of(&mut all);
        p50s.push(s.p50 as f64 / 1000.0);
        p99s.push(s.p99 as f64 / 1000.0);
    }
    let best = p50s.iter().copied().fold(f64::MAX, f64::min);
    Ok((best, min_median(&p99s).1))
}

/// Kernel memory of map `name` under `pins`, from fdinfo `memlock`.
fn pinned_memlock(pins: &PinDir, name: &str) -> Result<u64> {
    map_memlock(&MapData::from_pin(pins.map(name))?)
}
