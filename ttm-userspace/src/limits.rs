//! Which of ttm's limits a running host has reached, and what to change.
//! Read from the kernel counters, so checking costs the same at any size.

use ttm_common::Counter;

use crate::stats::Stats;

/// A limit some connections ran into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitReached {
    /// Counter that says so.
    pub counter: Counter,
    /// Connections affected since the daemon's maps were created.
    pub connections: u64,
    /// What happened and what to change, for the log and the CLI.
    pub advice: &'static str,
}

/// The limits `stats` shows reached.
pub fn reached(stats: &Stats) -> Vec<LimitReached> {
    [
        (
            Counter::MapInsertFailed,
            "the record map is full (--max-records): these connections have no record (they \
             work, and their apps see the LB's address; no live record was dropped) — raise \
             --max-records",
        ),
        (
            Counter::TupleIndexFailed,
            "these connections share their 4-tuple with a live recorded one in another network \
             namespace: they have no record, and getsockopt(SOL_IP, 1345) answers for neither \
             — give the namespaces' servers distinct addresses or ports",
        ),
        (
            Counter::ProxyWatchFailed,
            "PROXY connections could not be watched (65,536 headers in flight at once, or the \
             sockhash full at --max-records): their header reached the app unremoved — raise \
             --max-records, or look for a peer opening connections without sending",
        ),
    ]
    .into_iter()
    .filter_map(|(counter, advice)| {
        let connections = stats.get(counter);
        (connections > 0).then_some(LimitReached {
            counter,
            connections,
            advice,
        })
    })
    .collect()
}

/// Limits reached since `before`: (limit, connections newly affected).
pub fn newly_reached(before: &Stats, now: &Stats) -> Vec<(LimitReached, u64)> {
    reached(now)
        .into_iter()
        .filter_map(|l| {
            let new = l.connections.saturating_sub(before.get(l.counter));
            (new > 0).then_some((l, new))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(set: &[(Counter, u64)]) -> Stats {
        Stats {
            counters: Counter::ALL
                .iter()
                .map(|c| {
                    let v = set.iter().find(|(k, _)| k == c).map_or(0, |(_, v)| *v);
                    (c.name(), v)
                })
                .collect(),
        }
    }

    #[test]
    fn a_full_map_is_named_with_what_to_change() {
        let s = stats(&[(Counter::MapInsertFailed, 3), (Counter::Decoded, 10)]);
        let r = reached(&s);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].counter, Counter::MapInsertFailed);
        assert_eq!(r[0].connections, 3);
        assert!(r[0].advice.contains("--max-records"));
        assert!(reached(&stats(&[])).is_empty());
    }

    #[test]
    fn only_new_refusals_are_reported_again() {
        let before = stats(&[(Counter::MapInsertFailed, 3)]);
        let now = stats(&[
            (Counter::MapInsertFailed, 5),
            (Counter::TupleIndexFailed, 1),
        ]);
        let new = newly_reached(&before, &now);
        assert_eq!(new.len(), 2);
        assert_eq!((new[0].0.counter, new[0].1), (Counter::MapInsertFailed, 2));
        assert_eq!((new[1].0.counter, new[1].1), (Counter::TupleIndexFailed, 1));
        assert!(newly_reached(&now, &now).is_empty());
    }
}
