//! Header translation and forwarding of the connections ftpnat owns.
//!
//! A translated packet is rewritten in place (addresses, ports, TTL, with incremental checksum
//! updates that are also right for CHECKSUM_PARTIAL skbs) and redirected straight to the egress
//! interface with `bpf_redirect_neigh`, from the ingress hook. It therefore never enters netfilter:
//! ftpnat needs no rule there and does not disturb a masquerade that handles the router's other
//! traffic.
//!
//! The redirect also skips the stack's MTU check, so ftpnat makes its own: it clamps the MSS
//! option of every SYN and SYN-ACK it translates to what the smaller MTU of the two interfaces
//! carries (as `iptables -j TCPMSS --clamp-mss-to-pmtu` would), which keeps both ends' segments
//! within it, and it does not redirect a packet that is still too big (see [`too_big`]).

use aya_ebpf::{
    bindings::{
        BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT, TC_ACT_SHOT, bpf_check_mtu_ret::BPF_MTU_CHK_RET_SUCCESS,
    },
    helpers::{bpf_check_mtu, bpf_redirect_neigh, bpf_skb_change_proto},
    programs::TcContext,
};
use ftp_common::{
    checksum::Delta,
    maps::{Counter, FlowEntry, FlowKind, flow_flags, ip},
    mss::{self, OptionStep},
    nat64,
};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use crate::{
    headers::{ETH_P_IP, ETH_P_IPV6, ETH_TYPE_OFF, IP_OFF, IPPROTO_TCP, TCP_CHECK_OFF, Tcp},
    maps::{SCRATCH, bump, now_coarse_ns},
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
pub fn account(entry: *mut FlowEntry, packet: &Tcp) {
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
        (*entry).bytes += u64::from(packet.ip_len);
        (*entry).last_seen_ns = now_coarse_ns();
        if (*entry).flags & seen != seen {
            let new_flags = seen & !(*entry).flags;
            (*entry).flags |= seen;
            crate::flows::report_if_closed(packet, entry, new_flags);
        }
    }
}

/// The [`flow_flags`] a packet shows about its connection.
#[inline(always)]
pub fn packet_flags(packet: &Tcp) -> u8 {
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
// Inlined: each way is a subprogram of its own, called straight from the program, so that only
// one of their frames is ever in a call chain (Linux 6.1 refuses chains over 512 bytes).
#[inline(always)]
pub fn translate_and_forward(ctx: &TcContext, packet: &Tcp, entry: &FlowEntry) -> Verdict {
    if packet.v6 == ip::is_v4(&entry.new_saddr) {
        // A NAT64 flow: the packet changes family.
        translate_family(ctx, packet, entry)
    } else {
        translate_in_family(ctx, packet, entry)
    }
}

/// [`translate_and_forward`] of a packet that keeps its family.
// A subprogram of its own: its stack frame does not add to the ALG's call chain.
#[inline(never)]
fn translate_in_family(ctx: &TcContext, packet: &Tcp, entry: &FlowEntry) -> Verdict {
    if packet.ttl <= 1 {
        return Verdict::Pass;
    }
    let Mtu { mtu: out_mtu, fits } = mtu_of(ctx, entry.out_ifindex, packet.ip_len);
    if !fits {
        return too_big(packet, entry);
    }
    if rewrite_headers(ctx, packet, entry).is_err() {
        return Verdict::Drop;
    }
    if packet.tcp.syn() != 0 && clamp_mss(ctx, packet, out_mtu, u32::from(packet.ip_header_len())) {
        bump(Counter::MssClamped);
    }
    redirect(entry.out_ifindex)
}

/// Redirects a translated packet to `out_ifindex`, counted.
#[inline(always)]
fn redirect(out_ifindex: u32) -> Verdict {
    bump(Counter::PacketsTranslated);
    // SAFETY: plain helper call; a null params pointer asks the kernel to do the FIB lookup
    // (of the family the packet has now: `bpf_skb_change_proto` set its protocol).
    let action = unsafe { bpf_redirect_neigh(out_ifindex, core::ptr::null_mut(), 0, 0) };
    if action == i64::from(TC_ACT_REDIRECT) {
        Verdict::Redirected
    } else {
        bump(Counter::RedirectFailed);
        Verdict::Drop
    }
}

/// Translates a packet of a NAT64 flow to the other family and redirects it: the IP header
/// replaced by one of the other family (`bpf_skb_change_proto` makes the room, and turns a GSO
/// packet's segmentation type and size to the new family's), the ports as the entry says, the TCP
/// checksum brought along with the pseudo-header's difference and the ports'.
///
/// A packet too big for the egress once translated (IPv6 is 20 bytes longer) is dropped: the
/// sender cannot be told in its own family (the MSS clamping, to the IPv6 side's, keeps segments
/// within it). An IPv4 packet with options is dropped (RFC 7915 ignores options; ftpnat does
/// not translate them).
// A subprogram of its own: only NAT64 flows pay for it.
#[inline(never)]
fn translate_family(ctx: &TcContext, packet: &Tcp, entry: &FlowEntry) -> Verdict {
    if packet.ttl <= 1 {
        return Verdict::Pass;
    }
    let to_v4 = packet.v6;
    if !to_v4 && packet.ip_header_len() != nat64::IPV4_HEADER_LEN {
        bump(Counter::Nat64Untranslatable);
        return Verdict::Drop;
    }
    let new_len = if to_v4 {
        packet.ip_len.wrapping_sub(nat64::GROWTH)
    } else {
        packet.ip_len.wrapping_add(nat64::GROWTH)
    };
    let Mtu { mtu: out_mtu, fits } = mtu_of(ctx, entry.out_ifindex, new_len);
    if !fits {
        bump(Counter::TooBigDropped);
        return Verdict::Drop;
    }
    // Clamped for the longer header, IPv6's, whichever way the SYN goes: both ends' segments then
    // fit both sides.
    if packet.tcp.syn() != 0 && clamp_mss(ctx, packet, out_mtu, u32::from(nat64::IPV6_HEADER_LEN)) {
        bump(Counter::MssClamped);
    }
    let pseudo_sum = nat64::pseudo_header_delta(
        (&packet.key.saddr, &packet.key.daddr),
        (&entry.new_saddr, &entry.new_daddr),
    );
    let old_tcp = &packet.tcp;
    let mut ports_sum = Delta::NONE;
    if old_tcp.source != entry.new_sport {
        ports_sum = ports_sum.replace16(old_tcp.source, entry.new_sport);
    }
    if old_tcp.dest != entry.new_dport {
        ports_sum = ports_sum.replace16(old_tcp.dest, entry.new_dport);
    }
    if change_family(ctx, packet, entry, new_len).is_err() {
        return Verdict::Drop;
    }
    let tcp_off = IP_OFF
        + usize::from(if to_v4 {
            nat64::IPV4_HEADER_LEN
        } else {
            nat64::IPV6_HEADER_LEN
        });
    let ports = [entry.new_sport, entry.new_dport];
    let check = tcp_off + TCP_CHECK_OFF;
    let stored = ctx.store(tcp_off, &ports, 0).and_then(|()| {
        ctx.l4_csum_replace(
            check,
            0,
            u64::from(pseudo_sum.as_wsum()),
            u64::from(BPF_F_PSEUDO_HDR),
        )
    });
    if stored.is_err() {
        return Verdict::Drop;
    }
    if !ports_sum.is_none()
        && ctx
            .l4_csum_replace(check, 0, u64::from(ports_sum.as_wsum()), 0)
            .is_err()
    {
        return Verdict::Drop;
    }
    bump(Counter::Nat64Translated);
    redirect(entry.out_ifindex)
}

/// Replaces the packet's IP header with the other family's (`new_len`: the datagram's length in
/// the new family) and its Ethernet type with the new one. The header is built in the scratch
/// area: on the stack it took most of the frame.
#[inline(always)]
fn change_family(
    ctx: &TcContext,
    packet: &Tcp,
    entry: &FlowEntry,
    new_len: u16,
) -> Result<(), i64> {
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(-1)?;
    // SAFETY: this CPU's scratch area; the header is written in full below before it is stored.
    let header = unsafe { &mut (*scratch).nat64_header.v6 };
    // We forward, so we decrement the TTL (hop limit) like a router.
    let ttl = packet.ttl - 1;
    let addrs = (&entry.new_saddr, &entry.new_daddr);
    let ether_type = if packet.v6 {
        let (v4, _) = header.split_first_chunk_mut::<20>().ok_or(-1)?;
        nat64::write_ipv4_header(v4, addrs, new_len, packet.tos, ttl);
        ETH_P_IP
    } else {
        nat64::write_ipv6_header(header, addrs, packet.tcp_len(), packet.tos, ttl);
        ETH_P_IPV6
    };
    // SAFETY: plain helper call on this program's skb.
    let changed = unsafe { bpf_skb_change_proto(ctx.skb.skb, ether_type.to_be(), 0) };
    if changed != 0 {
        return Err(changed);
    }
    ctx.store(ETH_TYPE_OFF, &ether_type.to_be_bytes(), 0)?;
    if packet.v6 {
        let (v4, _) = header.split_first_chunk::<20>().ok_or(-1)?;
        ctx.store(IP_OFF, v4, 0)
    } else {
        ctx.store(IP_OFF, header, 0)
    }
}

/// Writes the translated addresses, ports and TTL (hop limit) straight into the packet and brings
/// the checksums along with one update each: the IPv4 header's computed here (a header checksum,
/// no offload involved; IPv6 has none), TCP's by the kernel's helper, which knows how the skb
/// keeps it (with CHECKSUM_PARTIAL the field holds only the pseudo-header's sum, and a port change
/// must not touch it) — hence two differences, the pseudo-header's and the ports'.
#[inline(always)]
fn rewrite_headers(ctx: &TcContext, packet: &Tcp, entry: &FlowEntry) -> Result<(), i64> {
    let Some((ip, tcp)) = packet.headers_mut(ctx) else {
        return Err(-1);
    };
    let pseudo_sum = if packet.v6 {
        rewrite_ipv6(ip as *mut Ipv6Hdr, packet, entry)
    } else {
        rewrite_ipv4(ip as *mut Ipv4Hdr, packet, entry)
    };
    let old_tcp = &packet.tcp;
    let mut ports_sum = Delta::NONE;
    // SAFETY: `tcp` points at the TCP header inside the packet's linear area (checked by
    // `headers_mut`); the header struct is plain bytes.
    unsafe {
        if old_tcp.source != entry.new_sport {
            ports_sum = ports_sum.replace16(old_tcp.source, entry.new_sport);
            (*tcp).source = entry.new_sport;
        }
        if old_tcp.dest != entry.new_dport {
            ports_sum = ports_sum.replace16(old_tcp.dest, entry.new_dport);
            (*tcp).dest = entry.new_dport;
        }
    }
    let check = packet.tcp_check_off();
    if !pseudo_sum.is_none() {
        let flags = u64::from(BPF_F_PSEUDO_HDR);
        ctx.l4_csum_replace(check, 0, u64::from(pseudo_sum.as_wsum()), flags)?;
    }
    if !ports_sum.is_none() {
        ctx.l4_csum_replace(check, 0, u64::from(ports_sum.as_wsum()), 0)?;
    }
    Ok(())
}

/// The IPv4 part of [`rewrite_headers`]: addresses and TTL, the header checksum; returns the
/// pseudo-header's difference.
#[inline(always)]
fn rewrite_ipv4(ip: *mut Ipv4Hdr, packet: &Tcp, entry: &FlowEntry) -> Delta {
    let (old_saddr, old_daddr) = (
        ip::v4_octets(&packet.key.saddr),
        ip::v4_octets(&packet.key.daddr),
    );
    let (new_saddr, new_daddr) = (
        ip::v4_octets(&entry.new_saddr),
        ip::v4_octets(&entry.new_daddr),
    );
    let mut ip_sum = Delta::NONE;
    let mut pseudo_sum = Delta::NONE;
    // SAFETY: `ip` points at the IPv4 header inside the packet's linear area (checked by
    // `headers_mut`); the header struct is plain bytes.
    unsafe {
        if old_saddr != new_saddr {
            ip_sum = ip_sum.replace32(old_saddr, new_saddr);
            pseudo_sum = pseudo_sum.replace32(old_saddr, new_saddr);
            (*ip).src_addr = new_saddr;
        }
        if old_daddr != new_daddr {
            ip_sum = ip_sum.replace32(old_daddr, new_daddr);
            pseudo_sum = pseudo_sum.replace32(old_daddr, new_daddr);
            (*ip).dst_addr = new_daddr;
        }
        // We forward, so we decrement the TTL like a router; TTL and protocol share a word.
        let ttl = packet.ttl - 1;
        ip_sum = ip_sum.replace16([packet.ttl, IPPROTO_TCP], [ttl, IPPROTO_TCP]);
        (*ip).ttl = ttl;
        (*ip).check = ip_sum.apply(packet.ip_check);
    }
    pseudo_sum
}

/// The IPv6 part of [`rewrite_headers`]: addresses and hop limit; returns the pseudo-header's
/// difference.
#[inline(always)]
fn rewrite_ipv6(ip: *mut Ipv6Hdr, packet: &Tcp, entry: &FlowEntry) -> Delta {
    let mut pseudo_sum = Delta::NONE;
    // SAFETY: `ip` points at the IPv6 header inside the packet's linear area (checked by
    // `headers_mut`); the header struct is plain bytes.
    unsafe {
        if packet.key.saddr != entry.new_saddr {
            pseudo_sum = pseudo_sum.replace128(packet.key.saddr.octets(), entry.new_saddr.octets());
            (*ip).src_addr = entry.new_saddr.octets();
        }
        if packet.key.daddr != entry.new_daddr {
            pseudo_sum = pseudo_sum.replace128(packet.key.daddr.octets(), entry.new_daddr.octets());
            (*ip).dst_addr = entry.new_daddr.octets();
        }
        (*ip).hop_limit = packet.ttl - 1;
    }
    pseudo_sum
}

/// An interface's MTU, and whether a datagram fits it.
struct Mtu {
    /// 0 if the interface is unknown (gone: the redirect then fails, counted).
    mtu: u32,
    fits: bool,
}

/// The MTU of the interface `ifindex` (0: the one the packet came in by) and whether a datagram of
/// `ip_len` bytes fits it. A GSO packet fits whatever its length: the stack cuts it into segments
/// of its MSS, which the clamping keeps within the MTU.
#[inline(always)]
fn mtu_of(ctx: &TcContext, ifindex: u32, ip_len: u16) -> Mtu {
    // In: the datagram's length (which makes the helper compare IP lengths, so that an interface
    // without an Ethernet header is measured right); out: the interface's MTU.
    let mut mtu = u32::from(ip_len);
    // SAFETY: plain helper call; `mtu` is a live u32 the helper reads and writes.
    let ret = unsafe { bpf_check_mtu(ctx.skb.skb.cast(), ifindex, &mut mtu, 0, 0) };
    if ret < 0 {
        return Mtu { mtu: 0, fits: true };
    }
    Mtu {
        mtu,
        fits: ret == i64::from(BPF_MTU_CHK_RET_SUCCESS),
    }
}

/// A packet too big for its flow's egress interface. With DF set (always, over IPv6) and a
/// destination the translation keeps (a masqueraded client's packets to its server, a published server's to its
/// client), the stack routes the untranslated packet the same way, finds it too big before any
/// translation or filter would forward it, drops it and sends the sender ICMP
/// fragmentation-needed (ICMPv6 packet-too-big) about the header it knows. Otherwise nobody can be told: the stack would
/// deliver a packet for the public address to the router itself, or fragment one and forward it
/// with its private source address. Dropped.
#[inline(always)]
fn too_big(packet: &Tcp, entry: &FlowEntry) -> Verdict {
    if !packet.fragmentable && packet.key.daddr == entry.new_daddr {
        bump(Counter::TooBigPassed);
        Verdict::Pass
    } else {
        bump(Counter::TooBigDropped);
        Verdict::Drop
    }
}

/// The TCP options walked looking for the MSS: Linux, Windows, macOS and the BSDs send it first.
const MSS_OPTION_STEPS: usize = 8;

/// Lowers the MSS option of a SYN or SYN-ACK to the smaller MTU of the packet's two interfaces
/// (ingress and `out_mtu`) less an IP header of `ip_header_len` and the TCP header, with the TCP
/// checksum updated
/// ([`ftp_common::mss`]). True if it did. A SYN without the option leaves the peer at the default
/// of 536, which fits any MTU.
// A subprogram of its own: only SYNs pay for the walk.
#[inline(never)]
fn clamp_mss(ctx: &TcContext, packet: &Tcp, out_mtu: u32, ip_header_len: u32) -> bool {
    let in_mtu = mtu_of(ctx, 0, packet.ip_len).mtu;
    let options_end = packet.tcp_off() + usize::from(packet.tcp.doff()) * 4;
    let mut off = packet.tcp_off() + TcpHdr::LEN;
    for _ in 0..MSS_OPTION_STEPS {
        if off + mss::MSS_OPTION_LEN > options_end {
            return false;
        }
        let Ok(bytes) = ctx.load::<[u8; 4]>(off) else {
            return false;
        };
        match mss::option_step(bytes) {
            OptionStep::End => return false,
            OptionStep::Skip(len) => off += len,
            OptionStep::Mss(announced) => {
                let Some(clamped) = mss::clamped(announced, in_mtu, out_mtu, ip_header_len) else {
                    return false;
                };
                let at = off - packet.tcp_off() + mss::MSS_VALUE_OFF;
                return store_mss(ctx, packet, at, announced, clamped);
            }
        }
    }
    false
}

/// Writes `new` over the MSS value `old` at `at` bytes into the TCP header, and updates the
/// checksum.
#[inline(always)]
fn store_mss(ctx: &TcContext, packet: &Tcp, at: usize, old: u16, new: u16) -> bool {
    let (old, new) = (old.to_be_bytes(), new.to_be_bytes());
    if ctx.store(packet.tcp_off() + at, &new, 0).is_err() {
        return false;
    }
    let (old, new) = mss::checksum_words(at, old, new);
    let (old, new) = (
        u64::from(u16::from_ne_bytes(old)),
        u64::from(u16::from_ne_bytes(new)),
    );
    ctx.l4_csum_replace(packet.tcp_check_off(), old, new, 2)
        .is_ok()
}
