//! What a BPF program writes, read from its translated instructions — the
//! program as the kernel runs it, after the verifier rewrote its context
//! accesses — rather than guessed from the hook it is attached to.
//!
//! Found, each with the instruction index as evidence:
//! - sock_addr hooks: stores to the address the hook hands back or uses
//!   (`user_ip4`, `user_ip6[]`, `user_port`; `msg_src_ip4`, `msg_src_ip6[]`);
//! - getsockopt hooks: stores to `optval`, `optlen`, `retval`;
//! - TC and XDP: direct stores into packet data, and helpers that rewrite,
//!   reshape or redirect packets;
//! - any program: helpers that write TCP header options, set socket
//!   options, rebind a socket or steer packets to another socket;
//! - tail calls and kernel-function calls, which the analysis cannot follow:
//!   "cannot tell", flagged.
//!
//! The walk follows every path (jumps, subprogram calls) and tracks which
//! registers may hold the context or a pointer loaded from one of its
//! fields, through copies, pointer arithmetic and stack spills. Offsets of
//! the kernel structures come from the kernel's BTF ([`Layout`]); helper
//! calls are named from kallsyms.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// One decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register.
    pub dst: u8,
    /// Source register.
    pub src: u8,
    /// Offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

impl Insn {
    /// Decodes a raw 8-byte instruction (host byte order, as the kernel
    /// hands them out).
    pub fn decode(raw: [u8; 8]) -> Insn {
        Insn {
            code: raw[0],
            dst: raw[1] & 0x0f,
            src: raw[1] >> 4,
            off: i16::from_le_bytes([raw[2], raw[3]]),
            imm: i32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
        }
    }

    /// Encodes (for tests and hand-built sequences).
    pub fn encode(self) -> [u8; 8] {
        let o = self.off.to_le_bytes();
        let i = self.imm.to_le_bytes();
        [
            self.code,
            (self.src << 4) | (self.dst & 0x0f),
            o[0],
            o[1],
            i[0],
            i[1],
            i[2],
            i[3],
        ]
    }
}

const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU32: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const CLASS_ALU64: u8 = 0x07;
const OP_JA: u8 = 0x00;
/// `src_reg` of a call to a subprogram of the same program.
const PSEUDO_CALL: u8 = 1;
/// `src_reg` of a 64-bit load of a subprogram's address (a callback).
const PSEUDO_FUNC: u8 = 4;
const MODE_MEM: u8 = 0x60;
const MODE_ATOMIC: u8 = 0xc0;
const SIZE_DW: u8 = 0x18;
const OP_CALL: u8 = 0x80;
const OP_EXIT: u8 = 0x90;
const ALU_ADD: u8 = 0x00;
const ALU_SUB: u8 = 0x10;
const ALU_MOV: u8 = 0xb0;
const SRC_X: u8 = 0x08;
/// `BPF_FUNC_tail_call`: how the kernel hands out a tail call.
const FUNC_TAIL_CALL: i32 = 12;
/// `src_reg` of a call to a kernel function (kfunc).
const PSEUDO_KFUNC_CALL: u8 = 2;
/// The frame pointer.
const R10: u8 = 10;

/// Offsets (bytes) of the kernel context structures' fields, from BTF.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// `bpf_sock_addr_kern.uaddr`: the address a sock_addr hook hands back or uses.
    pub sock_addr_uaddr: Option<i16>,
    /// `bpf_sock_addr_kern.t_ctx`: sendmsg's source address.
    pub sock_addr_t_ctx: Option<i16>,
    /// `bpf_sock_addr_kern.tmp_reg`: the verifier's spill slot.
    pub sock_addr_tmp: Option<i16>,
    /// `bpf_sockopt_kern.optval`.
    pub sockopt_optval: Option<i16>,
    /// `bpf_sockopt_kern.optlen`.
    pub sockopt_optlen: Option<i16>,
    /// `bpf_sockopt_kern.current_task` (retval lives behind it).
    pub sockopt_current_task: Option<i16>,
    /// `bpf_sockopt_kern.tmp_reg`.
    pub sockopt_tmp: Option<i16>,
    /// `sk_buff.data`.
    pub skb_data: Option<i16>,
    /// `xdp_buff.data`.
    pub xdp_data: Option<i16>,
}

impl Layout {
    /// Reads the offsets from a `bpftool btf dump` of the kernel's BTF.
    pub fn from_btf_dump(text: &str) -> Layout {
        let member = |strukt: &str, name: &str| -> Option<i16> {
            let header = format!("STRUCT '{strukt}' ");
            let mut lines = text.lines().skip_while(|l| !l.contains(&header));
            lines.next()?;
            lines
                .take_while(|l| l.starts_with('\t'))
                .find(|l| l.trim_start().starts_with(&format!("'{name}' ")))
                .and_then(|l| l.split("bits_offset=").nth(1))
                .and_then(|b| b.split_whitespace().next()?.parse::<u32>().ok())
                .and_then(|bits| i16::try_from(bits / 8).ok())
        };
        Layout {
            sock_addr_uaddr: member("bpf_sock_addr_kern", "uaddr"),
            sock_addr_t_ctx: member("bpf_sock_addr_kern", "t_ctx"),
            sock_addr_tmp: member("bpf_sock_addr_kern", "tmp_reg"),
            sockopt_optval: member("bpf_sockopt_kern", "optval"),
            sockopt_optlen: member("bpf_sockopt_kern", "optlen"),
            sockopt_current_task: member("bpf_sockopt_kern", "current_task"),
            sockopt_tmp: member("bpf_sockopt_kern", "tmp_reg"),
            skb_data: member("sk_buff", "data"),
            xdp_data: member("xdp_buff", "data"),
        }
    }

    /// The running kernel's layout (`bpftool btf dump` of its BTF).
    pub fn of_running_kernel() -> Layout {
        std::process::Command::new("bpftool")
            .args(["btf", "dump", "file", "/sys/kernel/btf/vmlinux"])
            .output()
            .map(|o| Layout::from_btf_dump(&String::from_utf8_lossy(&o.stdout)))
            .unwrap_or_default()
    }
}

/// Which sock_addr hook: decides what a store to the address means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrHook {
    /// bind4/6: the address the socket binds to.
    Bind,
    /// connect4/6: where the connection goes.
    Connect,
    /// sendmsg4/6: where a datagram goes, and from where.
    SendMsg,
    /// recvmsg4/6: whom a datagram seems to come from.
    RecvMsg,
    /// getpeername4/6: the peer `accept()`/`getpeername()` return.
    GetPeerName,
    /// getsockname4/6: the local address `getsockname()` returns.
    GetSockName,
}

/// Where a program runs, as far as the analysis needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A cgroup sock_addr hook; `v6` for the IPv6 one.
    SockAddr {
        /// Which one.
        hook: AddrHook,
        /// IPv6 (`sockaddr_in6`) rather than IPv4.
        v6: bool,
    },
    /// cgroup getsockopt.
    GetSockopt,
    /// TC or XDP: sees packets.
    Packet,
    /// Anything else (sock_ops, sock_create, cgroup skb, ...).
    Other,
}

impl Hook {
    /// The hook named by the last word of an audit attach point.
    pub fn from_name(name: &str) -> Hook {
        let addr = |hook, v6| Hook::SockAddr { hook, v6 };
        match name {
            "bind4" => addr(AddrHook::Bind, false),
            "bind6" => addr(AddrHook::Bind, true),
            "connect4" => addr(AddrHook::Connect, false),
            "connect6" => addr(AddrHook::Connect, true),
            "sendmsg4" => addr(AddrHook::SendMsg, false),
            "sendmsg6" => addr(AddrHook::SendMsg, true),
            "recvmsg4" => addr(AddrHook::RecvMsg, false),
            "recvmsg6" => addr(AddrHook::RecvMsg, true),
            "getpeername4" => addr(AddrHook::GetPeerName, false),
            "getpeername6" => addr(AddrHook::GetPeerName, true),
            "getsockname4" => addr(AddrHook::GetSockName, false),
            "getsockname6" => addr(AddrHook::GetSockName, true),
            "getsockopt" => Hook::GetSockopt,
            _ if name.contains("xdp") || name.contains("tc") || name.contains("ingress") => {
                Hook::Packet
            }
            _ => Hook::Other,
        }
    }
}

/// Whose view of an address a write changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// What applications on this host see (their peer, their own address,
    /// a getsockopt answer).
    AppsOnThisHost,
    /// What the remote side of a connection sees, or where traffic goes.
    RemotePeers,
    /// Both: packets rewritten or redirected on their way in or out.
    Both,
}

/// One thing a program was found to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// Index of the instruction (in the translated program).
    pub insn: usize,
    /// What it does: the field written or the helper called.
    pub what: String,
    /// Whose view it changes; `None`: the analysis cannot tell.
    pub direction: Option<Direction>,
}

/// What a program was found to do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Analysis {
    /// Writes that change an address or a packet.
    pub writes: Vec<Evidence>,
    /// Places the analysis could not follow (tail calls, kernel functions).
    pub cannot_tell: Vec<Evidence>,
}

impl Analysis {
    /// No write found and nothing that could hide one.
    pub fn observes_only(&self) -> bool {
        self.writes.is_empty() && self.cannot_tell.is_empty()
    }
}

/// What a register may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Unknown,
    /// The context pointer.
    Ctx,
    /// A pointer read from the context field at this offset (or reached
    /// through it).
    From(i16),
}

/// Everything a register may hold at one instruction, over every path.
type Kinds = BTreeSet<Kind>;

/// Registers and spilled stack slots at one instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    regs: [Kinds; 11],
    stack: BTreeMap<i16, Kinds>,
}

impl State {
    fn entry() -> State {
        let mut regs: [Kinds; 11] = std::array::from_fn(|_| Kinds::from([Kind::Unknown]));
        regs[1] = Kinds::from([Kind::Ctx]);
        State {
            regs,
            stack: BTreeMap::new(),
        }
    }

    /// Merges `other` in; true if anything was added.
    fn merge(&mut self, other: &State) -> bool {
        let mut grew = false;
        for (mine, theirs) in self.regs.iter_mut().zip(&other.regs) {
            let before = mine.len();
            mine.extend(theirs.iter().copied());
            grew |= mine.len() != before;
        }
        for (off, theirs) in &other.stack {
            let mine = self.stack.entry(*off).or_default();
            let before = mine.len();
            mine.extend(theirs.iter().copied());
            grew |= mine.len() != before;
        }
        grew
    }

    fn set(&mut self, reg: u8, kinds: Kinds) {
        self.regs[usize::from(reg.min(10))] = kinds;
    }

    fn get(&self, reg: u8) -> &Kinds {
        &self.regs[usize::from(reg.min(10))]
    }
}

fn unknown() -> Kinds {
    Kinds::from([Kind::Unknown])
}

/// What a helper named `name` does to addresses or packets, if anything.
fn helper_effect(name: &str) -> Option<(&'static str, Direction)> {
    let packet = Direction::Both;
    Some(match name {
        "bpf_skb_store_bytes" | "bpf_xdp_store_bytes" => ("writes packet bytes", packet),
        "bpf_l3_csum_replace" | "bpf_l4_csum_replace" => {
            ("rewrites packet checksums (NAT-style)", packet)
        }
        "bpf_skb_vlan_push"
        | "bpf_skb_vlan_pop"
        | "bpf_skb_change_proto"
        | "bpf_skb_change_type"
        | "bpf_skb_adjust_room"
        | "bpf_skb_change_tail"
        | "bpf_skb_change_head"
        | "bpf_xdp_adjust_head"
        | "bpf_xdp_adjust_tail"
        | "bpf_xdp_adjust_meta"
        | "bpf_skb_set_tunnel_key" => ("reshapes packets", packet),
        "bpf_redirect"
        | "bpf_redirect_map"
        | "bpf_xdp_redirect"
        | "bpf_xdp_redirect_map"
        | "bpf_clone_redirect"
        | "bpf_redirect_peer"
        | "bpf_redirect_neigh"
        | "bpf_sk_redirect_map"
        | "bpf_sk_redirect_hash"
        | "bpf_msg_redirect_map"
        | "bpf_msg_redirect_hash" => ("redirects packets", packet),
        "bpf_sk_assign" => ("steers packets to another socket", packet),
        "bpf_sock_ops_store_hdr_opt" => (
            "writes TCP header options (bpf_store_hdr_opt)",
            Direction::RemotePeers,
        ),
        "bpf_bind" => (
            "rebinds the socket's source address (bpf_bind)",
            Direction::RemotePeers,
        ),
        n if n.ends_with("setsockopt") => (
            "sets socket options (bpf_setsockopt)",
            Direction::RemotePeers,
        ),
        _ => return None,
    })
}

/// What a store through a pointer read from context field `field`, at
/// `off` past it, changes on `hook`.
fn store_effect(hook: Hook, layout: &Layout, field: i16, off: i16) -> Option<(String, Direction)> {
    match hook {
        Hook::SockAddr { hook, v6 } => {
            let direction = match hook {
                AddrHook::GetPeerName | AddrHook::GetSockName | AddrHook::RecvMsg => {
                    Direction::AppsOnThisHost
                }
                AddrHook::Bind | AddrHook::Connect | AddrHook::SendMsg => Direction::RemotePeers,
            };
            if Some(field) == layout.sock_addr_uaddr {
                let what = match (v6, off) {
                    (_, 2..=3) => "user_port".to_string(),
                    (false, 4..=7) => "user_ip4".to_string(),
                    (true, 8..=23) => format!("user_ip6[{}]", (off - 8) / 4),
                    _ => format!("the user address at byte {off}"),
                };
                Some((what, direction))
            } else if Some(field) == layout.sock_addr_t_ctx {
                let what = if v6 {
                    format!("msg_src_ip6[{}]", off / 4)
                } else {
                    "msg_src_ip4".to_string()
                };
                Some((what, direction))
            } else {
                None
            }
        }
        Hook::GetSockopt => {
            if Some(field) == layout.sockopt_optval {
                Some((
                    "optval (the getsockopt answer)".into(),
                    Direction::AppsOnThisHost,
                ))
            } else if Some(field) == layout.sockopt_current_task {
                Some((
                    "retval (the getsockopt result)".into(),
                    Direction::AppsOnThisHost,
                ))
            } else {
                None
            }
        }
        Hook::Packet => {
            (Some(field) == layout.skb_data || Some(field) == layout.xdp_data).then(|| {
                (
                    format!("packet data (direct store at +{off})"),
                    Direction::Both,
                )
            })
        }
        Hook::Other => None,
    }
}

/// Analyses the translated instructions `insns` of a program on `hook`;
/// `helper` names a helper call from its immediate. A data-flow walk over
/// every path (jumps and subprogram calls followed, states merged) records
/// which registers may hold the context or a pointer read from one of its
/// fields, and reports every store through such a pointer and every helper
/// that changes addresses or packets.
pub fn analyse(
    insns: &[Insn],
    hook: Hook,
    layout: &Layout,
    helper: &dyn Fn(i32) -> Option<String>,
) -> Analysis {
    let mut states: Vec<Option<State>> = vec![None; insns.len()];
    let mut work = vec![0usize];
    if !insns.is_empty() {
        states[0] = Some(State::entry());
    }
    let mut found: BTreeMap<usize, Evidence> = BTreeMap::new();
    let mut cannot: BTreeMap<usize, Evidence> = BTreeMap::new();
    let tmp_slots = [layout.sock_addr_tmp, layout.sockopt_tmp];
    let flow_to = |states: &mut Vec<Option<State>>, work: &mut Vec<usize>, at: i64, st: &State| {
        let Ok(at) = usize::try_from(at) else { return };
        if at >= states.len() {
            return;
        }
        match &mut states[at] {
            Some(existing) => {
                if existing.merge(st) {
                    work.push(at);
                }
            }
            slot @ None => {
                *slot = Some(st.clone());
                work.push(at);
            }
        }
    };
    // Bounded: each merge only grows finite sets.
    let mut budget = insns.len().saturating_mul(64).max(1024);
    while let Some(i) = work.pop() {
        if budget == 0 {
            cannot.insert(
                i,
                Evidence {
                    insn: i,
                    what: "too many paths for the analysis to follow".into(),
                    direction: None,
                },
            );
            break;
        }
        budget -= 1;
        let Some(mut st) = states[i].clone() else {
            continue;
        };
        let insn = insns[i];
        let class = insn.code & 0x07;
        let mut next = Some(i as i64 + 1);
        let mut jump: Option<i64> = None;
        match class {
            CLASS_LD => {
                st.set(insn.dst, unknown());
                if insn.code == 0x18 {
                    if insn.src == PSEUDO_FUNC {
                        cannot.insert(
                            i,
                            Evidence {
                                insn: i,
                                what: "passes a callback the analysis does not follow".into(),
                                direction: None,
                            },
                        );
                    }
                    next = Some(i as i64 + 2);
                }
            }
            CLASS_LDX if insn.code & 0xe0 == MODE_MEM => {
                let dw = insn.code & 0x18 == SIZE_DW;
                let loaded: Kinds = if !dw {
                    unknown()
                } else if insn.src == R10 {
                    st.stack.get(&insn.off).cloned().unwrap_or_else(unknown)
                } else {
                    st.get(insn.src)
                        .iter()
                        .map(|k| match k {
                            Kind::Ctx if !tmp_slots.contains(&Some(insn.off)) => {
                                Kind::From(insn.off)
                            }
                            Kind::From(f) => Kind::From(*f),
                            _ => Kind::Unknown,
                        })
                        .collect()
                };
                st.set(insn.dst, loaded);
            }
            CLASS_ST | CLASS_STX
                if insn.code & 0xe0 == MODE_MEM || insn.code & 0xe0 == MODE_ATOMIC =>
            {
                if insn.dst == R10 {
                    let stored = if class == CLASS_STX && insn.code & 0x18 == SIZE_DW {
                        st.get(insn.src).clone()
                    } else {
                        unknown()
                    };
                    st.stack.insert(insn.off, stored);
                } else {
                    for k in st.get(insn.dst).clone() {
                        let effect = match k {
                            Kind::From(field) => store_effect(hook, layout, field, insn.off)
                                .map(|(what, d)| (format!("stores {what}"), d)),
                            Kind::Ctx
                                if hook == Hook::GetSockopt
                                    && Some(insn.off) == layout.sockopt_optlen =>
                            {
                                Some((
                                    "stores optlen (the getsockopt answer's length)".to_string(),
                                    Direction::AppsOnThisHost,
                                ))
                            }
                            _ => None,
                        };
                        if let Some((what, direction)) = effect {
                            found.entry(i).or_insert(Evidence {
                                insn: i,
                                what,
                                direction: Some(direction),
                            });
                        }
                    }
                }
            }
            CLASS_ALU64 => {
                let op = insn.code & 0xf0;
                let by_reg = insn.code & SRC_X != 0;
                let result = match (op, by_reg) {
                    (ALU_MOV, true) => st.get(insn.src).clone(),
                    (ALU_ADD | ALU_SUB, false) => st.get(insn.dst).clone(),
                    (ALU_ADD, true) => {
                        let mut k: Kinds = st.get(insn.dst).clone();
                        k.extend(st.get(insn.src).iter().filter(|k| **k != Kind::Unknown));
                        k
                    }
                    _ => unknown(),
                };
                st.set(insn.dst, result);
            }
            CLASS_ALU32 => st.set(insn.dst, unknown()),
            CLASS_JMP | CLASS_JMP32 => match insn.code & 0xf0 {
                OP_CALL => {
                    if insn.src == PSEUDO_KFUNC_CALL {
                        cannot.insert(
                            i,
                            Evidence {
                                insn: i,
                                what: "calls a kernel function the analysis cannot follow".into(),
                                direction: None,
                            },
                        );
                    } else if insn.src == 0 && insn.imm == FUNC_TAIL_CALL {
                        cannot.insert(
                            i,
                            Evidence {
                                insn: i,
                                what: "tail-calls another program the analysis cannot follow"
                                    .into(),
                                direction: None,
                            },
                        );
                    } else if insn.src == 0 {
                        if let Some(name) = helper(insn.imm) {
                            if let Some((what, direction)) = helper_effect(&name) {
                                found.entry(i).or_insert(Evidence {
                                    insn: i,
                                    what: format!("calls {name}: {what}"),
                                    direction: Some(direction),
                                });
                            }
                        }
                    } else if insn.src == PSEUDO_CALL {
                        // A subprogram: it gets the caller's r1-r5.
                        let mut callee = st.clone();
                        callee.stack.clear();
                        jump = Some(i as i64 + 1 + i64::from(insn.imm));
                        flow_to(&mut states, &mut work, jump.unwrap_or(-1), &callee);
                        jump = None;
                    }
                    for r in 0..=5 {
                        st.set(r, unknown());
                    }
                }
                OP_EXIT => next = None,
                OP_JA => {
                    let off = if class == CLASS_JMP32 {
                        i64::from(insn.imm)
                    } else {
                        i64::from(insn.off)
                    };
                    next = Some(i as i64 + 1 + off);
                }
                _ => jump = Some(i as i64 + 1 + i64::from(insn.off)),
            },
            _ => {}
        }
        if let Some(at) = next {
            flow_to(&mut states, &mut work, at, &st);
        }
        if let Some(at) = jump {
            flow_to(&mut states, &mut work, at, &st);
        }
    }
    Analysis {
        writes: found.into_values().collect(),
        cannot_tell: cannot.into_values().collect(),
    }
}

/// Helper names by call immediate, from `/proc/kallsyms`: the kernel hands
/// a helper call out as the helper's address minus `__bpf_call_base`.
pub struct HelperNames {
    base: Option<u64>,
    by_address: std::collections::HashMap<u64, String>,
}

impl HelperNames {
    /// Reads `/proc/kallsyms` (addresses are visible to root).
    pub fn read() -> HelperNames {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        HelperNames::parse(&text)
    }

    /// Parses kallsyms text.
    pub fn parse(text: &str) -> HelperNames {
        let mut base = None;
        let mut by_address = std::collections::HashMap::new();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(addr), Some(_), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if name == "__bpf_call_base" {
                base = Some(addr);
            } else if name.starts_with("bpf_") && addr != 0 {
                by_address.insert(addr, name.to_string());
            }
        }
        HelperNames { base, by_address }
    }

    /// The helper a call immediate names.
    pub fn name(&self, imm: i32) -> Option<String> {
        let addr = self.base?.wrapping_add_signed(i64::from(imm));
        self.by_address.get(&addr).cloned()
    }
}

#[cfg(test)]
mod tests;
