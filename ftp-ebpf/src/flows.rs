//! Opening translated connections: a control connection from a masqueraded client takes a port from
//! the window and gets two flow entries, one per direction.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::lpm_trie::Key, programs::TcContext};
use ftp_common::maps::{
    Counter, DatapathConfig, FlowDirection, FlowEntry, FlowKey, FlowKind, flow_flags,
};

use crate::{
    headers::Tcp4,
    maps::{FLOWS, FREE_PORTS, MASQUERADE, bump, now_ns},
};

/// Why an opening SYN was not taken over.
pub enum OpenError {
    /// Not an FTP control connection from a masqueraded client: not ours.
    NotOurs,
    /// Ours, but the window has no free port: the SYN is dropped (the client retries).
    WindowExhausted,
}

/// Takes over a client's opening SYN to an FTP port: allocates the public port and installs both
/// directions. Returns the original-direction entry to translate this SYN with.
// A subprogram of its own: its stack frame does not add to the caller's 512 bytes.
#[inline(never)]
pub fn open_control(
    ctx: &TcContext,
    packet: &Tcp4,
    config: &DatapathConfig,
) -> Result<(), OpenError> {
    // SAFETY: reading the context's ifindex field, as TC programs may.
    let in_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if in_ifindex == config.wan_ifindex || !config.is_ftp_port(packet.dport()) {
        return Err(OpenError::NotOurs);
    }
    let prefix = Key::new(32, packet.ip.src_addr);
    if MASQUERADE.get(&prefix).is_none() {
        return Err(OpenError::NotOurs);
    }
    let Ok(Some(public_port)) = FREE_PORTS.pop() else {
        bump(Counter::WindowExhausted);
        return Err(OpenError::WindowExhausted);
    };
    let key = packet.key();
    let public_port_be = public_port.to_be_bytes();
    let now = now_ns();
    let original = FlowEntry {
        packets: 0,
        bytes: 0,
        last_seen_ns: now,
        session: key,
        new_saddr: config.public_ip,
        new_daddr: key.daddr,
        out_ifindex: config.wan_ifindex,
        new_sport: public_port_be,
        new_dport: key.dport,
        public_port,
        kind: FlowKind::Control as u8,
        direction: FlowDirection::Original as u8,
        flags: flow_flags::OWNS_PORT,
        _pad: [0; 7],
    };
    let reply_key = FlowKey {
        saddr: key.daddr,
        daddr: config.public_ip,
        sport: key.dport,
        dport: public_port_be,
    };
    let reply = FlowEntry {
        new_saddr: key.daddr,
        new_daddr: key.saddr,
        out_ifindex: in_ifindex,
        new_sport: key.dport,
        new_dport: key.sport,
        direction: FlowDirection::Reply as u8,
        flags: 0,
        ..original
    };
    // The reply side first: once the original entry exists, packets flow, and their answers must
    // find their way back.
    if FLOWS
        .insert(reply_key, reply, u64::from(BPF_NOEXIST))
        .is_err()
        || FLOWS.insert(key, original, u64::from(BPF_NOEXIST)).is_err()
    {
        // A retransmitted SYN raced us on another CPU (or the table is full): give the port back
        // and let this SYN go as the entries, if any, say.
        let _ = FLOWS.remove(reply_key);
        let _ = FREE_PORTS.push(public_port, 0);
        return Err(OpenError::NotOurs);
    }
    crate::alg::open_session(packet, in_ifindex);
    bump(Counter::ControlSessionsOpened);
    Ok(())
}
