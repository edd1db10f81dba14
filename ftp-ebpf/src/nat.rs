//! Header translation and forwarding of the connections ftpnat owns.
//!
//! A translated packet is rewritten in place (addresses, ports, TTL, with incremental checksum
//! updates that are also right for CHECKSUM_PARTIAL skbs) and redirected straight to the egress
//! interface with `bpf_redirect_neigh`, from the ingress hook. It therefore never enters netfilter:
//! ftpnat needs no rule there and does not disturb a masquerade that handles the router's other
//! traffic.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};
use ftp_common::maps::{Counter, FlowEntry, FlowKind, flow_flags};

use crate::{
    headers::{
        Covered::{Ip, IpAndPseudoHeader, Tcp},
        IP_DADDR_OFF, IP_OFF, IP_SADDR_OFF, IP_TTL_OFF, TCP_DPORT_OFF, TCP_SPORT_OFF, Tcp4,
        store16, store32,
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

/// Records the packet on its flow entry (counters, last seen, TCP flags seen this way). A control
/// connection's flags are taken by its stage instead, once the segment is known to lie in the
/// connection's window (`tcp_window::follow`).
#[inline(always)]
pub fn account(entry: *mut FlowEntry, packet: &Tcp4) {
    // SAFETY: `entry` points into a live map value; `kind` is written only at its creation.
    let seen = if unsafe { (*entry).kind } == FlowKind::Control as u8 {
        0
    } else {
        packet_flags(packet)
    };
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

/// The [`flow_flags`] a packet shows about its connection.
#[inline(always)]
pub fn packet_flags(packet: &Tcp4) -> u8 {
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
    seen
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
    let ip = &packet.ip;
    if ip.src_addr != entry.new_saddr {
        let field = [ip.src_addr, entry.new_saddr];
        store32(ctx, packet, IP_OFF + IP_SADDR_OFF, field, IpAndPseudoHeader)?;
    }
    if ip.dst_addr != entry.new_daddr {
        let field = [ip.dst_addr, entry.new_daddr];
        store32(ctx, packet, IP_OFF + IP_DADDR_OFF, field, IpAndPseudoHeader)?;
    }
    let tcp = &packet.tcp;
    if tcp.source != entry.new_sport {
        let field = [tcp.source, entry.new_sport];
        store16(ctx, packet, packet.tcp_off + TCP_SPORT_OFF, field, Tcp)?;
    }
    if tcp.dest != entry.new_dport {
        let field = [tcp.dest, entry.new_dport];
        store16(ctx, packet, packet.tcp_off + TCP_DPORT_OFF, field, Tcp)?;
    }
    // We forward, so we decrement the TTL like a router; ttl and protocol share a checksum word.
    let ttl_word = [[ip.ttl, ip.proto], [ip.ttl - 1, ip.proto]];
    store16(ctx, packet, IP_OFF + IP_TTL_OFF, ttl_word, Ip)
}
