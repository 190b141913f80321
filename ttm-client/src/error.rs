//! What can go wrong when asking the daemon.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// An error from a lookup. `not_found` is not an error: lookups return
/// `Ok(None)` for it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be opened.
    #[error(
        "cannot reach the ttm daemon at {path}: {source} — is `ttm daemon` running (with the same \
         --socket), and is this user in its --socket-group?"
    )]
    NotRunning {
        /// Socket path tried.
        path: PathBuf,
        /// Why connecting failed.
        source: io::Error,
    },
    /// No answer in time.
    #[error("the ttm daemon did not answer within {0:?}")]
    Timeout(Duration),
    /// Reading or writing the socket failed.
    #[error("talking to the ttm daemon: {0}")]
    Io(#[from] io::Error),
    /// The daemon closed the connection before answering.
    #[error("the ttm daemon closed the connection before answering")]
    Closed,
    /// The daemon refused the request.
    #[error("the ttm daemon rejected the request: {0}")]
    BadRequest(String),
    /// The daemon has too many clients.
    #[error("the ttm daemon is overloaded — retry later")]
    Overloaded,
    /// The daemon could not read its maps.
    #[error("the ttm daemon failed to answer: {0}")]
    Internal(String),
    /// The reply was not what the protocol promises.
    #[error("unexpected reply from the ttm daemon: {0}")]
    Protocol(String),
    /// The application's socket has no cookie (not a socket?).
    #[error("cannot read the socket cookie (SO_COOKIE): {0}")]
    Cookie(io::Error),
}

impl ClientError {
    pub(crate) fn timeout_or_io(e: io::Error, timeout: Duration) -> ClientError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout(timeout),
            _ => ClientError::Io(e),
        }
    }
}
