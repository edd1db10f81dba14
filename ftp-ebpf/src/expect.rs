//! Expectations: the data connections the control channel announced, from their creation to the
//! SYN that consumes them. An expectation admits exactly one opening SYN from its peer to the
//! announced address and port, before it expires; the SYN consumes it and installs the
//! connection's two flow entries. Outbound ones (announced from outside: a server's 227/229 to a
//! masqueraded client, an outside client's PORT/EPRT to a published server) are created as they
//! are read; inbound ones (announced from behind the router) reserve a window port, and a newer
//! announcement releases the session's unused one.
//!
//! Inbound expectations (to a window port of the public address) are keyed without the source, so
//! a SYN to a window port from anyone else is told apart from one nobody announced: both are
//! dropped and counted, and the expectation stays for its peer. Window ports are pinholes, never
//! an open range.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    programs::TcContext,
};
use ftp_common::maps::{
    Counter, DatapathConfig, EventKind, ExpectKey, Expectation, ExpectationKind, ExpectationPath,
    FlowDirection, FlowEntry, FlowKey, FlowKind, SessionEntry, flow_flags, rewrite_kind,
};

use crate::{
    flows::{OpenError, install, install_failed, release_closed},
    headers::Tcp4,
    maps::{EXPECTS, SESSIONS, bump, now_ns},
    scratch::{RewriteRequest, Scan},
    window::{return_port, take_port},
};

/// Creates an outbound expectation (announced by the side outside the router): `from` (behind the router) may connect to `to:port` once.
#[inline(always)]
pub fn create_outbound(
    scan: &Scan,
    session: &mut SessionEntry,
    [from, to]: [[u8; 4]; 2],
    port: u16,
    kind: ExpectationKind,
) {
    let key = ExpectKey::outbound(from, to, port);
    let expectation = Expectation {
        expires_ns: now_ns() + scan.expect_timeout_ns,
        session: scan.session_key,
        target_addr: to,
        lan_ifindex: scan.lan_ifindex,
        target_port: port.to_be_bytes(),
        public_port: 0,
        peer: from,
        kind: kind as u8,
        path: ExpectationPath::Outbound as u8,
        _pad: [0; 2],
    };
    if EXPECTS.insert(key, expectation, u64::from(BPF_ANY)).is_ok() {
        bump(Counter::ExpectationsCreated);
        crate::events::emit(
            &scan.session_key,
            EventKind::ExpectationCreated,
            kind as u8,
            to,
            port,
        );
    } else {
        session.state.expectation_closed();
        bump(Counter::ExpectationTableFull);
    }
}

/// What [`reserve_inbound`] got.
pub enum Reservation {
    /// This window port now admits the announced connection.
    Reserved(u16),
    /// No port is free (counted, reported), or the expectation table is full (counted): the
    /// announcement is to be refused in the text.
    NoRoom,
}

/// Reserves a window port for the announcement in `request` (from the side behind the router) and
/// creates the inbound expectation that admits only the other side of the control connection:
/// for a client's PORT/EPRT the server, connecting to the client's announced port; for a published
/// server's 227/229 the client, connecting to the server's port.
#[inline(always)]
pub fn reserve_inbound(
    config: &DatapathConfig,
    session: &SessionEntry,
    request: &RewriteRequest,
) -> Reservation {
    let Some(public_port) = take_port() else {
        bump(Counter::WindowExhausted);
        crate::events::emit(
            &request.session_key,
            EventKind::WindowExhausted,
            0,
            [0; 4],
            0,
        );
        return Reservation::NoRoom;
    };
    let (peer, target, kind) = if rewrite_kind::is_reply(request.kind) {
        (
            request.session_key.saddr,
            session.server_addr,
            ExpectationKind::Passive,
        )
    } else {
        (session.server_addr, request.addr, ExpectationKind::Active)
    };
    let expectation = Expectation {
        expires_ns: now_ns() + config.expect_timeout_ns,
        session: request.session_key,
        target_addr: target,
        lan_ifindex: session.lan_ifindex,
        target_port: request.port.to_be_bytes(),
        public_port,
        peer,
        kind: kind as u8,
        path: ExpectationPath::Inbound as u8,
        _pad: [0; 2],
    };
    let key = ExpectKey::inbound(config.public_ip, public_port);
    if EXPECTS
        .insert(key, expectation, u64::from(BPF_NOEXIST))
        .is_err()
    {
        bump(Counter::ExpectationTableFull);
        return_port(public_port);
        return Reservation::NoRoom;
    }
    Reservation::Reserved(public_port)
}

/// Undoes [`reserve_inbound`] when the announcement could not be rewritten after all.
#[inline(always)]
pub fn unreserve(config: &DatapathConfig, public_port: u16) {
    let _ = EXPECTS.remove(ExpectKey::inbound(config.public_ip, public_port));
    return_port(public_port);
}

/// Removes the session's expectation for `public_port` if no connection used it yet, and gives
/// the port back. The port may since have gone to another session: only our own is removed.
#[inline(always)]
pub fn release_unused(
    session: &mut SessionEntry,
    session_key: &FlowKey,
    config: &DatapathConfig,
    public_port: u16,
) {
    let key = ExpectKey::inbound(config.public_ip, public_port);
    // SAFETY: read at once.
    let ours = unsafe { EXPECTS.get(key) }.is_some_and(|e| e.session == *session_key);
    if ours && EXPECTS.remove(key).is_ok() {
        return_port(public_port);
        session.state.expectation_closed();
    }
}

/// Makes way for the data connection this opening SYN from the WAN to a window port would open:
/// a closed connection still lingering under the key of its answers gives way
/// ([`release_closed`]). A client in active mode listens again on the port of its previous data
/// connection, and the server connects from port 20 again at once: the answers' key (client port,
/// server port 20) is the closed connection's. Without this, the SYN was refused (counted as
/// `flow_table_full`) and its retransmissions found the expectation used, stalling the transfer
/// until the client gave up. Only looks: [`open_data`] takes the expectation. A subprogram
/// called before it, not from it: the open stage's call chain has no stack to spare there.
#[inline(never)]
pub fn make_way(packet: &Tcp4, config: &DatapathConfig) {
    let key = packet.key();
    if key.daddr != config.public_ip {
        return;
    }
    // SAFETY: the fields are copied out at once.
    let Some(expectation) =
        (unsafe { EXPECTS.get(ExpectKey::inbound(config.public_ip, packet.dport())) })
    else {
        return;
    };
    if expectation.peer != key.saddr {
        return;
    }
    // The answers' key of the entry open_data would install.
    let reply_key = FlowKey {
        saddr: expectation.target_addr,
        daddr: key.saddr,
        sport: expectation.target_port,
        dport: key.sport,
    };
    release_closed(&reply_key);
}

/// Takes the expectation this opening SYN matches, if any, and installs its connection.
// A subprogram of its own: its stack frame does not add to the caller's 512 bytes.
#[inline(never)]
pub fn open_data(ctx: &TcContext, packet: &Tcp4, config: &DatapathConfig) -> Result<(), OpenError> {
    let key = packet.key();
    // SAFETY: reading the context's ifindex field, as TC programs may.
    let in_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let outbound_key = ExpectKey::outbound(key.saddr, key.daddr, packet.dport());
    // SAFETY: the value is copied out at once; the entry is removed below.
    let (expect_key, expectation) = match unsafe { EXPECTS.get(outbound_key) } {
        // From behind the router: only from the interface the session's side is reached by (a
        // LAN address forged elsewhere opens nothing).
        Some(expectation) if in_ifindex == expectation.lan_ifindex => (outbound_key, *expectation),
        Some(_) => {
            bump(Counter::WrongInterface);
            return Err(OpenError::Pinhole);
        }
        None => {
            if in_ifindex != config.wan_ifindex || key.daddr != config.public_ip {
                return Err(OpenError::NotOurs);
            }
            let inbound_key = ExpectKey::inbound(config.public_ip, packet.dport());
            // SAFETY: as above.
            match unsafe { EXPECTS.get(inbound_key) } {
                Some(expectation) if expectation.peer == key.saddr => (inbound_key, *expectation),
                Some(_) => {
                    bump(Counter::PinholeWrongPeer);
                    return Err(OpenError::Pinhole);
                }
                None if config.in_window(packet.dport()) => {
                    bump(Counter::PinholeNoExpectation);
                    return Err(OpenError::Pinhole);
                }
                None => return Err(OpenError::NotOurs),
            }
        }
    };
    // One-shot: whoever removes it owns it (a retransmitted SYN on another CPU finds nothing).
    if EXPECTS.remove(expect_key).is_err() {
        return Err(OpenError::NotOurs);
    }
    let now = now_ns();
    let path = ExpectationPath::from_raw(expectation.path);
    if now > expectation.expires_ns {
        bump(Counter::ExpectationsExpired);
        expectation_ended(&expectation.session);
        // The agent returns an inbound expectation's port when it sweeps: it will not find this
        // one, so give the port back here.
        if path == Some(ExpectationPath::Inbound) && expectation.public_port != 0 {
            return_port(expectation.public_port);
        }
        return Err(match path {
            Some(ExpectationPath::Inbound) => OpenError::Pinhole,
            _ => OpenError::NotOurs,
        });
    }
    let original = match path {
        Some(ExpectationPath::Outbound) => {
            // From behind the router to the announced address: SNAT behind a fresh window port.
            let Some(public_port) = take_port() else {
                bump(Counter::WindowExhausted);
                expectation_ended(&expectation.session);
                crate::events::emit(
                    &expectation.session,
                    EventKind::WindowExhausted,
                    0,
                    [0; 4],
                    0,
                );
                return Err(OpenError::WindowExhausted);
            };
            data_entry(
                &expectation,
                now,
                [config.public_ip, key.daddr],
                [public_port.to_be_bytes(), key.dport],
                [in_ifindex, config.wan_ifindex],
                public_port,
            )
        }
        Some(ExpectationPath::Inbound) => {
            // From the WAN to public:window port: DNAT to the target behind the router.
            data_entry(
                &expectation,
                now,
                [key.saddr, expectation.target_addr],
                [key.sport, expectation.target_port],
                [config.wan_ifindex, expectation.lan_ifindex],
                expectation.public_port,
            )
        }
        None => return Err(OpenError::NotOurs),
    };
    if let Err(error) = install(key, &original) {
        // Not passed untranslated: a data connection from behind the router would leave with
        // its private address.
        return_port(original.public_port);
        expectation_ended(&expectation.session);
        return install_failed(error);
    }
    if let Some(session) = SESSIONS.get_ptr_mut(expectation.session) {
        // SAFETY: a live map value; see scan::begin_segment on concurrent updates.
        unsafe {
            (*session).state.expectation_closed();
            (*session).data_flows += 1;
        }
    }
    bump(Counter::ExpectationsUsed);
    crate::events::emit(
        &expectation.session,
        EventKind::DataFlowOpened,
        expectation.kind,
        key.daddr,
        u16::from_be_bytes(key.dport),
    );
    Ok(())
}

/// Tells the session an expectation of its ended without a connection (it was removed here, so
/// nobody else will), freeing its place under the policy's limit.
#[inline(always)]
fn expectation_ended(session: &FlowKey) {
    if let Some(session) = SESSIONS.get_ptr_mut(session) {
        // SAFETY: a live map value; see scan::begin_segment on concurrent updates.
        unsafe { (*session).state.expectation_closed() };
    }
}

/// The original direction's entry of a data connection opened through `expectation`.
#[inline(always)]
fn data_entry(
    expectation: &Expectation,
    now: u64,
    [new_saddr, new_daddr]: [[u8; 4]; 2],
    [new_sport, new_dport]: [[u8; 2]; 2],
    [in_ifindex, out_ifindex]: [u32; 2],
    public_port: u16,
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
        direction: FlowDirection::Original as u8,
        flags: flow_flags::OWNS_PORT,
        _pad: [0; 3],
        in_ifindex,
    }
}
