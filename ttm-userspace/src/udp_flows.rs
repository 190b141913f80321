//! The UDP flows a trusted LB marked (`UDP_FLOWS`), from user space: their
//! expiry after `--udp-idle` (UDP has no close), and their lookup by tuple
//! for the lookup service and `ttm lookup`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use log::{info, warn};
use ttm_client::UdpFlowReply;
use ttm_common::udp::{idle_ns, UdpFlow, UdpFlowKey};
use ttm_common::{maps, Counter};

use crate::host::monotonic_ns;
use crate::pins::PinDir;

/// How often the expiry runs for idle time `idle`: a few times per idle
/// time, at least every 10 s, at most 5 times a second. The UOA lookup
/// itself refuses an expired flow at once; the expiry frees its room.
pub fn interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(200), Duration::from_secs(10))
}

/// The keys of `flows` idle for `idle` at `now_ns`.
pub fn expired(
    flows: impl IntoIterator<Item = (UdpFlowKey, UdpFlow)>,
    now_ns: u64,
    idle: Duration,
) -> Vec<UdpFlowKey> {
    let idle = idle_ns(idle.as_secs().min(u64::from(u32::MAX)) as u32);
    flows
        .into_iter()
        .filter(|(_, flow)| flow.expired(now_ns, idle))
        .map(|(key, _)| key)
        .collect()
}

/// The key of the flow from `lb` to local port `local_port`.
pub fn key(lb: SocketAddr, local_port: u16) -> UdpFlowKey {
    let lb_addr = match lb.ip() {
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(a) => a.octets(),
    };
    UdpFlowKey {
        lb_addr,
        lb_port: lb.port(),
        local_port,
    }
}

/// The pinned UDP flow table.
pub type Flows = HashMap<MapData, UdpFlowKey, UdpFlow>;

/// Opens the `UDP_FLOWS` pinned under `pins`.
pub fn open(pins: &PinDir) -> Result<Flows, crate::records::RecordsError> {
    let path = pins.map(maps::UDP_FLOWS);
    let data =
        MapData::from_pin(&path).map_err(|source| crate::records::RecordsError::NotPinned {
            path: path.display().to_string(),
            source,
        })?;
    Ok(HashMap::try_from(Map::HashMap(data))?)
}

/// The `udp` lookup's answer: the flow from `lb` to the socket at `local`
/// (its address matched unless a wildcard), if it answers.
pub fn reply(
    flows: &Flows,
    local: SocketAddr,
    lb: SocketAddr,
    idle: Duration,
) -> Option<UdpFlowReply> {
    let flow = find(flows, lb, local.port(), idle)?;
    let flow_local = crate::records::to_ip(&flow.local_addr);
    let wildcard = local.ip().is_unspecified();
    let same = |a: std::net::IpAddr, b: std::net::IpAddr| a.to_canonical() == b.to_canonical();
    if !wildcard && !same(local.ip(), flow_local) {
        return None;
    }
    let client_ip = crate::records::to_ip(&flow.client_addr);
    let client_v6 = flow.client_is_v6();
    let client = match (client_ip, client_v6) {
        // A 20-byte marking holding ::ffff:a.b.c.d stays IPv6.
        (std::net::IpAddr::V4(v4), true) => {
            SocketAddr::new(v4.to_ipv6_mapped().into(), flow.client_port)
        }
        (ip, _) => SocketAddr::new(ip, flow.client_port),
    };
    let path_v6 = lb.ip().to_canonical().is_ipv6();
    let family = format!(
        "{}to{}",
        if client_v6 { 6 } else { 4 },
        if path_v6 { 6 } else { 4 }
    );
    let idle_for = Duration::from_nanos(monotonic_ns().saturating_sub(flow.seen_ns));
    Some(UdpFlowReply {
        client,
        family,
        lb,
        local: SocketAddr::new(flow_local, local.port()),
        idle: idle_for,
    })
}

/// The pinned maps the expiry works on.
pub struct FlowExpiry {
    flows: HashMap<MapData, UdpFlowKey, UdpFlow>,
    stats: PerCpuArray<MapData, u64>,
    idle: Duration,
}

impl FlowExpiry {
    /// Opens the maps pinned under `pins`.
    pub fn open(pins: &PinDir, idle: Duration) -> Result<FlowExpiry> {
        let flows = MapData::from_pin(pins.map(maps::UDP_FLOWS))
            .with_context(|| format!("opening the pinned {}", maps::UDP_FLOWS))?;
        Ok(FlowExpiry {
            flows: HashMap::try_from(Map::HashMap(flows))?,
            stats: crate::stats::open(pins)?,
            idle,
        })
    }

    /// One pass; returns how many flows expired.
    pub fn sweep(&mut self) -> Result<usize> {
        let now = monotonic_ns();
        let flows: Vec<(UdpFlowKey, UdpFlow)> = self.flows.iter().filter_map(Result::ok).collect();
        let mut removed = 0;
        for key in expired(flows, now, self.idle) {
            // Read again right before the removal: a datagram may have
            // refreshed the flow since the walk.
            let again = self.flows.get(&key, 0).ok();
            if !expired(again.map(|f| (key, f)), monotonic_ns(), self.idle).is_empty() {
                match self.flows.remove(&key) {
                    Ok(()) => removed += 1,
                    Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if removed > 0 {
            self.count(removed as u64)?;
            info!(
                "{removed} UDP flow(s) expired after {} s without a datagram",
                self.idle.as_secs()
            );
        }
        Ok(removed)
    }

    /// Adds `n` to `udp_expired` (only user space writes that slot).
    fn count(&mut self, n: u64) -> Result<()> {
        crate::stats::add(&mut self.stats, Counter::UdpExpired, n).context("updating udp_expired")
    }
}

/// Starts the thread that expires idle flows; it runs until the process
/// exits.
pub fn spawn_expiry(pins: &PinDir, idle: Duration) -> Result<()> {
    let mut expiry = FlowExpiry::open(pins, idle)?;
    std::thread::Builder::new()
        .name("ttm-udp-expiry".into())
        .spawn(move || loop {
            std::thread::sleep(interval(idle));
            if let Err(e) = expiry.sweep() {
                warn!("expiring UDP flows: {e:#}; idle flows stay until the next pass");
            }
        })
        .context("starting the UDP flow expiry")?;
    Ok(())
}

/// The flow from `lb` to local port `local_port` in the pinned table, if
/// it answers (not ambiguous, not idle past `idle`).
pub fn find(
    flows: &HashMap<MapData, UdpFlowKey, UdpFlow>,
    lb: SocketAddr,
    local_port: u16,
    idle: Duration,
) -> Option<UdpFlow> {
    let flow = flows.get(&key(lb, local_port), 0).ok()?;
    let live = expired([(key(lb, local_port), flow)], monotonic_ns(), idle).is_empty();
    (flow.answers() && live).then_some(flow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(seen_s: u64) -> UdpFlow {
        UdpFlow {
            seen_ns: seen_s * 1_000_000_000,
            ..UdpFlow::default()
        }
    }

    #[test]
    fn flows_idle_past_the_limit_expire_and_the_others_stay() {
        let idle = Duration::from_secs(360);
        let flows = [
            (key("10.0.2.1:5000".parse().unwrap(), 53), flow(100)),
            (key("10.0.2.1:5001".parse().unwrap(), 53), flow(400)),
        ];
        let gone = expired(flows, 460 * 1_000_000_000, idle);
        assert_eq!(gone, vec![key("10.0.2.1:5000".parse().unwrap(), 53)]);
        assert!(expired(flows, 459 * 1_000_000_000, idle).is_empty());
    }

    #[test]
    fn the_expiry_runs_a_few_times_per_idle_time_within_bounds() {
        assert_eq!(interval(Duration::from_secs(360)), Duration::from_secs(10));
        assert_eq!(interval(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(
            interval(Duration::from_millis(100)),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn an_ipv4_lb_is_keyed_v4_mapped() {
        let k = key("10.0.2.1:5000".parse().unwrap(), 53);
        assert_eq!(&k.lb_addr[10..], &[0xff, 0xff, 10, 0, 2, 1]);
        assert_eq!((k.lb_port, k.local_port), (5000, 53));
    }
}
