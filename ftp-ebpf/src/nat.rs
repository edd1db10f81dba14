//! Header translation and forwarding of the connections ftpnat owns.
//!
//! A translated packet is rewritten in place (addresses, ports, TTL, with incremental checksum
//! updates that are also right for CHECKSUM_PARTIAL skbs) and redirected straight to the egress
//! interface with `bpf_redirect_neigh`, from the ingress hook. It therefore never enters netfilter:
//! ftpnat needs no rule there and does not disturb a masquerade that handles the router's other
//! traffic.

use aya_ebpf::{
    bindings::{BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};
use ftp_common::maps::{Counter, FlowEntry, flow_flags};

use crate::{
    headers::{
        IP_CHECK_OFF, IP_DADDR_OFF, IP_OFF, IP_SADDR_OFF, IP_TTL_OFF, TCP_CHECK_OFF, TCP_DPORT_OFF,
        TCP_SPORT_OFF, Tcp4,
    },
    maps::{bump, now_ns},
};

/// What to do with a packet of a translated flow.
pub enum Verdict {
    /// Redirected to the flow's egress interface.
    Redirected,
    /// Hand it to the kernel unchanged (e.g. TTL expiring: the stack answers with ICMP).
    Pass,
    /// Drop it.
    Drop,
}

impl Verdict {
    #[inline(always)]
    pub fn action(self, pass: i32) -> i32 {
        match self {
            Verdict::Redirected => TC_ACT_REDIRECT,
            Verdict::Pass => pass,
            Verdict::Drop => TC_ACT_SHOT,
        }
    }
}

/// Records the packet on its flow entry (counters, last seen, TCP flags seen this way).
#[inline(always)]
pub fn account(entry: *mut FlowEntry, packet: &Tcp4) {
    let mut seen = 0;
    if packet.tcp.fin() != 0 {
        seen |= flow_flags::FIN;
    }
    if packet.tcp.rst() != 0 {
        seen |= flow_flags::RST;
    }
    if !packet.is_opening_syn() {
        seen |= flow_flags::ESTABLISHED;
    }
    // SAFETY: `entry` points into a live map value. The bpfel target offers no 64-bit atomics in
    // `core`, so two CPUs handling one flow at the same instant can lose an increment: a flow's
    // packets normally stay on one CPU, and these counters are for reporting, not accounting.
    // Flags and timestamps only move forward, so a lost race there costs nothing.
    unsafe {
        (*entry).packets += 1;
        (*entry).bytes += u64::from(packet.ip_len());
        (*entry).last_seen_ns = now_ns();
        if (*entry).flags & seen != seen {
            (*entry).flags |= seen;
        }
    }
}

/// Rewrites the headers as `entry` says and redirects the packet to `entry.out_ifindex`.
// A subprogram of its own: its stack frame does not add to the ALG's call chain.
#[inline(never)]
pub fn translate_and_forward(ctx: &TcContext, packet: &Tcp4, entry: &FlowEntry) -> Verdict {
    if packet.ip.ttl <= 1 {
        return Verdict::Pass;
    }
    if rewrite_headers(ctx, packet, entry).is_err() {
        return Verdict::Drop;
    }
    bump(Counter::PacketsTranslated);
    // SAFETY: plain helper call; a null params pointer asks the kernel to do the FIB lookup.
    let action = unsafe { bpf_redirect_neigh(entry.out_ifindex, core::ptr::null_mut(), 0, 0) };
    if action == i64::from(TC_ACT_REDIRECT) {
        Verdict::Redirected
    } else {
        bump(Counter::RedirectFailed);
        Verdict::Drop
    }
}

#[inline(always)]
fn rewrite_headers(ctx: &TcContext, packet: &Tcp4, entry: &FlowEntry) -> Result<(), i64> {
    let tcp_check = packet.tcp_off + TCP_CHECK_OFF;
    if packet.ip.src_addr != entry.new_saddr {
        rewrite_addr(
            ctx,
            IP_OFF + IP_SADDR_OFF,
            tcp_check,
            packet.ip.src_addr,
            entry.new_saddr,
        )?;
    }
    if packet.ip.dst_addr != entry.new_daddr {
        rewrite_addr(
            ctx,
            IP_OFF + IP_DADDR_OFF,
            tcp_check,
            packet.ip.dst_addr,
            entry.new_daddr,
        )?;
    }
    if packet.tcp.source != entry.new_sport {
        rewrite_port(
            ctx,
            packet.tcp_off + TCP_SPORT_OFF,
            tcp_check,
            packet.tcp.source,
            entry.new_sport,
        )?;
    }
    if packet.tcp.dest != entry.new_dport {
        rewrite_port(
            ctx,
            packet.tcp_off + TCP_DPORT_OFF,
            tcp_check,
            packet.tcp.dest,
            entry.new_dport,
        )?;
    }
    // We forward, so we decrement the TTL like a router; ttl and protocol share a checksum word.
    let old_word = [packet.ip.ttl, packet.ip.proto];
    let new_word = [packet.ip.ttl - 1, packet.ip.proto];
    ctx.store(IP_OFF + IP_TTL_OFF, &new_word[0], 0)?;
    ctx.l3_csum_replace(
        IP_OFF + IP_CHECK_OFF,
        u64::from(u16::from_ne_bytes(old_word)),
        u64::from(u16::from_ne_bytes(new_word)),
        2,
    )?;
    Ok(())
}

#[inline(always)]
fn rewrite_addr(
    ctx: &TcContext,
    offset: usize,
    tcp_check: usize,
    old: [u8; 4],
    new: [u8; 4],
) -> Result<(), i64> {
    ctx.store(offset, &new, 0)?;
    let (old, new) = (
        u64::from(u32::from_ne_bytes(old)),
        u64::from(u32::from_ne_bytes(new)),
    );
    ctx.l3_csum_replace(IP_OFF + IP_CHECK_OFF, old, new, 4)?;
    // The addresses are part of TCP's pseudo-header.
    ctx.l4_csum_replace(tcp_check, old, new, u64::from(BPF_F_PSEUDO_HDR) | 4)
}

#[inline(always)]
fn rewrite_port(
    ctx: &TcContext,
    offset: usize,
    tcp_check: usize,
    old: [u8; 2],
    new: [u8; 2],
) -> Result<(), i64> {
    ctx.store(offset, &new, 0)?;
    ctx.l4_csum_replace(
        tcp_check,
        u64::from(u16::from_ne_bytes(old)),
        u64::from(u16::from_ne_bytes(new)),
        2,
    )
}
