//! Examining one complete line of a control connection, as the client or server stage found it:
//! the session's state machine gives its verdict, and the line is reported (events, counters),
//! opens an outbound expectation, or is accepted for a rewrite that the rewrite stage carries out.
//! A line ftp-common cannot parse passes untouched and is counted; a refused line passes
//! untouched, opens nothing and is counted.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use ftp_common::{
    ActiveKind, ClientVerdict, CommandName, PassiveEndpoint, PolicyContext, RefusalReason,
    ServerVerdict,
    maps::{
        Counter, EventKind, ExpectationKind, SESSION_USER_LEN, SessionEntry, SessionKind,
        malformed_slot, refusal_slot, rewrite_kind,
    },
};

use crate::{
    expect,
    maps::{SCRATCH, bump},
    scratch::{SCRATCH_MASK, Scan},
};

#[inline(always)]
fn scan_policy(scan: &Scan) -> PolicyContext {
    let mut policy = scan.policy;
    // A published server may announce its public address (e.g. vsftpd's pasv_address): whatever
    // it wrote is replaced, and the data connection goes to the server itself.
    policy.passive_address_must_match_server = scan.session_kind != SessionKind::Publish as u8;
    PolicyContext {
        client: IpAddr::V4(Ipv4Addr::from(scan.client)),
        server: IpAddr::V4(Ipv4Addr::from(scan.server)),
        policy,
    }
}

/// Where the line whose LF is at scratch offset `line_end` starts. A line read across segments
/// began in one already forwarded: its start wraps below 0 (or lies below `scan.start`), which
/// [`request_rewrite`] checks.
#[inline(always)]
fn line_start(line_end: u32, line_len: u16) -> u32 {
    line_end.wrapping_add(1).wrapping_sub(u32::from(line_len))
}

/// Records the field of an accepted line for the rewrite after the scan, if it lies in this
/// segment and the segment has no rewrite yet (one per segment). False if it cannot be rewritten.
#[inline(always)]
fn request_rewrite(
    scan: &mut Scan,
    kind: u8,
    delimiter: u8,
    (line_off, line_len): (u32, u16),
    field: ftp_common::Span,
) -> bool {
    let field_off = line_off.wrapping_add(u32::from(field.start));
    if scan.rewrite_kind != rewrite_kind::NONE
        || field_off < scan.field_floor
        || field_off >= scan.end
    {
        return false;
    }
    scan.rewrite_kind = kind;
    scan.rewrite_delimiter = delimiter;
    scan.rewrite_field_off = field_off as u16;
    scan.rewrite_field_len = field.len;
    let line_in_segment = line_off >= scan.start && line_off < scan.end;
    scan.rewrite_line_in_segment = u8::from(line_in_segment);
    scan.rewrite_line_off = line_off as u16;
    // All of the line but its LF: a CR, if any, is replaced too.
    scan.rewrite_line_len = line_len.saturating_sub(1);
    true
}

/// Acts on the command the client's line ending at scratch offset `line_end` carries.
#[inline(never)]
pub fn client_line(scan: &mut Scan, line_end: u32) -> i64 {
    // SAFETY: the session's map value, looked up by the caller in this same program run.
    let session = unsafe { &mut *scan.session };
    let policy = scan_policy(scan);
    let command = session.commands.command();
    report_command(scan, line_end, session, &command);
    match session.state.on_client_command(command, &policy) {
        ClientVerdict::OpenActive {
            addr: SocketAddr::V4(addr),
            field,
            kind,
        } => {
            if scan.session_kind == SessionKind::Publish as u8 {
                // The outside client names its own address (the policy checked it): the server's
                // connection to it leaves through the router, SNATed.
                expect::create_outbound(
                    scan,
                    session,
                    [scan.server, addr.ip().octets()],
                    addr.port(),
                    ExpectationKind::Active,
                );
                return 0;
            }
            let (rewrite, delimiter) = match kind {
                ActiveKind::Port => (rewrite_kind::PORT, 0),
                ActiveKind::Eprt { delimiter } => (rewrite_kind::EPRT, delimiter),
            };
            let line_len = session.commands.line_len();
            let line = line_start(line_end, line_len);
            if request_rewrite(scan, rewrite, delimiter, (line, line_len), field) {
                scan.rewrite_port = addr.port();
                scan.rewrite_addr = addr.ip().octets();
            } else {
                session.state.expectation_closed();
                bump(Counter::RewritesSkipped);
            }
        }
        ClientVerdict::OpenActive { .. } => {
            // IPv6 through an IPv4 router: nothing to open.
            session.state.expectation_closed();
            bump(Counter::RewritesSkipped);
        }
        verdict => on_client_verdict(scan, session, &verdict),
    }
    0
}

/// Acts on the reply line ending at scratch offset `line_end`.
#[inline(never)]
pub fn server_line(scan: &mut Scan, line_end: u32) -> i64 {
    // SAFETY: the session's map value, looked up by the caller in this same program run.
    let session = unsafe { &mut *scan.session };
    let policy = scan_policy(scan);
    let verdict = session
        .state
        .on_server_reply(session.replies.reply(), &policy);
    on_server_verdict(scan, line_end, session, &verdict);
    0
}

/// Reports a command the client sent, with its argument if it is a USER name or a transfer's
/// file (never a password) and lies in this segment.
#[inline(always)]
fn report_command(
    scan: &Scan,
    line_end: u32,
    session: &SessionEntry,
    command: &ftp_common::Command,
) {
    if session.state.is_encrypted() {
        return;
    }
    let (text_off, text_len) = match command.reported_argument() {
        Some(arg) => {
            let line = line_start(line_end, session.commands.line_len());
            let off = line.wrapping_add(u32::from(arg.start));
            if off >= scan.start && off < scan.end {
                (off, u32::from(arg.len))
            } else {
                (0, 0)
            }
        }
        None => (0, 0),
    };
    crate::events::emit_command(
        &scan.session_key,
        CommandName::of(command) as u8,
        text_off,
        text_len,
    );
    if matches!(command, ftp_common::Command::User { .. }) {
        remember_user(scan.session, text_off, text_len);
    }
}

/// Keeps a USER name in the session record, for `ftpnat sessions`.
// A subprogram of its own: the copy loop is verified once.
#[inline(never)]
fn remember_user(session: *mut SessionEntry, text_off: u32, text_len: u32) {
    let Some(scratch) = SCRATCH.get_ptr(0) else {
        return;
    };
    let len = if text_len > SESSION_USER_LEN as u32 {
        SESSION_USER_LEN as u32
    } else {
        text_len
    };
    // SAFETY: the session's map value and this CPU's scratch buffer, read at masked offsets.
    unsafe {
        let mut i = 0;
        while i < SESSION_USER_LEN {
            let byte = if (i as u32) < len {
                *(*scratch)
                    .bytes
                    .as_ptr()
                    .add((text_off as usize + i) & SCRATCH_MASK)
            } else {
                0
            };
            (*session).user[i] = byte;
            i += 1;
        }
        (*session).user_len = len as u8;
    }
}

#[inline(always)]
fn on_client_verdict(scan: &Scan, session: &mut SessionEntry, verdict: &ClientVerdict) {
    match verdict {
        ClientVerdict::Malformed(reason) => {
            session.malformed_lines += 1;
            bump(Counter::MalformedLines);
            report(scan, EventKind::Malformed, *reason as u8);
        }
        ClientVerdict::Refused(reason) => {
            session.refusals += 1;
            bump(Counter::Refusals);
            report(scan, EventKind::Refused, *reason as u8);
        }
        _ => {}
    }
}

/// Reports an event of this session that carries no address; refusals and unparseable lines
/// are also counted by reason.
#[inline(always)]
fn report(scan: &Scan, kind: EventKind, detail: u8) {
    match kind {
        EventKind::Refused => crate::maps::bump_reason(refusal_slot(detail)),
        EventKind::Malformed => crate::maps::bump_reason(malformed_slot(detail)),
        _ => {}
    }
    crate::events::emit(&scan.session_key, kind, detail, [0; 4], 0);
}

#[inline(always)]
fn on_server_verdict(
    scan: &mut Scan,
    line_end: u32,
    session: &mut SessionEntry,
    verdict: &ServerVerdict,
) {
    match *verdict {
        ServerVerdict::OpenPassive { endpoint, field } => {
            let (addr, port, rewrite, delimiter) = match endpoint {
                PassiveEndpoint::Pasv(addr) => {
                    (addr.ip().octets(), addr.port(), rewrite_kind::PASV_227, 0)
                }
                PassiveEndpoint::Epsv { port, delimiter } => {
                    (scan.server, port, rewrite_kind::EPSV_229, delimiter)
                }
            };
            let code = if rewrite == rewrite_kind::PASV_227 {
                27
            } else {
                29
            };
            crate::events::emit(&scan.session_key, EventKind::PassiveReply, code, addr, port);
            if scan.session_kind != SessionKind::Publish as u8 {
                // Masquerading: the client connects out to what the server announced.
                expect::create_outbound(
                    scan,
                    session,
                    [scan.client, addr],
                    port,
                    ExpectationKind::Passive,
                );
                return;
            }
            // Publishing: the reply must name the public address and a window port instead.
            let line_len = session.replies.line_len();
            let line = line_start(line_end, line_len);
            if request_rewrite(scan, rewrite, delimiter, (line, line_len), field) {
                scan.rewrite_port = port;
                scan.rewrite_addr = addr;
            } else {
                session.state.expectation_closed();
                bump(Counter::RewritesSkipped);
            }
        }
        ServerVerdict::Malformed(reason) => {
            session.malformed_lines += 1;
            bump(Counter::MalformedLines);
            report(scan, EventKind::Malformed, reason as u8);
        }
        ServerVerdict::Refused(reason) => {
            session.refusals += 1;
            bump(Counter::Refusals);
            report(scan, EventKind::Refused, reason as u8);
        }
        ServerVerdict::Unsolicited { .. } => {
            session.refusals += 1;
            bump(Counter::Refusals);
            report(
                scan,
                EventKind::Refused,
                RefusalReason::UnsolicitedReply as u8,
            );
        }
        ServerVerdict::TlsStarted => report(scan, EventKind::TlsStarted, 0),
        _ => {}
    }
}
