//! The lookup service's own counters, reported by `stats` and `ttm stats`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// One thing the service counts. Owner: the service; readers: `stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceCounter {
    /// Client connections accepted.
    ClientsAccepted,
    /// Client connections refused with `overloaded` (too many at once).
    ClientsOverloaded,
    /// Client connections closed because they sent nothing for too long.
    ClientsTimedOut,
    /// Client connections that hung up in the middle of a request line.
    ClientsHungUpMidRequest,
    /// Client connections dropped because they sent bytes that are not
    /// UTF-8 JSON lines (answered with one error line first).
    ClientsSentGarbage,
    /// Client connections dropped because they stopped reading their
    /// answers (the socket stayed full past the write bound).
    ClientsNotReading,
    /// Requests answered with a record, counters or the version.
    RequestsAnswered,
    /// Lookups answered `not_found`.
    RequestsNotFound,
    /// Requests answered `bad_request` (every cause, including the two below).
    RequestsBad,
    /// Request lines longer than the limit (the connection is closed).
    RequestsTooLong,
    /// Request lines that are not UTF-8.
    RequestsNotUtf8,
    /// Lookups that failed reading the maps (`internal`).
    RequestsFailed,
    /// Descriptors received with `SCM_RIGHTS`.
    FdsReceived,
    /// Descriptors passed that were not TCP sockets.
    FdsNotTcp,
    /// Descriptors that came with a request that does not take one (closed).
    FdsUnclaimed,
}

impl ServiceCounter {
    /// Every counter, in order.
    pub const ALL: [ServiceCounter; 15] = [
        ServiceCounter::ClientsAccepted,
        ServiceCounter::ClientsOverloaded,
        ServiceCounter::ClientsTimedOut,
        ServiceCounter::ClientsHungUpMidRequest,
        ServiceCounter::ClientsSentGarbage,
        ServiceCounter::ClientsNotReading,
        ServiceCounter::RequestsAnswered,
        ServiceCounter::RequestsNotFound,
        ServiceCounter::RequestsBad,
        ServiceCounter::RequestsTooLong,
        ServiceCounter::RequestsNotUtf8,
        ServiceCounter::RequestsFailed,
        ServiceCounter::FdsReceived,
        ServiceCounter::FdsNotTcp,
        ServiceCounter::FdsUnclaimed,
    ];

    /// Name in `stats` output.
    pub fn name(self) -> &'static str {
        match self {
            ServiceCounter::ClientsAccepted => "clients_accepted",
            ServiceCounter::ClientsOverloaded => "clients_overloaded",
            ServiceCounter::ClientsTimedOut => "clients_timed_out",
            ServiceCounter::ClientsHungUpMidRequest => "clients_hung_up_mid_request",
            ServiceCounter::ClientsSentGarbage => "clients_sent_garbage",
            ServiceCounter::ClientsNotReading => "clients_not_reading",
            ServiceCounter::RequestsAnswered => "requests_answered",
            ServiceCounter::RequestsNotFound => "requests_not_found",
            ServiceCounter::RequestsBad => "requests_bad",
            ServiceCounter::RequestsTooLong => "requests_too_long",
            ServiceCounter::RequestsNotUtf8 => "requests_not_utf8",
            ServiceCounter::RequestsFailed => "requests_failed",
            ServiceCounter::FdsReceived => "fds_received",
            ServiceCounter::FdsNotTcp => "fds_not_tcp",
            ServiceCounter::FdsUnclaimed => "fds_unclaimed",
        }
    }
}

/// The counters, shared by every client task.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    values: [AtomicU64; ServiceCounter::ALL.len()],
}

impl ServiceCounters {
    /// Adds one to `counter`.
    pub fn bump(&self, counter: ServiceCounter) {
        self.add(counter, 1);
    }

    /// Adds `n` to `counter`.
    pub fn add(&self, counter: ServiceCounter, n: u64) {
        self.values[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Current value of `counter`.
    pub fn get(&self, counter: ServiceCounter) -> u64 {
        self.values[counter as usize].load(Ordering::Relaxed)
    }

    /// Every counter by name.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        ServiceCounter::ALL
            .iter()
            .map(|&c| (c.name().to_string(), self.get(c)))
            .collect()
    }
}
