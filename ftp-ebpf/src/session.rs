//! A control session's record: created when its control connection opens, told of the
//! expectations the agent let expire, and read for the sequence adjustment of every control
//! packet.

use aya_ebpf::{bindings::BPF_ANY, programs::TcContext};
use ftp_common::maps::{
    Counter, EventKind, FlowDirection, FlowEntry, FlowKey, IpBytes, RewriteRecord,
    SESSION_USER_LEN, SessionEntry, SessionKind, ip,
};

use crate::{
    headers::Tcp,
    maps::{RELEASED, SESSIONS, bump, now_ns},
};

/// A new session's record. All-zero is the initial state of every ftp-common state type; kept in
/// read-only data so that creating a session does not build 184 bytes on the 512-byte stack.
static NEW_SESSION: SessionEntry = SessionEntry {
    opened_ns: 0,
    state: ftp_common::Session::new(),
    client_lines: ftp_common::LineTracker::new(),
    server_lines: ftp_common::LineTracker::new(),
    lan_ifindex: 0,
    data_flows: 0,
    malformed_lines: 0,
    refusals: 0,
    commands: ftp_common::CommandScanner::new(),
    replies: ftp_common::ReplyScanner::new(),
    client_seq: ftp_common::SeqAdjust::new(),
    server_seq: ftp_common::SeqAdjust::new(),
    client_rewrite: RewriteRecord::NONE,
    server_rewrite: RewriteRecord::NONE,
    server_addr: ip::UNSPECIFIED,
    server_port: [0; 2],
    kind: SessionKind::Masquerade as u8,
    user_len: 0,
    released_seen: [0; 4],
    _pad: [0; 4],
    user: [0; SESSION_USER_LEN],
    held: ftp_common::maps::HeldField::new(),
    server_held: ftp_common::maps::HeldField::new(),
    events: ftp_common::maps::EventBudget::new(),
    client_window: ftp_common::TcpWindow::new(),
    server_window: ftp_common::TcpWindow::new(),
};

/// What a new session record says beyond the initial protocol state.
pub struct NewSession<'a> {
    pub kind: SessionKind,
    /// The interface of the side behind the router (the client's or the published server's).
    pub lan_ifindex: u32,
    /// The server's own address and control port (network byte order).
    pub server_addr: &'a IpBytes,
    pub server_port: [u8; 2],
    /// The window scale the opening SYN offers.
    pub offered_scale: Option<u8>,
}

/// Creates the session record when a control connection opens. False if the table has no room
/// (counted): the caller refuses the connection rather than translate it without its ALG.
// A subprogram of its own: the three ways of opening a session share it, off their stacks.
#[inline(never)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "inserted by reference: a by-value template would be copied onto the stack"
)]
pub fn open_session(packet: &Tcp, new: &NewSession) -> bool {
    let key = &packet.key;
    if SESSIONS
        .insert(key, &NEW_SESSION, u64::from(BPF_ANY))
        .is_err()
    {
        bump(Counter::SessionTableFull);
        return false;
    }
    if let Some(entry) = SESSIONS.get_ptr_mut(key) {
        // SAFETY: the map value just inserted; no packet of this connection can race its SYN.
        unsafe {
            (*entry).opened_ns = now_ns();
            (*entry).lan_ifindex = new.lan_ifindex;
            crate::scratch::copy(&mut (*entry).server_addr, new.server_addr);
            (*entry).server_port = new.server_port;
            (*entry).kind = new.kind as u8;
            let seq = u32::from_be_bytes(packet.tcp.seq);
            (*entry).client_lines.on_syn(seq);
            (*entry).client_window.on_opening_syn(
                seq,
                u16::from_be_bytes(packet.tcp.window),
                new.offered_scale,
            );
        }
        crate::events::emit(
            key,
            EventKind::SessionOpened,
            new.kind as u8,
            new.server_addr,
            u16::from_be_bytes(new.server_port),
        );
    }
    true
}

/// Frees the places of the expectations the agent let expire since the last packet: the agent
/// counts them in `RELEASED` rather than writing the session record, which only the datapath
/// writes.
#[inline(always)]
pub fn apply_releases(key: &FlowKey, session: *mut SessionEntry) {
    // SAFETY: the value is read at once.
    let Some(released) = (unsafe { RELEASED.get(key) }).copied() else {
        return;
    };
    // SAFETY: a live map value; see follow_segment on concurrent updates.
    let entry = unsafe { &mut *session };
    let seen = u32::from_ne_bytes(entry.released_seen);
    let pending = released.wrapping_sub(seen);
    // More than a session can hold open is as good as all of them.
    entry
        .state
        .expectations_closed(u8::try_from(pending).unwrap_or(u8::MAX));
    entry.released_seen = released.to_ne_bytes();
}

/// Shifts the control packet's sequence number by what the session's rewrites added to its
/// sender's stream, and its acknowledgement (and SACK blocks) by what they added to the other
/// side's; after any rewrite of this very packet. Returns whether the packet changed.
#[inline(never)]
pub fn adjust_sequence(ctx: &TcContext, packet: &Tcp, flow: &FlowEntry) -> bool {
    let Some(session) = SESSIONS.get_ptr(flow.session) else {
        return false;
    };
    // SAFETY: a live map value, read only.
    let (client_seq, server_seq) = unsafe { ((*session).client_seq, (*session).server_seq) };
    let (own, peer) = if flow.direction == FlowDirection::Original as u8 {
        (client_seq, server_seq)
    } else {
        (server_seq, client_seq)
    };
    crate::seqadj::adjust(ctx, packet, &own, &peer)
}
