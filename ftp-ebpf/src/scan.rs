//! The client and server stages: following a control connection's bytes. Each segment is
//! tracked (where it sits in the stream, whether it repeats bytes already seen), its new bytes are
//! copied into the scratch area a window at a time and fed to the session's scanner from a
//! `bpf_loop` callback that stops at the end of each line the session acts on; the line is then
//! examined (`examine`), one per pass of the stage. The scanners keep their state in the session
//! record, so a command split over two segments is read whole.
//!
//! What an announcement means depends on the session's kind. Masquerading (client behind the
//! router): a PORT/EPRT is rewritten to the public address and a window port, a 227/229 opens an
//! outbound expectation. Publishing (server behind the router): a 227/229 is rewritten to the
//! public address and a window port, a PORT/EPRT opens an outbound expectation for the server's
//! connection to the client. Nothing here re-implements FTP parsing: ftp-common's line tracker,
//! byte scanners and state machine do it.

use aya_ebpf::{
    helpers::{bpf_loop, bpf_skb_load_bytes},
    programs::TcContext,
};
use core::ffi::c_void;
use ftp_common::{
    Policy, SegmentVerdict,
    maps::{
        Counter, DatapathConfig, FlowDirection, FlowEntry, SessionEntry, SessionKind, hold_state,
        nat64_flags, publish, rewrite_kind,
    },
    seqadj::seq_after,
};

use crate::{
    examine,
    headers::Tcp,
    held,
    maps::{PUBLISH, SCRATCH, SESSIONS, bump},
    scratch::{FROM_SERVER, RewriteRequest, SCRATCH_LEN, SCRATCH_MASK, SCRATCH_WORD_MASK, Scan},
    session,
};

/// Follows a packet a control connection's client sent, before its headers are translated. The
/// stage's first pass (`pass` 0) tracks the segment and copies its new bytes; every pass then
/// examines the next complete line. Says what it left pending in the scratch area.
// The two directions are separate subprograms (and stages): each verifies only its own scanner.
#[inline(never)]
pub fn client_packet(ctx: &TcContext, packet: &Tcp, flow: &FlowEntry, pass: u32) -> Pending {
    follow_packet(ctx, packet, flow, pass, true)
}

/// Follows a packet a control connection's server sent; see [`client_packet`].
#[inline(never)]
pub fn server_packet(ctx: &TcContext, packet: &Tcp, flow: &FlowEntry, pass: u32) -> Pending {
    follow_packet(ctx, packet, flow, pass, false)
}

#[inline(always)]
fn follow_packet(
    ctx: &TcContext,
    packet: &Tcp,
    flow: &FlowEntry,
    pass: u32,
    from_client: bool,
) -> Pending {
    let Some(session) = SESSIONS.get_ptr_mut(flow.session) else {
        return Pending::Nothing;
    };
    if pass == 0 {
        session::apply_releases(&flow.session, session);
        if let Some(pending) = begin_segment(ctx, packet, flow, session, from_client) {
            return pending;
        }
    }
    next_line(ctx, session, from_client, pass)
}

/// How many passes a client or server stage may make over one segment, each stopping at one line
/// to examine or at the end of one window of the payload (a scratch area's worth). The stage goes
/// on in itself by a tail call for each, and a packet may make at most 33 tail calls (32 before
/// Linux 5.12): this leaves room for the entry's and the two after the scan. What a segment holds
/// beyond that passes unexamined ([`Counter::SegmentsPartlyExamined`]); the server lines the
/// session ignores (multi-line reply bodies) take no pass of their own.
pub const MAX_LINE_PASSES: u32 = 26;

/// What [`client_packet`] or [`server_packet`] left in the scratch area for the caller to carry out.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    Nothing,
    /// `pending`: [`crate::rewrite::rewrite_pending`].
    Rewrite,
    /// `replay`: [`crate::rewrite::replay_pending`].
    Replay,
    /// Nothing: the segment is to be dropped.
    Drop,
    /// The segment has more bytes to examine: the same stage goes on with them.
    More,
}

/// A segment whose every byte was seen before: what was done to it (a rewrite, a cut) is to be
/// repeated. A retransmission that cannot get the same bytes is counted.
#[inline(always)]
fn on_retransmission(packet: &Tcp, flow: &FlowEntry, entry: &SessionEntry) -> Pending {
    let from_client = flow.direction == FlowDirection::Original as u8;
    let seq = u32::from_be_bytes(packet.tcp.seq);
    let Some((_, payload_len)) = packet.payload() else {
        return Pending::Nothing;
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Pending::Nothing;
    };
    let record = if from_client {
        &entry.client_rewrite
    } else {
        &entry.server_rewrite
    };
    let held = if from_client {
        &entry.held
    } else {
        &entry.server_held
    };
    let record = ftp_common::hold::retransmission_record(held, record, seq, payload_len);
    let Some(record) = record else {
        bump(Counter::RewritesSkipped);
        return Pending::Nothing;
    };
    // SAFETY: this CPU's scratch area, valid for the rest of this program run.
    unsafe {
        (*scratch).replay = record;
        (*scratch).pending.session_key = flow.session;
        (*scratch).pending.from_server = if from_client { 0 } else { FROM_SERVER };
    }
    Pending::Replay
}

/// Tracks one segment and copies its new bytes for the scan, which it leaves in the scratch area;
/// `Some` if there is nothing to scan (and what is pending instead).
// A subprogram of its own: the scan it builds is not on the stack while a line is examined.
#[inline(never)]
fn begin_segment(
    ctx: &TcContext,
    packet: &Tcp,
    flow: &FlowEntry,
    session: *mut SessionEntry,
    from_client: bool,
) -> Option<Pending> {
    // Looked up here, not handed over: a BPF function takes five arguments at most.
    let Some(config) = crate::maps::config() else {
        return Some(Pending::Nothing);
    };
    let seq = u32::from_be_bytes(packet.tcp.seq);
    // SAFETY: a live map value. One control connection's packets are handled one at a time in
    // practice (one CPU per flow); a torn update would cost a missed line, never memory safety.
    let entry = unsafe { &mut *session };
    if packet.tcp.syn() != 0 {
        if !from_client {
            entry.server_lines.on_syn(seq);
        }
        return Some(Pending::Nothing);
    }
    let Some((payload_off, payload_len)) = packet.payload() else {
        return Some(Pending::Nothing);
    };
    if payload_len == 0 {
        return Some(Pending::Nothing);
    }
    let held = if from_client {
        &entry.held
    } else {
        &entry.server_held
    };
    if held.state == hold_state::HOLDING && seq_after(seq, held.next_seq()) {
        // Bytes after the held line's continuation arrived first: forwarded now, they would take
        // the place the held bytes are to fill. Dropped; their sender sends them again.
        return Some(Pending::Drop);
    }
    let Ok(last) = ctx.load::<u8>(payload_off + payload_len - 1) else {
        return Some(Pending::Nothing);
    };
    let tracker = if from_client {
        &mut entry.client_lines
    } else {
        &mut entry.server_lines
    };
    let verdict = tracker.on_segment_len(seq, payload_len as u32, last == b'\n');
    if matches!(verdict, SegmentVerdict::Retransmission) {
        return Some(on_retransmission(packet, flow, entry));
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
        return Some(Pending::Nothing);
    };
    if !in_sync.continues_line {
        if from_client {
            entry.commands.reset();
        } else {
            entry.replies.reset();
        }
    }
    // Held bytes go in front of the payload's copy, so that the scan sees the held line (or its
    // address) whole: scratch offsets are then the payload's plus `held_len` (0 if nothing is held).
    let held_len = if from_client {
        held::stage_held::<true>(session, in_sync.start, seq)
    } else {
        held::stage_held::<false>(session, in_sync.start, seq)
    } as usize;
    let copied = copy_payload(ctx, payload_off, payload_len, held_len);
    if copied == 0 || in_sync.start as usize >= copied {
        return Some(Pending::Nothing);
    }
    let scan = Scan {
        session,
        start: in_sync.start + held_len as u32,
        end: (held_len + copied) as u32,
        next: in_sync.start + held_len as u32,
        line_end: 0,
        line_found: 0,
        held_len: held_len as u32,
        scanned_all: u32::from(copied == payload_len),
        payload_off: payload_off as u32,
        payload_len: payload_len as u32,
        window_end: copied as u32,
        rewrite_kind: rewrite_kind::NONE,
        rewrite_delimiter: 0,
        rewrite_line_in_segment: 0,
        rewrite_field_off: 0,
        rewrite_field_len: 0,
        rewrite_line_off: 0,
        rewrite_line_len: 0,
        rewrite_port: 0,
        // Where this segment's new bytes start in the payload: held bytes, if any, start at 0
        // (a held line is only continued by a segment with nothing seen before).
        field_floor: in_sync.start,
    };
    let scratch = SCRATCH.get_ptr_mut(0)?;
    scan.save(scratch);
    // SAFETY: this CPU's scratch area, valid for the rest of this program run and the passes
    // after it. Field by field: a struct built whole is built on the stack first.
    let segment = unsafe { &mut (*scratch).segment };
    segment.session_key = flow.session;
    segment.policy = session_policy(config, flow, entry);
    segment.session_kind = entry.kind;
    segment.lan_ifindex = entry.lan_ifindex;
    segment.expect_timeout_ns = config.expect_timeout_ns;
    None
}

/// The policy the session's announcements are checked against: a published server's 227/229 may
/// only announce its passive ports, and never its control port.
#[inline(always)]
fn session_policy(config: &DatapathConfig, flow: &FlowEntry, entry: &SessionEntry) -> Policy {
    let mut policy = config.policy();
    if entry.kind == SessionKind::Publish as u8 {
        // SAFETY: the value is copied out at once.
        policy.passive_ports = unsafe { PUBLISH.get(flow.public_port) }
            .map_or(publish::DEFAULT_PASSIVE_PORTS, |target| {
                target.passive_ports
            });
        policy.passive_port_excluded = u16::from_be_bytes(entry.server_port);
    } else if entry.kind == SessionKind::Nat64 as u8 {
        policy.nat64_alg = true;
        policy.epsv_as_pasv = config.nat64_flags & nat64_flags::EPSV_AS_PASV != 0;
    }
    policy
}

/// One pass: feeds the segment's bytes to the session's scanner from where the last pass stopped
/// until a line the session acts on ends, and examines that line. `More` while bytes are left and
/// passes remain, then what the whole segment asks for.
#[inline(always)]
fn next_line(ctx: &TcContext, session: *mut SessionEntry, from_client: bool, pass: u32) -> Pending {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Pending::Nothing;
    };
    // SAFETY: this CPU's scratch area, where the first pass left the scan.
    let mut scan = unsafe { (*scratch).scan };
    scan.session = session;
    scan.line_found = 0;
    if scan.next >= scan.end {
        // A pass of its own: the verifier would otherwise walk the scan and the line's
        // examination once more for the window's other bounds.
        if scan.window_end < scan.payload_len && pass + 1 >= MAX_LINE_PASSES {
            bump(Counter::SegmentsPartlyExamined);
        }
        if pass + 1 >= MAX_LINE_PASSES || !next_window(ctx, &mut scan) {
            return end_segment(&mut scan, from_client);
        }
        scan.save(scratch);
        return Pending::More;
    }
    let callback = if from_client {
        find_client_line as *mut c_void
    } else {
        find_server_line as *mut c_void
    };
    // SAFETY: plain helper call: a static callback and a context on this stack frame.
    unsafe { bpf_loop(scan.end - scan.next, callback, (&raw mut scan).cast(), 0) };
    if scan.line_found == 0 {
        // The window's bytes all went to the scanner without ending a line it acts on.
        scan.next = scan.end;
    } else {
        let line_end = scan.line_end;
        scan.next = if from_client {
            examine::client_line(&mut scan, line_end)
        } else {
            examine::server_line(&mut scan, line_end)
        };
    }
    let bytes_left = scan.next < scan.end || scan.window_end < scan.payload_len;
    if bytes_left {
        if pass + 1 < MAX_LINE_PASSES {
            scan.save(scratch);
            return Pending::More;
        }
        // Out of passes: the rest of the segment goes on unexamined, and its lines are lost to
        // the scanner, which starts afresh with the next segment that starts a line.
        bump(Counter::SegmentsPartlyExamined);
    }
    end_segment(&mut scan, from_client)
}

/// Copies the segment's next window of payload into the scratch area for the scan; false if the
/// payload has no more. Nothing in a later window is rewritten (a segment longer than the scratch
/// area never is): only followed.
#[inline(always)]
fn next_window(ctx: &TcContext, scan: &mut Scan) -> bool {
    if scan.window_end >= scan.payload_len {
        return false;
    }
    let copied = copy_payload(
        ctx,
        (scan.payload_off + scan.window_end) as usize,
        (scan.payload_len - scan.window_end) as usize,
        0,
    );
    if copied == 0 {
        return false;
    }
    scan.start = 0;
    scan.next = 0;
    scan.end = copied as u32;
    scan.window_end += copied as u32;
    scan.field_floor = u32::MAX;
    true
}

/// After the last line of a segment: what the scan asks the next stage to do.
#[inline(always)]
fn end_segment(scan: &mut Scan, from_client: bool) -> Pending {
    let requested = if from_client {
        held::after_client_scan(scan, scan.held_len, scan.scanned_all != 0)
    } else {
        held::after_server_scan(scan, scan.held_len, scan.scanned_all != 0)
    };
    if requested == rewrite_kind::NONE {
        return Pending::Nothing;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Pending::Nothing;
    };
    // SAFETY: this CPU's scratch area, valid for the rest of this program run. Written field by
    // field: a struct built whole is built on the stack first.
    let pending: &mut RewriteRequest = unsafe { &mut (*scratch).pending };
    pending.kind = scan.rewrite_kind;
    pending.delimiter = scan.rewrite_delimiter;
    pending.line_in_segment = scan.rewrite_line_in_segment;
    pending.completes_hold = u8::from(scan.held_len != 0);
    pending.field_off = scan.rewrite_field_off;
    pending.field_len = scan.rewrite_field_len;
    pending.line_off = scan.rewrite_line_off;
    pending.line_len = scan.rewrite_line_len;
    // `addr` is there already: the line's examination wrote it.
    pending.port = scan.rewrite_port;
    pending.from_server = if from_client { 0 } else { FROM_SERVER };
    pending._pad2 = 0;
    let Some(segment) = crate::scratch::segment() else {
        return Pending::Nothing;
    };
    crate::scratch::copy(&mut pending.session_key, &segment.session_key);
    Pending::Rewrite
}

/// Copies up to [`SCRATCH_LEN`] payload bytes into this CPU's scratch buffer, from `dst` on (at
/// most `HELD_FIELD_MAX`, the held bytes in front); returns how many.
#[inline(always)]
fn copy_payload(ctx: &TcContext, offset: usize, len: usize, dst: usize) -> usize {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    if len == 0 {
        return 0;
    }
    let len = if len > SCRATCH_LEN { SCRATCH_LEN } else { len };
    let len = crate::maps::helper_len(len, SCRATCH_LEN - 1);
    // SAFETY: the buffer holds SCRATCH_SIZE ≥ 64 + len bytes; the helper checks the packet's
    // bounds.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            offset as u32,
            (*scratch).bytes.as_mut_ptr().add(dst & 63).cast(),
            len as u32,
        )
    };
    if ret == 0 { len } else { 0 }
}

/// The byte `next + index` of the scratch buffer, or None past the segment's end.
#[inline(always)]
fn scan_input(scan: &Scan, index: u32) -> Option<u8> {
    let position = scan.next.wrapping_add(index);
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

/// `bpf_loop` callback for the client direction: feeds one byte to the command scanner and stops
/// the loop (returns 1) at the end of a non-empty line, or of the segment. Nothing else happens here: the
/// verifier walks a callback once for every state it is entered with, so the line is examined
/// after the loop.
#[inline(never)]
extern "C" fn find_client_line(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the `Scan` on the caller's stack.
    let scan = unsafe { &mut *ctx.cast::<Scan>() };
    let Some(byte) = scan_input(scan, index) else {
        return 1;
    };
    // SAFETY: the session's map value, looked up by the caller in this same program run.
    let session = unsafe { &mut *scan.session };
    // An empty line is no command: it takes no pass and reports nothing, so a flood of them
    // costs one byte's scan each.
    if !session.commands.push(byte) || session.commands.ended_empty() {
        return 0;
    }
    scan.line_found = 1;
    scan.line_end = scan.next.wrapping_add(index);
    1
}

/// `bpf_loop` callback for the server direction: feeds one byte to the reply scanner and stops the
/// loop (returns 1) at the end of a line the session acts on, or of the segment. The lines it
/// ignores (text, and all but the last line of a multi-line reply: a long banner or FEAT) are
/// passed over here, so they take no pass of the stage.
#[inline(never)]
extern "C" fn find_server_line(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the `Scan` on the caller's stack.
    let scan = unsafe { &mut *ctx.cast::<Scan>() };
    // SAFETY: the session's map value, looked up by the caller in this same program run.
    let session = unsafe { &mut *scan.session };
    if skip_ignored_word(scan, &mut session.replies, index) {
        return 0;
    }
    let Some(byte) = scan_input(scan, index) else {
        return 1;
    };
    if !session.replies.push(byte) || !session.state.acts_on_reply(session.replies.shape()) {
        return 0;
    }
    scan.line_found = 1;
    scan.line_end = scan.next.wrapping_add(index);
    1
}

/// Passes the reply scanner over the 8-byte word at the step's byte (`index`) if it lies in a line
/// the scanner ignores (a listing's or a banner's text) and holds no line end: one word test
/// instead of eight scanner steps, in the costliest part of a long reply. True if it did; the
/// step then moves `scan.next` on by the word's other seven bytes, so that the loop's later steps
/// and the line's end keep their positions.
#[inline(always)]
fn skip_ignored_word(scan: &mut Scan, replies: &mut ftp_common::ReplyScanner, index: u32) -> bool {
    let at = scan.next.wrapping_add(index);
    // Whole, aligned words only: the bytes before the first one go through the scanner.
    if at & 7 != 0 || at.wrapping_add(8) > scan.end || at >= scan.end || !replies.skipping() {
        return false;
    }
    let Some(scratch) = SCRATCH.get_ptr(0) else {
        return false;
    };
    let at = at as usize & SCRATCH_WORD_MASK;
    // SAFETY: this CPU's scratch buffer; `at` is a multiple of 8 below SCRATCH_SIZE, and the
    // buffer starts 8-aligned (see `scratch`), so the u64 read is aligned and inside it.
    let word = unsafe { (*scratch).bytes.as_ptr().add(at).cast::<u64>().read() };
    if !ftp_common::skippable_word(word.to_le_bytes()) {
        return false;
    }
    replies.skip(8);
    scan.next = scan.next.wrapping_add(7);
    true
}
