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

use crate::headers::{IP_CHECK_OFF, IP_OFF, IP_SADDR_OFF, IP_TTL_OFF, TCP_CHECK_OFF, Tcp4};

const TCP_SEQ_OFF: usize = 4;
/// The 16-bit word holding the data offset and the flags.
const TCP_FLAGS_WORD_OFF: usize = 12;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;
const RESET_TTL: u8 = 64;

/// Turns the SYN into its reset and sends that back; returns the TC action.
// A subprogram of its own: its stack frame does not add to the caller's 512 bytes.
#[inline(never)]
pub fn refuse_syn(ctx: &TcContext, packet: &Tcp4) -> i32 {
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
fn rewrite_as_reset(ctx: &TcContext, packet: &Tcp4) -> Result<(), i64> {
    let payload_len = packet.payload().map_or(0, |(_, len)| len as u32);
    let old_seq = packet.tcp.seq;
    let old_ack = packet.tcp.ack_seq;
    // A SYN occupies one sequence number, and so does each byte it carries (TCP Fast Open).
    let new_ack = u32::from_be_bytes(old_seq)
        .wrapping_add(1)
        .wrapping_add(payload_len)
        .to_be_bytes();
    let new_seq = [0u8; 4];

    let addrs = [packet.ip.dst_addr, packet.ip.src_addr];
    ctx.store(IP_OFF + IP_SADDR_OFF, &addrs, 0)?;
    let ports = [packet.tcp.dest, packet.tcp.source];
    ctx.store(packet.tcp_off, &ports, 0)?;

    let tcp_check = packet.tcp_off + TCP_CHECK_OFF;
    let seq_and_ack = [new_seq, new_ack];
    ctx.store(packet.tcp_off + TCP_SEQ_OFF, &seq_and_ack, 0)?;
    for (old, new) in [(old_seq, new_seq), (old_ack, new_ack)] {
        ctx.l4_csum_replace(
            tcp_check,
            u64::from(u32::from_ne_bytes(old)),
            u64::from(u32::from_ne_bytes(new)),
            4,
        )?;
    }
    let old_word: [u8; 2] = ctx.load(packet.tcp_off + TCP_FLAGS_WORD_OFF)?;
    let new_word = [old_word[0], TCP_FLAG_RST | TCP_FLAG_ACK];
    ctx.store(packet.tcp_off + TCP_FLAGS_WORD_OFF, &new_word, 0)?;
    ctx.l4_csum_replace(
        tcp_check,
        u64::from(u16::from_ne_bytes(old_word)),
        u64::from(u16::from_ne_bytes(new_word)),
        2,
    )?;

    // A fresh packet from the router, not a forwarded one: a fresh TTL.
    let old_ttl = [packet.ip.ttl, packet.ip.proto];
    let new_ttl = [RESET_TTL, packet.ip.proto];
    ctx.store(IP_OFF + IP_TTL_OFF, &new_ttl, 0)?;
    ctx.l3_csum_replace(
        IP_OFF + IP_CHECK_OFF,
        u64::from(u16::from_ne_bytes(old_ttl)),
        u64::from(u16::from_ne_bytes(new_ttl)),
        2,
    )?;
    Ok(())
}
