//! `ttm daemon`: load the decoder, configure it, attach it to a cgroup, pin
//! its maps for the CLI, and undo all of it on shutdown.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use aya::maps::{lpm_trie::Key, Array, LpmTrie};
use aya::programs::{links::CgroupAttachMode, CgroupSockAddr, CgroupSockopt, SockOps};
use aya::{Ebpf, EbpfLoader};
use log::{info, warn};
use ttm_common::{format::FormatTable, maps, Config, TrustKey};

use crate::host;
use crate::pins::{PinDir, PINNED_MAPS};
use crate::service::{Limits, LookupService, PinnedDirectory};
use crate::trust::TrustedLbs;
use crate::{EBPF_OBJECT, GETPEERNAME_PROGRAMS, GETSOCKOPT_PROGRAM, SOCKOPS_PROGRAM};

/// Everything `ttm daemon` is told.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// LB networks whose options are trusted.
    pub trust: TrustedLbs,
    /// Decode options from any peer (unsafe; for labs only).
    pub trust_any: bool,
    /// cgroup v2 directory to attach to; `None` is the root of the cgroup2 mount.
    pub cgroup: Option<PathBuf>,
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
    ebpf: Ebpf,
    pins: PinDir,
    cgroup: PathBuf,
    logger: Option<KernelLogger>,
    service: Option<LookupService>,
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
        host::raise_open_files_limit();
        let lock = InstanceLock::acquire(config.pins.path())?;
        remove_pins(&config.pins);

        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::RECORDS, config.max_records)
            .load(EBPF_OBJECT)
            .context("loading the ttm eBPF object — the kernel needs BTF, BPF_MAP_TYPE_SK_STORAGE and sockops (Linux 5.10+)")?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                // The programs log only rare events; running without them is fine.
                warn!("kernel-side logs unavailable: {e}");
                None
            }
        };
        write_config(&mut ebpf, config)?;

        let cgroup_file =
            File::open(&cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        let program: &mut SockOps = ebpf
            .program_mut(SOCKOPS_PROGRAM)
            .context("sockops program missing from the object")?
            .try_into()?;
        program
            .load()
            .context("the kernel rejected the sockops program (see the verifier log above)")?;
        // With bpf_link (Linux 5.7+) attachments always coexist with other
        // programs on the cgroup; the kernel wants mode flags of 0 there.
        program
            .attach(&cgroup_file, CgroupAttachMode::Single)
            .with_context(|| format!("attaching sockops to cgroup {}", cgroup.display()))?;

        let shim: &mut CgroupSockopt = ebpf
            .program_mut(GETSOCKOPT_PROGRAM)
            .context("getsockopt program missing from the object")?
            .try_into()?;
        shim.load()
            .context("the kernel rejected the getsockopt shim (needs Linux 5.3+)")?;
        shim.attach(&cgroup_file, CgroupAttachMode::Single)
            .with_context(|| format!("attaching the getsockopt shim to {}", cgroup.display()))?;

        if config.rewrite {
            for name in GETPEERNAME_PROGRAMS {
                let rewrite: &mut CgroupSockAddr = ebpf
                    .program_mut(name)
                    .with_context(|| format!("{name} missing from the object"))?
                    .try_into()?;
                rewrite
                    .load()
                    .with_context(|| format!("the kernel rejected {name} (getpeername hooks need Linux 5.8+) — run with --no-rewrite to do without"))?;
                rewrite
                    .attach(&cgroup_file, CgroupAttachMode::Single)
                    .with_context(|| format!("attaching {name} to {}", cgroup.display()))?;
            }
        }

        let mut daemon = Daemon {
            ebpf,
            pins: config.pins.clone(),
            cgroup,
            logger,
            service: None,
            _lock: lock,
        };
        daemon.pin_maps()?;
        let directory = PinnedDirectory::open(&daemon.pins).context("opening the pinned maps")?;
        daemon.service = Some(
            LookupService::bind(
                &config.socket,
                config.socket_group,
                config.limits,
                Arc::new(directory),
            )
            .context("starting the lookup service")?,
        );
        info!(
            "ttm attached to cgroup {} — trusting {} — getsockopt(SOL_IP, {}){} — accept()/getpeername() {} — maps pinned in {}",
            daemon.cgroup.display(),
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
        Ok(daemon)
    }

    fn pin_maps(&mut self) -> Result<()> {
        fs::create_dir_all(self.pins.path())
            .with_context(|| format!("creating pin directory {}", self.pins.path().display()))?;
        for name in PINNED_MAPS {
            let map = self
                .ebpf
                .map(name)
                .with_context(|| format!("map {name} missing"))?;
            map.pin(self.pins.map(name))
                .with_context(|| format!("pinning {name} in {}", self.pins.path().display()))?;
        }
        Ok(())
    }

    /// Runs until SIGINT or SIGTERM, forwarding kernel-side logs.
    pub async fn run_until_signal(mut self) -> Result<()> {
        use tokio::io::unix::AsyncFd;
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut logs = match self.logger.take() {
            // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd lives.
            Some(l) => Some(
                unsafe { AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE) }
                    .map_err(|e| e.into_parts().1)?,
            ),
            None => None,
        };
        let service = self.service.take().map(|s| tokio::spawn(s.serve()));
        println!("ttm: ready");
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: detaching"); break }
                _ = int.recv() => { info!("SIGINT: detaching"); break }
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
        drop(logs);
        drop(self);
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        remove_pins(&self.pins);
        info!("ttm detached from {}; pins removed", self.cgroup.display());
        // `ebpf` drops after this, closing the link and the programs.
    }
}

/// Removes ttm's pins (and the directory if empty). Missing pins are fine.
pub fn remove_pins(pins: &PinDir) {
    for name in PINNED_MAPS {
        let _ = fs::remove_file(pins.map(name));
    }
    let _ = fs::remove_dir(pins.path());
}

fn write_config(ebpf: &mut Ebpf, config: &DaemonConfig) -> Result<()> {
    let mut trie: LpmTrie<_, TrustKey, u8> = LpmTrie::try_from(
        ebpf.map_mut(maps::TRUSTED_LBS)
            .context("TRUSTED_LBS missing")?,
    )?;
    for (prefix, addr) in config.trust.trie_entries() {
        trie.insert(&Key::new(prefix, addr), 1, 0)
            .context("writing the trusted networks")?;
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
        },
        0,
    )
    .context("writing the decoder config")?;
    Ok(())
}

/// An exclusive lock per pin directory, so two daemons never share pins.
struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    fn acquire(pin_dir: &Path) -> Result<InstanceLock> {
        let dir = Path::new("/run/ttm");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = pin_dir
            .to_string_lossy()
            .trim_matches('/')
            .replace('/', "_");
        let path = dir.join(format!("{name}.lock"));
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
