//! Refusing an opening SYN with a reset, so that the side that asked learns at once that the
//! connection cannot be made (the port window is exhausted), instead of retransmitting its SYN
//! into silence for minutes.
//!
//! The SYN itself becomes the RST+ACK: addresses and ports swapped (which leaves every checksum as
//! it is: one's-complement sums do not depend on order), sequence 0, acknowledgement of the SYN,
//! and it goes back out of the interface it came in by. Its options stay; a reset's options are
//! ignored, and the echoed timestamp is 0, which the receiver does not check.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};

use crate::headers::{
    Covered, IP_OFF, IP_SADDR_OFF, IP_TTL_OFF, IP6_HOP_LIMIT_OFF, IP6_SADDR_OFF, IPPROTO_TCP,
    TCP_ACK_OFF, TCP_FLAGS_WORD_OFF, TCP_SEQ_OFF, Tcp, store16, store32,
};
use ftp_common::maps::ip;

const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;
const RESET_TTL: u8 = 64;

/// Turns the SYN into its reset and sends that back; returns the TC action.
// A subprogram of its own: its stack frame does not add to the caller's 512 bytes.
#[inline(never)]
pub fn refuse_syn(ctx: &TcContext, packet: &Tcp) -> i32 {
    // SAFETY: reading the context's ifindex field, as TC programs may.
    let in_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if rewrite_as_reset(ctx, packet).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: plain helper call; a null params pointer asks the kernel to do the FIB lookup.
    let action = unsafe { bpf_redirect_neigh(in_ifindex, core::ptr::null_mut(), 0, 0) };
    if action == i64::from(TC_ACT_REDIRECT) {
        TC_ACT_REDIRECT
    } else {
        TC_ACT_SHOT
    }
}

#[inline(always)]
fn rewrite_as_reset(ctx: &TcContext, packet: &Tcp) -> Result<(), i64> {
    let payload_len = packet.payload().map_or(0, |(_, len)| len as u32);
    let old_seq = packet.tcp.seq;
    let old_ack = packet.tcp.ack_seq;
    // A SYN occupies one sequence number, and so does each byte it carries (TCP Fast Open).
    let new_ack = u32::from_be_bytes(old_seq)
        .wrapping_add(1)
        .wrapping_add(payload_len)
        .to_be_bytes();
    let new_seq = [0u8; 4];

    if packet.v6 {
        ctx.store(
            IP_OFF + IP6_SADDR_OFF,
            &[packet.key.daddr, packet.key.saddr],
            0,
        )?;
    } else {
        let addrs = [
            ip::v4_octets(&packet.key.daddr),
            ip::v4_octets(&packet.key.saddr),
        ];
        ctx.store(IP_OFF + IP_SADDR_OFF, &addrs, 0)?;
    }
    let ports = [packet.tcp.dest, packet.tcp.source];
    ctx.store(packet.tcp_off(), &ports, 0)?;

    let tcp = packet.tcp_off();
    store32(
        ctx,
        packet,
        tcp + TCP_SEQ_OFF,
        [old_seq, new_seq],
        Covered::Tcp,
    )?;
    store32(
        ctx,
        packet,
        tcp + TCP_ACK_OFF,
        [old_ack, new_ack],
        Covered::Tcp,
    )?;
    let old_word: [u8; 2] = ctx.load(tcp + TCP_FLAGS_WORD_OFF)?;
    let new_word = [old_word[0], TCP_FLAG_RST | TCP_FLAG_ACK];
    store16(
        ctx,
        packet,
        tcp + TCP_FLAGS_WORD_OFF,
        [old_word, new_word],
        Covered::Tcp,
    )?;
    // A fresh packet from the router, not a forwarded one: a fresh TTL (hop limit, which no
    // checksum covers).
    if packet.v6 {
        return ctx.store(IP_OFF + IP6_HOP_LIMIT_OFF, &RESET_TTL, 0);
    }
    let ttl_word = [[packet.ttl, IPPROTO_TCP], [RESET_TTL, IPPROTO_TCP]];
    store16(ctx, packet, IP_OFF + IP_TTL_OFF, ttl_word, Covered::Ip)
}
