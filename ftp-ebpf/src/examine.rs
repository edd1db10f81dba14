//! Examining one complete line of a control connection, as the client or server stage found it:
//! the session's state machine gives its verdict, and the line is reported (events, counters),
//! opens an outbound expectation, or is accepted for a rewrite that the rewrite stage carries out.
//! A line ftp-common cannot parse passes untouched and is counted; a refused line passes
//! untouched, opens nothing and is counted.

use ftp_common::{
    ActiveKind, ClientVerdict, CommandName, PassiveEndpoint, PolicyContext, RefusalReason,
    ServerVerdict,
    maps::{
        Counter, EventKind, ExpectationKind, ExpectationPath, IpBytes, SESSION_USER_LEN,
        SessionEntry, SessionKind, ip, malformed_slot, refusal_slot, rewrite_kind,
    },
};

use crate::{
    expect,
    maps::{SCRATCH, bump},
    scratch::{SCRATCH_MASK, Scan, Segment},
};

/// What the session's announcements are checked against: its client (the control connection's
/// source), its server, and the policy. Made in the scratch area: with addresses of either family
/// it is 44 bytes the stages' call chains have no room for.
#[inline(always)]
fn scan_policy(segment: &Segment, session: &SessionEntry) -> Option<&'static PolicyContext> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch area; the context is made anew for each line.
    let context = unsafe { &mut (*scratch).policy_context };
    crate::scratch::copy(&mut context.client, &segment.session_key.saddr);
    crate::scratch::copy(&mut context.server, &session.server_addr);
    crate::scratch::copy(&mut context.policy, &segment.policy);
    // A published server may announce its public address (e.g. vsftpd's pasv_address): whatever
    // it wrote is replaced, and the data connection goes to the server itself.
    context.policy.passive_address_must_match_server =
        segment.session_kind != SessionKind::Publish as u8;
    Some(context)
}

/// Hands the rewrite the address a line announced.
#[inline(always)]
fn request_addr(addr: IpBytes) {
    if let Some(scratch) = SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch area; the rewrite request is read after the scan.
        unsafe { (*scratch).pending.addr = addr };
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

/// Acts on the command the client's line ending at scratch offset `line_end` carries. Returns
/// where the scan goes on: the byte after the line.
// The return value is used on purpose: one the caller ignored was left undefined by LLVM, and
// the verifier refuses a subprogram whose r0 then happens to hold a stack pointer.
#[inline(never)]
pub fn client_line(scan: &mut Scan, line_end: u32) -> u32 {
    let next = line_end.wrapping_add(1);
    let Some(segment) = crate::scratch::segment() else {
        return next;
    };
    // SAFETY: the session's map value, looked up by the caller in this same program run.
    let session = unsafe { &mut *scan.session };
    let Some(policy) = scan_policy(segment, session) else {
        return next;
    };
    let command = session.commands.command();
    report_command(scan, line_end, session, &command);
    match session.state.on_client_command(command, policy) {
        ClientVerdict::OpenActive { kind, .. }
            if segment.session_kind == SessionKind::Nat64 as u8
                && kind != ActiveKind::EprtAsPort =>
        {
            // The client switched the ALG off: its EPRT reaches the IPv4 server as sent, which
            // cannot connect to an IPv6 address. Nothing to admit.
            session.state.expectation_closed();
        }
        // NAT64: an EPSV goes to the server as PASV, a command the ALG answers itself as NOOP.
        ClientVerdict::EpsvAsPasv => {
            replace_command(scan, session, rewrite_kind::EPSV_AS_PASV, line_end);
        }
        ClientVerdict::AnsweredByAlg(_) => {
            replace_command(scan, session, rewrite_kind::LOCAL_COMMAND, line_end);
        }
        ClientVerdict::OpenActive { addr, .. }
            if segment.session_kind == SessionKind::Publish as u8
                || segment.session_kind == SessionKind::Firewall as u8 =>
        {
            // The client names its own address (the policy checked it), which needs no rewrite:
            // an outside client's (publishing) is reached through the router, SNATed; a client
            // in firewall mode is reached as it is.
            let path = if segment.session_kind == SessionKind::Publish as u8 {
                ExpectationPath::Outbound
            } else {
                ExpectationPath::Through
            };
            let announced = expect::Announced {
                peer: session.server_addr,
                target: ip::from_ip(addr.ip()),
                port: addr.port(),
                kind: ExpectationKind::Active,
                path,
            };
            expect::create(session, &announced);
        }
        // Masquerading (NAT66 included): the address is the client's and of its session's family
        // (the policy refused any other as a bounce). NAT64: the whole EPRT becomes a PORT of the
        // pool address.
        ClientVerdict::OpenActive { addr, field, kind } => {
            let line_len = session.commands.line_len();
            let (rewrite, delimiter, field) = match kind {
                ActiveKind::Port => (rewrite_kind::PORT, 0, field),
                ActiveKind::Eprt { delimiter } => (rewrite_kind::EPRT, delimiter, field),
                ActiveKind::EprtAsPort => (rewrite_kind::EPRT_AS_PORT, 0, whole_line(line_len)),
            };
            let line = line_start(line_end, line_len);
            if request_rewrite(scan, rewrite, delimiter, (line, line_len), field) {
                scan.rewrite_port = addr.port();
                request_addr(ip::from_ip(addr.ip()));
            } else {
                session.state.expectation_closed();
                bump(Counter::RewritesSkipped);
            }
        }
        verdict => on_client_verdict(session, &verdict),
    }
    next
}

/// Acts on the reply line ending at scratch offset `line_end`; returns where the scan goes on,
/// as [`client_line`].
#[inline(never)]
pub fn server_line(scan: &mut Scan, line_end: u32) -> u32 {
    let next = line_end.wrapping_add(1);
    let Some(segment) = crate::scratch::segment() else {
        return next;
    };
    // SAFETY: the session's map value, looked up by the caller in this same program run.
    let session = unsafe { &mut *scan.session };
    let Some(policy) = scan_policy(segment, session) else {
        return next;
    };
    let verdict = session
        .state
        .on_server_reply(session.replies.reply(), policy);
    on_server_verdict(scan, line_end, session, &verdict);
    next
}

/// Asks for the client's line ending at `line_end` to be replaced whole (`kind`); if it cannot be
/// (a line begun in a segment already forwarded, or a second rewrite in the segment), it reaches
/// the server as sent, and the session tracks it as the client's own command.
#[inline(always)]
fn replace_command(scan: &mut Scan, session: &mut SessionEntry, kind: u8, line_end: u32) {
    if !request_whole_line(scan, kind, 0, line_end, session.commands.line_len()) {
        session.state.alg_line_passed();
        bump(Counter::RewritesSkipped);
    }
}

/// Records the whole line (all of it but its LF) of `line_len` bytes ending at `line_end` for a
/// rewrite of `kind` after the scan (the NAT64 ALG's replacements); false if it cannot be.
#[inline(always)]
fn request_whole_line(scan: &mut Scan, kind: u8, code: u8, line_end: u32, line_len: u16) -> bool {
    let line = line_start(line_end, line_len);
    request_rewrite(scan, kind, code, (line, line_len), whole_line(line_len))
}

/// A line of `line_len` bytes as a field: all of it but its LF (a CR, if any, is replaced too).
#[inline(always)]
fn whole_line(line_len: u16) -> ftp_common::Span {
    ftp_common::Span {
        start: 0,
        len: line_len.saturating_sub(1),
    }
}

/// Asks for the server's reply line ending at `line_end` to be replaced whole by the NAT64 ALG's
/// reply `code` (an [`ftp_common::AlgReply`]); counted if it cannot be.
#[inline(always)]
fn replace_reply(scan: &mut Scan, session: &SessionEntry, code: u8, line_end: u32) {
    let line_len = session.replies.line_len();
    if !request_whole_line(scan, rewrite_kind::ALG_REPLY, code, line_end, line_len) {
        bump(Counter::RewritesSkipped);
    }
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
    let Some(segment) = crate::scratch::segment() else {
        return;
    };
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
        &segment.session_key,
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
fn on_client_verdict(session: &mut SessionEntry, verdict: &ClientVerdict) {
    match verdict {
        ClientVerdict::Malformed(reason) => {
            session.malformed_lines += 1;
            bump(Counter::MalformedLines);
            report(EventKind::Malformed, *reason as u8);
        }
        ClientVerdict::Refused(reason) => {
            session.refusals += 1;
            bump(Counter::Refusals);
            report(EventKind::Refused, *reason as u8);
        }
        _ => {}
    }
}

/// Reports an event of this session that carries no address; refusals and unparseable lines
/// are also counted by reason.
#[inline(always)]
fn report(kind: EventKind, detail: u8) {
    let Some(segment) = crate::scratch::segment() else {
        return;
    };
    match kind {
        EventKind::Refused => crate::maps::bump_reason(refusal_slot(detail)),
        EventKind::Malformed => crate::maps::bump_reason(malformed_slot(detail)),
        _ => {}
    }
    crate::events::emit(&segment.session_key, kind, detail, &ip::UNSPECIFIED, 0);
}

#[inline(always)]
fn on_server_verdict(
    scan: &mut Scan,
    line_end: u32,
    session: &mut SessionEntry,
    verdict: &ServerVerdict,
) {
    let Some(segment) = crate::scratch::segment() else {
        return;
    };
    match *verdict {
        ServerVerdict::AlgRefused(reason) => {
            session.refusals += 1;
            bump(Counter::Refusals);
            report(EventKind::Refused, reason as u8);
            let code = ftp_common::AlgReply::for_refusal(reason) as u8;
            replace_reply(scan, session, code, line_end);
        }
        ServerVerdict::AlgReply(reply) => replace_reply(scan, session, reply as u8, line_end),
        ServerVerdict::OpenPassive { endpoint, field } => {
            let (addr, port, rewrite, delimiter) = match endpoint {
                PassiveEndpoint::Pasv(addr) => (
                    ip::v4_mapped(addr.ip().octets()),
                    addr.port(),
                    rewrite_kind::PASV_227,
                    0,
                ),
                // NAT64: a 227 answering an EPSV the ALG sent as PASV, returned as a 229.
                PassiveEndpoint::PasvAs229(addr) => (
                    ip::v4_mapped(addr.ip().octets()),
                    addr.port(),
                    rewrite_kind::PASV_AS_229,
                    0,
                ),
                PassiveEndpoint::Epsv { port, delimiter } => {
                    (session.server_addr, port, rewrite_kind::EPSV_229, delimiter)
                }
            };
            let code = if rewrite == rewrite_kind::EPSV_229 {
                29
            } else {
                27
            };
            crate::events::emit(
                &segment.session_key,
                EventKind::PassiveReply,
                code,
                &addr,
                port,
            );
            if segment.session_kind != SessionKind::Publish as u8 {
                // The client connects out to what the server announced: SNATed when
                // masquerading, as it is in firewall mode.
                let path = if segment.session_kind == SessionKind::Firewall as u8 {
                    ExpectationPath::Through
                } else {
                    ExpectationPath::Outbound
                };
                // A NAT64 client connects to the server where it reaches it: at its prefixed
                // address, the control connection's destination.
                let target = if segment.session_kind == SessionKind::Nat64 as u8 {
                    segment.session_key.daddr
                } else {
                    addr
                };
                let announced = expect::Announced {
                    peer: segment.session_key.saddr,
                    target,
                    port,
                    kind: ExpectationKind::Passive,
                    path,
                };
                expect::create(session, &announced);
                if rewrite == rewrite_kind::PASV_AS_229 {
                    let line_len = session.replies.line_len();
                    if request_whole_line(scan, rewrite, 0, line_end, line_len) {
                        scan.rewrite_port = port;
                    } else {
                        // The client gets the 227 as sent (its expectation stays).
                        bump(Counter::RewritesSkipped);
                    }
                }
                return;
            }
            // Publishing: the reply must name the public address and a window port instead.
            let line_len = session.replies.line_len();
            let line = line_start(line_end, line_len);
            if request_rewrite(scan, rewrite, delimiter, (line, line_len), field) {
                scan.rewrite_port = port;
                request_addr(addr);
            } else {
                session.state.expectation_closed();
                bump(Counter::RewritesSkipped);
            }
        }
        ServerVerdict::Malformed(reason) => {
            session.malformed_lines += 1;
            bump(Counter::MalformedLines);
            report(EventKind::Malformed, reason as u8);
        }
        ServerVerdict::Refused(reason) => {
            session.refusals += 1;
            bump(Counter::Refusals);
            report(EventKind::Refused, reason as u8);
        }
        ServerVerdict::Unsolicited { .. } => {
            session.refusals += 1;
            bump(Counter::Refusals);
            report(EventKind::Refused, RefusalReason::UnsolicitedReply as u8);
        }
        ServerVerdict::TlsStarted => report(EventKind::TlsStarted, 0),
        _ => {}
    }
}
