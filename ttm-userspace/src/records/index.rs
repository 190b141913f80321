//! The daemon's indexes of `RECORDS`, kept in its own memory: socket cookie
//! → record key, and (local, client) — the tuple an app sees after the
//! rewrite — → record key. Fed by `RECORD_EVENTS`; rebuilt by a walk of the
//! map at start and after lost events. An index entry only points: every
//! lookup reads the record from the kernel and checks it against what was
//! asked, so a stale entry can miss, never answer wrongly.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, RwLock};

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};

use ttm_common::maps::{RecordEvent, TcKey, RECORD_FILED, RECORD_REMOVED};
use ttm_common::PeerRecord;

/// Cookie and client-tuple indexes of the records in `RECORDS`.
#[derive(Default)]
pub struct RecordIndex {
    maps: RwLock<Maps>,
    /// The daemon's `RECORD_EVENTS` (none in a CLI's store: the daemon is
    /// the ring's one reader). Drained by the reader thread, and by a
    /// lookup that misses, so a record filed just before it is found.
    ring: Mutex<Option<RingBuf<MapData>>>,
    /// While a rebuild walks the map: every event applied meanwhile, to be
    /// applied again to the new index before it replaces the old one (the
    /// walk may have read the map before or after each of them).
    replay: Mutex<Option<Vec<RecordEvent>>>,
}

/// The two indexes. The client-tuple one is keyed by a digest of the
/// tuple (keyed per index, so no peer can aim collisions at it) and points
/// at a cookie: 16 bytes an entry instead of two 36-byte tuples. A digest
/// two tuples share makes the older one miss, which the check of every hit
/// against the kernel's record turns into a miss, never a wrong answer.
#[derive(Debug, Default)]
struct Maps {
    by_cookie: HashMap<u64, TcKey>,
    by_client: HashMap<u64, u64>,
    digest: RandomState,
}

/// The (local, client) tuple of a record filed under `key`.
pub fn client_key(key: &TcKey, client_addr: [u8; 16], client_port: u16) -> TcKey {
    TcKey {
        local_addr: key.local_addr,
        local_port: key.local_port,
        peer_addr: client_addr,
        peer_port: client_port,
    }
}

impl Maps {
    fn file(&mut self, key: TcKey, cookie: u64, client: TcKey) {
        self.by_cookie.insert(cookie, key);
        let digest = self.digest.hash_one(client);
        self.by_client.insert(digest, cookie);
    }

    fn remove(&mut self, key: &TcKey, cookie: u64, client: &TcKey) {
        if self.by_cookie.get(&cookie) == Some(key) {
            self.by_cookie.remove(&cookie);
        }
        let digest = self.digest.hash_one(client);
        if self.by_client.get(&digest) == Some(&cookie) {
            self.by_client.remove(&digest);
        }
    }

    fn key_of_client(&self, client: &TcKey) -> Option<TcKey> {
        let cookie = self.by_client.get(&self.digest.hash_one(client))?;
        self.by_cookie.get(cookie).copied()
    }
}

impl RecordIndex {
    /// An empty index.
    pub fn new() -> RecordIndex {
        RecordIndex::default()
    }

    /// Applies one event from `RECORD_EVENTS`; unknown kinds are ignored.
    pub fn apply(&self, event: &RecordEvent) {
        if let Some(replay) = self
            .replay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            replay.push(*event);
        }
        apply_to(
            &mut self.maps.write().unwrap_or_else(|e| e.into_inner()),
            event,
        );
    }

    /// Makes `ring` this index's event source.
    pub fn attach_ring(&self, ring: RingBuf<MapData>) {
        *self.ring.lock().unwrap_or_else(|e| e.into_inner()) = Some(ring);
    }

    /// Applies every event waiting in the ring, if one is attached; returns
    /// how many.
    pub fn drain(&self) -> usize {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let Some(ring) = ring.as_mut() else { return 0 };
        let mut n = 0;
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<RecordEvent>() {
                // SAFETY: the kernel wrote a whole RecordEvent (plain data);
                // read unaligned from the ring's bytes.
                let event = unsafe { item.as_ptr().cast::<RecordEvent>().read_unaligned() };
                self.apply(&event);
                n += 1;
            }
        }
        n
    }

    /// Replaces the whole index with `records` (a walk of `RECORDS`).
    /// Lookups go on meanwhile, from the old index and the events drained
    /// during the walk; those events are applied again to the new index
    /// before it takes over, so none is lost whichever side of the walk it
    /// fell on (an index entry only points, and every hit is checked).
    pub fn rebuild(&self, records: impl IntoIterator<Item = (TcKey, PeerRecord)>) {
        *self.replay.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
        let mut fresh = Maps::default();
        for (key, record) in records {
            let client = client_key(&key, record.client_addr, record.client_port);
            fresh.file(key, record.cookie, client);
        }
        // The ring held: no event is applied between the replay and the swap.
        let _ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let replay = self
            .replay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        for event in &replay {
            apply_to(&mut fresh, event);
        }
        *self.maps.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    }

    /// The record key of socket cookie `cookie`, if indexed (after the
    /// waiting events, on a miss).
    pub fn key_of_cookie(&self, cookie: u64) -> Option<TcKey> {
        self.find(|maps| maps.by_cookie.get(&cookie).copied())
    }

    /// The record key of the connection whose (local, client) is `client`.
    pub fn key_of_client(&self, client: &TcKey) -> Option<TcKey> {
        self.find(|maps| maps.key_of_client(client))
    }

    fn find(&self, look: impl Fn(&Maps) -> Option<TcKey>) -> Option<TcKey> {
        let found = look(&self.maps.read().unwrap_or_else(|e| e.into_inner()));
        if found.is_some() || self.drain() == 0 {
            return found;
        }
        look(&self.maps.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records indexed by cookie.
    pub fn len(&self) -> usize {
        let maps = self.maps.read().unwrap_or_else(|e| e.into_inner());
        maps.by_cookie.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn apply_to(maps: &mut Maps, event: &RecordEvent) {
    let client = client_key(&event.key, event.client_addr, event.client_port);
    match event.kind {
        RECORD_FILED => maps.file(event.key, event.cookie, client),
        RECORD_REMOVED => maps.remove(&event.key, event.cookie, &client),
        _ => {}
    }
}

/// Walks `RECORDS` into `index`; returns the number of records.
pub fn rebuild(index: &RecordIndex, records: &BpfHashMap<MapData, TcKey, PeerRecord>) -> usize {
    let mut n = 0;
    index.rebuild(records.iter().filter_map(Result::ok).inspect(|_| n += 1));
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttm_common::addr::v4_mapped;

    fn key(port: u16) -> TcKey {
        TcKey {
            local_addr: v4_mapped([10, 0, 2, 2]),
            peer_addr: v4_mapped([10, 0, 2, 1]),
            local_port: 8080,
            peer_port: port,
        }
    }

    fn event(kind: u8, port: u16, cookie: u64, client: [u8; 4]) -> RecordEvent {
        RecordEvent {
            key: key(port),
            kind,
            _pad: [0; 3],
            cookie,
            client_addr: v4_mapped(client),
            client_port: 40_000,
            _pad2: [0; 6],
        }
    }

    #[test]
    fn a_filed_record_is_found_by_cookie_and_client_until_removed() {
        let index = RecordIndex::new();
        index.apply(&event(RECORD_FILED, 50_000, 7, [192, 0, 2, 9]));
        let client = client_key(&key(50_000), v4_mapped([192, 0, 2, 9]), 40_000);
        assert_eq!(index.key_of_cookie(7), Some(key(50_000)));
        assert_eq!(index.key_of_client(&client), Some(key(50_000)));
        index.apply(&event(RECORD_REMOVED, 50_000, 7, [192, 0, 2, 9]));
        assert_eq!(index.key_of_cookie(7), None);
        assert_eq!(index.key_of_client(&client), None);
        assert!(index.is_empty());
    }

    #[test]
    fn a_late_removal_leaves_a_newer_record_of_the_same_client_alone() {
        let index = RecordIndex::new();
        // The same client tuple (the LB reused its port) filed again under
        // a new kernel tuple before the old record's removal arrived.
        index.apply(&event(RECORD_FILED, 50_000, 7, [192, 0, 2, 9]));
        index.apply(&event(RECORD_FILED, 50_001, 8, [192, 0, 2, 9]));
        index.apply(&event(RECORD_REMOVED, 50_000, 7, [192, 0, 2, 9]));
        let client = client_key(&key(50_000), v4_mapped([192, 0, 2, 9]), 40_000);
        assert_eq!(index.key_of_client(&client), Some(key(50_001)));
        assert_eq!(index.key_of_cookie(8), Some(key(50_001)));
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_rebuild_replaces_everything() {
        let index = RecordIndex::new();
        index.apply(&event(RECORD_FILED, 50_000, 7, [192, 0, 2, 9]));
        let record = PeerRecord {
            cookie: 9,
            client_addr: v4_mapped([198, 51, 100, 1]),
            client_port: 1234,
            ..PeerRecord::ZERO
        };
        index.rebuild([(key(50_002), record)]);
        assert_eq!(index.key_of_cookie(7), None);
        assert_eq!(index.key_of_cookie(9), Some(key(50_002)));
        let client = client_key(&key(50_002), v4_mapped([198, 51, 100, 1]), 1234);
        assert_eq!(index.key_of_client(&client), Some(key(50_002)));
    }

    #[test]
    fn events_applied_during_a_rebuild_survive_it_and_lookups_are_served_meanwhile() {
        let index = RecordIndex::new();
        index.apply(&event(RECORD_FILED, 50_000, 7, [192, 0, 2, 9]));
        // The walk saw record 9 only; record 7 was removed and record 8
        // filed while it ran, and a lookup was answered from the old index.
        let record = PeerRecord {
            cookie: 9,
            client_addr: v4_mapped([198, 51, 100, 1]),
            client_port: 1234,
            ..PeerRecord::ZERO
        };
        let walk = std::iter::once((key(50_002), record)).inspect(|_| {
            assert_eq!(index.key_of_cookie(7), Some(key(50_000)));
            index.apply(&event(RECORD_REMOVED, 50_000, 7, [192, 0, 2, 9]));
            index.apply(&event(RECORD_FILED, 50_001, 8, [192, 0, 2, 8]));
        });
        index.rebuild(walk);
        assert_eq!(index.key_of_cookie(7), None);
        assert_eq!(index.key_of_cookie(8), Some(key(50_001)));
        assert_eq!(index.key_of_cookie(9), Some(key(50_002)));
        assert_eq!(index.len(), 2);
        // The replay log is gone once the rebuild is done.
        assert!(index.replay.lock().unwrap().is_none());
    }
}
