//! `ttm daemon`: load the decoder, configure it, attach it to a cgroup, pin
//! its maps for the CLI, and undo all of it on shutdown.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use aya::maps::{lpm_trie::Key, Array, LpmTrie};
use aya::{Ebpf, EbpfLoader};
use log::{info, warn};
use std::os::fd::AsFd;
use ttm_common::{format::FormatTable, maps, Config, TrustKey};

use crate::host;
use crate::mode::{Mode, Plan};
use crate::pins::{self, PinDir, LINKED_PROGRAMS, PINNED_MAPS};
use crate::service::{Limits, LookupService, PinnedDirectory};
use crate::tc::TC_PROGRAM;
use crate::trust::TrustedLbs;
use crate::{EBPF_OBJECT, GETSOCKOPT_PROGRAM, SOCKOPS_JOIN_PROGRAM, SOCKOPS_PROGRAM};

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
    /// Capacity of the cookie map.
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
    /// Capacity of the cookie map.
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
        for iface in &config.interfaces {
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
        loader.map_max_entries(maps::RECORDS, config.max_records);
        loader.map_max_entries(maps::TUPLES, maps::tuples_capacity(config.max_records));
        // The TC maps are preallocated LRUs holding only handshakes in flight
        // and sockets sockops does not see: bounded, whatever --max-records is.
        let tc_capacity = config.max_records.min(maps::DEFAULT_TC_CAPACITY);
        loader.map_max_entries(maps::TC_RECORDS, tc_capacity);
        loader.map_max_entries(maps::TC_PENDING, tc_capacity);
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
        write_config(&mut ebpf, config)?;
        let plan = choose_plan(&mut ebpf, config)?;
        let (mut adopted, witnesses) = attach_all(&mut ebpf, config, &plan, &cgroup)?;
        let cgroup_attachments = planned_attachments(config, &plan, &cgroup)?.len();
        let mut tc_program_ids = std::collections::BTreeSet::new();
        let tc_attachments = if plan.tc {
            let program: &mut aya::programs::SchedClassifier = ebpf
                .program_mut(TC_PROGRAM)
                .context("the TC program is missing from the object")?
                .try_into()?;
            program.load().context(
                "the kernel rejected the TC ingress program (see the verifier log above)",
            )?;
            if let Ok(id) = program
                .fd()
                .map_err(anyhow::Error::from)
                .and_then(|fd| Ok(crate::links::prog_id(fd.as_fd())?))
            {
                tc_program_ids.insert(id);
            }
            let (attachments, taken_over) =
                crate::tc::attach_all(program, &config.interfaces, &config.pins, config.tc_attach)?;
            crate::tc::log_attachments(&attachments);
            adopted += taken_over;
            attachments
        } else {
            // A previous daemon's TC links are no longer wanted.
            for pin in crate::tc::pinned_tcx_links(&config.pins) {
                fs::remove_file(&pin).with_context(|| format!("unpinning {}", pin.display()))?;
                info!("{} detached (no TC in this mode)", pin.display());
            }
            Vec::new()
        };

        let audit = config.audit_interval.map(|interval| {
            crate::audit_watch::AuditWatch::start(
                config.pins.clone(),
                interval,
                tc_program_ids,
                (cgroup_attachments + tc_attachments.len()) as u64,
            )
        });
        let mut daemon = Daemon {
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
        let directory = PinnedDirectory::open(&daemon.pins, daemon.plan.tc)
            .context("opening the pinned maps")?;
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
                    ", TC ingress on {}",
                    daemon
                        .tc_attachments
                        .iter()
                        .map(|a| format!("{} ({})", a.iface(), a.kind()))
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

    /// Serves Prometheus metrics on `addr` while the daemon runs.
    pub async fn serve_metrics(&mut self, addr: std::net::SocketAddr) -> Result<()> {
        self.metrics = Some(
            crate::metrics::serve(
                addr,
                self.pins.clone(),
                self.service_counters.clone(),
                self.capacity,
                self.audit.as_ref().map(|a| a.last.clone()),
            )
            .await?,
        );
        Ok(())
    }

    /// Runs until SIGINT or SIGTERM, forwarding kernel-side logs.
    /// Returns `true` when it handed over (SIGUSR2) instead of detaching.
    pub async fn run_until_signal(mut self) -> Result<bool> {
        use tokio::io::unix::AsyncFd;
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hand_over = signal(SignalKind::user_defined2())?;
        let mut watch = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut sweep_tick = tokio::time::interval(crate::sweep::interval(self.tc_max_age));
        let mut sweeper = crate::sweep::Sweeper::open(&self.pins, self.tc_max_age)
            .inspect_err(|e| warn!("TC record sweep unavailable: {e:#}"))
            .ok();
        let mut logs = match self.logger.take() {
            // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd lives.
            Some(l) => Some(
                unsafe { AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE) }
                    .map_err(|e| e.into_parts().1)?,
            ),
            None => None,
        };
        let service = self.service.take().map(|s| tokio::spawn(s.serve()));
        let stats_map = crate::stats::open(&self.pins)
            .inspect_err(|e| warn!("limit checks unavailable: {e}"))
            .ok();
        let mut last_stats = stats_map.as_ref().and_then(|m| crate::stats::read(m).ok());
        println!("ttm: ready");
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: detaching"); break }
                _ = int.recv() => { info!("SIGINT: detaching"); break }
                _ = watch.tick() => {
                    if let Err(e) = keep_witnesses_last(&self.witnesses) {
                        warn!("checking the witness order: {e:#}");
                    }
                    if let (Some(map), Some(before)) = (&stats_map, &mut last_stats) {
                        if let Ok(now) = crate::stats::read(map) {
                            for (limit, new) in crate::limits::newly_reached(before, &now) {
                                warn!(
                                    "{new} new connection(s) hit a limit ({} = {}): {}",
                                    limit.counter.name(),
                                    limit.connections,
                                    limit.advice
                                );
                            }
                            *before = now;
                        }
                    }
                }
                _ = sweep_tick.tick(), if sweeper.is_some() => {
                    if let Some(sweeper) = sweeper.as_mut() {
                        if let Err(e) = sweeper.sweep() {
                            warn!("sweeping TC records: {e:#}");
                        }
                    }
                }
                _ = hand_over.recv() => {
                    info!("SIGUSR2: handing over to a new daemon; programs stay attached");
                    self.keep_attached = true;
                    break
                }
                guard = async { logs.as_mut().expect("guarded").readable_mut().await }, if logs.is_some() => {
                    let mut guard = guard?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
        }
        if let Some(service) = service {
            service.abort();
            // Dropping the service removes its socket file.
            let _ = service.await;
        }
        if let Some(metrics) = self.metrics.take() {
            metrics.abort();
        }
        drop(logs);
        let handed_over = self.keep_attached;
        drop(self);
        Ok(handed_over)
    }
}

/// Exit status of a daemon that handed over (SIGUSR2): non-zero, so that
/// systemd's `Restart=on-failure` starts the next daemon, which adopts the pins.
pub const HANDED_OVER_EXIT: u8 = 75;

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.keep_attached {
            info!(
                "handed over: programs stay attached to {}, pins kept in {}",
                self.cgroup.display(),
                self.pins.path().display()
            );
            return;
        }
        for attachment in &self.tc_attachments {
            attachment.detach();
        }
        remove_pins(&self.pins);
        info!("ttm detached from {}; pins removed", self.cgroup.display());
        // `ebpf` drops after this, closing the programs.
    }
}

/// Removes ttm's pins — links first, which detaches the programs — and the
/// directory if it is then empty. Missing pins are fine. Returns how many
/// pins were removed.
pub fn remove_pins(pins: &PinDir) -> usize {
    let mut removed = 0;
    // Every link: sockops, the app-facing programs of each compat cgroup,
    // the TC classifier's tcx links.
    for pin in pins.link_pins() {
        removed += usize::from(fs::remove_file(pin).is_ok());
    }
    for name in PINNED_MAPS {
        removed += usize::from(fs::remove_file(pins.map(name)).is_ok());
    }
    let _ = fs::remove_dir(pins.path());
    removed
}

/// `ttm detach`: removes everything a daemon on `pins` attached and pinned
/// (after a crash, or to stop using ttm), refusing while a daemon runs.
pub fn detach(pins: &PinDir) -> Result<usize> {
    let _lock = InstanceLock::acquire(pins.path()).context(
        "a daemon is running on this pin directory — stop it with SIGTERM (it detaches everything itself)",
    )?;
    Ok(remove_pins(pins))
}

/// Asks the daemon holding `pin_dir`'s lock to exit without detaching
/// (SIGUSR2), and takes the lock once it has let go.
fn hand_over(pin_dir: &Path) -> Result<InstanceLock> {
    let lock = InstanceLock::path_for(pin_dir);
    let holder: Option<i32> = fs::read_to_string(&lock)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    match holder {
        // SAFETY: plain kill(2).
        Some(pid) if unsafe { libc::kill(pid, libc::SIGUSR2) } == 0 => {
            info!("--upgrade: asked daemon pid {pid} to hand over");
        }
        _ => info!("--upgrade: no running daemon on {}", pin_dir.display()),
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match InstanceLock::acquire(pin_dir) {
            Ok(lock) => return Ok(lock),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(
                    e.context("the running daemon did not hand over within 20 s — check its log")
                )
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// One program ttm attaches to the cgroup.
struct Attachment {
    /// The program attached through it (also names the pinned link).
    program: &'static str,
    attach_type: u32,
    /// Where, and the link's pin.
    cgroup: PathBuf,
    pin: PathBuf,
}

/// A witness program, the cgroup it watches and where its link is pinned.
struct Witness {
    name: &'static str,
    attach_type: u32,
    prog: std::os::fd::OwnedFd,
    prog_id: u32,
    cgroup: PathBuf,
    pin: PathBuf,
}

/// The app-facing programs (attached per compat cgroup), in attach order:
/// the witnesses after the rewrite they check.
const COMPAT_PROGRAMS: [(&str, u32); 5] = [
    (LINKED_PROGRAMS[1], crate::links::attach_type::GETSOCKOPT),
    (LINKED_PROGRAMS[2], crate::links::attach_type::GETPEERNAME4),
    (LINKED_PROGRAMS[3], crate::links::attach_type::GETPEERNAME6),
    (LINKED_PROGRAMS[4], crate::links::attach_type::GETPEERNAME4),
    (LINKED_PROGRAMS[5], crate::links::attach_type::GETPEERNAME6),
];

/// Where the app-facing hooks are and what they cost, for the startup log.
fn compat_summary(config: &DaemonConfig, decoder: &Path) -> Vec<String> {
    let cgroups = compat_cgroups(config, decoder)
        .iter()
        .map(|c| c.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = Vec::new();
    out.push(if config.getsockopt {
        format!(
            "getsockopt shim on {cgroups}: every getsockopt() by processes under these cgroups,              whatever the option, pays for it (the kernel copies the option in and out for              any cgroup getsockopt program: about 300 ns here, see BENCHMARKS.md); narrow it              with --compat-cgroup, or --no-getsockopt if no app calls getsockopt(SOL_IP, {})",
            config.getsockopt_name
        )
    } else {
        "getsockopt shim off (--no-getsockopt): getsockopt(SOL_IP, 1345) answers ENOPROTOOPT,          no getsockopt pays anything"
            .to_string()
    });
    out.push(if config.rewrite {
        format!(
            "accept()/getpeername() rewrite on {cgroups}: one socket-storage lookup per call              under these cgroups"
        )
    } else {
        "accept()/getpeername() rewrite off (--no-rewrite)".to_string()
    });
    out.push(if config.witness {
        format!(
            "live witness on {cgroups} (--witness): a second program on every getpeername              there, checked by `ttm verify --live`"
        )
    } else {
        "live witness off: `ttm verify` audits attachments; --witness also checks every          getpeername answer as it happens"
            .to_string()
    });
    out
}

/// The cgroups whose apps get the shim and the rewrite: `--compat-cgroup`,
/// else the decoder's cgroup.
pub fn compat_cgroups(config: &DaemonConfig, decoder: &Path) -> Vec<PathBuf> {
    if config.compat_cgroups.is_empty() {
        vec![decoder.to_path_buf()]
    } else {
        config.compat_cgroups.clone()
    }
}

/// What `config` attaches, in order: sockops on the decoder's cgroup, then
/// per compat cgroup the shim, the rewrite and the witness as configured.
fn planned_attachments(
    config: &DaemonConfig,
    plan: &Plan,
    decoder: &Path,
) -> Result<Vec<Attachment>> {
    use crate::links::{self, attach_type};
    let decoder_id = links::cgroup_id(decoder)?;
    let mut out = vec![Attachment {
        program: if plan.sockops_reads_headers {
            SOCKOPS_PROGRAM
        } else {
            SOCKOPS_JOIN_PROGRAM
        },
        attach_type: attach_type::SOCK_OPS,
        cgroup: decoder.to_path_buf(),
        pin: config.pins.link(LINKED_PROGRAMS[0]),
    }];
    for cgroup in compat_cgroups(config, decoder) {
        let id = links::cgroup_id(&cgroup)
            .with_context(|| format!("--compat-cgroup {}", cgroup.display()))?;
        for (program, attach_type) in COMPAT_PROGRAMS {
            let wanted = match program {
                p if p == GETSOCKOPT_PROGRAM => config.getsockopt,
                p if pins::is_witness(p) => config.witness,
                _ => config.rewrite,
            };
            if wanted {
                out.push(Attachment {
                    program,
                    attach_type,
                    cgroup: cgroup.clone(),
                    pin: config.pins.compat_link(program, id, id == decoder_id),
                });
            }
        }
    }
    Ok(out)
}

/// Loads every program and attaches it through a pinned link: an existing
/// link to the same cgroup gets the new program by an atomic swap, else a new
/// link is created and pinned. Links no longer wanted are unpinned (which
/// detaches them). Returns how many links were taken over, and the witnesses.
fn attach_all(
    ebpf: &mut Ebpf,
    config: &DaemonConfig,
    plan: &Plan,
    cgroup: &Path,
) -> Result<(usize, Vec<Witness>)> {
    use crate::links;
    let wanted = planned_attachments(config, plan, cgroup)?;
    // Links of app-facing programs no longer wanted (a cgroup dropped from
    // --compat-cgroup, the shim or witness turned off) go first.
    for pin in config.pins.cgroup_link_pins() {
        if !wanted.iter().any(|a| a.pin == pin) {
            fs::remove_file(&pin).with_context(|| format!("unpinning {}", pin.display()))?;
            info!("{} detached (no longer configured)", pin.display());
        }
    }
    let mut adopted = 0;
    let mut witnesses = Vec::new();
    for a in wanted {
        let cgroup_file = File::open(&a.cgroup)
            .with_context(|| format!("opening cgroup {}", a.cgroup.display()))?;
        let cgroup_id = links::cgroup_id(&a.cgroup)?;
        let existing = links::open_pinned(&a.pin).ok();
        let prog_fd = load_program(ebpf, a.program)?;
        if pins::is_witness(a.program) {
            witnesses.push(Witness {
                name: a.program,
                attach_type: a.attach_type,
                prog: prog_fd.try_clone()?,
                prog_id: links::prog_id(prog_fd.as_fd())?,
                cgroup: a.cgroup.clone(),
                pin: a.pin.clone(),
            });
        }
        match existing {
            Some(link) if links::info(link.as_fd())?.cgroup_id == cgroup_id => {
                links::update(link.as_fd(), prog_fd.as_fd())
                    .with_context(|| format!("swapping the program behind {}", a.pin.display()))?;
                adopted += 1;
            }
            other => {
                if other.is_some() {
                    // Attached to another cgroup before: move it.
                    fs::remove_file(&a.pin)
                        .with_context(|| format!("unpinning {}", a.pin.display()))?;
                }
                let link = links::create(prog_fd.as_fd(), cgroup_file.as_fd(), a.attach_type)
                    .with_context(|| {
                        format!("attaching {} to cgroup {}", a.program, a.cgroup.display())
                    })?;
                links::pin(link.as_fd(), &a.pin).with_context(|| {
                    format!("pinning the link of {} at {}", a.program, a.pin.display())
                })?;
            }
        }
    }
    Ok((adopted, witnesses))
}

/// Moves each witness to the end of its chain if a program was attached
/// after it on the same cgroup, so that it sees every rewrite there.
fn keep_witnesses_last(witnesses: &[Witness]) -> Result<()> {
    use crate::links;
    for w in witnesses {
        let cgroup_file = File::open(&w.cgroup)?;
        let ids = links::query_cgroup(cgroup_file.as_fd(), w.attach_type)?;
        if ids.last() == Some(&w.prog_id) || !ids.contains(&w.prog_id) {
            continue;
        }
        let link = links::create(w.prog.as_fd(), cgroup_file.as_fd(), w.attach_type)?;
        let _ = fs::remove_file(&w.pin);
        links::pin(link.as_fd(), &w.pin)?;
        warn!(
            "a program (id {}) was attached after ttm's {} on {}: witness moved last — run `ttm verify` to see what it is",
            ids.last().copied().unwrap_or(0),
            w.name,
            w.cgroup.display()
        );
    }
    Ok(())
}

/// Loads program `name` (by its type) and returns a copy of its fd.
fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<std::os::fd::OwnedFd> {
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("{name} missing from the object"))?;
    let hint = match name {
        n if n == SOCKOPS_PROGRAM => "the kernel rejected the sockops program (see the verifier log above); on kernels before 5.10 use --mode tc",
        n if n == SOCKOPS_JOIN_PROGRAM => "the kernel rejected the sockops join program (see the verifier log above)",
        n if n == GETSOCKOPT_PROGRAM => "the kernel rejected the getsockopt shim (needs Linux 5.3+)",
        n if pins::is_witness(n) => "the kernel rejected a witness program (getpeername hooks need Linux 5.8+)",
        _ => "the kernel rejected a getpeername program (needs Linux 5.8+) — run with --no-rewrite to do without",
    };
    let fd = match program {
        // Loaded once: the mode probe may have loaded it already.
        aya::programs::Program::SockOps(p) => {
            if p.fd().is_err() {
                p.load().context(hint)?;
            }
            p.fd()?.as_fd().try_clone_to_owned()?
        }
        aya::programs::Program::CgroupSockopt(p) => {
            if p.fd().is_err() {
                p.load().context(hint)?;
            }
            p.fd()?.as_fd().try_clone_to_owned()?
        }
        aya::programs::Program::CgroupSockAddr(p) => {
            if p.fd().is_err() {
                p.load().context(hint)?;
            }
            p.fd()?.as_fd().try_clone_to_owned()?
        }
        _ => bail!("{name} has an unexpected program type"),
    };
    Ok(fd)
}

/// Resolves `--mode`: the feature probe is the verifier itself — whether it
/// accepts the sockops program that reads the handshake segment.
fn choose_plan(ebpf: &mut Ebpf, config: &DaemonConfig) -> Result<Plan> {
    let header_access = match config.mode {
        Mode::Tc => false,
        // Asked for explicitly: the verifier's own words if it refuses.
        Mode::Sockops | Mode::Both => {
            load_program(ebpf, SOCKOPS_PROGRAM)?;
            true
        }
        Mode::Auto => match load_program(ebpf, SOCKOPS_PROGRAM) {
            Ok(_) => true,
            Err(e) => {
                warn!("sockops cannot read TCP headers on this kernel: {e:#}");
                false
            }
        },
    };
    let (plan, why) = Plan::resolve(config.mode, header_access, &config.interfaces)?;
    if config.mode == Mode::Auto {
        info!("--mode auto chose {}: {why}", plan.mode);
    }
    Ok(plan)
}

fn write_config(ebpf: &mut Ebpf, config: &DaemonConfig) -> Result<()> {
    let mut trie: LpmTrie<_, TrustKey, u8> = LpmTrie::try_from(
        ebpf.map_mut(maps::TRUSTED_LBS)
            .context("TRUSTED_LBS missing")?,
    )?;
    let wanted = config.trust.trie_entries();
    for (prefix, addr) in &wanted {
        trie.insert(&Key::new(*prefix, *addr), 1, 0)
            .context("writing the trusted networks")?;
    }
    // The trie is pinned: a network a previous daemon trusted and this one
    // was not told stays trusted unless removed (after the inserts, so the
    // networks kept are never missing).
    let stale: Vec<Key<TrustKey>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
        .collect();
    for key in &stale {
        trie.remove(key)
            .context("removing a network no longer trusted")?;
    }
    if !stale.is_empty() {
        info!(
            "{} network(s) trusted before are no longer trusted",
            stale.len()
        );
    }
    let mut cfg: Array<_, Config> =
        Array::try_from(ebpf.map_mut(maps::CONFIG).context("CONFIG missing")?)?;
    cfg.set(
        0,
        Config {
            formats: config.formats,
            trust_any: u32::from(config.trust_any),
            getsockopt_name: config.getsockopt_name,
            nat64_getsockopt_name: config.nat64_getsockopt_name.unwrap_or(0),
            short_buffer_retval: short_buffer_retval(),
        },
        0,
    )
    .context("writing the decoder config")?;
    Ok(())
}

/// The getsockopt shim's answer to a buffer under 20 bytes on this kernel.
fn short_buffer_retval() -> i32 {
    if crate::links::sockopt_errno_supported() {
        -libc::EINVAL
    } else {
        warn!(
            "this kernel lets cgroup programs only clear getsockopt errors: a buffer under 20 \
             bytes for getsockopt(SOL_IP, 1345) gets EFAULT instead of EINVAL"
        );
        -libc::EFAULT
    }
}

/// An exclusive lock per pin directory, so two daemons never share pins.
struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// The lock file of `pin_dir`.
    fn path_for(pin_dir: &Path) -> PathBuf {
        let name = pin_dir
            .to_string_lossy()
            .trim_matches('/')
            .replace('/', "_");
        Path::new("/run/ttm").join(format!("{name}.lock"))
    }

    fn acquire(pin_dir: &Path) -> Result<InstanceLock> {
        let dir = Path::new("/run/ttm");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = InstanceLock::path_for(pin_dir);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: valid fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "another ttm daemon (pid {}) already owns {} — stop it first, or use another --pin-dir",
                holder.trim(),
                pin_dir.display()
            );
        }
        file.set_len(0)?;
        std::io::Write::write_all(&mut file, std::process::id().to_string().as_bytes())?;
        Ok(InstanceLock { _file: file, path })
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
