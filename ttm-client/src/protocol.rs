//! The wire protocol between applications and `ttm daemon`: one JSON object
//! per line in each direction, answers in request order, so requests may be
//! pipelined on one connection.
//!
//! Requests (`op` selects the query):
//!
//! ```text
//! {"op":"cookie","cookie":4097}
//! {"op":"fd"}                       (the socket rides along with SCM_RIGHTS)
//! {"op":"tuple","local":"10.0.2.2:8080","peer":"10.0.2.1:40112"}
//! {"op":"udp","local":"0.0.0.0:53","lb":"10.0.2.1:40112"}
//! {"op":"stats"}
//! {"op":"version"}
//! ```
//!
//! A lookup answers with a [`Connection`] (`udp`: a [`UdpFlowReply`]);
//! every failure is an [`ErrorReply`]
//! such as `{"error":"not_found"}` or
//! `{"error":"bad_request","reason":"..."}`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Version of this protocol, reported by the `version` request.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the daemon accepts, newline included. A longer line
/// is answered with `bad_request` and the connection is closed.
pub const MAX_REQUEST_BYTES: usize = 4096;

/// Longest reply line a client accepts.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Where `ttm daemon` listens unless told otherwise (`--socket`).
pub const DEFAULT_SOCKET: &str = "/run/ttm/ttm.sock";

/// One request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The connection whose socket cookie (`SO_COOKIE`) is `cookie`.
    Cookie {
        /// Socket cookie read by the application.
        cookie: u64,
    },
    /// The connection whose socket was passed with `SCM_RIGHTS` in the same
    /// `sendmsg` as this line; the daemon reads its cookie itself.
    Fd,
    /// The connection with this local address and this peer, as the app
    /// sees them: `peer` is the kernel's peer (the load balancer) or, when
    /// ttm's rewrite already gave the app the client, the client.
    Tuple {
        /// The socket's local address.
        local: SocketAddr,
        /// The peer as the app sees it.
        peer: SocketAddr,
    },
    /// The UDP flow a trusted LB marked (`--udp-interface`): datagrams from
    /// `lb` (their source, as `recvfrom` gives it) to `local` (the socket's
    /// address; a wildcard address matches any, as uoa.ko's lookup does).
    Udp {
        /// The receiving socket's local address.
        local: SocketAddr,
        /// The datagrams' source: the load balancer.
        lb: SocketAddr,
    },
    /// Counters of the kernel side and of this service.
    Stats,
    /// Daemon and protocol version.
    Version,
}

/// The answer to a successful lookup: who the real client is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// Socket cookie of the connection on the real server.
    pub cookie: u64,
    /// The real client, from the load balancer's option.
    pub client: SocketAddr,
    /// `4to4` (IPv4 client) or `6to4` (IPv6 client over IPv4).
    pub family: String,
    /// The kernel's peer: the load balancer's address.
    pub kernel_peer: SocketAddr,
    /// The socket's local address.
    pub local: SocketAddr,
    /// TCP option kind that carried the client.
    pub option_kind: u8,
    /// TCP option length that carried the client.
    pub option_len: u8,
    /// What carried the client: `tcp-option` (then `option_kind` and
    /// `option_len` say which), `proxy-v1` or `proxy-v2` (both 0).
    #[serde(default = "tcp_option")]
    pub carrier: String,
    /// The TLVs of a PROXY v2 header, in header order (absent: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tlvs: Vec<ProxyTlv>,
    /// Time since the handshake completed, in seconds on the wire.
    #[serde(with = "seconds")]
    pub age: Duration,
}

/// One TLV of a PROXY protocol v2 header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyTlv {
    /// The TLV's type byte.
    #[serde(rename = "type")]
    pub kind: u8,
    /// What it is: `alpn`, `authority`, `crc32c`, `noop`, `unique_id`,
    /// `ssl`, `netns`, `aws_vpce_id`, `azure_link_id`, `gcp_psc_id`, or
    /// `unknown`.
    pub name: String,
    /// Its value: text for the textual ones, else hex.
    pub value: String,
}

fn tcp_option() -> String {
    "tcp-option".to_string()
}

/// The answer to a `udp` lookup: the client of one UDP flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpFlowReply {
    /// The real client, from the LB's marking.
    pub client: SocketAddr,
    /// `4to4`, `6to4`, `4to6` or `6to6`: the client's family, then the path's.
    pub family: String,
    /// The load balancer's address and port (the datagrams' source).
    pub lb: SocketAddr,
    /// The local address and port the flow's datagrams were sent to.
    pub local: SocketAddr,
    /// Time since the flow's last datagram (to within a second), in
    /// seconds on the wire.
    #[serde(with = "seconds")]
    pub idle: Duration,
}

/// The answer to `stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReply {
    /// Kernel-side counters, summed over CPUs, by name.
    pub kernel: BTreeMap<String, u64>,
    /// Connections currently holding a record.
    pub live_records: u64,
    /// Counters of the lookup service itself, by name.
    pub service: BTreeMap<String, u64>,
}

/// The answer to `version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionReply {
    /// The daemon's version.
    pub version: String,
    /// [`PROTOCOL_VERSION`] of the daemon.
    pub protocol: u32,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No record: the connection is unknown or closed, came from an untrusted
    /// peer, or carried no option.
    NotFound,
    /// The request could not be understood; `reason` says why.
    BadRequest,
    /// The daemon has too many clients; retry later.
    Overloaded,
    /// The daemon could not read its maps; `reason` says why.
    Internal,
}

impl ErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A failed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong.
    pub error: ErrorCode,
    /// Details for `bad_request` and `internal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ErrorReply {
    /// An error without details.
    pub fn new(error: ErrorCode) -> ErrorReply {
        ErrorReply {
            error,
            reason: None,
        }
    }

    /// An error with a reason.
    pub fn because(error: ErrorCode, reason: impl Into<String>) -> ErrorReply {
        ErrorReply {
            error,
            reason: Some(reason.into()),
        }
    }
}

/// Encodes `value` as one line (with its newline) appended to `out`.
pub fn encode_line<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    // Serialising these plain structs into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, value).is_ok() {
        out.push(b'\n');
    }
}

/// Decodes a reply line that should hold a `T` or an [`ErrorReply`].
pub fn decode_reply<T: DeserializeOwned>(
    line: &[u8],
) -> Result<Result<T, ErrorReply>, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_slice(line)?;
    if value.get("error").is_some() {
        Ok(Err(serde_json::from_value(value)?))
    } else {
        Ok(Ok(serde_json::from_value(value)?))
    }
}

mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<T: Serialize>(v: &T) -> String {
        let mut out = Vec::new();
        encode_line(v, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn requests_have_the_documented_spelling() {
        assert_eq!(
            line(&Request::Cookie { cookie: 4097 }),
            "{\"op\":\"cookie\",\"cookie\":4097}\n"
        );
        assert_eq!(line(&Request::Fd), "{\"op\":\"fd\"}\n");
        assert_eq!(
            line(&Request::Tuple {
                local: "10.0.2.2:8080".parse().unwrap(),
                peer: "10.0.2.1:40112".parse().unwrap()
            }),
            "{\"op\":\"tuple\",\"local\":\"10.0.2.2:8080\",\"peer\":\"10.0.2.1:40112\"}\n"
        );
        assert_eq!(line(&Request::Stats), "{\"op\":\"stats\"}\n");
    }

    #[test]
    fn unknown_fields_and_ops_are_refused() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"cookie","cookie":1,"x":2}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"delete"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"cookie","cookie":-1}"#).is_err());
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"tuple","local":"x","peer":"y"}"#).is_err()
        );
    }

    #[test]
    fn replies_round_trip_and_errors_are_told_apart() {
        let c = Connection {
            cookie: 9,
            client: "192.0.2.7:40000".parse().unwrap(),
            family: "4to4".into(),
            kernel_peer: "10.0.2.1:50000".parse().unwrap(),
            local: "10.0.2.2:8080".parse().unwrap(),
            option_kind: 254,
            option_len: 8,
            carrier: "tcp-option".into(),
            tlvs: Vec::new(),
            age: Duration::from_millis(1500),
        };
        let text = line(&c);
        assert!(text.contains("\"age\":1.5"), "{text}");
        let back: Connection = decode_reply(text.as_bytes()).unwrap().unwrap();
        assert_eq!(back, c);

        let e = line(&ErrorReply::because(ErrorCode::BadRequest, "no fd"));
        assert_eq!(e, "{\"error\":\"bad_request\",\"reason\":\"no fd\"}\n");
        let got = decode_reply::<Connection>(e.as_bytes())
            .unwrap()
            .unwrap_err();
        assert_eq!(got.error, ErrorCode::BadRequest);
        assert_eq!(
            line(&ErrorReply::new(ErrorCode::NotFound)),
            "{\"error\":\"not_found\"}\n"
        );
    }

    #[test]
    fn a_negative_age_is_a_decode_error_not_a_panic() {
        let text = r#"{"cookie":1,"client":"1.2.3.4:5","family":"4to4","kernel_peer":"1.2.3.4:5","local":"1.2.3.4:5","option_kind":254,"option_len":8,"age":-1}"#;
        assert!(decode_reply::<Connection>(text.as_bytes()).is_err());
    }
}
