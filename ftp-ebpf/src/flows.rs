//! Opening followed control connections. A masqueraded client's connection to an FTP port takes
//! a port from the window for its public side; an IPv6 client's that no masquerade covers is
//! followed as it is (the router is its firewall, not its NAT); an outside client's connection to
//! a published port is DNATed to the server behind it. Each gets two flow entries, one per
//! direction, and a session record.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, BPF_NOEXIST,
        bpf_fib_lookup,
    },
    helpers::bpf_fib_lookup as fib_lookup,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use ftp_common::maps::{
    Counter, DatapathConfig, EventKind, FlowDirection, FlowEntry, FlowKey, FlowKind, IpBytes,
    SessionKind, flow_flags, ip,
};

use crate::{
    headers::{IPPROTO_TCP, Tcp},
    maps::{FLOWS, MASQUERADE, PUBLISH, SCRATCH, bump, now_ns},
    scratch::Opening,
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
    packet: &Tcp,
    config: &DatapathConfig,
) -> Result<(), OpenError> {
    // SAFETY: reading the context's ifindex field, as TC programs may.
    let in_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if in_ifindex == config.wan_ifindex {
        open_published(ctx, packet, config, in_ifindex)
    } else if packet.v6 && config.is_nat64_destination(&packet.key.daddr) {
        open_nat64(ctx, packet, config, in_ifindex)
    } else {
        open_masqueraded(ctx, packet, config, in_ifindex)
    }
}

/// An IPv6 client's connection to an IPv4 server through the NAT64 prefix: translated to IPv4,
/// from the pool address and a window port, to the server the destination embeds. Only if the
/// kernel routes that server out of the WAN interface (as for masquerading), and, under the
/// well-known prefix, only to a global address.
// A subprogram of its own: each way of opening has a frame of its own.
#[inline(never)]
fn open_nat64(
    ctx: &TcContext,
    packet: &Tcp,
    config: &DatapathConfig,
    in_ifindex: u32,
) -> Result<(), OpenError> {
    if !config.is_ftp_port(packet.dport()) {
        return Err(OpenError::NotOurs);
    }
    let Some(opening) = opening() else {
        return Err(OpenError::NotOurs);
    };
    opening.translated = ip::embedded_v4(&packet.key.daddr);
    if !config.nat64_reaches(&opening.translated) {
        bump(Counter::Nat64NotGlobal);
        return Err(OpenError::NotOurs);
    }
    if !routed_out_of_v4(ctx, &opening.translated, config) {
        bump(Counter::NotRoutedToWan);
        return Err(OpenError::NotOurs);
    }
    admit_source(packet, config)?;
    let key = &packet.key;
    let Some(public_port) = take_port() else {
        bump(Counter::WindowExhausted);
        return Err(OpenError::WindowExhausted);
    };
    let opened = Opened {
        session: key,
        kind: FlowKind::Control,
        interfaces: [in_ifindex, config.wan_ifindex],
        public_port,
        flags: flow_flags::OWNS_PORT,
    };
    write_original(
        &mut opening.original,
        &opened,
        (&config.nat64_pool, &opening.translated),
        [public_port.to_be_bytes(), key.dport],
    );
    if let Err(error) = install(key, opening) {
        return_port(public_port);
        return install_failed(error);
    }
    let new = NewSession {
        kind: SessionKind::Nat64,
        lan_ifindex: in_ifindex,
        server_addr: &opening.translated,
        server_port: key.dport,
        offered_scale: crate::tcp_window::offered_scale(ctx, packet),
    };
    if !crate::session::open_session(packet, &new) {
        uninstall(key, &opening.original);
        return Err(OpenError::NoRoom);
    }
    crate::sources::opened(key);
    bump(Counter::ControlSessionsOpened);
    Ok(())
}

/// Whether the kernel routes IPv4 packets from the NAT64 pool address to `server` out of the WAN
/// interface: the lookup an output from the router would make, restricted to the WAN (a route
/// through another interface is then no route). A server on another network (a LAN's) is left to
/// whatever else translates there.
// A subprogram of its own, its parameters in the scratch area: off the open stage's stack.
#[inline(never)]
fn routed_out_of_v4(ctx: &TcContext, server: &IpBytes, config: &DatapathConfig) -> bool {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch area; the parameters are written in full before the lookup.
    let params = unsafe { &mut (*scratch).route };
    // SAFETY: as in routed_out_of.
    *params = unsafe { core::mem::zeroed::<bpf_fib_lookup>() };
    params.family = AF_INET;
    params.l4_protocol = IPPROTO_TCP;
    params.ifindex = config.wan_ifindex;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip::v4_octets(&config.nat64_pool));
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip::v4_octets(server));
    // SAFETY: the helper reads and writes `params`, a live map value of the size passed.
    let ret = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    (ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) || ret == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH))
        && params.ifindex == config.wan_ifindex
}

/// A LAN client's connection: SNAT behind the public address and a window port if a masqueraded
/// prefix covers it; an IPv6 client's otherwise followed untranslated (firewall mode). Only if the
/// kernel routes it out of the WAN interface: FTP to another LAN, a VPN or the router itself is
/// none of ftpnat's business: it passes to the stack as it came.
// A subprogram of its own: each way of opening has a frame of its own.
#[inline(never)]
fn open_masqueraded(
    ctx: &TcContext,
    packet: &Tcp,
    config: &DatapathConfig,
    in_ifindex: u32,
) -> Result<(), OpenError> {
    if !config.is_ftp_port(packet.dport()) {
        return Err(OpenError::NotOurs);
    }
    let Some(opening) = opening() else {
        return Err(OpenError::NotOurs);
    };
    // Made in the scratch area, as the entries: off this frame.
    opening.masquerade_key = Key::new(128, packet.key.saddr);
    let kind = if MASQUERADE.get(&opening.masquerade_key).is_some() {
        SessionKind::Masquerade
    } else if packet.v6 {
        SessionKind::Firewall
    } else {
        return Err(OpenError::NotOurs);
    };
    if !routed_out_of(ctx, packet, in_ifindex, config.wan_ifindex) {
        bump(Counter::NotRoutedToWan);
        return Err(OpenError::NotOurs);
    }
    admit_source(packet, config)?;
    let key = &packet.key;
    // By reference: copied, an address is sixteen bytes in as many registers.
    let public_ip = config.public_ip_of(&key.saddr);
    let (new_saddr, new_sport, public_port, flags) = if kind == SessionKind::Masquerade {
        if *public_ip == ip::UNSPECIFIED {
            // An IPv6 prefix masqueraded without a public IPv6 address: never configured so.
            return Err(OpenError::NotOurs);
        }
        let Some(public_port) = take_port() else {
            bump(Counter::WindowExhausted);
            return Err(OpenError::WindowExhausted);
        };
        (
            public_ip,
            public_port.to_be_bytes(),
            public_port,
            flow_flags::OWNS_PORT,
        )
    } else {
        (&key.saddr, key.sport, 0, 0)
    };
    let opened = Opened {
        session: key,
        kind: FlowKind::Control,
        interfaces: [in_ifindex, config.wan_ifindex],
        public_port,
        flags,
    };
    write_original(
        &mut opening.original,
        &opened,
        (new_saddr, &key.daddr),
        [new_sport, key.dport],
    );
    if let Err(error) = install(key, opening) {
        if public_port != 0 {
            return_port(public_port);
        }
        return install_failed(error);
    }
    let new = NewSession {
        kind,
        lan_ifindex: in_ifindex,
        server_addr: &key.daddr,
        server_port: key.dport,
        offered_scale: crate::tcp_window::offered_scale(ctx, packet),
    };
    if !crate::session::open_session(packet, &new) {
        // Without its session the connection would be NATed with no ALG: refused instead.
        uninstall(key, &opening.original);
        return Err(OpenError::NoRoom);
    }
    crate::sources::opened(key);
    bump(Counter::ControlSessionsOpened);
    Ok(())
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Whether the kernel's FIB sends `packet`, arriving on `in_ifindex`, out of `out_ifindex`. The
/// lookup is the one forwarding would make: with the policy rules (not `BPF_FIB_LOOKUP_DIRECT`,
/// so a rule sending a source prefix into a VPN's table counts), from the ingress interface, by
/// source, destination, TOS and ports. Rules that match a firewall mark are not seen: the lookup
/// runs without the packet's mark. A route whose neighbour is not resolved yet still counts
/// (`bpf_redirect_neigh` resolves it); a local destination (the router itself), an unreachable,
/// blackhole or prohibit route, or a failed lookup do not.
// A subprogram of its own, its parameters in the scratch area: off the ALG's stack.
#[inline(never)]
fn routed_out_of(ctx: &TcContext, packet: &Tcp, in_ifindex: u32, out_ifindex: u32) -> bool {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch area; the parameters are written in full before the lookup.
    let params = unsafe { &mut (*scratch).route };
    // SAFETY: all-zero is a valid `bpf_fib_lookup` (plain integers and unions of them), and what
    // the kernel expects of the fields this lookup does not use.
    *params = unsafe { core::mem::zeroed::<bpf_fib_lookup>() };
    params.l4_protocol = IPPROTO_TCP;
    params.sport = u16::from_ne_bytes(packet.tcp.source);
    params.dport = u16::from_ne_bytes(packet.tcp.dest);
    params.__bindgen_anon_1.tot_len = packet.ip_len;
    params.ifindex = in_ifindex;
    if packet.v6 {
        params.family = AF_INET6;
        // The lookup takes the addresses as words in network byte order, as they are held.
        params.__bindgen_anon_3.ipv6_src = packet.key.saddr.0;
        params.__bindgen_anon_4.ipv6_dst = packet.key.daddr.0;
    } else {
        params.family = AF_INET;
        params.__bindgen_anon_2.tos = packet.tos;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip::v4_octets(&packet.key.saddr));
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip::v4_octets(&packet.key.daddr));
    }
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
// A subprogram of its own: each way of opening has a frame of its own.
#[inline(never)]
fn open_published(
    ctx: &TcContext,
    packet: &Tcp,
    config: &DatapathConfig,
    in_ifindex: u32,
) -> Result<(), OpenError> {
    if !config.is_public(&packet.key.daddr) {
        return Err(OpenError::NotOurs);
    }
    let public_port = packet.dport();
    // SAFETY: the value is copied out at once.
    let Some(target) = (unsafe { PUBLISH.get(public_port) }).copied() else {
        return Err(OpenError::NotOurs);
    };
    // A server of the other family is not reached through this address (ftpnat does not
    // translate between the families).
    if ip::is_v4(&target.server_addr) == packet.v6 {
        return Err(OpenError::NotOurs);
    }
    admit_source(packet, config)?;
    let key = &packet.key;
    let Some(opening) = opening() else {
        return Err(OpenError::NotOurs);
    };
    let opened = Opened {
        session: key,
        kind: FlowKind::Control,
        interfaces: [in_ifindex, target.lan_ifindex],
        public_port,
        // The published port is configuration, not a window port: nothing to give back.
        flags: 0,
    };
    let new_addrs = (&key.saddr, &target.server_addr);
    write_original(
        &mut opening.original,
        &opened,
        new_addrs,
        [key.sport, target.server_port],
    );
    if let Err(error) = install(key, opening) {
        return install_failed(error);
    }
    let new = NewSession {
        kind: SessionKind::Publish,
        lan_ifindex: target.lan_ifindex,
        server_addr: &target.server_addr,
        server_port: target.server_port,
        offered_scale: crate::tcp_window::offered_scale(ctx, packet),
    };
    if !crate::session::open_session(packet, &new) {
        uninstall(key, &opening.original);
        return Err(OpenError::NoRoom);
    }
    crate::sources::opened(key);
    bump(Counter::ControlSessionsOpened);
    Ok(())
}

/// Refuses (counted) a new control connection from a source that holds its share of the sessions
/// already, before it takes anything.
#[inline(always)]
fn admit_source(packet: &Tcp, config: &DatapathConfig) -> Result<(), OpenError> {
    if crate::sources::admits(&packet.key, &config.source_limits()) {
        Ok(())
    } else {
        bump(Counter::SourceLimit);
        Err(OpenError::NoRoom)
    }
}

/// What the original direction's entry of a new connection says beyond its translated tuple.
pub struct Opened<'a> {
    /// The session's control connection (original direction key).
    pub session: &'a FlowKey,
    pub kind: FlowKind,
    /// Where its packets arrive and where they leave.
    pub interfaces: [u32; 2],
    pub public_port: u16,
    /// [`flow_flags`] it starts with.
    pub flags: u8,
}

/// Writes the original direction's entry of a new connection into `out`, which translates its
/// packets to `new_addrs` and `new_ports` (source's, destination's). Field by field: a struct
/// built whole is built on the stack first, and the open stage has no stack to spare.
#[inline(always)]
pub fn write_original(
    out: &mut FlowEntry,
    opened: &Opened,
    (new_saddr, new_daddr): (&IpBytes, &IpBytes),
    [new_sport, new_dport]: [[u8; 2]; 2],
) {
    out.packets = 0;
    out.bytes = 0;
    out.last_seen_ns = now_ns();
    out.session = *opened.session;
    out.new_saddr = *new_saddr;
    out.new_daddr = *new_daddr;
    let [in_ifindex, out_ifindex] = opened.interfaces;
    out.out_ifindex = out_ifindex;
    out.new_sport = new_sport;
    out.new_dport = new_dport;
    out.public_port = opened.public_port;
    out.kind = opened.kind as u8;
    out.direction = FlowDirection::Original as u8;
    out.flags = opened.flags;
    out._pad = [0; 3];
    out.in_ifindex = in_ifindex;
}

/// This CPU's area for the connection an opening SYN installs (see [`Opening`]).
#[inline(always)]
pub fn opening() -> Option<&'static mut Opening> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch area; whoever opens a connection writes the entries in full
    // before reading them.
    Some(unsafe { &mut (*scratch).opening })
}

/// Inserts a connection's two entries: `opening.original` under `key`, and the entry of the other
/// direction (leaving by the interface the original's packets arrive on, made here in
/// `opening.reply`) under the key its packets arrive with. The reply
/// side first: once the original entry exists, packets flow, and their answers must find their
/// way back. On failure nothing is left behind, and the error says whether the connection exists
/// already (a retransmitted SYN raced us on another CPU) or there was no room.
// A subprogram of its own: the reply entry's key and its making stay off its callers' stacks.
#[inline(never)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "inserted by reference: by value, the entries would be copied onto the stack"
)]
pub fn install(key: &FlowKey, opening: &mut Opening) -> Result<(), InstallError> {
    let original = &opening.original;
    let reply_key = original.reply_key();
    opening.reply = original.reply_of(key, original.in_ifindex);
    let installed = match FLOWS.insert(reply_key, &opening.reply, u64::from(BPF_NOEXIST)) {
        Ok(()) => FLOWS
            .insert(key, &opening.original, u64::from(BPF_NOEXIST))
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
        let (addr, port) = endpoint;
        crate::events::emit_counted(&session, EventKind::DataFlowClosed, (&addr, port), bytes);
    }
    bump(Counter::ClosedReplaced);
}

/// Tells the agent that `packet`, which just marked its flow entry with
/// `new_flags` (a FIN or RST not seen that way before), ended its connection: the agent releases
/// the connection once it has lingered for its last packets, instead of at a later sweep, so
/// that its window port returns promptly.
// A subprogram of its own: only a connection's FIN and RST packets come here.
#[inline(never)]
pub fn report_if_closed(packet: &Tcp, entry: *const FlowEntry, new_flags: u8) {
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
        crate::events::emit(
            &packet.key,
            EventKind::ConnectionClosed,
            0,
            &ip::UNSPECIFIED,
            0,
        );
    }
}

/// Removes a connection [`install`] made, when what should have come with it could not (its
/// session record): whoever removes the original entry gives its window port back, if it owns one.
#[inline(always)]
pub fn uninstall(key: &FlowKey, original: &FlowEntry) {
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
pub fn reopen_closed_control(ctx: &TcContext, packet: &Tcp, entry: *mut FlowEntry) -> bool {
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
    // A masqueraded client's connection owns its port (a NAT64 client's too, translated to the
    // other family); a published server's is DNATed; a followed IPv6 client's is neither.
    let (kind, lan_ifindex) = if original.flags & flow_flags::OWNS_PORT != 0 {
        let kind = if packet.v6 && ip::is_v4(&original.new_saddr) {
            SessionKind::Nat64
        } else {
            SessionKind::Masquerade
        };
        (kind, original.in_ifindex)
    } else if original.new_daddr == packet.key.daddr {
        (SessionKind::Firewall, original.in_ifindex)
    } else {
        (SessionKind::Publish, original.out_ifindex)
    };
    let new = NewSession {
        kind,
        lan_ifindex,
        server_addr: &original.new_daddr,
        server_port: original.new_dport,
        offered_scale: crate::tcp_window::offered_scale(ctx, packet),
    };
    if !crate::session::open_session(packet, &new) {
        return false;
    }
    original.flags &= flow_flags::OWNS_PORT;
    reply.flags = 0;
    crate::sources::opened(&packet.key);
    bump(Counter::ControlSessionsOpened);
    true
}
