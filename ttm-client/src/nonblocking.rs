//! The async (tokio) client.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use crate::blocking::{answered, found, take_line};
use crate::error::ClientError;
use crate::fdpass::send_with_fd;
use crate::protocol::{
    decode_reply, encode_line, Connection, ErrorReply, Request, StatsReply, VersionReply,
};
use crate::{DEFAULT_SOCKET, DEFAULT_TIMEOUT};

/// An async connection to `ttm daemon`, for tokio servers.
pub struct AsyncClient {
    stream: UnixStream,
    path: PathBuf,
    timeout: Duration,
    pending: Vec<u8>,
    poisoned: bool,
}

impl AsyncClient {
    /// Connects to the daemon at [`DEFAULT_SOCKET`].
    pub async fn connect_default() -> Result<AsyncClient, ClientError> {
        AsyncClient::connect(DEFAULT_SOCKET).await
    }

    /// Connects to the daemon listening on `path`.
    pub async fn connect(path: impl AsRef<Path>) -> Result<AsyncClient, ClientError> {
        let path = path.as_ref().to_path_buf();
        let stream =
            UnixStream::connect(&path)
                .await
                .map_err(|source| ClientError::NotRunning {
                    path: path.clone(),
                    source,
                })?;
        Ok(AsyncClient {
            stream,
            path,
            timeout: DEFAULT_TIMEOUT,
            pending: Vec::new(),
            poisoned: false,
        })
    }

    /// Sets how long each request may take.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The socket path this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The real client of `socket`, an accepted connection of this process.
    pub async fn lookup_fd(
        &mut self,
        socket: &impl AsFd,
    ) -> Result<Option<Connection>, ClientError> {
        found(self.call(&Request::Fd, Some(socket.as_fd())).await)
    }

    /// The real client of the connection with socket cookie `cookie`.
    pub async fn lookup_cookie(&mut self, cookie: u64) -> Result<Option<Connection>, ClientError> {
        found(self.call(&Request::Cookie { cookie }, None).await)
    }

    /// The real client of the connection from `peer` to `local`, as the app
    /// sees them (`peer` may be the load balancer or the rewritten client).
    pub async fn lookup_tuple(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Result<Option<Connection>, ClientError> {
        found(self.call(&Request::Tuple { local, peer }, None).await)
    }

    /// The daemon's counters.
    pub async fn stats(&mut self) -> Result<StatsReply, ClientError> {
        answered(self.call(&Request::Stats, None).await)
    }

    /// The daemon's version.
    pub async fn version(&mut self) -> Result<VersionReply, ClientError> {
        answered(self.call(&Request::Version, None).await)
    }

    async fn call<T: DeserializeOwned>(
        &mut self,
        request: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Result<T, ErrorReply>, ClientError> {
        if self.poisoned {
            let mut fresh = AsyncClient::connect(&self.path).await?;
            fresh.timeout = self.timeout;
            *self = fresh;
        }
        self.poisoned = true;
        let timeout = self.timeout;
        let exchange = async {
            let mut line = Vec::with_capacity(128);
            encode_line(request, &mut line);
            let sent = match fd {
                Some(fd) => {
                    self.stream
                        .async_io(Interest::WRITABLE, || send_with_fd(&self.stream, &line, fd))
                        .await?
                }
                None => 0,
            };
            self.stream.write_all(&line[sent..]).await?;
            let reply = self.read_line().await?;
            decode_reply(&reply).map_err(|e| ClientError::Protocol(e.to_string()))
        };
        let reply = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(timeout))??;
        self.poisoned = false;
        Ok(reply)
    }

    async fn read_line(&mut self) -> Result<Vec<u8>, ClientError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(line) = take_line(&mut self.pending)? {
                return Ok(line);
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }
}
