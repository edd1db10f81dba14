//! Opening translated control connections. A masqueraded client's connection to an FTP port takes
//! a port from the window for its public side; an outside client's connection to a published port
//! is DNATed to the server behind it. Either way it gets two flow entries, one per direction, and
//! a session record.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST, bpf_fib_lookup},
    helpers::bpf_fib_lookup as fib_lookup,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use ftp_common::maps::{
    Counter, DatapathConfig, EventKind, FlowDirection, FlowEntry, FlowKey, FlowKind, SessionKind,
    flow_flags,
};

use crate::{
    headers::Tcp4,
    maps::{FLOWS, MASQUERADE, PUBLISH, SCRATCH, bump, now_ns},
    session::NewSession,
    window::{return_port, take_port},
};

/// Why an opening SYN was not taken over.
pub enum OpenError {
    /// Not a connection ftpnat translates: not ours.
    NotOurs,
    /// Ours, but the window has no free port: the SYN is refused with a reset.
    WindowExhausted,
    /// A SYN to a window port that no expectation admits from its source: dropped.
    Pinhole,
    /// Ours, but there is no room for it (a full table, a source over its share; counted under
    /// its cause): refused, never
    /// passed untranslated. A masqueraded client's SYN gets a reset; one from the WAN is dropped,
    /// as netfilter drops what its full conntrack table cannot hold (no answer to spoofed sources).
    NoRoom,
}

/// Why [`install`] installed nothing.
pub enum InstallError {
    /// The connection's entry exists already: a retransmitted SYN raced this one on another CPU
    /// and installed it. The SYN goes on through that entry.
    Raced,
    /// The table is full (or the other direction's key is taken by another connection): counted
    /// as `flow_table_full`; the SYN is refused.
    Full,
}

/// What the opening of a connection does when [`install`] fails: a raced SYN goes on through the
/// entry the other CPU made; a full table refuses it, counted.
#[inline(always)]
pub fn install_failed(error: InstallError) -> Result<(), OpenError> {
    match error {
        InstallError::Raced => Ok(()),
        InstallError::Full => {
            bump(Counter::FlowTableFull);
            Err(OpenError::NoRoom)
        }
    }
}

/// Takes over an opening SYN of an FTP control connection, from a masqueraded client or to a
/// published server, and installs both directions.
// A subprogram of its own: its stack frame does not add to the caller's 512 bytes.
#[inline(never)]
pub fn open_control(
    ctx: &TcContext,
    packet: &Tcp4,
    config: &DatapathConfig,
) -> Result<(), OpenError> {
    // SAFETY: reading the context's ifindex field, as TC programs may.
    let in_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if in_ifindex == config.wan_ifindex {
        open_published(ctx, packet, config, in_ifindex)
    } else {
        open_masqueraded(ctx, packet, config, in_ifindex)
    }
}

/// A masqueraded client's connection: SNAT behind the public address and a window port — only
/// if the kernel routes it out of the WAN interface. FTP to another LAN, a VPN or the router
/// itself is none of ftpnat's business: it passes to the stack as it came.
#[inline(always)]
fn open_masqueraded(
    ctx: &TcContext,
    packet: &Tcp4,
    config: &DatapathConfig,
    in_ifindex: u32,
) -> Result<(), OpenError> {
    if !config.is_ftp_port(packet.dport()) {
        return Err(OpenError::NotOurs);
    }
    let prefix = Key::new(32, packet.ip.src_addr);
    if MASQUERADE.get(&prefix).is_none() {
        return Err(OpenError::NotOurs);
    }
    if !routed_out_of(ctx, packet, in_ifindex, config.wan_ifindex) {
        bump(Counter::NotRoutedToWan);
        return Err(OpenError::NotOurs);
    }
    admit_source(packet, config)?;
    let Some(public_port) = take_port() else {
        bump(Counter::WindowExhausted);
        return Err(OpenError::WindowExhausted);
    };
    let key = packet.key();
    let original = FlowEntry {
        packets: 0,
        bytes: 0,
        last_seen_ns: now_ns(),
        session: key,
        new_saddr: config.public_ip,
        new_daddr: key.daddr,
        out_ifindex: config.wan_ifindex,
        new_sport: public_port.to_be_bytes(),
        new_dport: key.dport,
        public_port,
        kind: FlowKind::Control as u8,
        direction: FlowDirection::Original as u8,
        flags: flow_flags::OWNS_PORT,
        _pad: [0; 3],
        in_ifindex,
    };
    if let Err(error) = install(key, &original) {
        return_port(public_port);
        return install_failed(error);
    }
    let new = NewSession {
        kind: SessionKind::Masquerade,
        lan_ifindex: in_ifindex,
        server_addr: key.daddr,
        server_port: key.dport,
        offered_scale: crate::tcp_window::offered_scale(ctx, packet),
    };
    if !crate::session::open_session(packet, &new) {
        // Without its session the connection would be NATed with no ALG: refused instead.
        uninstall(key, &original);
        return Err(OpenError::NoRoom);
    }
    crate::sources::opened(key.saddr);
    bump(Counter::ControlSessionsOpened);
    Ok(())
}

const AF_INET: u8 = 2;
const IPPROTO_TCP: u8 = 6;

/// Whether the kernel's FIB sends `packet`, arriving on `in_ifindex`, out of `out_ifindex`. The
/// lookup is the one forwarding would make: with the policy rules (not `BPF_FIB_LOOKUP_DIRECT`,
/// so a rule sending a source prefix into a VPN's table counts), from the ingress interface, by
/// source, destination, TOS and ports. Rules that match a firewall mark are not seen: the lookup
/// runs without the packet's mark. A route whose neighbour is not resolved yet still counts
/// (`bpf_redirect_neigh` resolves it); a local destination (the router itself), an unreachable,
/// blackhole or prohibit route, or a failed lookup do not.
// A subprogram of its own, its parameters in the scratch area: off the ALG's stack.
#[inline(never)]
fn routed_out_of(ctx: &TcContext, packet: &Tcp4, in_ifindex: u32, out_ifindex: u32) -> bool {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch area; the parameters are written in full before the lookup.
    let params = unsafe { &mut (*scratch).route };
    // SAFETY: all-zero is a valid `bpf_fib_lookup` (plain integers and unions of them), and what
    // the kernel expects of the fields this lookup does not use.
    *params = unsafe { core::mem::zeroed::<bpf_fib_lookup>() };
    params.family = AF_INET;
    params.l4_protocol = IPPROTO_TCP;
    params.sport = u16::from_ne_bytes(packet.tcp.source);
    params.dport = u16::from_ne_bytes(packet.tcp.dest);
    params.__bindgen_anon_1.tot_len = packet.ip_len();
    params.ifindex = in_ifindex;
    params.__bindgen_anon_2.tos = packet.ip.tos;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(packet.ip.src_addr);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(packet.ip.dst_addr);
    // SAFETY: the helper reads and writes `params`, a live map value of the size passed.
    let ret = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    (ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) || ret == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH))
        && params.ifindex == out_ifindex
}

/// An outside client's connection to a published port: DNAT to the server; the client's address
/// stays as it is, so the server sees who it talks to.
#[inline(always)]
fn open_published(
    ctx: &TcContext,
    packet: &Tcp4,
    config: &DatapathConfig,
    in_ifindex: u32,
) -> Result<(), OpenError> {
    if packet.ip.dst_addr != config.public_ip {
        return Err(OpenError::NotOurs);
    }
    let public_port = packet.dport();
    // SAFETY: the value is copied out at once.
    let Some(target) = (unsafe { PUBLISH.get(public_port) }).copied() else {
        return Err(OpenError::NotOurs);
    };
    admit_source(packet, config)?;
    let key = packet.key();
    let original = FlowEntry {
        packets: 0,
        bytes: 0,
        last_seen_ns: now_ns(),
        session: key,
        new_saddr: key.saddr,
        new_daddr: target.server_addr,
        out_ifindex: target.lan_ifindex,
        new_sport: key.sport,
        new_dport: target.server_port,
        public_port,
        kind: FlowKind::Control as u8,
        direction: FlowDirection::Original as u8,
        // The published port is configuration, not a window port: nothing to give back.
        flags: 0,
        _pad: [0; 3],
        in_ifindex,
    };
    if let Err(error) = install(key, &original) {
        return install_failed(error);
    }
    let new = NewSession {
        kind: SessionKind::Publish,
        lan_ifindex: target.lan_ifindex,
        server_addr: target.server_addr,
        server_port: target.server_port,
        offered_scale: crate::tcp_window::offered_scale(ctx, packet),
    };
    if !crate::session::open_session(packet, &new) {
        uninstall(key, &original);
        return Err(OpenError::NoRoom);
    }
    crate::sources::opened(key.saddr);
    bump(Counter::ControlSessionsOpened);
    Ok(())
}

/// Refuses (counted) a new control connection from a source that holds its share of the sessions
/// already, before it takes anything.
#[inline(always)]
fn admit_source(packet: &Tcp4, config: &DatapathConfig) -> Result<(), OpenError> {
    if crate::sources::admits(packet.ip.src_addr, &config.source_limits()) {
        Ok(())
    } else {
        bump(Counter::SourceLimit);
        Err(OpenError::NoRoom)
    }
}

/// Inserts a connection's two entries: `original` under `key`, and the entry of the other
/// direction (leaving by the interface `original`'s packets arrive on) under the key its packets
/// arrive with. The reply
/// side first: once the original entry exists, packets flow, and their answers must find their
/// way back. On failure nothing is left behind, and the error says whether the connection exists
/// already (a retransmitted SYN raced us on another CPU) or there was no room.
#[inline(always)]
pub fn install(key: FlowKey, original: &FlowEntry) -> Result<(), InstallError> {
    let reply_key = original.reply_key();
    let reply = original.reply_of(&key, original.in_ifindex);
    let installed = match FLOWS.insert(reply_key, reply, u64::from(BPF_NOEXIST)) {
        Ok(()) => FLOWS
            .insert(key, original, u64::from(BPF_NOEXIST))
            .map_err(|_| {
                let _ = FLOWS.remove(reply_key);
            }),
        Err(_) => Err(()),
    };
    match installed {
        Ok(()) => Ok(()),
        Err(()) if FLOWS.get_ptr(key).is_some() => Err(InstallError::Raced),
        Err(()) => Err(InstallError::Full),
    }
}

/// Removes the connection that holds `key` if it is over (a reset, or a FIN each way) and only
/// lingers for its last packets, so that a new connection needing the key takes its place, as
/// conntrack evicts a closing connection whose tuple a new one needs. Its window port goes back
/// to the window and its end is reported, as the agent's sweep would.
// A subprogram of its own: only an opening SYN whose key is taken comes here.
#[inline(never)]
pub fn release_closed(key: &FlowKey) {
    let Some(found) = FLOWS.get_ptr(key) else {
        return;
    };
    // SAFETY: live map values, read field by field (not copied: the stack is the open stage's);
    // a removed one stays readable for this run.
    let found = unsafe { &*found };
    let partner_key = found.reply_key();
    let Some(partner) = FLOWS.get_ptr(partner_key) else {
        // Half made (being installed) or half removed (being swept): not ours to judge.
        return;
    };
    // SAFETY: as above.
    let partner = unsafe { &*partner };
    if !flow_flags::closed(found.flags, partner.flags) {
        return;
    }
    // By reference: the open stage's call chain has little stack to spare.
    let (original_key, original, reply_key) = if found.direction == FlowDirection::Original as u8 {
        (key, found, &partner_key)
    } else {
        (&partner_key, partner, key)
    };
    let (flags, public_port, kind) = (original.flags, original.public_port, original.kind);
    let bytes = found.bytes + partner.bytes;
    // Copied before the entry goes: its memory may be reused by the next insert.
    let (session, endpoint) = (
        original.session,
        (original_key.daddr, u16::from_be_bytes(original_key.dport)),
    );
    // Whoever removes the original entry owns the connection's port (the agent's sweep may be
    // removing it at the same time).
    if FLOWS.remove(original_key).is_err() {
        return;
    }
    let _ = FLOWS.remove(reply_key);
    if flags & flow_flags::OWNS_PORT != 0 {
        return_port(public_port);
    }
    if kind == FlowKind::Data as u8 {
        crate::events::emit_counted(&session, EventKind::DataFlowClosed, endpoint, bytes);
    }
    bump(Counter::ClosedReplaced);
}

/// Tells the agent that `packet`, which just marked its flow entry with
/// `new_flags` (a FIN or RST not seen that way before), ended its connection: the agent releases
/// the connection once it has lingered for its last packets, instead of at a later sweep, so
/// that its window port returns promptly.
// A subprogram of its own: only a connection's FIN and RST packets come here.
#[inline(never)]
pub fn report_if_closed(packet: &Tcp4, entry: *const FlowEntry, new_flags: u8) {
    if new_flags & (flow_flags::FIN | flow_flags::RST) == 0 {
        return;
    }
    // SAFETY: a live map value; its flags were just written by this program.
    let entry = unsafe { &*entry };
    let Some(partner) = FLOWS.get_ptr(entry.reply_key()) else {
        return;
    };
    // SAFETY: as above; flags only move forward.
    if flow_flags::closed(entry.flags, unsafe { (*partner).flags }) {
        crate::events::emit(&packet.key(), EventKind::ConnectionClosed, 0, [0; 4], 0);
    }
}

/// Removes a connection [`install`] made, when what should have come with it could not (its
/// session record): whoever removes the original entry gives its window port back, if it owns one.
#[inline(always)]
pub fn uninstall(key: FlowKey, original: &FlowEntry) {
    if FLOWS.remove(key).is_ok() {
        let _ = FLOWS.remove(original.reply_key());
        if original.flags & flow_flags::OWNS_PORT != 0 {
            return_port(original.public_port);
        }
    }
}

/// A new connection on the tuple of a closed control connection whose entries still linger (its
/// client reused the port at once, as after a reset): it takes the closed one's place — its flow
/// entries and window port, with a fresh session record — as conntrack replaces a closed entry
/// on a new SYN. Without this the SYN was taken for a segment of the old connection, and the new
/// connection lost its entries when the sweep removed the old one's. False (nothing changed) if
/// `entry` is not the original direction of a closed control connection, or the session record
/// could not be made.
// A subprogram of its own: only opening SYNs that meet an entry come here.
#[inline(never)]
pub fn reopen_closed_control(ctx: &TcContext, packet: &Tcp4, entry: *mut FlowEntry) -> bool {
    // SAFETY: a live map value; the agent only removes entries, and a removed one stays readable
    // for this program run.
    let original = unsafe { &mut *entry };
    if original.kind != FlowKind::Control as u8
        || original.direction != FlowDirection::Original as u8
    {
        return false;
    }
    let Some(reply) = FLOWS.get_ptr_mut(original.reply_key()) else {
        return false;
    };
    // SAFETY: as above.
    let reply = unsafe { &mut *reply };
    if !flow_flags::closed(original.flags, reply.flags) {
        return false;
    }
    let (kind, lan_ifindex) = if original.flags & flow_flags::OWNS_PORT != 0 {
        (SessionKind::Masquerade, original.in_ifindex)
    } else {
        (SessionKind::Publish, original.out_ifindex)
    };
    let new = NewSession {
        kind,
        lan_ifindex,
        server_addr: original.new_daddr,
        server_port: original.new_dport,
        offered_scale: crate::tcp_window::offered_scale(ctx, packet),
    };
    if !crate::session::open_session(packet, &new) {
        return false;
    }
    original.flags &= flow_flags::OWNS_PORT;
    reply.flags = 0;
    crate::sources::opened(packet.ip.src_addr);
    bump(Counter::ControlSessionsOpened);
    true
}
