//! Reading decoded connections from the pinned maps.

pub mod index;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{HashMap, Map, MapData, MapError};
use ttm_client::provenance::canonical;
use ttm_client::Connection;
use ttm_common::{maps, maps::TcKey, ClientFamily, PeerRecord};

use index::RecordIndex;

use crate::host::monotonic_ns;
use crate::pins::PinDir;

/// Errors opening or reading the record map.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// The pinned map is not there: no daemon is running on this pin directory.
    #[error("cannot open {path}: {source} — is `ttm daemon` running (with the same --pin-dir)?")]
    NotPinned {
        /// Pin path tried.
        path: String,
        /// Underlying error.
        source: MapError,
    },
    /// Reading the map failed.
    #[error("reading the record map: {0}")]
    Read(#[from] MapError),
}

/// Converts a 16-byte address (IPv4 v4-mapped) to an `IpAddr`.
pub fn to_ip(addr: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Presents `record` (socket cookie `cookie`) at time `now_ns` (CLOCK_MONOTONIC).
pub fn connection(cookie: u64, record: &PeerRecord, now_ns: u64) -> Connection {
    Connection {
        cookie,
        client: SocketAddr::new(to_ip(&record.client_addr), record.client_port),
        family: ClientFamily::from_raw(record.client_family)
            .map_or("unknown", ClientFamily::name)
            .to_string(),
        kernel_peer: SocketAddr::new(to_ip(&record.peer_addr), record.peer_port),
        local: SocketAddr::new(to_ip(&record.local_addr), record.local_port),
        option_kind: record.option_kind,
        option_len: record.option_len,
        carrier: record.carrier().to_string(),
        tlvs: Vec::new(),
        age: Duration::from_nanos(now_ns.saturating_sub(record.established_ns)),
    }
}

/// The pinned maps lookups read — the records by 4-tuple, and the TC
/// path's 4-tuple → record map when the daemon pinned one — with the
/// cookie and client-tuple index kept in this process. Every lookup is a
/// fixed number of hash gets: none walks a map, so its cost does not grow
/// with the number of records (only opening the store walks it once).
pub struct RecordStore {
    map: HashMap<MapData, TcKey, PeerRecord>,
    index: Arc<RecordIndex>,
    tc: Option<HashMap<MapData, TcKey, PeerRecord>>,
    tlvs: Option<HashMap<MapData, u64, ttm_common::proxy::HeaderBuf>>,
    tc_fd_fallback: bool,
}

/// Cookie reported for a record only the TC path has (its socket was not
/// seen by sockops, so its cookie is unknown).
pub const NO_COOKIE: u64 = 0;

/// The TC map key of a connection with local address `local` and kernel peer `peer`.
pub fn tc_key(local: SocketAddr, peer: SocketAddr) -> TcKey {
    let mapped = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    TcKey {
        local_addr: mapped(local),
        peer_addr: mapped(peer),
        local_port: local.port(),
        peer_port: peer.port(),
    }
}

/// Opens pinned map `name` under `pins`, if it is there.
fn open_optional(pins: &PinDir, name: &str) -> Result<Option<Map>, RecordsError> {
    match MapData::from_pin(pins.map(name)) {
        Ok(data) => Ok(Some(Map::from_map_data(data)?)),
        Err(_) => Ok(None),
    }
}

/// Reads one key; a missing key is `None`.
fn get<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    key: &K,
) -> Result<Option<V>, RecordsError> {
    match map.get(key, 0) {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl RecordStore {
    /// Opens the maps the daemon pinned under `pins` and indexes the
    /// records live now.
    pub fn open(pins: &PinDir) -> Result<RecordStore, RecordsError> {
        let path = pins.map(maps::RECORDS);
        let data = MapData::from_pin(&path).map_err(|source| RecordsError::NotPinned {
            path: path.display().to_string(),
            source,
        })?;
        let map = HashMap::try_from(Map::from_map_data(data)?)?;
        let tc = open_optional(pins, maps::TC_RECORDS)?
            .map(HashMap::try_from)
            .transpose()?;
        let tlvs = open_optional(pins, maps::PROXY_TLVS)?
            .map(HashMap::try_from)
            .transpose()?;
        let index = Arc::new(RecordIndex::new());
        index::rebuild(&index, &map);
        Ok(RecordStore {
            map,
            index,
            tc,
            tlvs,
            tc_fd_fallback: true,
        })
    }

    /// The cookie and client-tuple index, for the daemon's event reader.
    pub fn index(&self) -> Arc<RecordIndex> {
        Arc::clone(&self.index)
    }

    /// Whether lookups by fd of sockets without a record of their own try
    /// the TC path's map (on by default). Only worth it where the TC path
    /// decodes: finding the socket's 4-tuple runs its getpeername hooks.
    pub fn set_tc_fd_fallback(&mut self, on: bool) {
        self.tc_fd_fallback = on;
    }

    /// The connection of `record`, with its v2 TLVs when it has them.
    fn present(&self, record: &PeerRecord) -> Result<Connection, RecordsError> {
        let mut found = connection(record.cookie, record, monotonic_ns());
        if record.proxy_version() == Some(ttm_common::proxy::ProxyVersion::V2) {
            if let Some(tlvs) = &self.tlvs {
                if let Some(header) = get(tlvs, &record.cookie)? {
                    found.tlvs = crate::proxy_tlvs::describe(&header);
                }
            }
        }
        Ok(found)
    }

    /// The record of the connection with socket cookie `cookie`.
    pub fn by_cookie(&self, cookie: u64) -> Result<Option<Connection>, RecordsError> {
        let Some(key) = self.index.key_of_cookie(cookie) else {
            return Ok(None);
        };
        match get(&self.map, &key)? {
            Some(record) if record.cookie == cookie => Ok(Some(self.present(&record)?)),
            _ => Ok(None),
        }
    }

    /// The record of socket `fd` (a TCP socket with cookie `cookie`): by
    /// its cookie, else — for sockets sockops does not see — the TC path's
    /// record for the socket's 4-tuple, as the kernel's socket table
    /// confirms it (`sockdiag`).
    pub fn by_fd(
        &self,
        fd: BorrowedFd<'_>,
        cookie: u64,
    ) -> Result<Option<Connection>, RecordsError> {
        if let Some(found) = self.by_cookie(cookie)? {
            return Ok(Some(found));
        }
        let Some(tc) = self.tc.as_ref().filter(|_| self.tc_fd_fallback) else {
            return Ok(None);
        };
        let Some((local, peer)) = crate::sockdiag::kernel_tuple(fd, cookie) else {
            return Ok(None);
        };
        Ok(get(tc, &tc_key(local, peer))?.map(|r| connection(NO_COOKIE, &r, monotonic_ns())))
    }

    /// The record of the connection whose local address is `local` and whose
    /// peer is `peer`: the kernel's peer (the LB), or the client when the
    /// app got it from a rewritten `accept()`/`getpeername()`. One get in
    /// the record map, through the client index for the app's view; for
    /// sockets sockops did not see, one get in the TC path's map.
    pub fn by_tuple(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Result<Option<Connection>, RecordsError> {
        let key = tc_key(canonical(local), canonical(peer));
        if let Some(record) = get(&self.map, &key)? {
            return Ok(Some(self.present(&record)?));
        }
        if let Some(kernel) = self.index.key_of_client(&key) {
            match get(&self.map, &kernel)? {
                Some(r) if r.client_addr == key.peer_addr && r.client_port == key.peer_port => {
                    return Ok(Some(self.present(&r)?));
                }
                _ => {}
            }
        }
        let Some(tc) = &self.tc else { return Ok(None) };
        Ok(get(tc, &key)?.map(|r| connection(NO_COOKIE, &r, monotonic_ns())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttm_common::addr::v4_mapped;

    #[test]
    fn record_is_presented_with_plain_v4_addresses() {
        let record = PeerRecord {
            client_addr: v4_mapped([10, 0, 1, 2]),
            peer_addr: v4_mapped([10, 0, 2, 1]),
            local_addr: v4_mapped([10, 0, 2, 2]),
            established_ns: 1_000,
            client_port: 40_000,
            peer_port: 50_000,
            local_port: 8080,
            client_family: ClientFamily::FourToFour as u8,
            format_index: 0,
            option_kind: 254,
            option_len: 8,
            _pad: [0; 5],
            shared: 0,
            cookie: 0,
        };
        let info = connection(7, &record, 2_500_001_000);
        assert_eq!(info.client, "10.0.1.2:40000".parse().unwrap());
        assert_eq!(info.kernel_peer, "10.0.2.1:50000".parse().unwrap());
        assert_eq!(info.local, "10.0.2.2:8080".parse().unwrap());
        assert_eq!(info.family, "4to4");
        assert_eq!(info.age, Duration::from_millis(2_500));
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["client"], "10.0.1.2:40000");
        assert_eq!(json["age"], 2.5);
    }
}
