//! Where the service finds connections and counters: the daemon's maps, or a
//! stand-in in tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

use aya::maps::{MapData, PerCpuArray};
use ttm_client::Connection;

use crate::pins::PinDir;
use crate::records::{RecordStore, RecordsError};

/// Answers lookups. Implementations must be cheap to call concurrently.
pub trait Directory: Send + Sync + 'static {
    /// The connection with socket cookie `cookie`.
    fn by_cookie(&self, cookie: u64) -> Result<Option<Connection>, RecordsError>;
    /// The connection of socket `fd`, a TCP socket whose cookie is `cookie`.
    fn by_fd(&self, fd: BorrowedFd<'_>, cookie: u64) -> Result<Option<Connection>, RecordsError> {
        let _ = fd;
        self.by_cookie(cookie)
    }
    /// The connection with local address `local` and kernel peer `peer`.
    fn by_tuple(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Result<Option<Connection>, RecordsError>;
    /// Kernel counters by name, and the number of live records.
    fn kernel_stats(&self) -> Result<(BTreeMap<String, u64>, u64), RecordsError>;
    /// The UDP flow from `lb` to the socket at `local` (none where UDP is off).
    fn udp_flow(
        &self,
        local: SocketAddr,
        lb: SocketAddr,
    ) -> Result<Option<ttm_client::UdpFlowReply>, RecordsError> {
        let _ = (local, lb);
        Ok(None)
    }
}

/// The daemon's pinned maps.
pub struct PinnedDirectory {
    records: RecordStore,
    stats: PerCpuArray<MapData, u64>,
    /// `UDP_FLOWS` and `--udp-idle`, with `--udp-interface`.
    udp: Option<(crate::udp_flows::Flows, std::time::Duration)>,
}

impl PinnedDirectory {
    /// Opens the maps pinned under `pins`. `tc`: the TC path decodes, so
    /// sockets sockops did not see may have a record by 4-tuple.
    pub fn open(pins: &PinDir, tc: bool) -> Result<PinnedDirectory, RecordsError> {
        let mut records = RecordStore::open(pins)?;
        records.set_tc_fd_fallback(tc);
        Ok(PinnedDirectory {
            records,
            stats: crate::stats::open(pins)?,
            udp: None,
        })
    }

    /// Answers `udp` lookups from the pinned `UDP_FLOWS`, flows idle past
    /// `idle` counting as gone.
    pub fn with_udp(
        mut self,
        pins: &PinDir,
        idle: std::time::Duration,
    ) -> Result<Self, RecordsError> {
        self.udp = Some((crate::udp_flows::open(pins)?, idle));
        Ok(self)
    }
}

impl PinnedDirectory {
    /// The record store's cookie and client index, for the event reader.
    pub fn index(&self) -> std::sync::Arc<crate::records::index::RecordIndex> {
        self.records.index()
    }
}

impl Directory for PinnedDirectory {
    fn by_cookie(&self, cookie: u64) -> Result<Option<Connection>, RecordsError> {
        self.records.by_cookie(cookie)
    }

    fn by_fd(&self, fd: BorrowedFd<'_>, cookie: u64) -> Result<Option<Connection>, RecordsError> {
        self.records.by_fd(fd, cookie)
    }

    fn by_tuple(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Result<Option<Connection>, RecordsError> {
        self.records.by_tuple(local, peer)
    }

    fn udp_flow(
        &self,
        local: SocketAddr,
        lb: SocketAddr,
    ) -> Result<Option<ttm_client::UdpFlowReply>, RecordsError> {
        Ok(self
            .udp
            .as_ref()
            .and_then(|(flows, idle)| crate::udp_flows::reply(flows, local, lb, *idle)))
    }

    fn kernel_stats(&self) -> Result<(BTreeMap<String, u64>, u64), RecordsError> {
        let stats = crate::stats::read(&self.stats)?;
        let counters = stats
            .counters
            .iter()
            .map(|(k, v)| ((*k).to_string(), *v))
            .collect();
        Ok((counters, stats.live_records()))
    }
}
