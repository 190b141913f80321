//! Removal by age of the TC path's records that no socket close will
//! remove: sockets sockops never saw (outside the cgroup, or no sockops at
//! all). A record goes once it is older than `--tc-max-age` and no TCP
//! socket of the daemon's network namespace has its 4-tuple; handshakes the
//! TC path still waits on go after the same age.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use log::info;
use ttm_common::{maps, maps::TcKey, Counter, PeerRecord};

use crate::host::monotonic_ns;
use crate::pins::PinDir;
use crate::records::tc_key;

/// How often to sweep for a given maximum age: a few times per age, at
/// least every 10 s, at most 5 times a second.
pub fn interval(max_age: Duration) -> Duration {
    (max_age / 4).clamp(Duration::from_millis(200), Duration::from_secs(10))
}

/// The keys of `entries` (4-tuple, time made) to remove at `now_ns`: older
/// than `max_age` and not the 4-tuple of a live socket.
pub fn expired(
    entries: impl IntoIterator<Item = (TcKey, u64)>,
    now_ns: u64,
    max_age: Duration,
    live: &HashSet<TcKey>,
) -> Vec<TcKey> {
    let max_age = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
    entries
        .into_iter()
        .filter(|(key, made)| now_ns.saturating_sub(*made) > max_age && !live.contains(key))
        .map(|(key, _)| key)
        .collect()
}

/// The 4-tuples of this network namespace's TCP sockets, from
/// `/proc/self/net/tcp{,6}` (local, remote).
pub fn live_tuples() -> HashSet<TcKey> {
    let mut out = HashSet::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let text = std::fs::read_to_string(format!("/proc/self/net/{file}")).unwrap_or_default();
        out.extend(tuples_of_proc_net(&text, v6));
    }
    out
}

/// Parses the (local, remote) columns of a `/proc/net/tcp{,6}` table.
fn tuples_of_proc_net(text: &str, v6: bool) -> impl Iterator<Item = TcKey> + '_ {
    text.lines().skip(1).filter_map(move |line| {
        let mut cols = line.split_whitespace().skip(1);
        let local = ttm_client::provenance::parse_proc_net_addr(cols.next()?, v6)?;
        let peer = ttm_client::provenance::parse_proc_net_addr(cols.next()?, v6)?;
        Some(tc_key(local, peer))
    })
}

/// The pinned maps the sweep works on.
pub struct Sweeper {
    records: HashMap<MapData, TcKey, PeerRecord>,
    pending: HashMap<MapData, TcKey, u64>,
    stats: PerCpuArray<MapData, u64>,
    max_age: Duration,
}

impl Sweeper {
    /// Opens the maps pinned under `pins`.
    pub fn open(pins: &PinDir, max_age: Duration) -> Result<Sweeper> {
        let open = |name: &str| {
            MapData::from_pin(pins.map(name)).with_context(|| format!("opening pinned {name}"))
        };
        Ok(Sweeper {
            records: HashMap::try_from(Map::LruHashMap(open(maps::TC_RECORDS)?))?,
            pending: HashMap::try_from(Map::LruHashMap(open(maps::TC_PENDING)?))?,
            stats: crate::stats::open(pins)?,
            max_age,
        })
    }

    /// One pass; returns how many records were removed.
    pub fn sweep(&mut self) -> Result<usize> {
        let now = monotonic_ns();
        let entries: Vec<(TcKey, u64)> = self
            .records
            .iter()
            .filter_map(Result::ok)
            .map(|(k, r)| (k, r.established_ns))
            .collect();
        let mut removed = 0;
        if !entries.is_empty() {
            let live = live_tuples();
            for key in expired(entries, now, self.max_age, &live) {
                match self.records.remove(&key) {
                    Ok(()) => removed += 1,
                    Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let waiting: Vec<(TcKey, u64)> = self.pending.iter().filter_map(Result::ok).collect();
        for key in expired(waiting, now, self.max_age, &HashSet::new()) {
            let _ = self.pending.remove(&key);
        }
        if removed > 0 {
            self.count(removed as u64)?;
            info!(
                "removed {removed} TC record(s) older than {:?} whose socket is gone",
                self.max_age
            );
        }
        Ok(removed)
    }

    /// Adds `n` to the `tc_expired` counter (only user space writes that slot).
    fn count(&mut self, n: u64) -> Result<()> {
        crate::stats::add(&mut self.stats, Counter::TcExpired, n).context("updating tc_expired")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(peer_port: u16) -> TcKey {
        tc_key(
            "10.0.2.2:8080".parse().unwrap(),
            format!("10.0.2.1:{peer_port}").parse().unwrap(),
        )
    }

    #[test]
    fn only_old_records_without_a_socket_expire() {
        let second = 1_000_000_000;
        let live: HashSet<TcKey> = [key(2)].into();
        let entries = [
            (key(1), 0),          // old, no socket: goes
            (key(2), 0),          // old, socket alive: stays
            (key(3), 9 * second), // young: stays
            (key(4), 4 * second), // exactly at the age: stays
        ];
        let gone = expired(entries, 10 * second, Duration::from_secs(6), &live);
        assert_eq!(gone, vec![key(1)]);
    }

    #[test]
    fn proc_net_tables_give_server_side_tuples() {
        let v4 = "  sl  local_address rem_address   st\n   0: 0202000A:1F90 0102000A:C350 01 \n";
        assert_eq!(
            tuples_of_proc_net(v4, false).collect::<Vec<_>>(),
            vec![key(50_000)]
        );
        let v6 = "  sl  local_address rem_address st\n   0: 0000000000000000FFFF00000202000A:1F90 0000000000000000FFFF00000102000A:C350 01\n";
        assert_eq!(
            tuples_of_proc_net(v6, true).collect::<Vec<_>>(),
            vec![key(50_000)]
        );
    }

    #[test]
    fn the_interval_follows_the_age_within_bounds() {
        assert_eq!(interval(Duration::from_secs(300)), Duration::from_secs(10));
        assert_eq!(interval(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(
            interval(Duration::from_millis(100)),
            Duration::from_millis(200)
        );
    }
}
