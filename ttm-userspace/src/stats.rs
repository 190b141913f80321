//! Reading the per-CPU counters.

use aya::maps::{Map, MapData, PerCpuArray};
use serde::Serialize;
use ttm_common::{maps, Counter};

use crate::pins::PinDir;
use crate::records::RecordsError;

/// Counter totals summed over CPUs, in `Counter` order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// (name, total) for every counter.
    pub counters: Vec<(&'static str, u64)>,
}

impl Stats {
    /// Total of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        self.counters[counter as usize].1
    }

    /// Records in the record map now: filed minus removed, kept by the
    /// kernel side as records come and go, so reading it costs the same at a
    /// million records as at ten.
    pub fn live_records(&self) -> u64 {
        maps::live_records(
            self.get(Counter::RecordsStored),
            self.get(Counter::RecordsRemoved),
        )
    }

    /// The counters as a JSON object `{name: total}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.counters
                .iter()
                .map(|(k, v)| ((*k).to_string(), serde_json::Value::from(*v)))
                .collect(),
        )
    }
}

/// Reads `STATS` from an open map.
pub fn read(map: &PerCpuArray<MapData, u64>) -> Result<Stats, RecordsError> {
    let mut counters = Vec::with_capacity(Counter::ALL.len());
    for counter in Counter::ALL {
        let per_cpu = map.get(&(counter as u32), 0)?;
        counters.push((counter.name(), per_cpu.iter().sum()));
    }
    Ok(Stats { counters })
}

/// Adds `n` to `counter` (a slot only user space writes: the sweeps'),
/// on the first CPU's value.
pub fn add(
    map: &mut PerCpuArray<MapData, u64>,
    counter: Counter,
    n: u64,
) -> Result<(), RecordsError> {
    let index = counter as u32;
    let mut values: Vec<u64> = map.get(&index, 0)?.iter().copied().collect();
    if let Some(first) = values.first_mut() {
        *first += n;
    }
    let values = aya::maps::PerCpuValues::try_from(values)
        .map_err(|e| RecordsError::Read(aya::maps::MapError::IoError(std::io::Error::other(e))))?;
    map.set(index, values, 0)?;
    Ok(())
}

/// Opens the pinned `STATS` map under `pins`.
pub fn open(pins: &PinDir) -> Result<PerCpuArray<MapData, u64>, RecordsError> {
    let path = pins.map(maps::STATS);
    let data = MapData::from_pin(&path).map_err(|source| RecordsError::NotPinned {
        path: path.display().to_string(),
        source,
    })?;
    Ok(PerCpuArray::try_from(Map::PerCpuArray(data))?)
}
