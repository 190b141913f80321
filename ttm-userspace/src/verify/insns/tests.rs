use super::*;

/// The layout of the development kernel (6.18), as its BTF says.
const LAYOUT: Layout = Layout {
    sock_addr_uaddr: Some(8),
    sock_addr_t_ctx: Some(24),
    sock_addr_tmp: Some(16),
    sockopt_optval: Some(8),
    sockopt_optlen: Some(32),
    sockopt_current_task: Some(40),
    sockopt_tmp: Some(48),
    skb_data: Some(200),
    xdp_data: Some(0),
};

fn i(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        dst,
        src,
        off,
        imm,
    }
}
// The opcodes the sequences below use.
fn mov_k(dst: u8, imm: i32) -> Insn {
    i(0xb7, dst, 0, 0, imm)
}
fn mov_x(dst: u8, src: u8) -> Insn {
    i(0xbf, dst, src, 0, 0)
}
fn add_k(dst: u8, imm: i32) -> Insn {
    i(0x07, dst, 0, 0, imm)
}
fn ldx_dw(dst: u8, src: u8, off: i16) -> Insn {
    i(0x79, dst, src, off, 0)
}
fn stx_dw(dst: u8, src: u8, off: i16) -> Insn {
    i(0x7b, dst, src, off, 0)
}
fn stx_w(dst: u8, src: u8, off: i16) -> Insn {
    i(0x63, dst, src, off, 0)
}
fn stx_h(dst: u8, src: u8, off: i16) -> Insn {
    i(0x6b, dst, src, off, 0)
}
fn stx_b(dst: u8, src: u8, off: i16) -> Insn {
    i(0x73, dst, src, off, 0)
}
fn call(imm: i32) -> Insn {
    i(0x85, 0, 0, 0, imm)
}
fn exit() -> Insn {
    i(0x95, 0, 0, 0, 0)
}

fn no_helpers(_: i32) -> Option<String> {
    None
}

/// A store to the user address as the verifier translates it: spill the
/// scratch register to the context, load the address pointer, store, restore.
fn user_addr_store(value_reg: u8, nested_off: i16, width: fn(u8, u8, i16) -> Insn) -> [Insn; 4] {
    [
        stx_dw(1, 9, 16),
        ldx_dw(9, 1, 8),
        width(9, value_reg, nested_off),
        ldx_dw(9, 1, 16),
    ]
}

#[test]
fn a_bind4_rewrite_is_found_field_by_field_and_points_at_remote_peers() {
    let mut prog = vec![mov_k(2, 0x0100_007f)];
    prog.extend(user_addr_store(2, 4, stx_w));
    prog.push(mov_k(2, 65535));
    prog.extend(user_addr_store(2, 2, stx_h));
    prog.extend([mov_k(0, 1), exit()]);
    let hook = Hook::from_name("bind4");
    let a = analyse(&prog, hook, &LAYOUT, &no_helpers);
    assert_eq!(a.writes.len(), 2, "{a:?}");
    assert_eq!(
        (a.writes[0].insn, a.writes[0].what.as_str()),
        (3, "stores user_ip4")
    );
    assert_eq!(a.writes[1].what, "stores user_port");
    assert!(a
        .writes
        .iter()
        .all(|w| w.direction == Some(Direction::RemotePeers)));
    // The same stores on getpeername change what apps on this host see.
    let a = analyse(&prog, Hook::from_name("getpeername4"), &LAYOUT, &no_helpers);
    assert_eq!(a.writes[0].direction, Some(Direction::AppsOnThisHost));
}

#[test]
fn an_ipv6_address_is_named_word_by_word() {
    let mut prog = vec![mov_k(2, 0)];
    for word in 0..4 {
        prog.extend(user_addr_store(2, 8 + 4 * word, stx_w));
    }
    prog.push(exit());
    let a = analyse(&prog, Hook::from_name("getsockname6"), &LAYOUT, &no_helpers);
    let what: Vec<&str> = a.writes.iter().map(|w| w.what.as_str()).collect();
    assert_eq!(
        what,
        [
            "stores user_ip6[0]",
            "stores user_ip6[1]",
            "stores user_ip6[2]",
            "stores user_ip6[3]"
        ]
    );
}

#[test]
fn a_counter_in_a_map_observes_only() {
    // r1 = &key on the stack; lookup (inlined: map pointer + index); *value += 1.
    let prog = [
        mov_k(1, 0),
        stx_w(10, 1, -4),
        mov_x(2, 10),
        add_k(2, -4),
        i(0x18, 1, 1, 0, 7),
        i(0x00, 0, 0, 0, 0),
        add_k(1, 312),
        i(0x61, 0, 2, 0, 0),
        i(0x0f, 0, 1, 0, 0),
        ldx_dw(0, 0, 0),
        ldx_dw(1, 0, 0),
        add_k(1, 1),
        stx_dw(0, 1, 0),
        mov_k(0, 1),
        exit(),
    ];
    for hook in ["bind4", "connect4", "getsockname6", "tcx"] {
        let a = analyse(&prog, Hook::from_name(hook), &LAYOUT, &no_helpers);
        assert!(a.observes_only(), "{hook}: {a:?}");
    }
}

#[test]
fn packet_writes_are_found_by_helper_and_by_direct_store() {
    let names = HelperNames::parse(
        "ffffffff81000000 T __bpf_call_base\nffffffff81000100 T bpf_skb_store_bytes\nffffffff80ffff00 T bpf_redirect\n",
    );
    let helper = |imm| names.name(imm);
    let by_helper = [mov_k(2, 26), call(0x100), mov_k(0, 0), exit()];
    let a = analyse(&by_helper, Hook::Packet, &LAYOUT, &helper);
    assert_eq!(a.writes.len(), 1, "{a:?}");
    assert_eq!(a.writes[0].insn, 1);
    assert!(a.writes[0].what.contains("bpf_skb_store_bytes"));
    // A helper below the base: negative immediates.
    let redirect = [call(-0x100), exit()];
    let a = analyse(&redirect, Hook::Packet, &LAYOUT, &helper);
    assert!(a.writes[0].what.contains("redirects"), "{a:?}");
    // data = skb->data; spilled and reloaded; p = data + 26; *p = x.
    let direct = [
        ldx_dw(2, 1, 200),
        stx_dw(10, 2, -16),
        mov_k(2, 0),
        ldx_dw(3, 10, -16),
        add_k(3, 26),
        stx_b(3, 4, 0),
        exit(),
    ];
    let a = analyse(&direct, Hook::Packet, &LAYOUT, &no_helpers);
    assert_eq!(a.writes.len(), 1, "{a:?}");
    assert_eq!(a.writes[0].insn, 5);
    assert_eq!(a.writes[0].direction, Some(Direction::Both));
}

#[test]
fn tail_calls_and_kernel_functions_cannot_be_told_and_are_flagged() {
    let prog = [call(12), i(0x85, 0, 2, 0, 99), exit()];
    let a = analyse(&prog, Hook::Packet, &LAYOUT, &no_helpers);
    assert_eq!(a.cannot_tell.len(), 2, "{a:?}");
    assert!(!a.observes_only());
}

#[test]
fn getsockopt_answers_are_found_optval_optlen_and_retval() {
    let prog = [
        mov_x(6, 1),
        ldx_dw(1, 6, 8),
        stx_b(1, 2, 0),
        mov_k(1, 20),
        stx_w(6, 1, 32),
        stx_dw(6, 9, 48),
        ldx_dw(9, 6, 40),
        ldx_dw(9, 9, 3008),
        stx_w(9, 1, 8),
        ldx_dw(9, 6, 48),
        exit(),
    ];
    let a = analyse(&prog, Hook::GetSockopt, &LAYOUT, &no_helpers);
    let what: Vec<&str> = a.writes.iter().map(|w| w.what.as_str()).collect();
    assert_eq!(
        what,
        [
            "stores optval (the getsockopt answer)",
            "stores optlen (the getsockopt answer's length)",
            "stores retval (the getsockopt result)"
        ],
        "{a:?}"
    );
}

#[test]
fn header_option_writes_and_socket_options_are_named() {
    let names = HelperNames::parse(
        "1000 T __bpf_call_base\n1010 T bpf_sock_ops_store_hdr_opt\n1020 T bpf_sock_ops_setsockopt\n",
    );
    let prog = [call(0x10), call(0x20), exit()];
    let a = analyse(&prog, Hook::Other, &LAYOUT, &|imm| names.name(imm));
    assert_eq!(a.writes.len(), 2);
    assert!(a.writes[0].what.contains("TCP header options"));
    assert!(a.writes[1].what.contains("socket options"));
    assert!(a
        .writes
        .iter()
        .all(|w| w.direction == Some(Direction::RemotePeers)));
}

#[test]
fn the_layout_is_read_from_a_btf_dump() {
    let dump = "[1] STRUCT 'bpf_sock_addr_kern' size=40 vlen=3\n\t'sk' type_id=2 bits_offset=0\n\t'uaddr' type_id=3 bits_offset=64\n\t'tmp_reg' type_id=4 bits_offset=128\n[2] STRUCT 'sk_buff' size=224 vlen=1\n\t'data' type_id=5 bits_offset=1600\n";
    let l = Layout::from_btf_dump(dump);
    assert_eq!(l.sock_addr_uaddr, Some(8));
    assert_eq!(l.sock_addr_tmp, Some(16));
    assert_eq!(l.skb_data, Some(200));
    assert_eq!(l.sock_addr_t_ctx, None);
}

#[test]
fn instructions_round_trip_through_their_bytes() {
    let insn = i(0x63, 9, 2, -4, -7);
    assert_eq!(Insn::decode(insn.encode()), insn);
}

#[test]
fn every_path_is_followed_jumps_merges_and_subprograms() {
    // if (x) r1 = 15 (a counter index) else keep r1 = optval; join; store through r1.
    let branchy = [
        mov_x(6, 1),
        ldx_dw(1, 6, 8),
        i(0x15, 2, 0, 1, 0), // if r2 == 0 goto +1
        mov_k(1, 15),
        stx_b(1, 3, 0),
        exit(),
    ];
    let a = analyse(&branchy, Hook::GetSockopt, &LAYOUT, &no_helpers);
    assert_eq!(
        a.writes.len(),
        1,
        "the store after the join may be to optval: {a:?}"
    );
    assert_eq!(a.writes[0].insn, 4);
    // main calls a subprogram with the context in r1; it stores the user port.
    let mut with_sub = vec![i(0x85, 0, 1, 0, 2), mov_k(0, 1), exit()];
    with_sub.extend(user_addr_store(2, 2, stx_h));
    with_sub.push(exit());
    let a = analyse(&with_sub, Hook::from_name("connect4"), &LAYOUT, &no_helpers);
    assert_eq!(a.writes.len(), 1, "{a:?}");
    assert_eq!(a.writes[0].what, "stores user_port");
    // A callback passed by address is not followed: cannot tell.
    let callback = [i(0x18, 2, 4, 0, 3), i(0, 0, 0, 0, 0), exit(), exit()];
    assert_eq!(
        analyse(&callback, Hook::Other, &LAYOUT, &no_helpers)
            .cannot_tell
            .len(),
        1
    );
}
