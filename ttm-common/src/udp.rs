//! UDP flows whose client a trusted full-NAT LB marked (DPVS's UOA, the
//! bytes of which are [`crate::uoa`]'s): the flow table's key and value,
//! shared by the TC program that files them, the app-facing hooks that read
//! them and the daemon that expires them; and the rules for what a marking,
//! a later datagram and an app's lookup do to a flow.
//!
//! A flow is keyed by what a socket bound to a wildcard address can tell:
//! the LB's address and port (the datagram's source) and the local port.
//! The local address is kept in the flow; uoa.ko's lookup leaves it out too.
//! Two flows that differ only in it are refused an answer ([`AMBIGUOUS`]),
//! never given each other's client.

use crate::{addr::Addr16, parser::ClientAddr, AddrFamily};

/// `UDP_FLOWS` key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpFlowKey {
    /// The LB's address (the datagram's source), v4-mapped for IPv4.
    pub lb_addr: Addr16,
    /// The LB's port, host order.
    pub lb_port: u16,
    /// The local port the datagram was sent to, host order.
    pub local_port: u16,
}

/// Bits of [`UdpFlow::flags`].
///
/// Two flows of this key went to different local addresses: the key cannot
/// tell them apart, so neither is answered or rewritten until it expires.
pub const AMBIGUOUS: u8 = 1;

/// `UDP_FLOWS` value: the client a trusted LB named for one flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpFlow {
    /// The local address the flow's datagrams were sent to, v4-mapped.
    pub local_addr: Addr16,
    /// The client, v4-mapped for IPv4.
    pub client_addr: Addr16,
    /// The client's port, host order.
    pub client_port: u16,
    /// The client's family, an [`AddrFamily`] value.
    pub client_family: u8,
    /// [`AMBIGUOUS`] or 0.
    pub flags: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 4],
    /// `bpf_ktime_get_ns()` when a datagram of the flow was last seen, to
    /// within [`REFRESH_NS`].
    pub seen_ns: u64,
}

/// How stale a flow's `seen_ns` may get before a datagram writes it again:
/// busy flows write their flow once a second, not once a datagram.
pub const REFRESH_NS: u64 = 1_000_000_000;

/// `--udp-idle` seconds in the kernel clock's nanoseconds.
#[inline(always)]
pub const fn idle_ns(secs: u32) -> u64 {
    secs as u64 * 1_000_000_000
}

/// Default `--udp-idle`: uoa.ko's mapping timeout.
pub const DEFAULT_UDP_IDLE_SECS: u64 = 360;

/// Default `--max-udp-flows`.
pub const DEFAULT_MAX_UDP_FLOWS: u32 = 262_144;

impl UdpFlow {
    /// A flow of `client`, sent to `local`, seen at `now_ns`.
    #[inline(always)]
    pub fn new(local: &Addr16, client: &ClientAddr, now_ns: u64) -> UdpFlow {
        UdpFlow {
            local_addr: *local,
            client_addr: client.addr,
            client_port: client.port,
            client_family: client.family as u8,
            flags: 0,
            _pad: [0; 4],
            seen_ns: now_ns,
        }
    }

    /// True if the flow names a client apps may be shown.
    #[inline(always)]
    pub fn answers(&self) -> bool {
        self.flags & AMBIGUOUS == 0
    }

    /// True if the client is IPv6 (`::ffff:a.b.c.d` from a 20-byte marking
    /// included).
    #[inline(always)]
    pub fn client_is_v6(&self) -> bool {
        self.client_family == AddrFamily::Ipv6 as u8
    }

    /// True once the flow has seen no datagram for `idle_ns`.
    #[inline(always)]
    pub fn expired(&self, now_ns: u64, idle_ns: u64) -> bool {
        now_ns.saturating_sub(self.seen_ns) >= idle_ns
    }
}

/// What a trusted marking does to the flow of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marked {
    /// No flow yet: file this one.
    New,
    /// The flow names this client already: it was seen again.
    Same,
    /// The flow named another client: the LB reused its port for a new
    /// client sooner than this server's idle timeout. The newer client
    /// replaces it.
    Replaced,
    /// The flow went to another local address: the key now stands for two
    /// flows and answers for neither.
    Ambiguous,
}

/// The rule for a trusted marking of `client`, sent to `local`, meeting
/// `existing`, the flow of its key.
#[inline(always)]
pub fn on_marking(existing: Option<&UdpFlow>, local: &Addr16, client: &ClientAddr) -> Marked {
    let Some(flow) = existing else {
        return Marked::New;
    };
    if !flow.answers() || flow.local_addr != *local {
        return Marked::Ambiguous;
    }
    if flow.client_addr == client.addr
        && flow.client_port == client.port
        && flow.client_family == client.family as u8
    {
        Marked::Same
    } else {
        Marked::Replaced
    }
}

/// True if a datagram sent to `local` at `now_ns` should write `flow`'s
/// `seen_ns` (it is the flow's, and the time it holds is a second old).
#[inline(always)]
pub fn refresh_due(flow: &UdpFlow, local: &Addr16, now_ns: u64) -> bool {
    flow.local_addr == *local && now_ns.saturating_sub(flow.seen_ns) >= REFRESH_NS
}

/// Bits of [`Delivery::flags`].
pub mod delivery {
    /// The app looked up a flow since this flow's datagram was delivered.
    pub const ASKED: u8 = 1;
    /// The socket delivered datagrams of more than one flow since its last
    /// lookup: which one a lookup means cannot be told, until the next
    /// datagram after a lookup.
    pub const SEVERAL: u8 = 2;
}

/// Per unconnected UDP socket (socket storage): the flow of the datagram it
/// last delivered. The UOA lookup cannot read the tuple the app asks about
/// (the kernel hands the program a zeroed buffer when its own getsockopt
/// fails), so it answers for this flow, taking the lookup to be about the
/// datagram just received, and only while that flow is the one the app can
/// mean. Per socket, not per thread: the lookup's hook has no thread id on
/// the kernels ttm supports (5.10 and later).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The flow's key.
    pub key: UdpFlowKey,
    /// [`delivery`] bits.
    pub flags: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
}

impl Delivery {
    /// Notes that the socket delivered a datagram of flow `key`.
    #[inline(always)]
    pub fn note(&mut self, key: &UdpFlowKey) {
        if self.flags & delivery::ASKED != 0 || self.key == UdpFlowKey::default() {
            *self = Delivery {
                key: *key,
                flags: 0,
                _pad: [0; 3],
            };
        } else if self.key != *key {
            self.key = *key;
            self.flags |= delivery::SEVERAL;
        }
    }

    /// The flow a lookup now can mean, if there is exactly one; the lookup
    /// is noted either way (the next datagram starts afresh).
    #[inline(always)]
    pub fn ask(&mut self) -> Option<UdpFlowKey> {
        self.flags |= delivery::ASKED;
        if self.flags & delivery::SEVERAL != 0 || self.key == UdpFlowKey::default() {
            None
        } else {
            Some(self.key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::v4_mapped;

    fn client(last: u8, port: u16) -> ClientAddr {
        ClientAddr {
            addr: v4_mapped([192, 0, 2, last]),
            port,
            family: AddrFamily::Ipv4,
            format_index: 0,
        }
    }

    fn key(port: u16) -> UdpFlowKey {
        UdpFlowKey {
            lb_addr: v4_mapped([10, 0, 2, 1]),
            lb_port: port,
            local_port: 53,
        }
    }

    const LOCAL: Addr16 = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 2, 2];

    #[test]
    fn the_table_layout_has_no_holes() {
        assert_eq!(core::mem::size_of::<UdpFlowKey>(), 20);
        assert_eq!(core::mem::size_of::<UdpFlow>(), 48);
        assert_eq!(core::mem::size_of::<Delivery>(), 24);
    }

    #[test]
    fn a_marking_files_refreshes_replaces_or_makes_a_flow_ambiguous() {
        let flow = UdpFlow::new(&LOCAL, &client(9, 4000), 0);
        assert_eq!(on_marking(None, &LOCAL, &client(9, 4000)), Marked::New);
        assert_eq!(
            on_marking(Some(&flow), &LOCAL, &client(9, 4000)),
            Marked::Same
        );
        assert_eq!(
            on_marking(Some(&flow), &LOCAL, &client(9, 4001)),
            Marked::Replaced
        );
        assert_eq!(
            on_marking(Some(&flow), &LOCAL, &client(8, 4000)),
            Marked::Replaced
        );
        let other_local = v4_mapped([10, 0, 2, 3]);
        assert_eq!(
            on_marking(Some(&flow), &other_local, &client(9, 4000)),
            Marked::Ambiguous
        );
        let ambiguous = UdpFlow {
            flags: AMBIGUOUS,
            ..flow
        };
        assert!(!ambiguous.answers());
        assert_eq!(
            on_marking(Some(&ambiguous), &LOCAL, &client(9, 4000)),
            Marked::Ambiguous
        );
    }

    #[test]
    fn a_flow_is_refreshed_once_a_second_and_expires_when_idle() {
        let flow = UdpFlow::new(&LOCAL, &client(9, 4000), 5 * REFRESH_NS);
        assert!(!refresh_due(&flow, &LOCAL, 5 * REFRESH_NS + 1));
        assert!(refresh_due(&flow, &LOCAL, 6 * REFRESH_NS));
        assert!(!refresh_due(
            &flow,
            &v4_mapped([10, 0, 2, 3]),
            9 * REFRESH_NS
        ));
        let idle = 360 * REFRESH_NS;
        assert!(!flow.expired(5 * REFRESH_NS + idle - 1, idle));
        assert!(flow.expired(5 * REFRESH_NS + idle, idle));
        // A clock read before the flow's own time is not an expiry.
        assert!(!flow.expired(0, idle));
    }

    #[test]
    fn a_lookup_answers_the_flow_just_delivered() {
        let mut d = Delivery::default();
        assert_eq!(d.ask(), None, "nothing delivered yet");
        d.note(&key(5000));
        assert_eq!(d.ask(), Some(key(5000)));
        // Asked again with nothing new: the same flow.
        assert_eq!(d.ask(), Some(key(5000)));
        d.note(&key(5001));
        assert_eq!(d.ask(), Some(key(5001)), "a lookup after each datagram");
    }

    #[test]
    fn two_flows_between_lookups_answer_neither_until_the_next_datagram() {
        let mut d = Delivery::default();
        d.note(&key(5000));
        d.note(&key(5001));
        assert_eq!(d.ask(), None);
        // A second lookup (another thread's, say) is no wiser.
        assert_eq!(d.ask(), None);
        d.note(&key(5001));
        assert_eq!(d.ask(), Some(key(5001)));
    }

    #[test]
    fn datagrams_of_one_flow_keep_it_answerable() {
        let mut d = Delivery::default();
        d.note(&key(5000));
        d.note(&key(5000));
        d.note(&key(5000));
        assert_eq!(d.ask(), Some(key(5000)));
    }
}
