//! One client connection: read request lines (with any descriptors that ride
//! along), answer each in order, and stay bounded whatever the client sends.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use log::warn;
use rustix::net::{
    recvmsg, sockopt, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags,
    SocketType,
};
use std::io::Write as _;
use std::os::unix::net::UnixStream;
use ttm_client::protocol::{
    encode_line, ErrorCode, ErrorReply, Request, StatsReply, VersionReply, PROTOCOL_VERSION,
};
use ttm_client::Connection;

use super::counters::ServiceCounter as C;
use super::{Directory, Shared};
use crate::records::RecordsError;

/// A successful answer.
enum Answer {
    Found(Connection),
    Udp(ttm_client::UdpFlowReply),
    Stats(StatsReply),
    Version(VersionReply),
}

/// Descriptors one `recvmsg` accepts; more are closed by the kernel.
const FDS_PER_READ: usize = 4;
/// Descriptors held for lines not yet complete; more are closed.
const MAX_QUEUED_FDS: usize = 16;
/// Bytes read per `recvmsg`.
const READ_CHUNK: usize = 4096;

/// Who is on the other end, for the log.
struct Peer {
    pid: Option<i32>,
    uid: u32,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid} uid {}", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// Per-connection state.
struct Session {
    shared: Arc<Shared>,
    peer: Peer,
    /// Received bytes not yet answered.
    buf: Vec<u8>,
    /// Where each `recvmsg` lands (kept, so no read zeroes a fresh buffer).
    chunk: Box<[u8; READ_CHUNK]>,
    /// Stream offset of `buf[0]`.
    consumed: u64,
    /// Descriptors received, each with the stream offset of the first byte
    /// that came with it: a line owns the descriptors that arrived with its bytes.
    fds: VecDeque<(u64, OwnedFd)>,
    /// Rejected requests on this connection (logged once, summed at close).
    rejected: u64,
    /// The client sent bytes that are not UTF-8 JSON lines: answer the one
    /// error already written and close.
    garbage: bool,
}

/// Serves `stream` until the client leaves, misbehaves past recovery, or
/// idles. Runs on the client's own thread with blocking I/O: a client that
/// is slow, or a request that waits on the kernel, holds only its thread,
/// never another client's answers.
pub(super) fn serve(stream: UnixStream, shared: Arc<Shared>) {
    let peer = match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(c) => Peer {
            pid: Some(c.pid.as_raw_nonzero().get()),
            uid: c.uid.as_raw(),
        },
        Err(_) => Peer {
            pid: None,
            uid: u32::MAX,
        },
    };
    let limits = shared.limits;
    let write_timeout = limits.write_timeout.min(limits.idle_timeout);
    if stream.set_read_timeout(Some(limits.idle_timeout)).is_err()
        || stream.set_write_timeout(Some(write_timeout)).is_err()
    {
        return;
    }
    let mut session = Session {
        shared,
        peer,
        buf: Vec::with_capacity(256),
        chunk: Box::new([0; READ_CHUNK]),
        consumed: 0,
        fds: VecDeque::new(),
        rejected: 0,
        garbage: false,
    };
    session.run(&stream);
    if session.rejected > 0 {
        warn!(
            "lookup client {} left after {} rejected request(s)",
            session.peer, session.rejected
        );
    }
}

impl Session {
    fn run(&mut self, stream: &UnixStream) {
        let limits = self.shared.limits;
        let mut out = Vec::with_capacity(512);
        loop {
            while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                self.answer_line(end, &mut out);
                if self.garbage {
                    // One error line, then the connection goes: nothing
                    // after bytes that are not protocol can be trusted to be.
                    self.shared.counters.bump(C::ClientsSentGarbage);
                    let _ = (&*stream).write_all(&out);
                    return;
                }
            }
            if self.buf.len() >= limits.max_request {
                self.shared.counters.bump(C::RequestsTooLong);
                let reason = format!(
                    "request line longer than {} bytes (requests end with a newline)",
                    limits.max_request
                );
                self.reject(&reason, &mut out);
                let _ = (&*stream).write_all(&out);
                return;
            }
            if !out.is_empty() {
                // Blocks at most the write timeout: a client that stops
                // reading is dropped.
                if let Err(e) = (&*stream).write_all(&out) {
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) {
                        self.shared.counters.bump(C::ClientsNotReading);
                    }
                    return;
                }
                out.clear();
            }
            match self.read(stream) {
                Ok(0) => {
                    if !self.buf.is_empty() {
                        self.shared.counters.bump(C::ClientsHungUpMidRequest);
                    }
                    return;
                }
                Ok(_) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    self.shared.counters.bump(C::ClientsTimedOut);
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Reads one chunk (waiting at most the idle timeout), queueing any
    /// descriptors that came with it.
    fn read(&mut self, stream: &UnixStream) -> io::Result<usize> {
        let mut received = Vec::new();
        let n = loop {
            match recv_chunk(stream, &mut self.chunk[..], &mut received) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        let at = self.consumed + self.buf.len() as u64;
        self.shared
            .counters
            .add(C::FdsReceived, received.len() as u64);
        for fd in received {
            if self.fds.len() >= MAX_QUEUED_FDS {
                self.shared.counters.bump(C::FdsUnclaimed);
            } else {
                self.fds.push_back((at, fd));
            }
        }
        self.buf.extend_from_slice(&self.chunk[..n]);
        Ok(n)
    }

    /// Answers the line `buf[..end]` (newline at `end`) into `out`.
    fn answer_line(&mut self, end: usize, out: &mut Vec<u8>) {
        let line_end = self.consumed + end as u64;
        let mut line_fds = Vec::new();
        while self.fds.front().is_some_and(|(at, _)| *at <= line_end) {
            if let Some((_, fd)) = self.fds.pop_front() {
                line_fds.push(fd);
            }
        }
        // Parsed in place; the line leaves the buffer whatever it held.
        // Bytes that are not UTF-8 JSON end the connection; a JSON object
        // that is not a request this daemon knows is refused and the
        // connection goes on (a newer client may ask for more).
        let mut garbage = false;
        let parsed = match std::str::from_utf8(&self.buf[..end]) {
            Ok(text) if text.trim().is_empty() => None,
            Ok(text) => Some(serde_json::from_str::<Request>(text.trim()).map_err(|e| {
                if e.is_data() {
                    (None, format!("not a valid request: {e}"))
                } else {
                    garbage = true;
                    (
                        None,
                        format!(
                            "not JSON: {e} — send one JSON object per line; closing the \
                             connection"
                        ),
                    )
                }
            })),
            Err(_) => {
                garbage = true;
                Some(Err((
                    Some(C::RequestsNotUtf8),
                    "request is not UTF-8 — send one JSON object per line; closing the \
                     connection"
                        .to_string(),
                )))
            }
        };
        self.garbage = garbage;
        self.buf.drain(..=end);
        self.consumed += end as u64 + 1;
        let request = match parsed {
            None => {
                self.unclaimed(line_fds.len());
                return;
            }
            Some(Ok(r)) => r,
            Some(Err((counter, reason))) => {
                if let Some(counter) = counter {
                    self.shared.counters.bump(counter);
                }
                self.unclaimed(line_fds.len());
                self.reject(&reason, out);
                return;
            }
        };
        let mut fds = line_fds.into_iter();
        let answer = match request {
            Request::Fd => match fds.next() {
                Some(fd) => match cookie_of_tcp_socket(&fd) {
                    Ok(cookie) => self.lookup(|d| d.by_fd(fd.as_fd(), cookie)),
                    Err(reason) => {
                        self.shared.counters.bump(C::FdsNotTcp);
                        Err(ErrorReply::because(ErrorCode::BadRequest, reason))
                    }
                },
                None => Err(ErrorReply::because(
                    ErrorCode::BadRequest,
                    "no descriptor came with this request: send the socket with SCM_RIGHTS in \
                     the same sendmsg as the line",
                )),
            },
            Request::Cookie { cookie } => self.lookup(|d| d.by_cookie(cookie)),
            Request::Tuple { local, peer } => self.lookup(|d| d.by_tuple(local, peer)),
            Request::Udp { local, lb } => match self.shared.directory.udp_flow(local, lb) {
                Ok(Some(flow)) => Ok(Answer::Udp(flow)),
                Ok(None) => Err(ErrorReply::new(ErrorCode::NotFound)),
                Err(e) => Err(ErrorReply::because(ErrorCode::Internal, e.to_string())),
            },
            Request::Stats => self.stats(),
            Request::Version => Ok(Answer::Version(VersionReply {
                version: env!("CARGO_PKG_VERSION").to_string(),
                protocol: PROTOCOL_VERSION,
            })),
        };
        self.unclaimed(fds.len());
        match answer {
            Ok(answer) => {
                self.shared.counters.bump(C::RequestsAnswered);
                match answer {
                    Answer::Found(c) => encode_line(&c, out),
                    Answer::Udp(f) => encode_line(&f, out),
                    Answer::Stats(s) => encode_line(&s, out),
                    Answer::Version(v) => encode_line(&v, out),
                }
            }
            Err(e) => match e.error {
                ErrorCode::BadRequest => {
                    self.reject(e.reason.as_deref().unwrap_or("bad request"), out)
                }
                ErrorCode::NotFound => {
                    self.shared.counters.bump(C::RequestsNotFound);
                    encode_line(&e, out);
                }
                ErrorCode::Internal | ErrorCode::Overloaded => {
                    self.shared.counters.bump(C::RequestsFailed);
                    encode_line(&e, out);
                }
            },
        }
    }

    /// Runs a lookup against the directory.
    fn lookup(
        &self,
        find: impl FnOnce(&dyn Directory) -> Result<Option<Connection>, RecordsError>,
    ) -> Result<Answer, ErrorReply> {
        match find(self.shared.directory.as_ref()) {
            Ok(Some(c)) => Ok(Answer::Found(c)),
            Ok(None) => Err(ErrorReply::new(ErrorCode::NotFound)),
            Err(e) => {
                warn!("lookup failed reading the maps: {e}");
                Err(ErrorReply::because(ErrorCode::Internal, e.to_string()))
            }
        }
    }

    fn stats(&self) -> Result<Answer, ErrorReply> {
        match self.shared.directory.kernel_stats() {
            Ok((kernel, live_records)) => Ok(Answer::Stats(StatsReply {
                kernel,
                live_records,
                service: self.shared.counters.snapshot(),
            })),
            Err(e) => Err(ErrorReply::because(ErrorCode::Internal, e.to_string())),
        }
    }

    fn unclaimed(&self, n: usize) {
        if n > 0 {
            self.shared.counters.add(C::FdsUnclaimed, n as u64);
        }
    }

    /// Answers `bad_request`, counts it, and logs the first one per client.
    fn reject(&mut self, reason: &str, out: &mut Vec<u8>) {
        self.shared.counters.bump(C::RequestsBad);
        if self.rejected == 0 {
            warn!("lookup client {}: rejected a request: {reason}", self.peer);
        }
        self.rejected += 1;
        encode_line(&ErrorReply::because(ErrorCode::BadRequest, reason), out);
    }
}

/// Reads one chunk with `recvmsg`, collecting passed descriptors.
fn recv_chunk(
    stream: &UnixStream,
    chunk: &mut [u8],
    received: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_READ))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = recvmsg(
        stream,
        &mut [io::IoSliceMut::new(chunk)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            received.extend(fds);
        }
    }
    Ok(msg.bytes)
}

/// The cookie of `fd` if it is a TCP socket; otherwise why not.
fn cookie_of_tcp_socket(fd: &OwnedFd) -> Result<u64, String> {
    let kind = sockopt::socket_type(fd.as_fd()).map_err(|e| {
        if e == rustix::io::Errno::NOTSOCK {
            "the descriptor passed is not a socket".to_string()
        } else {
            format!("cannot inspect the descriptor passed: {e}")
        }
    })?;
    let family = sockopt::socket_domain(fd.as_fd())
        .map_err(|e| format!("cannot inspect the descriptor passed: {e}"))?;
    if kind != SocketType::STREAM
        || !(family == AddressFamily::INET || family == AddressFamily::INET6)
    {
        return Err(
            "the descriptor passed is not a TCP socket (only accepted TCP connections have \
             records)"
                .to_string(),
        );
    }
    ttm_client::socket_cookie(fd).map_err(|e| format!("cannot read the socket's cookie: {e}"))
}
