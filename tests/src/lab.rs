//! Namespaces, veths, NAT rules and cgroups of the lab, behind a guard.

use std::fs;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

use crate::writer::{self, WriterConfig};

/// Client namespace.
pub const CLIENT_NS: &str = "ttm-lab-client";
/// Load-balancer namespace.
pub const LB_NS: &str = "ttm-lab-lb";
/// Real-server namespace.
pub const RS_NS: &str = "ttm-lab-rs";
/// The real server's interface (towards the LB), in [`RS_NS`].
pub const RS_IF: &str = "ttm-r0";
/// The client's address.
pub const CLIENT_IP: &str = "10.0.1.2";
/// The virtual IP clients connect to (the LB's client-side address).
pub const VIP: &str = "10.0.1.1";
/// Where the lab's layer-4 proxies (HAProxy, nginx stream) listen in the
/// LB namespace: beside the VIP, outside its NAT.
pub const PROXY_IP: &str = "10.0.1.3";
/// The same for IPv6.
pub const PROXY_IP6: &str = "fd00:1::3";
/// The LB's address on the real-server side: what the RS sees as peer.
pub const LB_IP: &str = "10.0.2.1";
/// The real server's address.
pub const RS_IP: &str = "10.0.2.2";
/// The network the real server must trust.
pub const LB_NET: &str = "10.0.2.0/24";
/// The client's IPv6 address (ULA).
pub const CLIENT_IP6: &str = "fd00:1::2";
/// The IPv6 virtual IP.
pub const VIP6: &str = "fd00:1::1";
/// The LB's IPv6 address on the real-server side: the RS's IPv6 peer.
pub const LB_IP6: &str = "fd00:2::1";
/// The real server's IPv6 address.
pub const RS_IP6: &str = "fd00:2::2";
/// The IPv6 network the real server must trust.
pub const LB_NET6: &str = "fd00:2::/64";
/// Directory under the cgroup2 mount holding the lab's cgroups.
pub const CGROUP_DIR: &str = "ttm-lab";
/// The 20-byte option the writer puts in the handshake ACK for the LB to
/// overwrite ([`Lab::send_handshake_option_area`]): kind 253, a marker, zeros.
pub const PLACEHOLDER: [u8; 20] = [
    253, 20, 0xab, 0xcd, b't', b't', b'm', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Runs `cmd`, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `args` inside network namespace `ns`.
pub fn in_ns(ns: &str, args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// The cgroup v2 mount point.
pub fn cgroup2_root() -> Result<PathBuf> {
    ttm::host::cgroup2_mount().context("the lab needs cgroup v2")
}

/// The running lab. `Drop` tears everything down, also after a panic.
pub struct Lab {
    cgroups: PathBuf,
    writer: Option<writer::Writer>,
}

impl Lab {
    /// Tears down leftovers of an earlier run, then builds the lab and
    /// attaches the option writer to the client cgroup.
    pub fn up() -> Result<Lab> {
        Lab::down_quietly();
        let cgroups = cgroup2_root()?.join(CGROUP_DIR);
        let mut lab = Lab {
            cgroups,
            writer: None,
        };
        lab.writer = Some(lab.build().context("building the lab")?);
        Ok(lab)
    }

    /// Builds the namespaces, veths, addresses, routes and NAT rules in a
    /// handful of processes (`ip -batch` per namespace, one shell in the LB):
    /// under QEMU's emulation every process costs about a second, and the
    /// lab is built once per test.
    fn build(&self) -> Result<writer::Writer> {
        ip_batch(
            None,
            &format!(
                "netns add {CLIENT_NS}\nnetns add {LB_NS}\nnetns add {RS_NS}\n\
                 link add ttm-c0 netns {CLIENT_NS} type veth peer ttm-l0 netns {LB_NS}\n\
                 link add ttm-l1 netns {LB_NS} type veth peer ttm-r0 netns {RS_NS}\n"
            ),
        )?;
        // IPv6 beside IPv4 on the same veths, without duplicate address
        // detection so the addresses work at once. The client and the real
        // server: one veth each and default routes through the LB.
        for (ns, dev, v4, v6, via4, via6) in [
            (CLIENT_NS, "ttm-c0", CLIENT_IP, CLIENT_IP6, VIP, VIP6),
            (RS_NS, "ttm-r0", RS_IP, RS_IP6, LB_IP, LB_IP6),
        ] {
            ip_batch(
                Some(ns),
                &format!(
                    "link set lo up\n\
                     addr add {v4}/24 dev {dev}\n\
                     addr add {v6}/64 dev {dev} nodad\n\
                     link set {dev} up\n\
                     route add default via {via4}\n\
                     route add ::/0 via {via6}\n"
                ),
            )?;
        }
        ip_batch(
            Some(LB_NS),
            &format!(
                "link set lo up\n\
                 addr add {VIP}/24 dev ttm-l0\n\
                 addr add {PROXY_IP}/24 dev ttm-l0\n\
                 addr add {LB_IP}/24 dev ttm-l1\n\
                 addr add {VIP6}/64 dev ttm-l0 nodad\n\
                 addr add {PROXY_IP6}/64 dev ttm-l0 nodad\n\
                 addr add {LB_IP6}/64 dev ttm-l1 nodad\n\
                 link set ttm-l0 up\n\
                 link set ttm-l1 up\n"
            ),
        )?;
        // Full-NAT: the VIP goes to the real server, and the source becomes
        // the LB, for IPv4 and IPv6; forwarding on in the same process.
        let nat = |family: &str, table: &str, vip: &str, rs: &str, lb: &str| {
            format!(
                "table {family} {table} {{
                   chain pre {{
                     type nat hook prerouting priority dstnat; policy accept;
                     {family} daddr {vip} tcp dport != 22 dnat to {rs}
                   }}
                   chain post {{
                     type nat hook postrouting priority srcnat; policy accept;
                     ct status dnat {family} daddr {rs} snat to {lb}
                   }}
                 }}\n"
            )
        };
        let rules =
            nat("ip", "ttm_lab", VIP, RS_IP, LB_IP) + &nat("ip6", "ttm_lab6", VIP6, RS_IP6, LB_IP6);
        in_ns_with_stdin(
            LB_NS,
            &[
                "sh",
                "-c",
                "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 && nft -f -",
            ],
            &rules,
        )
        .context("forwarding and NAT in the LB (install nftables)")?;
        for cg in [self.client_cgroup(), self.rs_cgroup(), self.plain_cgroup()] {
            fs::create_dir_all(&cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
        }
        writer::attach(&self.client_cgroup()).context("attaching the option writer")
    }

    /// Detaches the option writer from the client cgroup: the client's
    /// connections then carry no option (and no foreign program but the
    /// tests' own is attached).
    pub fn detach_writer(&self) -> Result<()> {
        self.writer
            .as_ref()
            .context("the writer is not held by this process")?
            .detach(&self.client_cgroup())
    }

    /// Changes what the option writer in the client cgroup writes.
    pub fn set_writer(&self, config: WriterConfig) -> Result<()> {
        self.writer
            .as_ref()
            .context("the writer is not held by this process")?
            .set(config)
    }

    /// Makes the handshake ACKs of client connections reach the real server
    /// with `bytes` as the last 20 bytes of their option area, as a broken or
    /// hostile LB would send them (`None`: stop). The writer inserts a
    /// placeholder option (kind 253, marker `ab cd`) whose free bytes are
    /// chosen so that its TCP checksum contribution equals that of `bytes`;
    /// the LB then overwrites it in place (nftables raw payload writes do not
    /// fix the checksum, so the swap must be checksum-neutral).
    pub fn send_handshake_option_area(&self, bytes: Option<[u8; 20]>) -> Result<()> {
        let placeholder = match bytes {
            Some(b) => checksum_twin(&b),
            None => PLACEHOLDER,
        };
        self.set_writer(
            WriterConfig::raw(&placeholder).context("placeholder is a valid 20-byte option")?,
        )?;
        self.mangle_handshake_option(bytes)
    }

    /// Installs (or with `None` removes) the LB rule that overwrites the
    /// placeholder at TCP header offset 32 (after the timestamps).
    fn mangle_handshake_option(&self, bytes: Option<[u8; 20]>) -> Result<()> {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut rules = String::from(
            "table ip ttm_lab {\n chain mangle {\n type filter hook postrouting priority mangle; policy accept;\n }\n}\nflush chain ip ttm_lab mangle\n",
        );
        if let Some(b) = bytes {
            rules.push_str(&format!(
                "add rule ip ttm_lab mangle ip daddr {RS_IP} tcp dport 8080 @th,256,32 0x{} counter @th,256,128 set 0x{} @th,384,32 set 0x{}\n",
                hex(&PLACEHOLDER[..4]),
                hex(&b[..16]),
                hex(&b[16..])
            ));
        }
        nft_in_lb(&rules)
    }

    /// How many packets toward the real server carried `option` (8 bytes) as
    /// the last option after the timestamps of a non-SYN (offset 32) or SYN
    /// (offset 40) segment, since the counter was installed by the first call.
    pub fn option_sightings(&self, option: [u8; 8]) -> Result<u64> {
        let hex: String = option.iter().map(|x| format!("{x:02x}")).collect();
        let name = format!("seen_{hex}");
        if let Some(packets) = lb_counter(&name)? {
            return Ok(packets);
        }
        nft_in_lb(&format!(
            "table ip ttm_lab {{\n counter {name} {{ }}\n chain sightings {{\n type filter hook postrouting priority mangle; policy accept;\n ip daddr {RS_IP} @th,256,64 0x{hex} counter name {name}\n ip daddr {RS_IP} @th,320,64 0x{hex} counter name {name}\n }}\n}}\n"
        ))?;
        Ok(0)
    }

    /// Makes the LB lose every handshake ACK whose option (kind 254, after
    /// the timestamps) names `client` — the writer's own-address option — so
    /// the client's first data segment completes the handshake at the real
    /// server. Pure ACKs are never retransmitted: one loss per connection.
    pub fn lose_handshake_acks_naming(&self, client: Ipv4Addr) -> Result<()> {
        let hex: String = client.octets().iter().map(|x| format!("{x:02x}")).collect();
        nft_in_lb(&format!(
            "table ip ttm_lab {{\n counter lost_acks {{ }}\n chain lose {{\n type filter hook forward priority filter; policy accept;\n ip daddr {RS_IP} tcp dport 8080 @th,256,16 0xfe08 @th,288,32 0x{hex} counter name lost_acks drop\n }}\n}}\n"
        ))
    }

    /// How many handshake ACKs [`Lab::lose_handshake_acks_naming`] dropped.
    pub fn lost_handshake_acks(&self) -> Result<u64> {
        lb_counter("lost_acks")?.context("no lost_acks counter: lose_handshake_acks_naming first")
    }

    /// What each namespace's kernel counted (non-zero `nstat` counters) and
    /// the LB's rules with their counters: for failure messages, to tell a
    /// packet the lab lost from one ttm missed.
    pub fn packet_counters(&self) -> String {
        let mut out = String::new();
        for ns in [CLIENT_NS, LB_NS, RS_NS] {
            let nstat = Command::new("ip")
                .args(["netns", "exec", ns, "nstat", "-asz"])
                .output();
            out.push_str(&format!("--- {ns} nstat\n"));
            if let Ok(o) = nstat {
                for line in String::from_utf8_lossy(&o.stdout).lines() {
                    let value = line.split_whitespace().nth(1).unwrap_or("0");
                    if value != "0" && !line.starts_with('#') {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
        }
        if let Ok(o) = Command::new("ip")
            .args(["netns", "exec", LB_NS, "nft", "list", "ruleset"])
            .output()
        {
            out.push_str("--- LB ruleset\n");
            out.push_str(&String::from_utf8_lossy(&o.stdout));
        }
        if let Ok(s) = fs::read_to_string("/proc/net/softnet_stat") {
            out.push_str("--- softnet_stat\n");
            out.push_str(&s);
        }
        out
    }

    /// cgroup of client processes (the option writer acts on their sockets).
    pub fn client_cgroup(&self) -> PathBuf {
        self.cgroups.join("client")
    }

    /// cgroup of client processes whose connections carry no option.
    pub fn plain_cgroup(&self) -> PathBuf {
        self.cgroups.join("plain")
    }

    /// cgroup of real-server processes (ttm attaches here in tests).
    pub fn rs_cgroup(&self) -> PathBuf {
        self.cgroups.join("rs")
    }

    /// An application's cgroup inside the real server's (`rs/<name>`), made
    /// if missing: the decoder on `rs` covers it; the app-facing hooks only
    /// where `--compat-cgroup` names it. Removed when the lab goes down.
    pub fn app_cgroup(&self, name: &str) -> Result<PathBuf> {
        let cg = self.rs_cgroup().join(name);
        fs::create_dir_all(&cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
        Ok(cg)
    }

    /// Sets a sysctl inside the real server's namespace.
    pub fn rs_sysctl(&self, setting: &str) -> Result<()> {
        in_ns(RS_NS, &["sysctl", "-qw", setting])
    }

    /// Removes everything the lab creates; missing pieces are fine.
    pub fn down_quietly() {
        // `-force`: a missing namespace does not stop the others' removal.
        let _ = ip_batch_quiet(&format!(
            "netns del {CLIENT_NS}\nnetns del {LB_NS}\nnetns del {RS_NS}\n"
        ));
        if let Ok(root) = cgroup2_root() {
            let dir = root.join(CGROUP_DIR);
            for sub in ["client", "plain", "rs"] {
                let cg = dir.join(sub);
                // Children first (the app cgroups some tests make).
                for child in fs::read_dir(&cg).into_iter().flatten().flatten() {
                    if child.path().is_dir() {
                        kill_cgroup(&child.path());
                        let _ = fs::remove_dir(child.path());
                    }
                }
                kill_cgroup(&cg);
                let _ = fs::remove_dir(&cg);
            }
            let _ = fs::remove_dir(&dir);
        }
    }
}

/// Ones'-complement sum of big-endian 16-bit words, folded.
fn csum16(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The placeholder option whose checksum contribution equals `target`'s:
/// kind 253, length 20, marker `ab cd`, one adjusting word, zeros.
pub fn checksum_twin(target: &[u8; 20]) -> [u8; 20] {
    let mut twin = [0u8; 20];
    twin[..4].copy_from_slice(&PLACEHOLDER[..4]);
    // want: csum(twin fixed part) + w == csum(target), in ones' complement.
    let mut w = u32::from(csum16(target)) + u32::from(!csum16(&twin[..4]));
    while w > 0xffff {
        w = (w & 0xffff) + (w >> 16);
    }
    twin[4..6].copy_from_slice(&(w as u16).to_be_bytes());
    twin
}

/// Packets counted by the LB's named counter `name` in table `ttm_lab`;
/// `None` if there is no such counter.
fn lb_counter(name: &str) -> Result<Option<u64>> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", LB_NS, "nft", "list", "counter", "ip", "ttm_lab", name,
        ])
        .output()?;
    if !out.status.success() {
        return Ok(None);
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .context("reading the nft counter")
        .map(Some)
}

/// Runs an nft script in the LB namespace.
fn nft_in_lb(rules: &str) -> Result<()> {
    in_ns_with_stdin(LB_NS, &["nft", "-f", "-"], rules).context("running nft (install nftables)")
}

/// Runs `args` inside namespace `ns` with `input` on its stdin, failing
/// with its stderr and the input.
fn in_ns_with_stdin(ns: &str, args: &[&str], input: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    with_stdin(&mut cmd, input).with_context(|| format!("{args:?} in {ns}"))
}

/// Runs `commands` (one `ip` command per line) in one `ip -batch` process,
/// inside namespace `ns` if given; the first failing line fails it.
fn ip_batch(ns: Option<&str>, commands: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    with_stdin(&mut cmd, commands)
        .with_context(|| format!("ip -batch in {}", ns.unwrap_or("the root namespace")))
}

/// [`ip_batch`] in the root namespace, going on past failing lines, whose
/// errors are not wanted.
fn ip_batch_quiet(commands: &str) -> Result<()> {
    let _ = with_stdin(Command::new("ip").args(["-force", "-batch", "-"]), commands);
    Ok(())
}

/// Runs `cmd` with `input` on its stdin; fails with its stderr and the input.
fn with_stdin(cmd: &mut Command, input: &str) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    child
        .stdin
        .take()
        .context("child stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "failed: {}\n{input}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Kills every process left in cgroup `cg` and waits briefly for it to empty.
fn kill_cgroup(cg: &Path) {
    for _ in 0..50 {
        let procs = fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        Lab::down_quietly();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checksum_twin_sums_like_its_target_and_keeps_the_marker() {
        let targets: [[u8; 20]; 3] = [
            [254, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            [0xff; 20],
            [0; 20],
        ];
        for t in targets {
            let twin = checksum_twin(&t);
            assert_eq!(&twin[..4], &PLACEHOLDER[..4]);
            // Equal in ones' complement: 0x0000 and 0xffff are the same value.
            let (a, b) = (csum16(&twin), csum16(&t));
            assert!(a == b || (a % 0xffff == b % 0xffff), "{a:#x} vs {b:#x}");
        }
    }
}
