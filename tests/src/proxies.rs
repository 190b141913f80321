//! Layer-4 proxies in the LB namespace that put a PROXY protocol header in
//! front of each connection: the real senders (HAProxy `send-proxy`,
//! `send-proxy-v2`; nginx stream `proxy_protocol on`), and a scripted
//! sender (`apps/proxy_sender.py`) that writes any header, split anywhere,
//! from the trusted LB address.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::lab::LB_NS;
use crate::process::Guarded;

/// A real PROXY protocol sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// HAProxy `send-proxy` (v1).
    HaproxyV1,
    /// HAProxy `send-proxy-v2`.
    HaproxyV2,
    /// nginx stream `proxy_protocol on` (v1).
    NginxStream,
}

impl Sender {
    /// The header version this sender writes.
    pub fn carrier(self) -> &'static str {
        match self {
            Sender::HaproxyV2 => "proxy-v2",
            _ => "proxy-v1",
        }
    }
}

/// A running proxy, stopped on drop (its files removed).
pub struct Proxy {
    _process: Guarded,
    dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `addr` as a listen/connect address in a proxy's config (`[v6]:port`).
fn endpoint(addr: &std::net::SocketAddr) -> String {
    addr.to_string()
}

impl Proxy {
    /// Starts `sender` in the LB namespace, listening on `listen` and
    /// proxying each connection to `backend` with its header.
    pub fn start(
        sender: Sender,
        listen: std::net::SocketAddr,
        backend: std::net::SocketAddr,
    ) -> Result<Proxy> {
        let dir = std::env::temp_dir().join(format!(
            "ttm-proxy-{}-{}",
            std::process::id(),
            listen.port()
        ));
        fs::create_dir_all(&dir)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", LB_NS]);
        match sender {
            Sender::HaproxyV1 | Sender::HaproxyV2 => {
                let send = if sender == Sender::HaproxyV1 {
                    "send-proxy"
                } else {
                    "send-proxy-v2"
                };
                let cfg = dir.join("haproxy.cfg");
                fs::write(
                    &cfg,
                    format!(
                        "global\n  maxconn 9000\n\
                         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
                         frontend f\n  bind {}\n  default_backend b\n\
                         backend b\n  server rs {} {send}\n",
                        endpoint(&listen),
                        endpoint(&backend)
                    ),
                )?;
                cmd.args(["haproxy", "-db", "-q", "-f"]).arg(&cfg);
            }
            Sender::NginxStream => {
                let cfg = dir.join("nginx.conf");
                fs::write(
                    &cfg,
                    format!(
                        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
                         daemon off;\nmaster_process off;\npid {pid};\nerror_log stderr error;\n\
                         worker_rlimit_nofile 19000;\n\
                         events {{ worker_connections 9000; }}\n\
                         stream {{ server {{ listen {}; proxy_pass {}; proxy_protocol on; }} }}\n",
                        endpoint(&listen),
                        endpoint(&backend),
                        pid = dir.join("nginx.pid").display()
                    ),
                )?;
                cmd.args(["nginx", "-e", "stderr", "-p"])
                    .arg(&dir)
                    .arg("-c")
                    .arg(&cfg);
            }
        }
        let process = Guarded::spawn(cmd).with_context(|| format!("starting {sender:?}"))?;
        wait_listening(listen)?;
        Ok(Proxy {
            _process: process,
            dir,
        })
    }
}

/// Waits until something listens on `addr` in the LB namespace.
fn wait_listening(addr: std::net::SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let wanted = format!(":{}", addr.port());
    while Instant::now() < deadline {
        let out = Command::new("ip")
            .args(["netns", "exec", LB_NS, "ss", "-Htln"])
            .output()?;
        if String::from_utf8_lossy(&out.stdout).lines().any(|l| {
            l.split_whitespace()
                .nth(3)
                .is_some_and(|a| a.ends_with(&wanted))
        }) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("no proxy listening on {addr} in {LB_NS} within 10 s")
}

/// Path of the scripted sender.
pub fn sender_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("apps")
        .join("proxy_sender.py")
}

/// `bytes` as hex, as the scripted sender takes its chunks.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A v2 header from `src` to `dst`, command `command` (0 LOCAL, 1 PROXY),
/// with `tlvs` appended: the lab's own writer of test headers.
pub fn v2(command: u8, src: SocketAddr, dst: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut out = ttm_common::proxy::V2_SIGNATURE.to_vec();
    out.push(0x20 | command);
    let six = |a: std::net::IpAddr| match a {
        std::net::IpAddr::V4(v) => v.to_ipv6_mapped().octets().to_vec(),
        std::net::IpAddr::V6(v) => v.octets().to_vec(),
    };
    let mut body = Vec::new();
    if src.is_ipv4() && dst.is_ipv4() {
        out.push(0x11);
        for a in [src.ip(), dst.ip()] {
            if let std::net::IpAddr::V4(v) = a {
                body.extend(v.octets());
            }
        }
    } else {
        out.push(0x21);
        body.extend(six(src.ip()));
        body.extend(six(dst.ip()));
    }
    body.extend(src.port().to_be_bytes());
    body.extend(dst.port().to_be_bytes());
    body.extend(tlvs);
    out.extend((body.len() as u16).to_be_bytes());
    out.extend(body);
    out
}

/// The v1 line naming `src` → `dst`.
pub fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}
