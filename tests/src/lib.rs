//! The full-NAT veth lab and helpers shared by the integration tests, the
//! `ttm-lab` binary and `cargo xtask demo`.
//!
//! ```text
//!  client ns 10.0.1.2 ── 10.0.1.1 │ LB ns │ 10.0.2.1 ── 10.0.2.2 real-server ns
//!                                  DNAT 10.0.1.1:* → 10.0.2.2:*, SNAT → 10.0.2.1
//! ```
//! A test-only sockops program in the client's cgroup writes the TOA option
//! into the third handshake ACK, so the real server receives exactly what a
//! full-NAT load balancer sends: source = LB address, option = client.

pub mod daemon;
pub mod hijacker;
pub mod lab;
pub mod process;
pub mod proxies;
pub mod scale;
pub mod uoa_marker;
pub mod writer;

pub use daemon::TtmDaemon;
pub use lab::Lab;
