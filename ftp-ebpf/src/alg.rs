//! The FTP ALG proper: follows the control channel of each session with ftp-common's line tracker,
//! byte scanners and state machine, and records the data connections it announces.
//!
//! Nothing here re-implements FTP parsing. The new bytes of a segment are copied into a per-CPU
//! buffer and fed one at a time to the session's scanner from a `bpf_loop` callback: the verifier
//! checks the callback once, whatever the segment holds. The scanners keep their state in the
//! session record, so a command split over two segments is read whole. A line ftp-common cannot
//! parse passes untouched and is counted; a refused line passes untouched, opens nothing and is
//! counted.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_loop, bpf_skb_load_bytes},
    programs::TcContext,
};
use core::{
    ffi::c_void,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};
use ftp_common::{
    ActiveKind, ClientVerdict, PassiveEndpoint, Policy, PolicyContext, SegmentVerdict,
    ServerVerdict,
    maps::{
        Counter, DatapathConfig, ExpectKey, Expectation, ExpectationKind, FlowDirection, FlowEntry,
        RewriteRecord, SessionEntry, rewrite_kind,
    },
};

use crate::{
    headers::Tcp4,
    maps::{EXPECTS, SCRATCH, SCRATCH_LEN, SCRATCH_SIZE, SESSIONS, bump, now_ns},
    rewrite::ActiveRequest,
};

/// Indexes into the scratch buffer are masked with this, so every read is provably inside it.
const SCRATCH_MASK: usize = SCRATCH_SIZE - 1;

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
    last_rewrite: RewriteRecord {
        seq: 0,
        payload_len: 0,
        field_off: 0,
        field_len: 0,
        public_port: 0,
        kind: rewrite_kind::NONE,
        delimiter: 0,
        _pad: [0; 2],
    },
};

/// Creates the session record when a control connection opens.
#[inline(always)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "inserted by reference: a by-value template would be copied onto the stack"
)]
pub fn open_session(packet: &Tcp4, lan_ifindex: u32) {
    let key = packet.key();
    if SESSIONS
        .insert(key, &NEW_SESSION, u64::from(BPF_ANY))
        .is_err()
    {
        return;
    }
    if let Some(entry) = SESSIONS.get_ptr_mut(key) {
        // SAFETY: the map value just inserted; no packet of this connection can race its SYN.
        unsafe {
            (*entry).opened_ns = now_ns();
            (*entry).lan_ifindex = lan_ifindex;
            (*entry)
                .client_lines
                .on_syn(u32::from_be_bytes(packet.tcp.seq));
        }
    }
}

/// What the scan of one segment asks the caller to do.
#[repr(C)]
struct Scan {
    session: *mut SessionEntry,
    /// Scratch offsets of the first byte to feed and one past the last.
    start: u32,
    end: u32,
    from_client: u32,
    client: [u8; 4],
    server: [u8; 4],
    lan_ifindex: u32,
    expect_timeout_ns: u64,
    session_key: ftp_common::maps::FlowKey,
    /// A PORT/EPRT accepted in this segment (its `kind` is a `rewrite_kind`; NONE if none).
    active_kind: u8,
    active_delimiter: u8,
    active_field_off: u16,
    active_field_len: u16,
    active_port: u16,
    active_addr: [u8; 4],
}

/// Follows one packet of a control connection, before its headers are translated.
/// Follows one packet of a control connection, before its headers are translated. Returns true
/// if it accepted a PORT/EPRT whose rewrite is waiting in the scratch buffer's `pending`: the
/// caller then runs [`crate::rewrite::rewrite_pending`] (kept out of this call chain for stack).
// A subprogram of its own: its stack frame does not add to the caller's 512 bytes.
#[inline(never)]
pub fn control_packet(
    ctx: &TcContext,
    packet: &Tcp4,
    flow: &FlowEntry,
    config: &DatapathConfig,
) -> bool {
    let Some(session) = SESSIONS.get_ptr_mut(flow.session) else {
        return false;
    };
    follow_segment(ctx, packet, flow, config, session)
}

/// Shifts the control packet's sequence or acknowledgement number by what the session's rewrites
/// added to the client's stream; after any rewrite of this very packet.
#[inline(never)]
pub fn adjust_sequence(ctx: &TcContext, packet: &Tcp4, flow: &FlowEntry) {
    let Some(session) = SESSIONS.get_ptr(flow.session) else {
        return;
    };
    // SAFETY: a live map value, read only.
    let client_seq = unsafe { (*session).client_seq };
    crate::seqadj::adjust(
        ctx,
        packet,
        &client_seq,
        flow.direction == FlowDirection::Original as u8,
    );
}

/// Tracks and scans one segment; true if a PORT/EPRT rewrite is pending.
#[inline(always)]
fn follow_segment(
    ctx: &TcContext,
    packet: &Tcp4,
    flow: &FlowEntry,
    config: &DatapathConfig,
    session: *mut SessionEntry,
) -> bool {
    let from_client = flow.direction == FlowDirection::Original as u8;
    let seq = u32::from_be_bytes(packet.tcp.seq);
    // SAFETY: a live map value. One control connection's packets are handled one at a time in
    // practice (one CPU per flow); a torn update would cost a missed line, never memory safety.
    let entry = unsafe { &mut *session };
    if packet.tcp.syn() != 0 {
        if !from_client {
            entry.server_lines.on_syn(seq);
        }
        return false;
    }
    let Some((payload_off, payload_len)) = packet.payload() else {
        return false;
    };
    if payload_len == 0 {
        return false;
    }
    let Ok(last) = ctx.load::<u8>(payload_off + payload_len - 1) else {
        return false;
    };
    let tracker = if from_client {
        &mut entry.client_lines
    } else {
        &mut entry.server_lines
    };
    let verdict = tracker.on_segment_len(seq, payload_len as u32, last == b'\n');
    if from_client && matches!(verdict, SegmentVerdict::Retransmission) {
        crate::rewrite::replay(ctx, packet, entry, config);
        return false;
    }
    let SegmentVerdict::InSync(in_sync) = verdict else {
        if matches!(verdict, SegmentVerdict::OutOfSync) {
            // Bytes were skipped: whatever line was being read is lost.
            if from_client {
                entry.commands.reset();
            } else {
                entry.replies.reset();
                entry.state.server_lines_lost();
            }
        }
        return false;
    };
    if !in_sync.continues_line {
        if from_client {
            entry.commands.reset();
        } else {
            entry.replies.reset();
        }
    }
    let copied = copy_payload(ctx, payload_off, payload_len);
    if copied == 0 || in_sync.start as usize >= copied {
        return false;
    }
    let mut scan = Scan {
        session,
        start: in_sync.start,
        end: copied as u32,
        from_client: u32::from(from_client),
        client: flow.session.saddr,
        server: flow.session.daddr,
        lan_ifindex: entry.lan_ifindex,
        expect_timeout_ns: config.expect_timeout_ns,
        session_key: flow.session,
        active_kind: rewrite_kind::NONE,
        active_delimiter: 0,
        active_field_off: 0,
        active_field_len: 0,
        active_port: 0,
        active_addr: [0; 4],
    };
    let callback = if from_client {
        scan_client_byte as *mut c_void
    } else {
        scan_server_byte as *mut c_void
    };
    // SAFETY: plain helper call: a static callback and a context on this stack frame.
    unsafe { bpf_loop(scan.end - scan.start, callback, (&raw mut scan).cast(), 0) };
    if scan.active_kind == rewrite_kind::NONE {
        return false;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch area, valid for the rest of this program run.
    unsafe {
        (*scratch).pending = ActiveRequest {
            kind: scan.active_kind,
            delimiter: scan.active_delimiter,
            field_off: scan.active_field_off,
            field_len: scan.active_field_len,
            addr: scan.active_addr,
            port: scan.active_port,
            session_key: flow.session,
        };
    }
    true
}

/// Copies up to [`SCRATCH_LEN`] payload bytes into this CPU's scratch buffer; returns how many.
#[inline(always)]
fn copy_payload(ctx: &TcContext, offset: usize, len: usize) -> usize {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    if len == 0 {
        return 0;
    }
    let len = if len > SCRATCH_LEN { SCRATCH_LEN } else { len };
    // Written so the verifier sees 1 ≤ len ≤ SCRATCH_LEN: the helper refuses a length that may be 0.
    let len = ((len - 1) & (SCRATCH_LEN - 1)) + 1;
    // SAFETY: the buffer holds SCRATCH_SIZE ≥ len bytes; the helper checks the packet's bounds.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            offset as u32,
            scratch.cast(),
            len as u32,
        )
    };
    if ret == 0 { len } else { 0 }
}

/// The byte `start + index` of the scratch buffer, or None past the segment's end.
#[inline(always)]
fn scan_input(scan: &Scan, index: u32) -> Option<u8> {
    let position = scan.start.wrapping_add(index);
    if position >= scan.end {
        return None;
    }
    let scratch = SCRATCH.get_ptr(0)?;
    // SAFETY: this CPU's scratch buffer, indexed with a mask that keeps the read inside it.
    Some(unsafe {
        *(*scratch)
            .bytes
            .as_ptr()
            .add(position as usize & SCRATCH_MASK)
    })
}

#[inline(always)]
fn scan_policy(scan: &Scan) -> PolicyContext {
    PolicyContext {
        client: IpAddr::V4(Ipv4Addr::from(scan.client)),
        server: IpAddr::V4(Ipv4Addr::from(scan.server)),
        policy: Policy::new(),
    }
}

/// `bpf_loop` callback for the client direction: feeds one byte to the command scanner and acts on
/// each command it completes. Returns 1 to stop the loop.
#[inline(never)]
extern "C" fn scan_client_byte(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the `Scan` on the caller's stack.
    let scan = unsafe { &mut *ctx.cast::<Scan>() };
    let Some(byte) = scan_input(scan, index) else {
        return 1;
    };
    // SAFETY: the session's map value, looked up by the caller in this same program run.
    let session = unsafe { &mut *scan.session };
    if !session.commands.push(byte) {
        return 0;
    }
    let policy = scan_policy(scan);
    match session
        .state
        .on_client_command(session.commands.command(), &policy)
    {
        ClientVerdict::OpenActive { addr, field, kind } => {
            // The field's offset in this segment's payload. Below `start` it began in a segment
            // already forwarded and cannot be rewritten here; one rewrite per segment.
            let line_start = (scan.start.wrapping_add(index) + 1)
                .wrapping_sub(u32::from(session.commands.line_len()));
            let field_off = line_start.wrapping_add(u32::from(field.start));
            let rewritable = scan.active_kind == rewrite_kind::NONE
                && field_off >= scan.start
                && field_off < scan.end;
            match (addr, rewritable) {
                (SocketAddr::V4(addr), true) => {
                    (scan.active_kind, scan.active_delimiter) = match kind {
                        ActiveKind::Port => (rewrite_kind::PORT, 0),
                        ActiveKind::Eprt { delimiter } => (rewrite_kind::EPRT, delimiter),
                    };
                    scan.active_field_off = field_off as u16;
                    scan.active_field_len = field.len;
                    scan.active_port = addr.port();
                    scan.active_addr = addr.ip().octets();
                }
                _ => {
                    session.state.expectation_closed();
                    bump(Counter::RewritesSkipped);
                }
            }
        }
        verdict => on_client_verdict(session, &verdict),
    }
    0
}

/// `bpf_loop` callback for the server direction: feeds one byte to the reply scanner and acts on
/// each reply line it completes. Returns 1 to stop the loop.
#[inline(never)]
extern "C" fn scan_server_byte(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the `Scan` on the caller's stack.
    let scan = unsafe { &mut *ctx.cast::<Scan>() };
    let Some(byte) = scan_input(scan, index) else {
        return 1;
    };
    // SAFETY: the session's map value, looked up by the caller in this same program run.
    let session = unsafe { &mut *scan.session };
    if !session.replies.push(byte) {
        return 0;
    }
    let policy = scan_policy(scan);
    let verdict = session
        .state
        .on_server_reply(session.replies.reply(), &policy);
    on_server_verdict(scan, session, &verdict);
    0
}

#[inline(always)]
fn on_client_verdict(session: &mut SessionEntry, verdict: &ClientVerdict) {
    match verdict {
        ClientVerdict::Malformed(_) => {
            session.malformed_lines += 1;
            bump(Counter::MalformedLines);
        }
        ClientVerdict::Refused(_) => {
            session.refusals += 1;
            bump(Counter::Refusals);
        }
        _ => {}
    }
}

#[inline(always)]
fn on_server_verdict(scan: &Scan, session: &mut SessionEntry, verdict: &ServerVerdict) {
    match *verdict {
        ServerVerdict::OpenPassive { endpoint, .. } => {
            let (addr, port) = match endpoint {
                PassiveEndpoint::Pasv(addr) => (addr.ip().octets(), addr.port()),
                PassiveEndpoint::Epsv { port, .. } => (scan.server, port),
            };
            let key = ExpectKey {
                saddr: scan.client,
                daddr: addr,
                dport: port.to_be_bytes(),
                _pad: [0; 2],
            };
            let expectation = Expectation {
                expires_ns: now_ns() + scan.expect_timeout_ns,
                session: scan.session_key,
                target_addr: addr,
                lan_ifindex: scan.lan_ifindex,
                target_port: port.to_be_bytes(),
                public_port: 0,
                kind: ExpectationKind::Passive as u8,
                _pad: [0; 7],
            };
            if EXPECTS.insert(key, expectation, u64::from(BPF_ANY)).is_ok() {
                bump(Counter::ExpectationsCreated);
            } else {
                session.state.expectation_closed();
                bump(Counter::ExpectationTableFull);
            }
        }
        ServerVerdict::Malformed(_) => {
            session.malformed_lines += 1;
            bump(Counter::MalformedLines);
        }
        ServerVerdict::Refused(_) | ServerVerdict::Unsolicited { .. } => {
            session.refusals += 1;
            bump(Counter::Refusals);
        }
        _ => {}
    }
}
