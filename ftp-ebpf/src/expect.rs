//! Expectations: the data connections the control channel announced, from their creation to the
//! SYN that consumes them. An expectation admits exactly one opening SYN from its peer to the
//! announced address and port, before it expires; the SYN consumes it and installs the
//! connection's two flow entries. Outbound ones (announced from outside: a server's 227/229 to a
//! masqueraded client, an outside client's PORT/EPRT to a published server) are created as they
//! are read; inbound ones (announced from behind the router) reserve a window port, and a newer
//! announcement releases the session's unused one. An IPv6 session followed untranslated
//! (firewall mode) announces addresses that need no translation: its expectations admit the
//! announced connection as it is ([`ExpectationPath::Through`]), one-shot and timed all the same.
//!
//! Inbound expectations (to a window port of the public address, or to the announced port of a
//! client in firewall mode) are keyed without the source, so a SYN from anyone else is told apart
//! from one nobody announced: both are dropped and counted, and the expectation stays for its
//! peer. Window ports are pinholes, never an open range.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    programs::TcContext,
};
use ftp_common::maps::{
    Counter, DatapathConfig, EventKind, ExpectKey, Expectation, ExpectationKind, ExpectationPath,
    FlowEntry, FlowKey, FlowKind, IpBytes, SessionEntry, flow_flags, ip, rewrite_kind,
};

use crate::{
    flows::{OpenError, Opened, install, install_failed, release_closed, write_original},
    headers::Tcp,
    maps::{EXPECTS, SESSIONS, bump, now_ns},
    scratch::Opening,
    scratch::RewriteRequest,
    window::{return_port, take_port},
};

/// An announced data connection that reserves no window port: `peer` may connect to
/// `target:port` once.
pub struct Announced {
    pub peer: IpBytes,
    pub target: IpBytes,
    pub port: u16,
    pub kind: ExpectationKind,
    pub path: ExpectationPath,
}

impl Announced {
    /// The key its SYN finds it under: from behind the router (an outbound one, announced by
    /// the side outside; a passive one in firewall mode) by its source, destination and port;
    /// from the WAN (an active one in firewall mode: the server connects in to the client) by
    /// destination and port only, as every inbound expectation.
    #[inline(always)]
    fn key(&self) -> ExpectKey {
        if self.path == ExpectationPath::Through && self.kind == ExpectationKind::Active {
            ExpectKey::inbound(self.target, self.port)
        } else {
            ExpectKey::outbound(self.peer, self.target, self.port)
        }
    }
}

/// Creates the expectation of `announced`.
#[inline(always)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "inserted by reference: by value, the expectation would be copied onto the stack"
)]
pub fn create(session: &mut SessionEntry, announced: &Announced) {
    let (Some(opening), Some(segment)) = (crate::flows::opening(), crate::scratch::segment())
    else {
        return;
    };
    let Announced {
        peer,
        target,
        port,
        kind,
        path,
    } = *announced;
    // Built in the scratch area, and inserted from there: off the client stage's stack.
    opening.expectation = Expectation {
        expires_ns: now_ns() + segment.expect_timeout_ns,
        session: segment.session_key,
        target_addr: target,
        lan_ifindex: segment.lan_ifindex,
        target_port: port.to_be_bytes(),
        public_port: 0,
        peer,
        kind: kind as u8,
        path: path as u8,
        _pad: [0; 2],
    };
    if EXPECTS
        .insert(announced.key(), &opening.expectation, u64::from(BPF_ANY))
        .is_ok()
    {
        bump(Counter::ExpectationsCreated);
        crate::events::emit(
            &segment.session_key,
            EventKind::ExpectationCreated,
            kind as u8,
            &target,
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
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "inserted by reference: by value, the expectation would be copied onto the stack"
)]
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
            &ip::UNSPECIFIED,
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
    let Some(opening) = crate::flows::opening() else {
        return_port(public_port);
        return Reservation::NoRoom;
    };
    // Built in the scratch area, and inserted from there: off the rewrite stage's stack.
    opening.expectation = Expectation {
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
    let public_ip = config.public_ip_for(session.kind, &request.session_key.saddr);
    let key = ExpectKey::inbound(*public_ip, public_port);
    if EXPECTS
        .insert(key, &opening.expectation, u64::from(BPF_NOEXIST))
        .is_err()
    {
        bump(Counter::ExpectationTableFull);
        return_port(public_port);
        return Reservation::NoRoom;
    }
    Reservation::Reserved(public_port)
}

/// Undoes [`reserve_inbound`] of `public_port` of `public_ip` when the announcement could not be
/// rewritten after all.
#[inline(always)]
pub fn unreserve(public_ip: &IpBytes, public_port: u16) {
    let _ = EXPECTS.remove(ExpectKey::inbound(*public_ip, public_port));
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
    let key = ExpectKey::inbound(
        *config.public_ip_for(session.kind, &session_key.saddr),
        public_port,
    );
    // SAFETY: read at once.
    let ours = unsafe { EXPECTS.get(key) }.is_some_and(|e| e.session == *session_key);
    if ours && EXPECTS.remove(key).is_ok() {
        return_port(public_port);
        session.state.expectation_closed();
    }
}

/// Makes way for the data connection this opening SYN from the WAN to a window port (or to a
/// firewall-mode client's announced port) would open:
/// a closed connection still lingering under the key of its answers gives way
/// ([`release_closed`]). A client in active mode listens again on the port of its previous data
/// connection, and the server connects from port 20 again at once: the answers' key (client port,
/// server port 20) is the closed connection's. Without this, the SYN was refused (counted as
/// `flow_table_full`) and its retransmissions found the expectation used, stalling the transfer
/// until the client gave up. Only looks: [`open_data`] takes the expectation. A subprogram
/// called before it, not from it: the open stage's call chain has no stack to spare there.
// Only for a SYN from the WAN, where inbound expectations admit: any other opening SYN would pay
// for a lookup that finds nothing.
#[inline(never)]
pub fn make_way(ctx: &TcContext, packet: &Tcp, config: &DatapathConfig) {
    // SAFETY: reading the context's ifindex field, as TC programs may.
    if unsafe { (*ctx.skb.skb).ifindex } != config.wan_ifindex {
        return;
    }
    let key = &packet.key;
    // SAFETY: the fields are copied out at once.
    let Some(expectation) = (unsafe { EXPECTS.get(ExpectKey::inbound(key.daddr, packet.dport())) })
    else {
        return;
    };
    if expectation.peer != key.saddr {
        return;
    }
    // The answers' key of the entry open_data would install (to the server's prefixed address,
    // for a NAT64 client's).
    let reply_key = FlowKey {
        saddr: expectation.target_addr,
        daddr: if ip::is_v4(&expectation.target_addr) == ip::is_v4(&key.saddr) {
            key.saddr
        } else {
            config.nat64_address_of(&key.saddr)
        },
        sport: expectation.target_port,
        dport: key.sport,
    };
    release_closed(&reply_key);
}

/// Takes the expectation this opening SYN matches, if any, and installs its connection.
// A subprogram of its own: its stack frame does not add to the caller's 512 bytes.
#[inline(never)]
pub fn open_data(ctx: &TcContext, packet: &Tcp, config: &DatapathConfig) -> Result<(), OpenError> {
    let key = &packet.key;
    // SAFETY: reading the context's ifindex field, as TC programs may.
    let in_ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(Opening {
        expectation: found,
        original,
        translated,
        ..
    }) = crate::flows::opening()
    else {
        return Err(OpenError::NotOurs);
    };
    let outbound_key = ExpectKey::outbound(key.saddr, key.daddr, packet.dport());
    // One-shot: whoever removes an expectation owns it (a retransmitted SYN on another CPU finds
    // nothing). Removed where it is found: a key chosen between two would be carried across as
    // 36 separate bytes.
    // SAFETY: the value is copied out at once (to the scratch area).
    let taken = match unsafe { EXPECTS.get(outbound_key) } {
        // From behind the router: only from the interface the session's side is reached by (a
        // LAN address forged elsewhere opens nothing).
        Some(expectation) if in_ifindex == expectation.lan_ifindex => {
            crate::scratch::copy(found, expectation);
            EXPECTS.remove(outbound_key).is_ok()
        }
        Some(_) => {
            bump(Counter::WrongInterface);
            return Err(OpenError::Pinhole);
        }
        None => {
            if in_ifindex != config.wan_ifindex {
                return Err(OpenError::NotOurs);
            }
            let inbound_key = ExpectKey::inbound(key.daddr, packet.dport());
            // SAFETY: as above.
            match unsafe { EXPECTS.get(inbound_key) } {
                Some(expectation) if expectation.peer == key.saddr => {
                    crate::scratch::copy(found, expectation);
                    EXPECTS.remove(inbound_key).is_ok()
                }
                Some(_) => {
                    bump(Counter::PinholeWrongPeer);
                    return Err(OpenError::Pinhole);
                }
                None if config.is_public(&key.daddr) && config.in_window(packet.dport()) => {
                    bump(Counter::PinholeNoExpectation);
                    return Err(OpenError::Pinhole);
                }
                None => return Err(OpenError::NotOurs),
            }
        }
    };
    if !taken {
        return Err(OpenError::NotOurs);
    }
    let expectation = &*found;

    let path = ExpectationPath::from_raw(expectation.path);
    if now_ns() > expectation.expires_ns {
        bump(Counter::ExpectationsExpired);
        expectation_ended(&expectation.session);
        // The agent returns an inbound expectation's port when it sweeps: it will not find this
        // one, so give the port back here.
        if path == Some(ExpectationPath::Inbound) && expectation.public_port != 0 {
            return_port(expectation.public_port);
        }
        // From the WAN it was a pinhole, closed now; from behind the router it is no longer
        // ftpnat's.
        return Err(if in_ifindex == config.wan_ifindex {
            OpenError::Pinhole
        } else {
            OpenError::NotOurs
        });
    }
    match path {
        Some(ExpectationPath::Outbound) => {
            // From behind the router to the announced address: SNAT behind a fresh window port.
            let Some(public_port) = take_port() else {
                bump(Counter::WindowExhausted);
                expectation_ended(&expectation.session);
                crate::events::emit(
                    &expectation.session,
                    EventKind::WindowExhausted,
                    0,
                    &ip::UNSPECIFIED,
                    0,
                );
                return Err(OpenError::WindowExhausted);
            };
            // A NAT64 client's connection to the server's prefixed address leaves in IPv4,
            // from the pool address (servers refuse a data connection from another address than
            // the control connection's), to the server.
            let new_addrs = if config.is_nat64_destination(&key.daddr) {
                *translated = ip::embedded_v4(&key.daddr);
                (&config.nat64_pool, &*translated)
            } else {
                (config.public_ip_of(&key.saddr), &key.daddr)
            };
            data_entry(
                original,
                expectation,
                new_addrs,
                [public_port.to_be_bytes(), key.dport],
                [in_ifindex, config.wan_ifindex],
                public_port,
            )
        }
        Some(ExpectationPath::Inbound) => {
            // From the WAN to public:window port: DNAT to the target behind the router; to a NAT64
            // client, in IPv6 from the server's prefixed address.
            let new_saddr = if ip::is_v4(&expectation.target_addr) == ip::is_v4(&key.saddr) {
                &key.saddr
            } else {
                *translated = config.nat64_address_of(&key.saddr);
                &*translated
            };
            data_entry(
                original,
                expectation,
                (new_saddr, &expectation.target_addr),
                [key.sport, expectation.target_port],
                [config.wan_ifindex, expectation.lan_ifindex],
                expectation.public_port,
            )
        }
        Some(ExpectationPath::Through) => {
            // Either way, as it is: to the other side of the router from where it arrived.
            let out_ifindex = if in_ifindex == config.wan_ifindex {
                expectation.lan_ifindex
            } else {
                config.wan_ifindex
            };
            data_entry(
                original,
                expectation,
                (&key.saddr, &key.daddr),
                [key.sport, key.dport],
                [in_ifindex, out_ifindex],
                0,
            )
        }
        None => return Err(OpenError::NotOurs),
    }
    let public_port = original.public_port;
    let Some(opening) = crate::flows::opening() else {
        return Err(OpenError::NotOurs);
    };
    if let Err(error) = install(key, opening) {
        // Not passed untranslated: a data connection from behind the router would leave with
        // its private address.
        if public_port != 0 {
            return_port(public_port);
        }
        expectation_ended(&opening.expectation.session);
        return install_failed(error);
    }
    let expectation = &opening.expectation;
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
        &key.daddr,
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

/// Writes to `out` the original direction's entry of a data connection opened through
/// `expectation`, owning `public_port` unless it is 0 (a connection forwarded as it is uses no
/// window port).
#[inline(always)]
fn data_entry(
    out: &mut FlowEntry,
    expectation: &Expectation,
    new_addrs: (&IpBytes, &IpBytes),
    new_ports: [[u8; 2]; 2],
    interfaces: [u32; 2],
    public_port: u16,
) {
    let opened = Opened {
        session: &expectation.session,
        kind: FlowKind::Data,
        interfaces,
        public_port,
        flags: if public_port != 0 {
            flow_flags::OWNS_PORT
        } else {
            0
        },
    };
    write_original(out, &opened, new_addrs, new_ports);
}
