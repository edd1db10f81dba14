//! Opening the data connections the control channel announced. An expectation admits exactly one
//! opening SYN from the announced peer to the announced address and port, before it expires; the
//! SYN consumes it and installs the connection's two flow entries.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::TcContext};
use ftp_common::maps::{
    Counter, DatapathConfig, ExpectKey, Expectation, ExpectationKind, FlowDirection, FlowEntry,
    FlowKey, FlowKind, flow_flags,
};

use crate::{
    flows::OpenError,
    headers::Tcp4,
    maps::{EXPECTS, FLOWS, FREE_PORTS, SESSIONS, bump, now_ns},
};

/// Takes the expectation this opening SYN matches, if any, and installs its connection. Returns
/// the entry to translate the SYN with.
// A subprogram of its own: its stack frame does not add to the caller's 512 bytes.
#[inline(never)]
pub fn open_data(ctx: &TcContext, packet: &Tcp4, config: &DatapathConfig) -> Result<(), OpenError> {
    let key = packet.key();
    let expect_key = ExpectKey {
        saddr: key.saddr,
        daddr: key.daddr,
        dport: key.dport,
        _pad: [0; 2],
    };
    // SAFETY: the value is copied out at once; the entry is removed below.
    let Some(expectation) = (unsafe { EXPECTS.get(expect_key) }).copied() else {
        return Err(OpenError::NotOurs);
    };
    // One-shot: whoever removes it owns it (a retransmitted SYN on another CPU finds nothing).
    if EXPECTS.remove(expect_key).is_err() {
        return Err(OpenError::NotOurs);
    }
    let now = now_ns();
    if now > expectation.expires_ns {
        bump(Counter::ExpectationsExpired);
        // The agent returns an active expectation's port when it sweeps: it will not find this one,
        // so give the port back here.
        if expectation.public_port != 0 {
            let _ = FREE_PORTS.push(expectation.public_port, 0);
        }
        return Err(OpenError::NotOurs);
    }
    // SAFETY: reading the context's ifindex field, as TC programs may.
    let in_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let (original, reply_key, reply) = match ExpectationKind::from_raw(expectation.kind) {
        Some(ExpectationKind::Passive) => {
            // Client → server:announced. SNAT the client behind a fresh window port.
            let Ok(Some(public_port)) = FREE_PORTS.pop() else {
                bump(Counter::WindowExhausted);
                return Err(OpenError::WindowExhausted);
            };
            let public_be = public_port.to_be_bytes();
            let original = data_entry(
                &expectation,
                now,
                [config.public_ip, key.daddr],
                [public_be, key.dport],
                config.wan_ifindex,
                public_port,
                FlowDirection::Original,
            );
            let reply_key = FlowKey {
                saddr: key.daddr,
                daddr: config.public_ip,
                sport: key.dport,
                dport: public_be,
            };
            let reply = data_entry(
                &expectation,
                now,
                [key.daddr, key.saddr],
                [key.dport, key.sport],
                in_ifindex,
                public_port,
                FlowDirection::Reply,
            );
            (original, reply_key, reply)
        }
        Some(ExpectationKind::Active) => {
            // Server → public:window port. DNAT to the client's announced address and port.
            let original = data_entry(
                &expectation,
                now,
                [key.saddr, expectation.target_addr],
                [key.sport, expectation.target_port],
                expectation.lan_ifindex,
                expectation.public_port,
                FlowDirection::Original,
            );
            let reply_key = FlowKey {
                saddr: expectation.target_addr,
                daddr: key.saddr,
                sport: expectation.target_port,
                dport: key.sport,
            };
            let reply = data_entry(
                &expectation,
                now,
                [key.daddr, key.saddr],
                [key.dport, key.sport],
                config.wan_ifindex,
                expectation.public_port,
                FlowDirection::Reply,
            );
            (original, reply_key, reply)
        }
        None => return Err(OpenError::NotOurs),
    };
    if FLOWS
        .insert(reply_key, reply, u64::from(BPF_NOEXIST))
        .is_err()
        || FLOWS.insert(key, original, u64::from(BPF_NOEXIST)).is_err()
    {
        let _ = FLOWS.remove(reply_key);
        let _ = FREE_PORTS.push(original.public_port, 0);
        return Err(OpenError::NotOurs);
    }
    if let Some(session) = SESSIONS.get_ptr_mut(expectation.session) {
        // SAFETY: a live map value; see alg::control_packet on concurrent updates.
        unsafe {
            (*session).state.expectation_closed();
            (*session).data_flows += 1;
        }
    }
    bump(Counter::ExpectationsUsed);
    Ok(())
}

#[inline(always)]
fn data_entry(
    expectation: &Expectation,
    now: u64,
    [new_saddr, new_daddr]: [[u8; 4]; 2],
    [new_sport, new_dport]: [[u8; 2]; 2],
    out_ifindex: u32,
    public_port: u16,
    direction: FlowDirection,
) -> FlowEntry {
    FlowEntry {
        packets: 0,
        bytes: 0,
        last_seen_ns: now,
        session: expectation.session,
        new_saddr,
        new_daddr,
        out_ifindex,
        new_sport,
        new_dport,
        public_port,
        kind: FlowKind::Data as u8,
        direction: direction as u8,
        flags: if matches!(direction, FlowDirection::Original) {
            flow_flags::OWNS_PORT
        } else {
            0
        },
        _pad: [0; 7],
    }
}
