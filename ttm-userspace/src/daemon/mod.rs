//! `ttm daemon`: load the decoder, configure it, attach it to a cgroup, pin
//! its maps for the CLI, and undo all of it on shutdown. This file owns what
//! the daemon is told and its start; loading and attaching, adoption and
//! hand-over, and the run loop live in the modules below.

mod attach;
mod lifecycle;
mod record_events;
mod run;

pub use attach::compat_cgroups;
pub use lifecycle::{detach, remove_pins, HANDED_OVER_EXIT};

use attach::{
    attach_all, attach_proxy, choose_plan, compat_summary, planned_attachments, write_config,
    Witness,
};
use lifecycle::{hand_over, InstanceLock};

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use aya::{Ebpf, EbpfLoader};
use log::{info, warn};
use std::os::fd::AsFd;
use ttm_common::{format::FormatTable, maps};

use crate::host;
use crate::mode::Plan;
use crate::pins::{PinDir, LINKED_PROGRAMS, PINNED_MAPS};
use crate::service::{Limits, LookupService, PinnedDirectory};
use crate::trust::TrustedLbs;
use crate::EBPF_OBJECT;

/// Everything `ttm daemon` is told.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// LB networks whose options are trusted.
    pub trust: TrustedLbs,
    /// Decode options from any peer (unsafe; for labs only).
    pub trust_any: bool,
    /// cgroup v2 directory to attach to; `None` is the root of the cgroup2 mount.
    pub cgroup: Option<PathBuf>,
    /// cgroups whose apps get the getsockopt shim and the rewrite; empty is `cgroup`.
    pub compat_cgroups: Vec<PathBuf>,
    /// Attach the getsockopt shim.
    pub getsockopt: bool,
    /// Attach the live witness behind the rewrite.
    pub witness: bool,
    /// Where to pin the maps.
    pub pins: PinDir,
    /// Capacity of the record map.
    pub max_records: u32,
    /// Option layouts accepted.
    pub formats: FormatTable,
    /// Where the lookup service listens.
    pub socket: PathBuf,
    /// Group that may use the lookup socket (mode 0660).
    pub socket_group: Option<u32>,
    /// Bounds of the lookup service.
    pub limits: Limits,
    /// `getsockopt(SOL_IP, name)` returning `struct ttm_peer`.
    pub getsockopt_name: u32,
    /// `getsockopt(SOL_IP, name)` returning the NAT64 layout, if wanted.
    pub nat64_getsockopt_name: Option<u32>,
    /// Rewrite `accept()`/`getpeername()` to the client.
    pub rewrite: bool,
    /// Take over from a running daemon without a gap (`--upgrade`).
    pub upgrade: bool,
    /// Where the option is read (`--mode`).
    pub mode: crate::mode::Mode,
    /// Interfaces of the TC classifier (`--interface`).
    pub interfaces: Vec<String>,
    /// How the TC classifier attaches (`--tc-attach`).
    pub tc_attach: crate::tc::TcAttach,
    /// Orphaned TC records older than this are swept (`--tc-max-age`).
    pub tc_max_age: std::time::Duration,
    /// How often the static audit runs for the metrics; `None` is never.
    pub audit_interval: Option<std::time::Duration>,
    /// Local ports whose connections may begin with a PROXY header
    /// (`--proxy-protocol`), sorted, no repeats.
    pub proxy_ports: Vec<u16>,
    /// Interfaces where the TC program sends PROXY headers up alone
    /// (`--proxy-interface`); empty: those of `--interface` in a mode with TC.
    pub proxy_interfaces: Vec<String>,
    /// Interfaces whose ingress the UDP decoder watches (`--udp-interface`);
    /// empty: UDP is off.
    pub udp_interfaces: Vec<String>,
    /// How long a UDP flow may go without a datagram (`--udp-idle`).
    pub udp_idle: std::time::Duration,
    /// UDP flow table capacity (`--max-udp-flows`).
    pub max_udp_flows: u32,
}

impl DaemonConfig {
    /// Refuses a configuration that would trust nobody or everybody by accident.
    pub fn validate(&self) -> Result<()> {
        if self.trust.is_empty() && !self.trust_any {
            bail!(
                "no trusted load-balancer network given: pass --trust CIDR (the LB addresses the \
                 real server sees as peers, e.g. --trust 10.0.2.0/24). Without it any client could \
                 choose its own address; --trust-any disables the check and is unsafe"
            );
        }
        if self.max_records == 0 {
            bail!("--max-records must be at least 1");
        }
        if self.limits.max_clients == 0 {
            bail!("--max-clients must be at least 1");
        }
        if self.nat64_getsockopt_name == Some(self.getsockopt_name)
            || self.nat64_getsockopt_name == Some(0)
        {
            bail!(
                "--nat64-getsockopt must be a non-zero option name other than --getsockopt-name ({})",
                self.getsockopt_name
            );
        }
        Ok(())
    }
}

/// Interfaces of the TC program: `--interface` when the mode reads options
/// at TC, and those where PROXY headers are sent up alone
/// (`--proxy-interface`, else the same `--interface`s), each once.
fn tc_interfaces(config: &DaemonConfig, plan: &Plan) -> Vec<String> {
    let mut out: Vec<String> = if plan.tc {
        config.interfaces.clone()
    } else {
        Vec::new()
    };
    if !config.proxy_ports.is_empty() {
        for iface in &config.proxy_interfaces {
            if !out.contains(iface) {
                out.push(iface.clone());
            }
        }
        if out.is_empty() {
            warn!(
                "--proxy-protocol without --proxy-interface: PROXY connections stay on the \
                 kernel's sockmap receive path for their whole life, where blocking reads can \
                 fail with EAGAIN and, under bulk load, a segment can arrive twice (Linux 6.18) \
                 — give --proxy-interface IFACE, the interface the proxies' packets arrive on"
            );
        }
    }
    out
}

/// `PROXY_SOCKS`'s capacity: every live PROXY connection is in it, so
/// `--max-records`; 1 without `--proxy-protocol` (its bucket array, 16 bytes
/// per slot, is then not paid for). A pinned one too small for this config
/// that holds no socket is dropped so the load makes it anew; one that holds
/// sockets is kept (dropping it would end their PROXY handling), with a
/// warning.
fn proxy_socks_capacity(config: &DaemonConfig) -> u32 {
    if config.proxy_ports.is_empty() {
        return 1;
    }
    drop_small_empty_pin(config, maps::PROXY_SOCKS, config.max_records, |map| {
        aya::maps::SockHash::<_, u64>::try_from(aya::maps::Map::SockHash(map))
            .map(|m| m.keys().next().is_none())
            .unwrap_or(false)
    });
    config.max_records
}

/// Drops a pinned `PROXY_FLOWS` smaller than this config wants if it holds
/// no connection, as [`drop_small_empty_pin`] does.
fn resize_proxy_flows(config: &DaemonConfig) {
    if config.proxy_ports.is_empty() {
        return;
    }
    drop_small_empty_pin(config, maps::PROXY_FLOWS, config.max_records, |map| {
        aya::maps::HashMap::<_, maps::TcKey, ttm_common::shift::SeqShift>::try_from(
            aya::maps::Map::HashMap(map),
        )
        .map(|m| m.keys().next().is_none())
        .unwrap_or(false)
    });
}

/// Capacity of the TC path's LRU maps for `config`.
fn tc_capacity(config: &DaemonConfig) -> u32 {
    if config.interfaces.is_empty()
        && config.proxy_interfaces.is_empty()
        && config.proxy_ports.is_empty()
    {
        1
    } else {
        config.max_records.min(maps::DEFAULT_TC_CAPACITY)
    }
}

/// Drops pinned TC maps smaller than `capacity` if they hold nothing (a
/// daemon without interfaces pinned them with one entry).
fn resize_tc_maps(config: &DaemonConfig, capacity: u32) {
    drop_small_empty_pin(config, maps::TC_RECORDS, capacity, |map| {
        aya::maps::HashMap::<_, maps::TcKey, ttm_common::PeerRecord>::try_from(
            aya::maps::Map::LruHashMap(map),
        )
        .map(|m| m.keys().next().is_none())
        .unwrap_or(false)
    });
    drop_small_empty_pin(config, maps::TC_PENDING, capacity, |map| {
        aya::maps::HashMap::<_, maps::TcKey, u64>::try_from(aya::maps::Map::LruHashMap(map))
            .map(|m| m.keys().next().is_none())
            .unwrap_or(false)
    });
}

/// Removes pins of an earlier layout: the cookie-keyed record map (its key
/// is not a 4-tuple), the tuple index and the socket storage beside it.
/// Their records are lost (those connections keep working, as the LB's);
/// said once at start.
fn remove_obsolete_pins(config: &DaemonConfig) {
    let mut removed = Vec::new();
    let records = config.pins.map(maps::RECORDS);
    let old_records = aya::maps::MapData::from_pin(&records)
        .ok()
        .and_then(|m| m.info().ok())
        .is_some_and(|i| i.key_size() as usize != size_of::<maps::TcKey>());
    if old_records && fs::remove_file(&records).is_ok() {
        removed.push(maps::RECORDS);
    }
    // Counters and settings of another build's layout: the load would
    // reuse a map whose slots or value this build reads differently.
    for (name, value_size, entries) in [
        (
            maps::STATS,
            size_of::<u64>(),
            Some(ttm_common::Counter::COUNT),
        ),
        (maps::CONFIG, size_of::<ttm_common::Config>(), None),
    ] {
        let pin = config.pins.map(name);
        let other = aya::maps::MapData::from_pin(&pin)
            .ok()
            .and_then(|m| m.info().ok())
            .is_some_and(|i| {
                i.value_size() as usize != value_size
                    || entries.is_some_and(|n| i.max_entries() != n)
            });
        if other && fs::remove_file(&pin).is_ok() {
            removed.push(name);
        }
    }
    for name in maps::OBSOLETE_MAPS {
        if fs::remove_file(config.pins.map(name)).is_ok() {
            removed.push(name);
        }
    }
    if !removed.is_empty() {
        warn!(
            "removed pinned maps of an earlier ttm layout ({}): what they held starts \
             afresh — connections recorded before this start are no longer found (they keep \
             working), counters restart from 0",
            removed.join(", ")
        );
    }
}

/// A pinned map (`name`) smaller than `wanted`: removed if `empty` says it
/// holds nothing, so the load makes it anew; one that holds connections is
/// kept, with a warning (dropping it would end their handling).
fn drop_small_empty_pin(
    config: &DaemonConfig,
    name: &str,
    wanted: u32,
    empty: impl FnOnce(aya::maps::MapData) -> bool,
) {
    let pin = config.pins.map(name);
    let Ok(map) = aya::maps::MapData::from_pin(&pin) else {
        return;
    };
    let small = map
        .info()
        .map(|i| i.max_entries() < wanted)
        .unwrap_or(false);
    if !small {
        return;
    }
    if empty(map) {
        let _ = fs::remove_file(&pin);
    } else {
        warn!(
            "{} holds connections and is smaller than this configuration wants: kept; \
             restart ttm once they are gone to get the larger map",
            pin.display()
        );
    }
}

/// Loads the ingress program's tails into `PROXY_TAIL`: `ttm_tc_cut` (slot
/// 0) and `ttm_tc_first` (slot 1), the parts that cut PROXY headers out of
/// segments, each verified on its own.
fn load_cut_tail(ebpf: &mut Ebpf) -> Result<()> {
    let mut fds = Vec::new();
    for name in [crate::tc::TC_CUT_PROGRAM, crate::tc::TC_FIRST_PROGRAM] {
        let program: &mut aya::programs::SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("{name} is missing from the object"))?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("the kernel rejected {name} (see the verifier log above)"))?;
        fds.push(program.fd()?.try_clone()?);
    }
    let mut tail: aya::maps::ProgramArray<_> = aya::maps::ProgramArray::try_from(
        ebpf.map_mut(maps::PROXY_TAIL)
            .context("PROXY_TAIL missing")?,
    )?;
    for (slot, fd) in fds.iter().enumerate() {
        tail.set(slot as u32, fd, 0).context("filling PROXY_TAIL")?;
    }
    Ok(())
}

/// A running decoder. Dropping it detaches the program and removes the pins.
pub struct Daemon {
    /// Owns the loaded programs and maps (the links are pinned, not owned).
    _ebpf: Ebpf,
    pins: PinDir,
    cgroup: PathBuf,
    logger: Option<KernelLogger>,
    service: Option<LookupService>,
    /// Set on hand-over: leave links and pins for the next daemon.
    keep_attached: bool,
    /// The lookup service's counters, for the metrics endpoint.
    service_counters: Option<Arc<crate::service::ServiceCounters>>,
    /// Capacity of the record map.
    capacity: u32,
    /// The metrics endpoint, if serving.
    metrics: Option<tokio::task::JoinHandle<()>>,
    /// The witness programs, kept last in their chains.
    witnesses: Vec<Witness>,
    /// What is attached, by mode.
    plan: Plan,
    /// The TC classifier on each interface.
    tc_attachments: Vec<crate::tc::Attachment>,
    /// Orphaned TC records older than this are swept.
    tc_max_age: std::time::Duration,
    /// The periodic audit, if on.
    audit: Option<crate::audit_watch::AuditWatch>,
    /// `TCP_DEFER_ACCEPT` on the PROXY ports' listeners (`--proxy-protocol`).
    listeners: Option<crate::proxy_listeners::ListenerDeferrer>,
    _lock: InstanceLock,
}

type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

impl Daemon {
    /// Checks the host, loads and configures the programs, attaches and pins.
    pub fn start(config: &DaemonConfig) -> Result<Daemon> {
        config.validate()?;
        host::check_privileges()?;
        host::check_bpffs(config.pins.path())?;
        let cgroup = match &config.cgroup {
            Some(path) => path.clone(),
            None => host::cgroup2_mount()?,
        };
        host::check_cgroup2(&cgroup)?;
        for compat in &config.compat_cgroups {
            host::check_cgroup2(compat).context("--compat-cgroup")?;
        }
        for iface in config
            .interfaces
            .iter()
            .chain(&config.proxy_interfaces)
            .chain(&config.udp_interfaces)
        {
            crate::tc::ifindex(iface)?;
        }
        host::raise_open_files_limit();
        let lock = if config.upgrade {
            hand_over(config.pins.path())?
        } else {
            InstanceLock::acquire(config.pins.path())?
        };
        // Pins left by a crashed daemon keep the kernel side working: a
        // failed start must not remove them. Fresh ones it made, it removes.
        let adopting = LINKED_PROGRAMS
            .iter()
            .any(|name| config.pins.link(name).exists());
        Daemon::start_locked(config, cgroup, lock).inspect_err(|_| {
            if !adopting {
                remove_pins(&config.pins);
            }
        })
    }

    fn start_locked(config: &DaemonConfig, cgroup: PathBuf, lock: InstanceLock) -> Result<Daemon> {
        fs::create_dir_all(config.pins.path())
            .with_context(|| format!("creating pin directory {}", config.pins.path().display()))?;

        // Maps are pinned by name: a daemon after a crash or an upgrade
        // reuses them, with the records and counters they hold.
        let mut loader = EbpfLoader::new();
        remove_obsolete_pins(config);
        // The UDP flow table costs one entry without --udp-interface.
        let udp_capacity = if config.udp_interfaces.is_empty() {
            1
        } else {
            config.max_udp_flows
        };
        drop_small_empty_pin(config, maps::UDP_FLOWS, udp_capacity, |map| {
            aya::maps::HashMap::<_, ttm_common::udp::UdpFlowKey, ttm_common::udp::UdpFlow>::try_from(
                aya::maps::Map::HashMap(map),
            )
            .map(|m| m.keys().next().is_none())
            .unwrap_or(false)
        });
        loader.map_max_entries(maps::UDP_FLOWS, udp_capacity);
        loader.map_max_entries(maps::RECORDS, config.max_records);
        // The TC maps are preallocated LRUs holding only handshakes in flight
        // and sockets sockops does not see: bounded, whatever --max-records
        // is, and one entry where nothing fills them (no interface, no PROXY
        // port), so an idle daemon costs only the record map's buckets.
        let tc_capacity = tc_capacity(config);
        resize_tc_maps(config, tc_capacity);
        loader.map_max_entries(maps::TC_RECORDS, tc_capacity);
        loader.map_max_entries(maps::TC_PENDING, tc_capacity);
        loader.map_max_entries(maps::PROXY_SOCKS, proxy_socks_capacity(config));
        resize_proxy_flows(config);
        // The PROXY maps cost nothing without --proxy-protocol.
        let proxy = !config.proxy_ports.is_empty();
        for (name, capacity) in [
            (maps::PROXY_FLOWS, config.max_records),
            (maps::PROXY_SYNS, maps::PROXY_SYNS_CAPACITY),
            (maps::PROXY_TLV_STASH, maps::PROXY_TLV_STASH_CAPACITY),
        ] {
            loader.map_max_entries(name, if proxy { capacity } else { 1 });
        }
        for name in PINNED_MAPS {
            loader.map_pin_path(name, config.pins.map(name));
        }
        let mut ebpf = loader.load(EBPF_OBJECT).context(
            "loading the ttm eBPF object — the kernel needs BTF, BPF_MAP_TYPE_SK_STORAGE and \
                 sockops (Linux 5.10+); before Linux 5.11 maps count against RLIMIT_MEMLOCK: \
                 raise it (systemd: LimitMEMLOCK=infinity) or grant CAP_SYS_RESOURCE",
        )?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                // The programs log only rare events; running without them is fine.
                warn!("kernel-side logs unavailable: {e}");
                None
            }
        };
        // The verdict program first: sockops watches PROXY ports only once
        // the config says so, and then the program is there.
        attach_proxy(&mut ebpf, config)?;
        let plan = choose_plan(&mut ebpf, config)?;
        write_config(&mut ebpf, config, plan.tc)?;
        let (mut adopted, witnesses) = attach_all(&mut ebpf, config, &plan, &cgroup)?;
        let cgroup_attachments = planned_attachments(config, &plan, &cgroup)?.len();
        let mut tc_program_ids = std::collections::BTreeSet::new();
        let ingress_interfaces = tc_interfaces(config, &plan);
        // Where headers are cut, acknowledgments are renumbered on the way out.
        let egress_interfaces = if config.proxy_ports.is_empty() {
            Vec::new()
        } else {
            ingress_interfaces.clone()
        };
        let mut tc_attachments = Vec::new();
        for (hook, interfaces) in [
            (crate::tc::INGRESS, &ingress_interfaces),
            (crate::tc::EGRESS, &egress_interfaces),
            (crate::tc::UDP_INGRESS, &config.udp_interfaces),
        ] {
            if interfaces.is_empty() {
                // A previous daemon's links are no longer wanted.
                for pin in crate::tc::pinned_tcx_links(&hook, &config.pins) {
                    fs::remove_file(&pin)
                        .with_context(|| format!("unpinning {}", pin.display()))?;
                    info!("{} detached (not wanted by this config)", pin.display());
                }
                continue;
            }
            if hook == crate::tc::INGRESS && !config.proxy_ports.is_empty() {
                if let Err(e) = load_cut_tail(&mut ebpf) {
                    // The ingress program still holds handshakes back; without
                    // its tails every header goes the stream verdict's way.
                    warn!(
                        "PROXY headers cannot be cut at the interface on this kernel ({e:#}): \
                         they are removed on the sockmap path instead — `ttm doctor` says which \
                         program the verifier refused"
                    );
                }
            }
            let program: &mut aya::programs::SchedClassifier = ebpf
                .program_mut(hook.program)
                .with_context(|| format!("{} is missing from the object", hook.program))?
                .try_into()?;
            program.load().with_context(|| {
                format!(
                    "the kernel rejected the TC program {} (see the verifier log above)",
                    hook.program
                )
            })?;
            if let Ok(id) = program
                .fd()
                .map_err(anyhow::Error::from)
                .and_then(|fd| Ok(crate::links::prog_id(fd.as_fd())?))
            {
                tc_program_ids.insert(id);
            }
            let (attachments, taken_over) =
                crate::tc::attach_all(&hook, program, interfaces, &config.pins, config.tc_attach)?;
            crate::tc::log_attachments(&attachments);
            adopted += taken_over;
            tc_attachments.extend(attachments);
        }

        let audit = config.audit_interval.map(|interval| {
            crate::audit_watch::AuditWatch::start(
                config.pins.clone(),
                interval,
                tc_program_ids,
                (cgroup_attachments + tc_attachments.len()) as u64,
            )
        });
        // Where headers are cut at the interface, the TC program holds the
        // handshake back itself: a kernel deferral would also ignore a
        // header-only first segment once it is cut to nothing.
        let listeners =
            (!config.proxy_ports.is_empty() && egress_interfaces.is_empty()).then(|| {
                let mut d = crate::proxy_listeners::ListenerDeferrer::new(
                    config.proxy_ports.clone(),
                    cgroup.clone(),
                );
                d.scan();
                d
            });
        let mut daemon = Daemon {
            listeners,
            audit,
            _ebpf: ebpf,
            pins: config.pins.clone(),
            cgroup,
            logger,
            service: None,
            keep_attached: false,
            service_counters: None,
            capacity: config.max_records,
            metrics: None,
            witnesses,
            plan,
            tc_attachments,
            tc_max_age: config.tc_max_age,
            _lock: lock,
        };
        if adopted > 0 {
            info!(
                "took over {adopted} pinned attachment(s) with an atomic program swap: no connection went unrecorded"
            );
        }
        let mut directory = PinnedDirectory::open(&daemon.pins, daemon.plan.tc)
            .context("opening the pinned maps")?;
        if !config.udp_interfaces.is_empty() {
            directory = directory
                .with_udp(&daemon.pins, config.udp_idle)
                .context("opening the pinned UDP flow table")?;
        }
        record_events::spawn(&daemon.pins, directory.index())
            .context("following the record events")?;
        if !config.udp_interfaces.is_empty() {
            crate::udp_flows::spawn_expiry(&daemon.pins, config.udp_idle)
                .context("expiring idle UDP flows")?;
            info!(
                "UDP: flows marked by --trust LBs on {} are filed (at most {}), expire after {} s                  idle{}",
                config.udp_interfaces.join(", "),
                config.max_udp_flows,
                config.udp_idle.as_secs(),
                if config.getsockopt {
                    ", answered by getsockopt(IPPROTO_IP, 2048) as uoa.ko answers it"
                } else {
                    "; --no-getsockopt: apps cannot ask for them (the UOA lookup is the getsockopt shim)"
                }
            );
        }
        let service = LookupService::bind(
            &config.socket,
            config.socket_group,
            config.limits,
            Arc::new(directory),
        )
        .context("starting the lookup service")?;
        daemon.service_counters = Some(service.counters());
        daemon.service = Some(service);
        info!(
            "ttm in {} mode: {} on cgroup {}{} — trusting {} — getsockopt(SOL_IP, {}){} — accept()/getpeername() {} — maps pinned in {}",
            daemon.plan.mode,
            if daemon.plan.sockops_reads_headers {
                "sockops reads the option"
            } else {
                "sockops takes TC's records"
            },
            daemon.cgroup.display(),
            if daemon.tc_attachments.is_empty() {
                String::new()
            } else {
                format!(
                    ", TC on {}",
                    daemon
                        .tc_attachments
                        .iter()
                        .map(|a| format!("{} {} ({})", a.iface(), a.side(), a.kind()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            if config.trust_any {
                "ANY peer (--trust-any: clients can forge their address)".to_string()
            } else {
                config
                    .trust
                    .networks()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            config.getsockopt_name,
            config
                .nat64_getsockopt_name
                .map(|n| format!(" and NAT64 getsockopt(SOL_IP, {n})"))
                .unwrap_or_default(),
            if config.rewrite {
                "return the client"
            } else {
                "untouched (--no-rewrite)"
            },
            daemon.pins.path().display()
        );
        for line in compat_summary(config, &daemon.cgroup) {
            info!("{line}");
        }
        Ok(daemon)
    }
}
