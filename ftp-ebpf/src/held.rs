//! Addresses held back: when a masqueraded client's segment ends inside the address of a
//! PORT/EPRT, the datapath cuts that part of the address from the segment and keeps it in the
//! session record (`HeldField`), so that the next segment carries the whole rewritten address. If
//! the line is then not to be rewritten, the held bytes go back in front of the next segment and
//! the line reaches the server as the client sent it. A retransmission of the cut segment gets the
//! same cut, or, merged with the next one, the whole address. Linux's helper instead drops such a
//! segment and waits for a retransmission that may never come.
//!
//! In a NAT64 session the server's direction does the same with a reply line the ALG replaces
//! whole (the 227 it returns as a 229, its own answer to a command it answered), in
//! `SessionEntry::server_held`: a server usually sends a reply as a segment of its own, whose
//! whole payload is then held (the segment goes on as a bare acknowledgement).
//!
//! The client and server stages decide (`after_client_scan`, `after_server_scan`, `stage_held`);
//! the rewrite stage carries it out (`splice_held_pending`), with the rewrite's own splice. The
//! decisions themselves are ftp-common's (`hold`), shared with the fuzz target.

use aya_ebpf::programs::TcContext;
use core::mem::{offset_of, size_of};
use ftp_common::{
    SeqAdjust, hold,
    maps::{
        Counter, DatapathConfig, HELD_FIELD_MAX, HeldField, RewriteRecord, SessionEntry,
        SessionKind, hold_state, rewrite_kind,
    },
};

use crate::{
    headers::Tcp,
    maps::{SCRATCH, SESSIONS, bump},
    rewrite::splice,
    scratch::{FROM_SERVER, RewriteRequest, SCRATCH_MASK, Scan},
};

/// Asks for the tail of this client segment to be held if the segment ends inside the address of
/// a masqueraded PORT/EPRT, or inside a line a NAT64 session's ALG may replace whole (see
/// [`ftp_common::hold::cut_at_segment_end`]): only when the whole payload was scanned.
#[inline(always)]
fn hold_if_cut_inside_address(scan: &mut Scan, entry: &mut SessionEntry, scanned_all: bool) {
    let nat64 = entry.kind == SessionKind::Nat64 as u8;
    if !scanned_all
        || (entry.kind != SessionKind::Masquerade as u8 && !nat64)
        || entry.state.is_encrypted()
    {
        return;
    }
    let Some(segment) = crate::scratch::segment() else {
        return;
    };
    // In a NAT64 session whose ALG is on, a line the ALG may replace whole is held from its start.
    let whole_lines = nat64 && entry.state.nat64_alg_enabled(&segment.policy);
    let Some((field_off, held_len)) =
        hold::cut_at_segment_end(&entry.commands, whole_lines, scan.start, scan.end)
    else {
        return;
    };
    scan.rewrite_kind = rewrite_kind::CUT;
    scan.rewrite_field_off = field_off;
    scan.rewrite_field_len = held_len;
}

/// After the scan of a client segment: completes or gives back a hold (`held_len` bytes of an
/// address held in front of this segment), or asks for a new one. Returns the requested
/// `rewrite_kind` (NONE if nothing is to be done).
#[inline(always)]
pub fn after_client_scan(scan: &mut Scan, held_len: u32, scanned_all: bool) -> u8 {
    // SAFETY: the session's map value, looked up by the caller in this same program run.
    let entry = unsafe { &mut *scan.session };
    if held_len != 0 {
        complete_or_give_back::<true>(scan, entry, held_len as u16);
    } else if scan.rewrite_kind == rewrite_kind::NONE {
        hold_if_cut_inside_address(scan, entry, scanned_all);
    }
    scan.rewrite_kind
}

/// Asks for the tail of this server segment to be held if the segment ends inside a reply line
/// a NAT64 session's ALG will replace whole (see
/// [`ftp_common::hold::cut_reply_at_segment_end`]): only when the whole payload was scanned.
#[inline(always)]
fn hold_if_cut_inside_reply(scan: &mut Scan, entry: &SessionEntry, scanned_all: bool) {
    if !scanned_all || entry.kind != SessionKind::Nat64 as u8 {
        return;
    }
    let Some((field_off, held_len)) =
        hold::cut_reply_at_segment_end(&entry.state, &entry.replies, scan.start, scan.end)
    else {
        return;
    };
    scan.rewrite_kind = rewrite_kind::CUT;
    scan.rewrite_field_off = field_off;
    scan.rewrite_field_len = held_len;
}

/// [`after_client_scan`] for a server segment: completes or gives back a held reply line, or
/// asks for a new one to be held.
#[inline(always)]
pub fn after_server_scan(scan: &mut Scan, held_len: u32, scanned_all: bool) -> u8 {
    // SAFETY: the session's map value, looked up by the caller in this same program run.
    let entry = unsafe { &mut *scan.session };
    if held_len != 0 {
        complete_or_give_back::<false>(scan, entry, held_len as u16);
    } else if scan.rewrite_kind == rewrite_kind::NONE {
        hold_if_cut_inside_reply(scan, entry, scanned_all);
    }
    scan.rewrite_kind
}

/// The held field of the client's (`CLIENT`) or the server's direction.
#[inline(always)]
pub fn held_of<const CLIENT: bool>(entry: &mut SessionEntry) -> &mut HeldField {
    if CLIENT {
        &mut entry.held
    } else {
        &mut entry.server_held
    }
}

/// After the scan of the segment that follows a held address (or line): a rewrite of the held
/// line's address or of the whole line (which starts at scratch offset 0) completes the hold, its
/// field translated to the payload's offsets; anything else (the line refused, malformed, not
/// replaced, or not ended in this segment) gives the held bytes back, and a rewrite of a later
/// line in the segment is given up for that.
#[inline(always)]
fn complete_or_give_back<const CLIENT: bool>(
    scan: &mut Scan,
    entry: &mut SessionEntry,
    held_len: u16,
) {
    if hold::completes_hold(
        scan.rewrite_kind,
        scan.rewrite_field_off,
        scan.rewrite_field_len,
        held_len,
    ) {
        scan.rewrite_field_len -= held_len;
        return;
    }
    if scan.rewrite_kind != rewrite_kind::NONE {
        // A client's announcement reserved an expectation; a server's reply given up keeps the
        // one its scan made (as when it is not rewritten for any other reason).
        if CLIENT {
            entry.state.expectation_closed();
        }
        bump(Counter::RewritesSkipped);
    }
    scan.rewrite_kind = rewrite_kind::RESTORE;
    scan.rewrite_field_off = 0;
    scan.rewrite_field_len = 0;
}

/// If this segment of the client (`CLIENT`) or the server continues a line held in its
/// direction, copies the held bytes to the start of the scratch buffer and returns how many; else
/// 0. A segment that starts before the held bytes' successor (new bytes at `new_bytes_start`,
/// after a retransmission of the cut segment merged into it) carries the held bytes in their
/// place when forwarded as it is: the hold ends there.
#[inline(never)]
pub fn stage_held<const CLIENT: bool>(
    session: *mut SessionEntry,
    new_bytes_start: u32,
    seq: u32,
) -> u32 {
    // SAFETY: the session's map value, looked up by the caller in this same program run.
    let entry = unsafe { &mut *session };
    if held_of::<CLIENT>(entry).state != hold_state::HOLDING {
        return 0;
    }
    if new_bytes_start != 0 {
        given_back_in_place::<CLIENT>(entry);
        return 0;
    }
    let held = held_of::<CLIENT>(entry);
    if seq != held.next_seq() {
        // Not where the held line goes on (its continuation was never seen): the held bytes
        // cannot be placed any more. Lost, and counted; the session goes on.
        held.state = hold_state::RELEASED;
        bump(Counter::RewritesSkipped);
        return 0;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let len = u32::from(held.len);
    if len > HELD_FIELD_MAX as u32 {
        return 0;
    }
    let mut i = 0;
    while i < HELD_FIELD_MAX {
        // SAFETY: this CPU's scratch buffer; i < HELD_FIELD_MAX < its size.
        unsafe { *(*scratch).bytes.as_mut_ptr().add(i) = held.bytes[i] };
        i += 1;
    }
    len
}

/// Cuts or gives back held bytes as the pending request says (after [`rewrite_pending`], beside
/// it rather than under it: the two stack frames never add up). Returns false if held bytes were
/// to go back and could not: they are lost to the stream, and that is counted.
#[inline(never)]
pub fn splice_held_pending(ctx: &TcContext, packet: &Tcp, config: &DatapathConfig) -> bool {
    let Some(scratch) = SCRATCH.get_ptr(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch area, written earlier in this program run.
    let request = unsafe { (*scratch).pending };
    let Some(session) = SESSIONS.get_ptr_mut(request.session_key) else {
        return false;
    };
    let done = splice_held(ctx, packet, session, config, &request);
    if !done {
        bump(Counter::RewritesSkipped);
    }
    done
}

/// How far the server's held field, sequence adjustment and last rewrite lie after the client's
/// in a session record: each of them masks to itself with [`crate::scratch::FROM_SERVER`].
const HELD_DISTANCE: usize = offset_of!(SessionEntry, server_held) - offset_of!(SessionEntry, held);
const SEQ_DISTANCE: usize =
    offset_of!(SessionEntry, server_seq) - offset_of!(SessionEntry, client_seq);
const REWRITE_DISTANCE: usize =
    offset_of!(SessionEntry, server_rewrite) - offset_of!(SessionEntry, client_rewrite);
const _: () = assert!(
    HELD_DISTANCE == size_of::<HeldField>()
        && SEQ_DISTANCE == size_of::<SeqAdjust>()
        && REWRITE_DISTANCE == size_of::<RewriteRecord>()
        && HELD_DISTANCE & FROM_SERVER as usize == HELD_DISTANCE
        && SEQ_DISTANCE & FROM_SERVER as usize == SEQ_DISTANCE
        && REWRITE_DISTANCE & FROM_SERVER as usize == REWRITE_DISTANCE
);

/// A CUT request: cuts the address (or line) this segment ended inside of (the field runs to the
/// end of the payload, and may be all of it) and keeps its bytes in the session, for the next
/// segment to carry the line whole; if it cannot, the segment passes as it is. A RESTORE request:
/// puts the held bytes back in front of this segment, which starts where the cut one ended, so
/// the line reaches the other side as sent (counted by the caller, as a refusal, a malformed line
/// or a skipped rewrite, whatever kept it from being rewritten). The request says whose segment
/// it is: each direction holds in its own field and sequence space. False if held bytes were to
/// go back and could not: they are lost to the stream.
#[inline(always)]
fn splice_held(
    ctx: &TcContext,
    packet: &Tcp,
    session: *mut SessionEntry,
    config: &DatapathConfig,
    request: &RewriteRequest,
) -> bool {
    // SAFETY: a live map value; see scan::begin_segment on concurrent updates.
    let session = unsafe { &mut *session };
    // The server's fields, at fixed distances after the client's: reached by masking the
    // distance with the request's side (all bits or none) rather than by a branch, so that the
    // verifier walks what follows (the splice) once, not once for each side.
    let side = usize::from(request.from_server);
    // SAFETY: `side & DISTANCE` is 0 or DISTANCE (or, for a corrupt side, less): each pointer
    // stays inside the session record, on the client's field or the server's.
    let (held, adjust, last) = unsafe {
        (
            &mut *(&raw mut session.held).byte_add(side & HELD_DISTANCE),
            &mut *(&raw mut session.client_seq).byte_add(side & SEQ_DISTANCE),
            &mut *(&raw mut session.client_rewrite).byte_add(side & REWRITE_DISTANCE),
        )
    };
    let cut = request.kind == rewrite_kind::CUT;
    if cut && packet.tcp.fin() != 0 {
        // The held bytes would go after the FIN, which the receiver takes as the stream's end.
        return true;
    }
    if !cut {
        if held.state != hold_state::HOLDING {
            return false;
        }
        // Whatever happens next, the hold ends here: if the bytes cannot go back now, they are
        // lost (the caller counts it) rather than put in front of some later segment.
        held.state = hold_state::RELEASED;
    }
    let Some((payload_off, payload_len)) = packet.payload() else {
        return cut;
    };
    let seq = u32::from_be_bytes(packet.tcp.seq);
    if !adjust.can_record(seq) {
        return cut;
    }
    let record = if cut {
        let len = usize::from(request.field_len);
        if len == 0 || len > HELD_FIELD_MAX || !copy_held(held, request.field_off, len) {
            return true;
        }
        RewriteRecord {
            seq,
            payload_len: payload_len as u16,
            field_off: request.field_off,
            field_len: request.field_len,
            public_port: 0,
            kind: rewrite_kind::CUT,
            delimiter: 0,
            _pad: [0; 2],
        }
    } else {
        if seq != held.next_seq() {
            return false;
        }
        RewriteRecord {
            seq,
            payload_len: payload_len as u16,
            field_off: 0,
            field_len: 0,
            // The previous rewrite's window port, which the next announcement's rewrite
            // releases if it is still unused.
            public_port: last.public_port,
            kind: rewrite_kind::RESTORE,
            delimiter: 0,
            _pad: [0; 2],
        }
    };
    let Some(delta) = splice(ctx, packet, payload_off, payload_len, &record, held, config) else {
        return cut;
    };
    adjust.record(seq, delta);
    if cut {
        held.seq = seq;
        held.payload_len = payload_len as u16;
        held.off = request.field_off;
        held.state = hold_state::HOLDING;
    } else {
        *last = record;
    }
    true
}

/// Keeps `len` payload bytes from `off` in `held`, from the payload's copy at the start of the
/// scratch buffer (where the scan read it).
#[inline(always)]
fn copy_held(held: &mut HeldField, off: u16, len: usize) -> bool {
    let Some(scratch) = SCRATCH.get_ptr(0) else {
        return false;
    };
    let mut i = 0;
    while i < HELD_FIELD_MAX {
        // SAFETY: this CPU's scratch buffer, read at a masked offset.
        let byte = unsafe {
            *(*scratch)
                .bytes
                .as_ptr()
                .add((usize::from(off) + i) & SCRATCH_MASK)
        };
        if let Some(slot) = held.bytes.get_mut(i) {
            *slot = if i < len { byte } else { 0 };
        }
        i += 1;
    }
    held.len = len as u8;
    true
}

/// The held bytes were sent again in their place (a retransmission of the cut segment merged
/// with the bytes after it, forwarded as it is): the stream is as the client (`CLIENT`) or the
/// server sent it from there on, which the sequence adjustment is told. The line's rewrite is
/// then skipped (and counted) when the scan finds it began before the new bytes.
#[inline(always)]
fn given_back_in_place<const CLIENT: bool>(session: &mut SessionEntry) {
    let held = held_of::<CLIENT>(session);
    if held.state != hold_state::HOLDING {
        return;
    }
    held.state = hold_state::RELEASED;
    let (next_seq, len) = (held.next_seq(), i32::from(held.len));
    let adjust = if CLIENT {
        &mut session.client_seq
    } else {
        &mut session.server_seq
    };
    adjust.record(next_seq, len);
}
