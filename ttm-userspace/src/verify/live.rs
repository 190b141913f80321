//! `ttm verify --live`: what the witness caught — getpeername answers that
//! were neither the kernel's peer nor ttm's client.

use std::net::SocketAddr;
use std::time::Duration;

use aya::maps::{HashMap, Map, MapData};
use serde::Serialize;
use ttm_common::maps::{self, Mismatch};

use crate::host::monotonic_ns;
use crate::pins::PinDir;
use crate::records::{to_ip, RecordsError};

/// One socket the witness flagged.
#[derive(Clone, Debug, Serialize)]
pub struct Caught {
    /// Socket cookie.
    pub cookie: u64,
    /// Process that called getpeername()/accept().
    pub pid: u32,
    /// Its command, if still running.
    pub command: String,
    /// What the application received.
    pub returned: SocketAddr,
    /// The kernel's peer.
    pub kernel_peer: SocketAddr,
    /// Seconds since it was seen.
    pub age: f64,
}

/// Whether a daemon on `pins` has the live witness attached (`--witness`).
pub fn witness_attached(pins: &PinDir) -> bool {
    pins.link_pins().iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_ttm_witness"))
    })
}

/// Reads the witness's findings from the pinned map.
pub fn caught(pins: &PinDir) -> Result<Vec<Caught>, RecordsError> {
    let path = pins.map(maps::MISMATCHES);
    let data = MapData::from_pin(&path).map_err(|source| RecordsError::NotPinned {
        path: path.display().to_string(),
        source,
    })?;
    let map: HashMap<MapData, u64, Mismatch> = HashMap::try_from(Map::LruHashMap(data))?;
    let now = monotonic_ns();
    let mut out: Vec<Caught> = map
        .iter()
        .filter_map(Result::ok)
        .map(|(cookie, m)| Caught {
            cookie,
            pid: m.pid,
            command: std::fs::read_to_string(format!("/proc/{}/comm", m.pid))
                .map(|c| c.trim().to_string())
                .unwrap_or_default(),
            returned: SocketAddr::new(to_ip(&m.returned_addr), m.returned_port),
            kernel_peer: SocketAddr::new(to_ip(&m.kernel_addr), m.kernel_port),
            age: Duration::from_nanos(now.saturating_sub(m.seen_ns)).as_secs_f64(),
        })
        .collect();
    out.sort_by_key(|c| c.cookie);
    Ok(out)
}
