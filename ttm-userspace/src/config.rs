//! `ttm daemon`'s settings: a TOML file (`--config`, default
//! `/etc/ttm/ttm.toml`) holding everything the flags hold, flags overriding
//! it. `ttm config check` prints the effective settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::daemon::DaemonConfig;
use crate::mode::Mode;
use crate::pins::{PinDir, DEFAULT_PIN_DIR};
use crate::service::Limits;
use crate::tc::TcAttach;
use crate::trust::TrustedLbs;

/// Where the daemon looks for its file unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/ttm/ttm.toml";

/// Default of `--tc-max-age`.
pub const DEFAULT_TC_MAX_AGE: Duration = Duration::from_secs(300);

/// The daemon's flags; each overrides the file's key of the same name.
#[derive(Args, Clone, Debug, Default)]
pub struct DaemonArgs {
    /// Settings file (TOML; keys as the flags, with underscores). Default /etc/ttm/ttm.toml, if present.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Trusted load-balancer network (CIDR or address; repeatable, comma lists allowed).
    /// Options are decoded only from peers inside these networks.
    #[arg(long, value_name = "CIDR")]
    pub trust: Vec<String>,
    /// Decode options from any peer. UNSAFE: any client can then choose its own address.
    #[arg(long)]
    pub trust_any: bool,
    /// cgroup v2 directory whose sockets are decoded (default: the cgroup2 root, every socket).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// bpffs directory for the pinned maps and links (default /sys/fs/bpf/ttm).
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Option layout to decode: a preset (toa, kind253, kind200) or
    /// custom:KIND/LEN/v4|v6; repeatable, in priority order (default: toa). See `ttm formats`.
    #[arg(long = "format", value_name = "NAME")]
    pub formats: Vec<String>,
    /// cgroup v2 directory whose applications get the getsockopt shim and the
    /// accept()/getpeername() rewrite (repeatable; default: --cgroup). Only
    /// processes under these pay for the hooks on their calls.
    #[arg(long = "compat-cgroup", value_name = "PATH")]
    pub compat_cgroups: Vec<PathBuf>,
    /// Do not attach the getsockopt shim at all (for hosts whose apps never
    /// call getsockopt(SOL_IP, 1345)): no getsockopt on the host pays for it.
    #[arg(long)]
    pub no_getsockopt: bool,
    /// Attach the live witness behind the rewrite (`ttm verify --live`):
    /// a second program on every getpeername in the compat cgroups.
    #[arg(long)]
    pub witness: bool,
    /// Most connections tracked for lookups at once (default 1048576; a limit, not an allocation).
    #[arg(long, value_name = "N")]
    pub max_records: Option<u32>,
    /// Unix socket of the lookup service (default /run/ttm/ttm.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Group allowed to use the lookup socket (name or gid; the socket is mode 0660).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Lookup clients served at once; more are answered `overloaded` (default 4096).
    #[arg(long, value_name = "N")]
    pub max_clients: Option<usize>,
    /// Seconds a lookup client may stay silent (or not read its answers) before it is dropped (default 30).
    #[arg(long, value_name = "SECS")]
    pub client_timeout: Option<f64>,
    /// Option name answered by `getsockopt(fd, SOL_IP, NAME)` with `struct ttm_peer` (default 1345).
    #[arg(long, value_name = "NAME")]
    pub getsockopt_name: Option<u32>,
    /// Also answer `getsockopt(fd, SOL_IP, NAME)` with the NAT64 layout
    /// `{ struct in6_addr saddr; be16 port; }` (DPVS uses 4096).
    #[arg(long, value_name = "NAME")]
    pub nat64_getsockopt: Option<u32>,
    /// Leave accept()/getpeername() alone (they then return the load balancer).
    #[arg(long)]
    pub no_rewrite: bool,
    /// Serve Prometheus metrics on this address (off by default), e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Where the option is read: auto (probe the kernel), sockops, tc (TC
    /// ingress on --interface), both. Default auto.
    #[arg(long, value_name = "MODE")]
    pub mode: Option<Mode>,
    /// Interface whose ingress the TC classifier watches (repeatable; the
    /// interfaces the load balancers' packets arrive on). Needed by --mode tc and both.
    #[arg(long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// How the TC classifier attaches: auto (tcx where the kernel has it,
    /// else netlink cls_bpf on clsact), tcx, netlink. Default auto.
    #[arg(long, value_name = "HOW")]
    pub tc_attach: Option<TcAttach>,
    /// Seconds after which a TC 4-tuple record whose socket is gone (or was
    /// never seen by sockops) is swept (default 300).
    #[arg(long, value_name = "SECS")]
    pub tc_max_age: Option<f64>,
    /// Seconds between runs of the static audit (`ttm verify`) whose result
    /// the metrics endpoint exports (default 60; 0 turns it off).
    #[arg(long, value_name = "SECS")]
    pub audit_interval: Option<f64>,
    /// Local TCP ports whose connections from --trust peers may begin with a
    /// PROXY protocol header (v1 or v2, as HAProxy and nginx stream send
    /// it): ttm records the client and removes the header before the app
    /// reads (comma lists and repeats allowed). Needs Linux 5.11+.
    #[arg(long = "proxy-protocol", value_name = "PORT", value_delimiter = ',')]
    pub proxy_protocol: Vec<u16>,
    /// Interface the proxies' packets arrive on (repeatable; default: the
    /// --interface list in a mode with TC). There ttm's TC program sends each
    /// PROXY header up alone, so the connection leaves the kernel's sockmap
    /// path right after it; without one, connections stay on that path.
    #[arg(long = "proxy-interface", value_name = "IFACE")]
    pub proxy_interfaces: Vec<String>,
    /// Interface whose ingress the UDP decoder watches (repeatable): UDP
    /// datagrams from --trust peers marked with DPVS's UOA (IPv4 option or
    /// opp header) file their flow's client, which apps get from
    /// `getsockopt(IPPROTO_IP, 2048)` as uoa.ko answers it.
    #[arg(long = "udp-interface", value_name = "IFACE")]
    pub udp_interfaces: Vec<String>,
    /// Seconds a UDP flow may go without a datagram before it expires (default 360, as uoa.ko).
    #[arg(long, value_name = "SECS")]
    pub udp_idle: Option<f64>,
    /// Most UDP flows tracked at once (default 262144; new flows past it are
    /// refused and counted, a live flow is never evicted).
    #[arg(long, value_name = "N")]
    pub max_udp_flows: Option<u32>,
    /// Take over from the daemon running on this pin directory: it exits
    /// leaving its programs attached, and this one swaps in its programs
    /// atomically (no connection goes unrecorded).
    #[arg(long)]
    pub upgrade: bool,
}

/// The file: every key optional, unknown keys refused.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    trust: Option<Vec<String>>,
    trust_any: Option<bool>,
    cgroup: Option<PathBuf>,
    compat_cgroup: Option<Vec<PathBuf>>,
    getsockopt: Option<bool>,
    witness: Option<bool>,
    pin_dir: Option<PathBuf>,
    formats: Option<Vec<String>>,
    max_records: Option<u32>,
    socket: Option<PathBuf>,
    socket_group: Option<String>,
    max_clients: Option<usize>,
    client_timeout: Option<f64>,
    getsockopt_name: Option<u32>,
    nat64_getsockopt: Option<u32>,
    rewrite: Option<bool>,
    metrics: Option<SocketAddr>,
    mode: Option<Mode>,
    interfaces: Option<Vec<String>>,
    tc_attach: Option<TcAttach>,
    tc_max_age: Option<f64>,
    audit_interval: Option<f64>,
    proxy_protocol: Option<Vec<u16>>,
    proxy_interfaces: Option<Vec<String>>,
    udp_interfaces: Option<Vec<String>>,
    udp_idle: Option<f64>,
    max_udp_flows: Option<u32>,
}

/// The effective settings, printed by `ttm config check` (valid as a file).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Settings {
    /// Trusted LB networks.
    pub trust: Vec<String>,
    /// Decode from any peer.
    pub trust_any: bool,
    /// cgroup to attach to (absent: the cgroup2 root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// cgroups of the apps that get the shim and the rewrite (empty: `cgroup`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub compat_cgroup: Vec<PathBuf>,
    /// The getsockopt shim is attached.
    pub getsockopt: bool,
    /// The live witness is attached.
    pub witness: bool,
    /// Pin directory.
    pub pin_dir: PathBuf,
    /// Option layouts.
    pub formats: Vec<String>,
    /// Connection map capacity.
    pub max_records: u32,
    /// Lookup socket.
    pub socket: PathBuf,
    /// Lookup socket group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Lookup clients at once.
    pub max_clients: usize,
    /// Lookup client idle timeout, seconds.
    pub client_timeout: f64,
    /// getsockopt option name.
    pub getsockopt_name: u32,
    /// NAT64 getsockopt option name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat64_getsockopt: Option<u32>,
    /// accept()/getpeername() rewrite.
    pub rewrite: bool,
    /// Prometheus endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// Where the option is read.
    pub mode: Mode,
    /// Interfaces of the TC classifier.
    pub interfaces: Vec<String>,
    /// How the TC classifier attaches.
    pub tc_attach: TcAttach,
    /// Age (seconds) after which orphaned TC records are swept.
    pub tc_max_age: f64,
    /// Seconds between periodic audits; 0 is off.
    pub audit_interval: f64,
    /// Local ports whose connections may begin with a PROXY header.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub proxy_protocol: Vec<u16>,
    /// Interfaces where PROXY headers are sent up alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub proxy_interfaces: Vec<String>,
    /// Interfaces of the UDP decoder.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub udp_interfaces: Vec<String>,
    /// Seconds after which an idle UDP flow expires.
    pub udp_idle: f64,
    /// UDP flow table capacity.
    pub max_udp_flows: u32,
}

impl Settings {
    /// Merges `args` over the file they name (or the default file, if present).
    pub fn load(args: &DaemonArgs) -> Result<Settings> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() => read_file(Path::new(DEFAULT_CONFIG))?,
            None => FileConfig::default(),
        };
        Ok(Settings::merge(args, file))
    }

    /// Parses settings from TOML text (flags none).
    pub fn from_toml(text: &str) -> Result<Settings> {
        let file: FileConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Settings::merge(&DaemonArgs::default(), file))
    }

    fn merge(args: &DaemonArgs, file: FileConfig) -> Settings {
        let limits = Limits::default();
        let list = |flag: &Vec<String>, key: Option<Vec<String>>| {
            if flag.is_empty() {
                key.unwrap_or_default()
            } else {
                flag.clone()
            }
        };
        Settings {
            trust: list(&args.trust, file.trust),
            trust_any: args.trust_any || file.trust_any.unwrap_or(false),
            cgroup: args.cgroup.clone().or(file.cgroup),
            compat_cgroup: if args.compat_cgroups.is_empty() {
                file.compat_cgroup.unwrap_or_default()
            } else {
                args.compat_cgroups.clone()
            },
            getsockopt: !args.no_getsockopt && file.getsockopt.unwrap_or(true),
            witness: args.witness || file.witness.unwrap_or(false),
            pin_dir: args
                .pin_dir
                .clone()
                .or(file.pin_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR)),
            formats: list(&args.formats, file.formats),
            max_records: args
                .max_records
                .or(file.max_records)
                .unwrap_or(ttm_common::maps::DEFAULT_RECORDS_CAPACITY),
            socket: args
                .socket
                .clone()
                .or(file.socket)
                .unwrap_or_else(|| PathBuf::from(ttm_client::DEFAULT_SOCKET)),
            socket_group: args.socket_group.clone().or(file.socket_group),
            max_clients: args
                .max_clients
                .or(file.max_clients)
                .unwrap_or(limits.max_clients),
            client_timeout: args
                .client_timeout
                .or(file.client_timeout)
                .unwrap_or(limits.idle_timeout.as_secs_f64()),
            getsockopt_name: args
                .getsockopt_name
                .or(file.getsockopt_name)
                .unwrap_or(ttm_common::compat::TTM_PEER_SOCKOPT),
            nat64_getsockopt: args.nat64_getsockopt.or(file.nat64_getsockopt),
            rewrite: !args.no_rewrite && file.rewrite.unwrap_or(true),
            metrics: args.metrics.or(file.metrics),
            mode: args.mode.or(file.mode).unwrap_or_default(),
            interfaces: list(&args.interfaces, file.interfaces),
            proxy_interfaces: list(&args.proxy_interfaces, file.proxy_interfaces),
            udp_interfaces: list(&args.udp_interfaces, file.udp_interfaces),
            udp_idle: args
                .udp_idle
                .or(file.udp_idle)
                .unwrap_or(ttm_common::udp::DEFAULT_UDP_IDLE_SECS as f64),
            max_udp_flows: args
                .max_udp_flows
                .or(file.max_udp_flows)
                .unwrap_or(ttm_common::udp::DEFAULT_MAX_UDP_FLOWS),
            tc_attach: args.tc_attach.or(file.tc_attach).unwrap_or_default(),
            tc_max_age: args
                .tc_max_age
                .or(file.tc_max_age)
                .unwrap_or(DEFAULT_TC_MAX_AGE.as_secs_f64()),
            audit_interval: args
                .audit_interval
                .or(file.audit_interval)
                .unwrap_or(crate::audit_watch::DEFAULT_AUDIT_INTERVAL.as_secs_f64()),
            proxy_protocol: if args.proxy_protocol.is_empty() {
                file.proxy_protocol.unwrap_or_default()
            } else {
                args.proxy_protocol.clone()
            },
        }
    }

    /// Checks every value and builds the daemon's configuration; each error
    /// names the key and what is allowed.
    pub fn daemon_config(&self, upgrade: bool) -> Result<DaemonConfig> {
        let trust = TrustedLbs::parse(&self.trust).context("key `trust` (CIDRs or addresses)")?;
        let formats = crate::formats::table(&self.formats).context("key `formats`")?;
        let idle_timeout = Duration::try_from_secs_f64(self.client_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| {
                format!(
                    "key `client_timeout`: {} is not allowed — a positive number of seconds",
                    self.client_timeout
                )
            })?;
        let audit_interval = match Duration::try_from_secs_f64(self.audit_interval) {
            Ok(d) if d.is_zero() => None,
            Ok(d) => Some(d),
            Err(_) => bail!(
                "key `audit_interval`: {} is not allowed — seconds, 0 to turn the audit off",
                self.audit_interval
            ),
        };
        let tc_max_age = Duration::try_from_secs_f64(self.tc_max_age)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| {
                format!(
                    "key `tc_max_age`: {} is not allowed — a positive number of seconds",
                    self.tc_max_age
                )
            })?;
        for (key, names) in [
            ("interfaces", &self.interfaces),
            ("proxy_interfaces", &self.proxy_interfaces),
            ("udp_interfaces", &self.udp_interfaces),
        ] {
            for name in names {
                if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                    bail!("key `{key}`: {name:?} is not an interface name");
                }
            }
        }
        if self.max_records == 0 {
            bail!("key `max_records`: 0 is not allowed — at least 1");
        }
        if self.max_udp_flows == 0 {
            bail!("key `max_udp_flows`: 0 is not allowed — at least 1");
        }
        // Whole seconds, as the kernel side keeps it; at most a day.
        if !(self.udp_idle >= 1.0 && self.udp_idle <= 86_400.0) {
            bail!(
                "key `udp_idle`: {} is not allowed — seconds from 1 to 86400",
                self.udp_idle
            );
        }
        if self.max_clients == 0 {
            bail!("key `max_clients`: 0 is not allowed — at least 1");
        }
        let mut proxy_ports = self.proxy_protocol.clone();
        proxy_ports.sort_unstable();
        proxy_ports.dedup();
        if proxy_ports.contains(&0) {
            bail!("key `proxy_protocol`: port 0 is not allowed — the local ports (1-65535) servers listen on");
        }
        if proxy_ports.len() > ttm_common::maps::PROXY_PORTS_CAPACITY as usize {
            bail!(
                "key `proxy_protocol`: {} ports given — at most {}",
                proxy_ports.len(),
                ttm_common::maps::PROXY_PORTS_CAPACITY
            );
        }
        let socket_group = self
            .socket_group
            .as_deref()
            .map(crate::host::group_id)
            .transpose()
            .context("key `socket_group`")?;
        let config = DaemonConfig {
            trust,
            trust_any: self.trust_any,
            cgroup: self.cgroup.clone(),
            compat_cgroups: self.compat_cgroup.clone(),
            getsockopt: self.getsockopt,
            witness: self.witness,
            pins: PinDir::new(&self.pin_dir),
            max_records: self.max_records,
            formats,
            socket: self.socket.clone(),
            socket_group,
            limits: Limits {
                max_clients: self.max_clients,
                idle_timeout,
                ..Limits::default()
            },
            getsockopt_name: self.getsockopt_name,
            nat64_getsockopt_name: self.nat64_getsockopt,
            rewrite: self.rewrite,
            upgrade,
            mode: self.mode,
            interfaces: self.interfaces.clone(),
            tc_attach: self.tc_attach,
            tc_max_age,
            audit_interval,
            proxy_ports,
            proxy_interfaces: self.proxy_interfaces.clone(),
            udp_interfaces: self.udp_interfaces.clone(),
            udp_idle: Duration::from_secs(self.udp_idle.round() as u64),
            max_udp_flows: self.max_udp_flows,
        };
        config.validate()?;
        Ok(config)
    }

    /// The settings as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the settings file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("settings file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file: FileConfig = toml::from_str(
            "trust = [\"10.0.2.0/24\"]\nformats = [\"kind200\"]\nmax_records = 1000\nrewrite = false\n",
        )
        .unwrap();
        let args = DaemonArgs {
            max_records: Some(2000),
            ..DaemonArgs::default()
        };
        let s = Settings::merge(&args, file);
        assert_eq!(s.trust, vec!["10.0.2.0/24"]);
        assert_eq!(s.formats, vec!["kind200"]);
        assert_eq!(s.max_records, 2000, "the flag wins");
        assert!(!s.rewrite);
        assert_eq!(s.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        assert_eq!(s.getsockopt_name, 1345);
        assert_eq!(s.mode, Mode::Auto);
        // What `config check` prints reads back as the same settings.
        assert_eq!(Settings::from_toml(&s.to_toml()).unwrap(), s);
    }

    #[test]
    fn proxy_ports_come_from_the_flag_or_the_key_sorted_once_each() {
        let s =
            Settings::from_toml("trust = [\"10.0.2.0/24\"]\nproxy_protocol = [8443, 8080, 8443]")
                .unwrap();
        assert_eq!(
            s.daemon_config(false).unwrap().proxy_ports,
            vec![8080, 8443]
        );
        assert_eq!(Settings::from_toml(&s.to_toml()).unwrap(), s);
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: DaemonArgs,
        }
        let args =
            <Cli as clap::Parser>::try_parse_from(["daemon", "--proxy-protocol", "9000,9001"])
                .unwrap()
                .args;
        let file: FileConfig = toml::from_str("proxy_protocol = [8080]").unwrap();
        assert_eq!(
            Settings::merge(&args, file).proxy_protocol,
            vec![9000, 9001],
            "the flag wins"
        );
        let none = Settings::from_toml("trust = [\"10.0.2.0/24\"]").unwrap();
        assert!(none.daemon_config(false).unwrap().proxy_ports.is_empty());
        assert!(!none.to_toml().contains("proxy_protocol"));
    }

    #[test]
    fn every_bad_value_names_its_key() {
        let err = |text: &str| {
            let s = Settings::from_toml(text).and_then(|s| s.daemon_config(false).map(|_| s));
            format!("{:#}", s.unwrap_err())
        };
        assert!(err("trst = []").contains("unknown field `trst`"));
        assert!(err("max_records = \"x\"").contains("max_records"));
        assert!(err("trust = [\"10.0.2.0/33\"]").contains("key `trust`"));
        assert!(err("trust = [\"10.0.2.0/24\"]\nformats = [\"tao\"]").contains("key `formats`"));
        assert!(
            err("trust = [\"10.0.2.0/24\"]\nclient_timeout = -1").contains("key `client_timeout`")
        );
        assert!(err("trust = [\"10.0.2.0/24\"]\nmax_clients = 0").contains("key `max_clients`"));
        assert!(
            err("trust = [\"10.0.2.0/24\"]\nproxy_protocol = [0]").contains("key `proxy_protocol`")
        );
        assert!(
            err("trust = [\"10.0.2.0/24\"]\nproxy_protocol = [70000]").contains("proxy_protocol")
        );
        assert!(err("metrics = \"nowhere\"").contains("metrics"));
        assert!(err("mode = \"tcx\"").contains("mode"));
        assert!(err("trust = [\"10.0.2.0/24\"]\ntc_max_age = 0").contains("key `tc_max_age`"));
        assert!(
            err("trust = [\"10.0.2.0/24\"]\ninterfaces = [\"a/b\"]").contains("key `interfaces`")
        );
        assert!(err("").contains("--trust CIDR"));
    }
}
