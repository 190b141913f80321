//! The blocking client.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::error::ClientError;
use crate::fdpass::send_with_fd;
use crate::protocol::{
    decode_reply, encode_line, Connection, ErrorCode, ErrorReply, Request, StatsReply,
    UdpFlowReply, VersionReply, MAX_REPLY_BYTES,
};
use crate::{DEFAULT_SOCKET, DEFAULT_TIMEOUT};

/// A connection to `ttm daemon`. Reuse it for many lookups; each call waits
/// at most the timeout for its answer.
pub struct Client {
    stream: UnixStream,
    path: PathBuf,
    timeout: Duration,
    /// Bytes received past the last answer.
    pending: Vec<u8>,
    /// A request failed half-way: reconnect before the next one, so that a
    /// late answer is never taken for the next request's.
    poisoned: bool,
}

impl Client {
    /// Connects to the daemon at [`DEFAULT_SOCKET`].
    pub fn connect_default() -> Result<Client, ClientError> {
        Client::connect(DEFAULT_SOCKET)
    }

    /// Connects to the daemon listening on `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|source| ClientError::NotRunning {
            path: path.clone(),
            source,
        })?;
        let mut client = Client {
            stream,
            path,
            timeout: DEFAULT_TIMEOUT,
            pending: Vec::new(),
            poisoned: false,
        };
        client.set_timeout(DEFAULT_TIMEOUT)?;
        Ok(client)
    }

    /// Sets how long each request may take.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.stream.set_read_timeout(Some(timeout))?;
        self.stream.set_write_timeout(Some(timeout))?;
        self.timeout = timeout;
        Ok(())
    }

    /// The socket path this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The real client of `socket`, an accepted connection of this process.
    /// The socket itself is passed to the daemon (`SCM_RIGHTS`).
    pub fn lookup_fd(&mut self, socket: &impl AsFd) -> Result<Option<Connection>, ClientError> {
        found(self.call(&Request::Fd, Some(socket.as_fd())))
    }

    /// The real client of the connection with socket cookie `cookie`.
    pub fn lookup_cookie(&mut self, cookie: u64) -> Result<Option<Connection>, ClientError> {
        found(self.call(&Request::Cookie { cookie }, None))
    }

    /// The real client of the connection from `peer` to `local`, as the app
    /// sees them (`peer` may be the load balancer or the rewritten client).
    pub fn lookup_tuple(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Result<Option<Connection>, ClientError> {
        found(self.call(&Request::Tuple { local, peer }, None))
    }

    /// The real client of the UDP flow from `lb` to the socket at `local`
    /// (`--udp-interface`; a wildcard `local` address matches any).
    pub fn lookup_udp(
        &mut self,
        local: SocketAddr,
        lb: SocketAddr,
    ) -> Result<Option<UdpFlowReply>, ClientError> {
        found(self.call(&Request::Udp { local, lb }, None))
    }

    /// The real clients of many connections by cookie, in one pipelined
    /// exchange (all requests written at once, then all answers read): far
    /// higher throughput than one call per cookie. At most
    /// [`MAX_BATCH`](crate::MAX_BATCH) cookies per call.
    pub fn lookup_cookies(
        &mut self,
        cookies: &[u64],
    ) -> Result<Vec<Option<Connection>>, ClientError> {
        if cookies.len() > crate::MAX_BATCH {
            return Err(ClientError::Protocol(format!(
                "at most {} lookups per batch",
                crate::MAX_BATCH
            )));
        }
        if self.poisoned {
            let fresh = Client::connect(&self.path)?;
            let timeout = self.timeout;
            *self = fresh;
            self.set_timeout(timeout)?;
        }
        self.poisoned = true;
        let mut lines = Vec::with_capacity(cookies.len() * 40);
        for &cookie in cookies {
            encode_line(&Request::Cookie { cookie }, &mut lines);
        }
        self.stream
            .write_all(&lines)
            .map_err(|e| ClientError::timeout_or_io(e, self.timeout))?;
        let mut found = Vec::with_capacity(cookies.len());
        for _ in cookies {
            let reply = self.read_line()?;
            let reply = decode_reply(&reply).map_err(|e| ClientError::Protocol(e.to_string()));
            found.push(self::found(reply)?);
        }
        self.poisoned = false;
        Ok(found)
    }

    /// Where the peer address this application sees for `stream` comes from:
    /// the kernel, ttm's recorded client, or neither (HIJACKED) — so an app
    /// can refuse to trust a peer address that nobody vouches for.
    pub fn provenance(
        &mut self,
        stream: &std::net::TcpStream,
    ) -> Result<crate::Provenance, ClientError> {
        let app_peer = stream.peer_addr()?;
        let record = self.lookup_fd(stream)?;
        let kernel_peer = record
            .as_ref()
            .map(|r| r.kernel_peer)
            .or_else(|| crate::provenance::kernel_peer_of(stream));
        let ttm_client = record.map(|r| r.client);
        Ok(crate::Provenance {
            app_peer: crate::provenance::canonical(app_peer),
            kernel_peer,
            ttm_client,
            verdict: crate::provenance::judge(app_peer, kernel_peer, ttm_client),
        })
    }

    /// The daemon's counters.
    pub fn stats(&mut self) -> Result<StatsReply, ClientError> {
        answered(self.call(&Request::Stats, None))
    }

    /// The daemon's version.
    pub fn version(&mut self) -> Result<VersionReply, ClientError> {
        answered(self.call(&Request::Version, None))
    }

    fn call<T: DeserializeOwned>(
        &mut self,
        request: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Result<T, ErrorReply>, ClientError> {
        if self.poisoned {
            let fresh = Client::connect(&self.path)?;
            let timeout = self.timeout;
            *self = fresh;
            self.set_timeout(timeout)?;
        }
        self.poisoned = true;
        let reply = self.exchange(request, fd)?;
        self.poisoned = false;
        Ok(reply)
    }

    fn exchange<T: DeserializeOwned>(
        &mut self,
        request: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Result<T, ErrorReply>, ClientError> {
        let mut line = Vec::with_capacity(128);
        encode_line(request, &mut line);
        let io = |e| ClientError::timeout_or_io(e, self.timeout);
        let sent = match fd {
            Some(fd) => send_with_fd(&self.stream, &line, fd).map_err(io)?,
            None => 0,
        };
        self.stream.write_all(&line[sent..]).map_err(io)?;
        let reply = self.read_line()?;
        decode_reply(&reply).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    fn read_line(&mut self) -> Result<Vec<u8>, ClientError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(line) = take_line(&mut self.pending)? {
                return Ok(line);
            }
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| ClientError::timeout_or_io(e, self.timeout))?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Maps a lookup answer: `not_found` is `None`, other errors are errors.
pub(crate) fn found<T>(
    reply: Result<Result<T, ErrorReply>, ClientError>,
) -> Result<Option<T>, ClientError> {
    match reply? {
        Ok(c) => Ok(Some(c)),
        Err(ErrorReply {
            error: ErrorCode::NotFound,
            ..
        }) => Ok(None),
        Err(e) => Err(refused(e)),
    }
}

/// Maps an answer for which every error is an error.
pub(crate) fn answered<T>(
    reply: Result<Result<T, ErrorReply>, ClientError>,
) -> Result<T, ClientError> {
    reply?.map_err(refused)
}

fn refused(e: ErrorReply) -> ClientError {
    let reason = e.reason.unwrap_or_default();
    match e.error {
        ErrorCode::BadRequest => ClientError::BadRequest(reason),
        ErrorCode::Overloaded => ClientError::Overloaded,
        ErrorCode::Internal => ClientError::Internal(reason),
        ErrorCode::NotFound => ClientError::Protocol("unexpected not_found".into()),
    }
}

/// Takes the first complete line (without its newline) out of `pending`;
/// refuses to buffer a reply longer than the protocol allows.
pub(crate) fn take_line(pending: &mut Vec<u8>) -> Result<Option<Vec<u8>>, ClientError> {
    if let Some(end) = pending.iter().position(|&b| b == b'\n') {
        let rest = pending.split_off(end + 1);
        let mut line = std::mem::replace(pending, rest);
        line.pop();
        return Ok(Some(line));
    }
    if pending.len() > MAX_REPLY_BYTES {
        return Err(ClientError::Protocol(format!(
            "reply longer than {MAX_REPLY_BYTES} bytes"
        )));
    }
    Ok(None)
}
