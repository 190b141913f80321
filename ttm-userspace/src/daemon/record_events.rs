//! The daemon's reader of `RECORD_EVENTS`: applies each record filed and
//! removed to the [`RecordIndex`], and rebuilds the index from `RECORDS`
//! when the kernel counted events it had no room for.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData, RingBuf};
use log::warn;
use ttm_common::maps::{self, TcKey};
use ttm_common::{Counter, PeerRecord};

use crate::pins::PinDir;
use crate::records::index::{rebuild, RecordIndex};

/// How long a read waits for events before it checks the lost-event count.
const WAIT: Duration = Duration::from_millis(250);

/// Attaches the pinned `RECORD_EVENTS` to `index` and starts the thread
/// that drains it. It runs until the process exits.
pub fn spawn(pins: &PinDir, index: Arc<RecordIndex>) -> Result<()> {
    let open = |name: &str| {
        MapData::from_pin(pins.map(name)).with_context(|| format!("opening the pinned {name}"))
    };
    let ring = RingBuf::try_from(Map::RingBuf(open(maps::RECORD_EVENTS)?))?;
    let fd = ring.as_raw_fd();
    index.attach_ring(ring);
    let records = HashMap::try_from(Map::HashMap(open(maps::RECORDS)?))?;
    let stats = crate::stats::open(pins)?;
    std::thread::Builder::new()
        .name("ttm-record-events".into())
        .spawn(move || read_forever(fd, &records, &stats, &index))
        .context("starting the record-event reader")?;
    Ok(())
}

fn lost_events(stats: &aya::maps::PerCpuArray<MapData, u64>) -> u64 {
    crate::stats::read(stats)
        .map(|s| s.get(Counter::EventsLost))
        .unwrap_or(0)
}

/// `fd`: the ring's, which `index` holds for as long as the process runs.
fn read_forever(
    fd: std::os::fd::RawFd,
    records: &HashMap<MapData, TcKey, PeerRecord>,
    stats: &aya::maps::PerCpuArray<MapData, u64>,
    index: &RecordIndex,
) {
    let mut lost = lost_events(stats);
    let mut checked = Instant::now();
    loop {
        index.drain();
        if checked.elapsed() >= WAIT {
            checked = Instant::now();
            let now = lost_events(stats);
            if now != lost {
                // Events are gone: walk the map (it is the truth) once the
                // ring is drained, so nothing read after is older than it.
                let n = rebuild(index, records);
                warn!(
                    "{} record events found no room in the ring (the daemon fell behind): \
                     the lookup index was rebuilt from {n} records",
                    now.saturating_sub(lost)
                );
                lost = now;
            }
        }
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, WAIT.as_millis() as i32) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                warn!("waiting for record events failed: {e}; the lookup index stops following");
                return;
            }
        }
    }
}
