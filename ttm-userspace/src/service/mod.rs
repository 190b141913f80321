//! The lookup service: `ttm daemon` answers "who is the real client of this
//! connection?" on a Unix socket, one JSON object per line (the protocol is
//! in `ttm_client::protocol`).
//!
//! Whatever a client sends, the service stays bounded: a request line is at
//! most [`MAX_REQUEST_BYTES`], a silent client is dropped after the idle
//! timeout, clients beyond the limit get `overloaded`, and every rejection
//! is counted ([`ServiceCounter`]) and logged with the peer's pid and uid.

mod counters;
mod directory;
mod session;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use ttm_client::protocol::{encode_line, ErrorCode, ErrorReply, MAX_REQUEST_BYTES};

pub use counters::{ServiceCounter, ServiceCounters};
pub use directory::{Directory, PinnedDirectory};

/// Errors setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Another process answers on the path.
    #[error("{0} is in use by a running process (another ttm daemon?) — stop it or pass another --socket")]
    InUse(PathBuf),
    /// Something that is not a socket sits at the path.
    #[error("{0} exists and is not a socket — remove it or pass another --socket")]
    NotASocket(PathBuf),
    /// Creating, binding or securing the socket failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Stack of each client's thread: a session needs little (requests are at
/// most 4 KiB and answered without recursion).
const CLIENT_THREAD_STACK: usize = 256 * 1024;

/// Limits that keep the service bounded.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Clients served at once; more are answered `overloaded`.
    pub max_clients: usize,
    /// Longest request line.
    pub max_request: usize,
    /// A client that sends nothing this long is dropped.
    pub idle_timeout: Duration,
    /// A client whose receive buffer stays full this long (it stopped
    /// reading its answers) is dropped.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_clients: 4096,
            max_request: MAX_REQUEST_BYTES,
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(1),
        }
    }
}

/// What every client task shares.
struct Shared {
    directory: Arc<dyn Directory>,
    counters: Arc<ServiceCounters>,
    limits: Limits,
}

/// A bound lookup socket. Dropping it removes the socket file.
pub struct LookupService {
    listener: UnixListener,
    path: PathBuf,
    shared: Arc<Shared>,
}

impl LookupService {
    /// Binds `path` (mode 0660, group `group` if given), replacing a stale
    /// socket left by a daemon that died, refusing one that still answers.
    pub fn bind(
        path: &Path,
        group: Option<u32>,
        limits: Limits,
        directory: Arc<dyn Directory>,
    ) -> Result<LookupService, ServiceError> {
        let bind_err = |source| ServiceError::Bind {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(bind_err)?;
        }
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(ServiceError::InUse(path.to_path_buf()));
                }
                fs::remove_file(path).map_err(bind_err)?;
            }
            Ok(_) => return Err(ServiceError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        let service = LookupService {
            listener,
            path: path.to_path_buf(),
            shared: Arc::new(Shared {
                directory,
                counters: Arc::new(ServiceCounters::default()),
                limits,
            }),
        };
        fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(bind_err)?;
        }
        Ok(service)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The service's counters.
    pub fn counters(&self) -> Arc<ServiceCounters> {
        self.shared.counters.clone()
    }

    /// Accepts and serves clients until the task is dropped.
    pub async fn serve(self) {
        let slots = Arc::new(Semaphore::new(self.shared.limits.max_clients));
        info!("lookup service listening on {}", self.path.display());
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!("lookup service: accept failed: {e} — raise the open-files limit (LimitNOFILE=) if this repeats");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let counters = &self.shared.counters;
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                counters.bump(ServiceCounter::ClientsOverloaded);
                refuse_overloaded(&stream);
                continue;
            };
            // Each client gets a thread of its own with blocking I/O: the
            // same path as a minimal line server, and nothing a client or
            // its request does can hold up another client's answers.
            let stream = match stream.into_std().and_then(|s| {
                s.set_nonblocking(false)?;
                Ok(s)
            }) {
                Ok(s) => s,
                Err(e) => {
                    warn!("lookup service: cannot serve a client: {e}");
                    continue;
                }
            };
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("ttm-lookup".into())
                .stack_size(CLIENT_THREAD_STACK)
                .spawn(move || {
                    session::serve(stream, shared);
                    drop(permit);
                });
            match spawned {
                Ok(_) => counters.bump(ServiceCounter::ClientsAccepted),
                Err(e) => {
                    counters.bump(ServiceCounter::ClientsOverloaded);
                    warn!("lookup service: cannot start a client thread: {e}");
                }
            }
        }
    }
}

impl Drop for LookupService {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Tells a client over the limit to come back later, without waiting on it.
fn refuse_overloaded(stream: &UnixStream) {
    let mut line = Vec::new();
    encode_line(&ErrorReply::new(ErrorCode::Overloaded), &mut line);
    let _ = stream.try_write(&line);
}
