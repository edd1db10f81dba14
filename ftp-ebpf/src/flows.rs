//! Opening translated control connections. A masqueraded client's connection to an FTP port takes
//! a port from the window for its public side; an outside client's connection to a published port
//! is DNATed to the server behind it. Either way it gets two flow entries, one per direction, and
//! a session record.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::lpm_trie::Key, programs::TcContext};
use ftp_common::maps::{
    Counter, DatapathConfig, FlowDirection, FlowEntry, FlowKey, FlowKind, SessionKind, flow_flags,
};

use crate::{
    headers::Tcp4,
    maps::{FLOWS, MASQUERADE, PUBLISH, bump, now_ns},
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

/// A masqueraded client's connection: SNAT behind the public address and a window port.
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
    if !install(key, &original) {
        return_port(public_port);
        return Err(OpenError::NotOurs);
    }
    crate::session::open_session(
        packet,
        &NewSession {
            kind: SessionKind::Masquerade,
            lan_ifindex: in_ifindex,
            server_addr: key.daddr,
            server_port: key.dport,
            offered_scale: crate::tcp_window::offered_scale(ctx, packet),
        },
    );
    bump(Counter::ControlSessionsOpened);
    Ok(())
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
    if !install(key, &original) {
        return Err(OpenError::NotOurs);
    }
    crate::session::open_session(
        packet,
        &NewSession {
            kind: SessionKind::Publish,
            lan_ifindex: target.lan_ifindex,
            server_addr: target.server_addr,
            server_port: target.server_port,
            offered_scale: crate::tcp_window::offered_scale(ctx, packet),
        },
    );
    bump(Counter::ControlSessionsOpened);
    Ok(())
}

/// Inserts a connection's two entries: `original` under `key`, and the entry of the other
/// direction (leaving by the interface `original`'s packets arrive on) under the key its packets
/// arrive with. The reply
/// side first: once the original entry exists, packets flow, and their answers must find their
/// way back. False (and nothing left behind) if either exists already — a retransmitted SYN raced
/// us on another CPU — or the table is full.
#[inline(always)]
pub fn install(key: FlowKey, original: &FlowEntry) -> bool {
    let reply_key = original.reply_key();
    let reply = original.reply_of(&key, original.in_ifindex);
    if FLOWS
        .insert(reply_key, reply, u64::from(BPF_NOEXIST))
        .is_err()
    {
        return false;
    }
    if FLOWS.insert(key, original, u64::from(BPF_NOEXIST)).is_err() {
        let _ = FLOWS.remove(reply_key);
        return false;
    }
    true
}
