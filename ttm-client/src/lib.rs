//! Ask `ttm daemon` who the real client of a connection is.
//!
//! Behind a full-NAT load balancer `accept()` returns the balancer's address;
//! the daemon knows the client the balancer vouched for. This crate speaks
//! the daemon's Unix-socket protocol ([`protocol`]): a blocking [`Client`]
//! and, with the default `tokio` feature, an [`AsyncClient`].
//!
//! ```no_run
//! use std::net::TcpListener;
//! let listener = TcpListener::bind("0.0.0.0:8080")?;
//! let mut ttm = ttm_client::Client::connect_default()?;
//! for conn in listener.incoming() {
//!     let conn = conn?;
//!     match ttm.lookup_fd(&conn)? {
//!         Some(found) => println!("client {}", found.client),
//!         None => println!("no record: direct connection {}", conn.peer_addr()?),
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod blocking;
mod error;
mod fdpass;
#[cfg(feature = "tokio")]
mod nonblocking;
pub mod protocol;
pub mod provenance;

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

pub use blocking::Client;
pub use error::ClientError;
#[cfg(feature = "tokio")]
pub use nonblocking::AsyncClient;
pub use protocol::{Connection, StatsReply, UdpFlowReply, VersionReply, DEFAULT_SOCKET};
pub use provenance::{Provenance, Verdict};

/// Most lookups one pipelined batch may carry.
pub const MAX_BATCH: usize = 256;

/// How long a client waits for each answer unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The socket cookie (`SO_COOKIE`) of `socket`: the key the daemon files
/// connections under, stable for the socket's lifetime.
pub fn socket_cookie(socket: impl AsFd) -> io::Result<u64> {
    Ok(rustix::net::sockopt::socket_cookie(socket)?)
}
