//! The service against a stand-in directory: no root, no kernel maps.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ttm_client::{Client, Connection};

use super::{Directory, Limits, LookupService};
use crate::records::RecordsError;

/// Connections known by cookie.
struct Known(HashMap<u64, Connection>);

impl Directory for Known {
    fn by_cookie(&self, cookie: u64) -> Result<Option<Connection>, RecordsError> {
        Ok(self.0.get(&cookie).cloned())
    }

    fn by_tuple(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Result<Option<Connection>, RecordsError> {
        Ok(self
            .0
            .values()
            .find(|c| c.local == local && c.kernel_peer == peer)
            .cloned())
    }

    fn kernel_stats(&self) -> Result<(BTreeMap<String, u64>, u64), RecordsError> {
        Ok((BTreeMap::new(), self.0.len() as u64))
    }
}

fn connection(cookie: u64, client: &str, local: SocketAddr, peer: SocketAddr) -> Connection {
    Connection {
        cookie,
        client: client.parse().expect("client"),
        family: "4to4".into(),
        kernel_peer: peer,
        local,
        option_kind: 254,
        option_len: 8,
        carrier: "tcp-option".into(),
        tlvs: Vec::new(),
        age: Duration::from_millis(10),
    }
}

/// Runs a service on a fresh socket path in a background runtime.
fn start(known: Known, limits: Limits) -> (PathBuf, tokio::runtime::Runtime) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "ttm-service-test-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let service = runtime
        .block_on(async { LookupService::bind(&path, None, limits, Arc::new(known)) })
        .expect("bind");
    runtime.spawn(service.serve());
    (path, runtime)
}

#[test]
fn a_passed_socket_is_found_by_its_own_cookie() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("loopback listener");
    let dialer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (accepted, peer) = listener.accept().expect("accept");
    let cookie = ttm_client::socket_cookie(&accepted).expect("cookie");
    let local = accepted.local_addr().expect("local");
    let known = Known(HashMap::from([(
        cookie,
        connection(cookie, "192.0.2.9:4242", local, peer),
    )]));
    let (path, _runtime) = start(known, Limits::default());
    let mut client = Client::connect(&path).expect("client");
    let found = client.lookup_fd(&accepted).expect("lookup").expect("found");
    assert_eq!(found.client, "192.0.2.9:4242".parse().unwrap());
    // The dialing side is another socket with another cookie: unknown.
    assert_eq!(client.lookup_fd(&dialer).expect("lookup"), None);
    let stats = client.stats().expect("stats");
    assert_eq!(stats.live_records, 1);
    assert_eq!(stats.service["fds_received"], 2);
    assert_eq!(stats.service["requests_answered"], 1);
    assert_eq!(stats.service["requests_not_found"], 1);
    let _ = std::fs::remove_file(path);
}

#[test]
fn descriptors_sent_with_other_requests_are_closed_and_counted() {
    let (path, _runtime) = start(Known(HashMap::new()), Limits::default());
    let mut client = Client::connect(&path).expect("client");
    // A descriptor riding on a version request is not kept for later.
    let raw = UnixStream::connect(&path).expect("raw");
    send_with_fd(&raw, b"{\"op\":\"version\"}\n{\"op\":\"fd\"}\n");
    let mut reader = BufReader::new(raw);
    let mut line = String::new();
    reader.read_line(&mut line).expect("version reply");
    assert!(line.contains("\"protocol\":1"), "{line}");
    line.clear();
    reader.read_line(&mut line).expect("fd reply");
    // The descriptor arrived with the first line's bytes, so it belonged to
    // the version request; the fd request has none.
    assert!(line.contains("no descriptor"), "{line}");
    assert_eq!(client.stats().expect("stats").service["fds_unclaimed"], 1);
    let _ = std::fs::remove_file(path);
}

#[test]
fn an_overlong_line_is_refused_at_the_limit() {
    let limits = Limits {
        max_request: 64,
        ..Limits::default()
    };
    let (path, _runtime) = start(Known(HashMap::new()), limits);
    let mut raw = UnixStream::connect(&path).expect("raw");
    raw.write_all(&[b' '; 100]).expect("write");
    let mut line = String::new();
    BufReader::new(raw).read_line(&mut line).expect("reply");
    assert!(line.contains("longer than 64 bytes"), "{line}");
    let _ = std::fs::remove_file(path);
}

/// Sends `bytes` in one `sendmsg` with stdin's descriptor attached.
fn send_with_fd(socket: &UnixStream, bytes: &[u8]) {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    use std::os::fd::AsFd;
    let stdin = std::io::stdin();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [stdin.as_fd()];
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    let sent = sendmsg(
        socket,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )
    .expect("sendmsg");
    assert_eq!(sent, bytes.len());
}
