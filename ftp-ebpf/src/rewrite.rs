//! Rewriting announced addresses in flight: a masqueraded client's PORT/EPRT, or a published
//! server's 227/229, comes to name the public address and a window port. The segment grows or
//! shrinks with the text, and every later byte of that direction's stream shifts (see
//! ftp-common's `SeqAdjust`).
//!
//! The window port is reserved for an inbound expectation that admits only the other side of the
//! control connection. When the window has no free port the line is rewritten anyway, into one
//! that fails at once (a PORT to port 0, a 425 reply), so the session learns promptly instead of
//! waiting on an address nobody can reach.
//!
//! Only the bytes from the field on change. They are rebuilt in the scratch buffer and written
//! back with one helper call; the TCP checksum is updated with the difference of the old and new
//! tails (a no-op for CHECKSUM_PARTIAL skbs, whose payload the stack or the NIC sums later) and the
//! new TCP length in the pseudo-header.

use aya_ebpf::{
    bindings::BPF_F_PSEUDO_HDR,
    helpers::{bpf_csum_diff, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes},
    programs::TcContext,
};
use core::{ffi::c_void, net::Ipv4Addr};
use ftp_common::{
    MAX_FIELD_LEN, PublicAddress, format_rewrite,
    hold::Replay,
    maps::{
        Counter, DatapathConfig, EventKind, ExpectationKind, HeldField, RewriteRecord,
        SessionEntry, hold_state, ip, rewrite_kind,
    },
};

use crate::{
    expect::{self, Reservation},
    headers::Tcp,
    maps::{SCRATCH, SESSIONS, bump},
    scratch::{RewriteRequest, SCRATCH_LEN, SCRATCH_MASK},
};

/// Scratch regions: the payload copy is at 0; the old and new tails are built here.
const OLD_TAIL: usize = 2 * SCRATCH_LEN;
const NEW_TAIL: usize = 3 * SCRATCH_LEN;

/// Carries out the rewrite the ALG left pending in the scratch area. If it cannot be done (table
/// full, field begun in an earlier segment that was not held, segment too long) the segment
/// passes unchanged, nothing is opened, and it is counted. Returns true if held bytes are to be
/// cut or given back next ([`crate::held::splice_held_pending`]; the request then says which):
/// a hold or a give-back asked for by the ALG, or the give-back of a hold this rewrite was to
/// complete.
#[inline(never)]
pub fn rewrite_pending(ctx: &TcContext, packet: &Tcp, config: &DatapathConfig) -> bool {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch area, written by the ALG earlier in this program run; read in
    // place (a copy would take 80 bytes of the stack) and written only below, after its last read.
    let request = unsafe { &(*scratch).pending };
    if matches!(request.kind, rewrite_kind::CUT | rewrite_kind::RESTORE) {
        return true;
    }
    let Some(session) = SESSIONS.get_ptr_mut(request.session_key) else {
        return false;
    };
    // SAFETY: a live map value; see scan::begin_segment on concurrent updates.
    let entry = unsafe { &mut *session };
    let rewritten = rewrite(ctx, packet, entry, config, request);
    if !rewritten {
        match request.kind {
            // The line reaches the server as the client sent it: the session tracks it so.
            rewrite_kind::EPSV_AS_PASV | rewrite_kind::LOCAL_COMMAND => {
                entry.state.alg_line_passed();
            }
            // The reply passes as sent; its expectation, if any, was made by the scan.
            rewrite_kind::PASV_AS_229 | rewrite_kind::ALG_REPLY => {}
            _ => entry.state.expectation_closed(),
        }
        bump(Counter::RewritesSkipped);
    }
    if request.completes_hold == 0 {
        return false;
    }
    if rewritten {
        let held = if rewrite_kind::is_reply(request.kind) {
            &mut entry.server_held
        } else {
            &mut entry.held
        };
        held.state = hold_state::RELEASED;
        return false;
    }
    // SAFETY: as above.
    unsafe { (*scratch).pending.kind = rewrite_kind::RESTORE };
    true
}

#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    packet: &Tcp,
    session: &mut SessionEntry,
    config: &DatapathConfig,
    request: &RewriteRequest,
) -> bool {
    let Some((payload_off, payload_len)) = packet.payload() else {
        return false;
    };
    if payload_len > SCRATCH_LEN {
        return false;
    }
    let from_client = !rewrite_kind::is_reply(request.kind);
    let seq = u32::from_be_bytes(packet.tcp.seq);
    let adjust = if from_client {
        &session.client_seq
    } else {
        &session.server_seq
    };
    // The length change must be recordable before the packet changes, or the stream would shift
    // with no offset to undo it.
    if !adjust.can_record(seq) {
        return false;
    }
    // A new announcement supersedes the previous one in the same direction (RFC 959: the server
    // uses the last address it was given; a server closes its previous passive listener), so the
    // previous expectation goes, if still unused.
    let previous = if from_client {
        session.client_rewrite
    } else {
        session.server_rewrite
    };
    let announcing = announces(request.kind);
    if announcing && announces(previous.kind) && previous.public_port != 0 {
        expect::release_unused(session, &request.session_key, config, previous.public_port);
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // The record is made in the scratch area (its `replay` slot, which only the replay stage
    // uses) and what became of the window port is kept there too, not in registers: the verifier
    // then walks the splice below once for all the ways here, instead of once for each.
    // SAFETY: this CPU's scratch area, written here in full before it is read.
    let record = unsafe { &mut (*scratch).replay };
    record.seq = seq;
    record.payload_len = payload_len as u16;
    record.field_off = request.field_off;
    record.field_len = request.field_len;
    record.public_port = 0;
    record.kind = request.kind;
    record.delimiter = request.delimiter;
    record._pad = [0; 2];
    let outcome = if !announcing {
        // The NAT64 ALG's replacements of a command or a reply: no port to reserve. A 229's
        // port (the server's own) is what `public_port` carries to the formatter.
        record.public_port = request.port;
        PortOutcome::NotAnnounced
    } else {
        match expect::reserve_inbound(config, session, request) {
            Reservation::Reserved(public_port) => {
                record.public_port = public_port;
                PortOutcome::Reserved
            }
            // Refused in the text: passed as written, a client's PORT/EPRT would tell the server
            // its private address (and, the table being full, open nothing).
            Reservation::NoRoom => {
                record.kind = match request.kind {
                    // A NAT64 client's whole line becomes the refused PORT's argument: the
                    // server answers the unknown command with an error at once.
                    rewrite_kind::PORT | rewrite_kind::EPRT_AS_PORT => rewrite_kind::PORT_REFUSED,
                    rewrite_kind::EPRT => rewrite_kind::EPRT_REFUSED,
                    _ if request.line_in_segment != 0 => {
                        record.field_off = request.line_off;
                        record.field_len = request.line_len;
                        rewrite_kind::PASSIVE_REFUSED
                    }
                    _ => return false,
                };
                PortOutcome::Refused
            }
        }
    };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&raw mut (*scratch).rewrite_outcome, outcome as u8) };
    // SAFETY: as above; read back from the map, where the verifier does not follow it.
    let record = unsafe { &(*scratch).replay };
    let Some(delta) = splice(
        ctx,
        packet,
        payload_off,
        payload_len,
        record,
        &session.held,
        config,
    ) else {
        // SAFETY: as above.
        if unsafe { core::ptr::read_volatile(&raw const (*scratch).rewrite_outcome) }
            == PortOutcome::Reserved as u8
        {
            expect::unreserve(
                config.public_ip_for(session.kind, &request.session_key.saddr),
                record.public_port,
            );
        }
        return false;
    };
    record_rewrite(session, from_client, record, delta);
    // SAFETY: as above.
    let outcome = unsafe { core::ptr::read_volatile(&raw const (*scratch).rewrite_outcome) };
    if outcome == PortOutcome::Reserved as u8 {
        bump(Counter::ExpectationsCreated);
        let kind = if from_client {
            ExpectationKind::Active
        } else {
            ExpectationKind::Passive
        };
        crate::events::emit(
            &request.session_key,
            EventKind::ExpectationCreated,
            kind as u8,
            config.public_ip_for(session.kind, &request.session_key.saddr),
            record.public_port,
        );
    } else if outcome == PortOutcome::Refused as u8 {
        // The refusal opened nothing.
        session.state.expectation_closed();
    } else if record.kind == rewrite_kind::ALG_REPLY {
        bump(Counter::Nat64AlgAnswers);
    }
    true
}

/// What a rewrite did about a window port.
#[repr(u8)]
enum PortOutcome {
    /// Reserved one for the announcement it writes.
    Reserved = 1,
    /// Found none (or no room for the expectation): the announcement is refused in the text.
    Refused = 2,
    /// Needed none: a NAT64 ALG replacement of a command or a reply.
    NotAnnounced = 3,
}

/// Whether a rewrite of `kind` announces a window port (and so reserves one): a PORT/EPRT from
/// behind the router, a published server's 227/229, a NAT64 client's EPRT turned PORT.
#[inline(always)]
fn announces(kind: u8) -> bool {
    matches!(
        kind,
        rewrite_kind::PORT
            | rewrite_kind::EPRT
            | rewrite_kind::PASV_227
            | rewrite_kind::EPSV_229
            | rewrite_kind::EPRT_AS_PORT
    )
}

/// Records a rewrite made in a segment of the client (`from_client`) or the server: its length
/// change for the sequence adjustment, and the record to repeat on a retransmission.
#[inline(always)]
fn record_rewrite(
    session: &mut SessionEntry,
    from_client: bool,
    record: &RewriteRecord,
    delta: i32,
) {
    if from_client {
        session.client_seq.record(record.seq, delta);
        session.client_rewrite = *record;
    } else {
        session.server_seq.record(record.seq, delta);
        session.server_rewrite = *record;
    }
}

/// Repeats on a retransmission what the ALG found was done to its segment (the `replay` record in
/// the scratch area). True if it cannot be given the same bytes (counted by the caller).
#[inline(never)]
pub fn replay_pending(ctx: &TcContext, packet: &Tcp, config: &DatapathConfig) -> bool {
    let Some(scratch) = SCRATCH.get_ptr(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch area, written by the ALG earlier in this program run.
    let (record, session_key, from_server) = unsafe {
        (
            (*scratch).replay,
            (*scratch).pending.session_key,
            (*scratch).pending.from_server,
        )
    };
    // SAFETY: read at once, for the held bytes a restore puts back.
    let Some(session) = (unsafe { SESSIONS.get(session_key) }) else {
        return false;
    };
    let held = if from_server == 0 {
        &session.held
    } else {
        &session.server_held
    };
    replay(ctx, packet, &record, held, config)
}

/// Repeats a rewrite on a retransmission of its segment, so the receiver sees the same bytes at
/// the same sequence numbers. The retransmission need not have the original's length: a sender
/// may coalesce the following segments into it (Linux does on a timeout) or send less; as long as
/// it starts where the original did and holds the whole field, the field is rewritten the same
/// way and the bytes after it follow with the same shift. Returns true for a retransmission that
/// cannot be given the same bytes (it starts inside the rewritten field, or stops before its
/// end): it passes as it is, and the caller counts it.
#[inline(always)]
fn replay(
    ctx: &TcContext,
    packet: &Tcp,
    record: &RewriteRecord,
    held: &HeldField,
    config: &DatapathConfig,
) -> bool {
    let Some((payload_off, payload_len)) = packet.payload() else {
        return false;
    };
    let seq = u32::from_be_bytes(packet.tcp.seq);
    let record = match ftp_common::hold::replay_record(record, seq, payload_len) {
        Replay::Unchanged => return false,
        Replay::CannotRepeat => return true,
        Replay::Rewrite(record) => record,
    };
    splice(ctx, packet, payload_off, payload_len, &record, held, config).is_none()
}

/// Replaces the field `record` names with its replacement text (nothing for a cut, the held bytes
/// for a restore); returns the length change.
#[inline(always)]
pub fn splice(
    ctx: &TcContext,
    packet: &Tcp,
    payload_off: usize,
    payload_len: usize,
    record: &RewriteRecord,
    held: &HeldField,
    config: &DatapathConfig,
) -> Option<i32> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch buffer; nothing else uses it while this program runs here.
    let buf = unsafe { &mut (*scratch).bytes };
    let field_off = usize::from(record.field_off) & (SCRATCH_LEN - 1);
    let field_end = field_off + usize::from(record.field_len);
    // A field runs at most to the payload's end (a cut's does).
    if field_end > payload_len || payload_len > SCRATCH_LEN {
        return None;
    }
    // The checksum works on 16-bit words from the TCP header on: start the tails on a word.
    let aligned = field_off & !1;
    let prefix = field_off - aligned;
    let old_tail_len = payload_len - aligned;
    let suffix_len = payload_len - field_end;

    // The replacement text, after the odd byte before the field if there is one. That byte is
    // read from the packet: on a retransmission (replay) the scratch area holds another packet.
    *buf.get_mut(NEW_TAIL)? = ctx.load::<u8>(payload_off + aligned).ok()?;
    let out = buf.get_mut(NEW_TAIL + prefix..NEW_TAIL + prefix + MAX_FIELD_LEN)?;
    let replacement_len = match record.kind {
        rewrite_kind::CUT => 0,
        rewrite_kind::RESTORE => held.copy_into(out)?,
        _ => {
            let public = if record.kind == rewrite_kind::EPRT_AS_PORT {
                // A NAT64 client's data connection is reached at the pool address.
                PublicAddress::V4(Ipv4Addr::from(ip::v4_octets(&config.nat64_pool)))
            } else if packet.v6 {
                PublicAddress::V6(&config.public_ip6_text)
            } else {
                PublicAddress::V4(Ipv4Addr::from(ip::v4_octets(&config.public_ip)))
            };
            format_rewrite(record, public, out)?
        }
    };
    let replacement_len = replacement_len & 63;
    let new_tail_len = prefix + replacement_len + suffix_len;
    if new_tail_len > SCRATCH_LEN || old_tail_len > SCRATCH_LEN {
        return None;
    }
    // Masked again so the verifier knows both fit their regions.
    let new_tail_len = new_tail_len & (2 * SCRATCH_LEN - 1);
    let old_tail_len = old_tail_len & (2 * SCRATCH_LEN - 1);

    let skb = ctx.skb.skb;
    // SAFETY: helper calls on this program's skb; every destination is inside the scratch buffer
    // (offsets and lengths are masked to regions of SCRATCH_LEN bytes).
    unsafe {
        // The rest of the segment after the field, behind the replacement.
        let suffix_dst = buf
            .as_mut_ptr()
            .add(NEW_TAIL + ((prefix + replacement_len) & 127));
        if suffix_len > 0 && load(skb, payload_off + field_end, suffix_dst, suffix_len) != 0 {
            return None;
        }
        let old_dst = buf.as_mut_ptr().add(OLD_TAIL);
        if load(skb, payload_off + aligned, old_dst, old_tail_len) != 0 {
            return None;
        }
        // Zero the bytes up to the next multiple of 4: bpf_csum_diff sums whole words.
        for i in 0..3usize {
            let old_pad = crate::maps::masked(OLD_TAIL + old_tail_len + i, SCRATCH_MASK);
            let new_pad = crate::maps::masked(NEW_TAIL + new_tail_len + i, SCRATCH_MASK);
            *buf.as_mut_ptr().add(old_pad) = 0;
            *buf.as_mut_ptr().add(new_pad) = 0;
        }
        let old_words = ((old_tail_len + 3) & !3) & (2 * SCRATCH_LEN - 1);
        let new_words = ((new_tail_len + 3) & !3) & (2 * SCRATCH_LEN - 1);
        if old_words > SCRATCH_LEN || new_words > SCRATCH_LEN {
            return None;
        }
        let diff = bpf_csum_diff(
            old_dst.cast(),
            old_words as u32,
            buf.as_mut_ptr().add(NEW_TAIL).cast(),
            new_words as u32,
            0,
        );
        if diff < 0 {
            return None;
        }
        let delta = new_tail_len as i32 - old_tail_len as i32;
        if delta != 0 && bpf_skb_change_tail(skb, ((*skb).len as i32 + delta) as u32, 0) != 0 {
            return None;
        }
        // A cut at an even offset leaves no new tail to store.
        if new_tail_len > 0 {
            let len = crate::maps::helper_len(new_tail_len, SCRATCH_LEN - 1);
            if bpf_skb_store_bytes(
                skb,
                (payload_off + aligned) as u32,
                buf.as_ptr().add(NEW_TAIL).cast(),
                len as u32,
                0,
            ) != 0
            {
                return None;
            }
        }
        let new_ip_len = (i32::from(packet.ip_len) + delta) as u16;
        packet.store_ip_len(ctx, new_ip_len).ok()?;
        let tcp_check = packet.tcp_check_off();
        ctx.l4_csum_replace(tcp_check, 0, diff as u64, 0).ok()?;
        // The TCP length is in the pseudo-header only, no header field holds it.
        let old_tcp_len = packet.tcp_len();
        let new_tcp_len = (i32::from(old_tcp_len) + delta) as u16;
        ctx.l4_csum_replace(
            tcp_check,
            u64::from(u16::from_ne_bytes(old_tcp_len.to_be_bytes())),
            u64::from(u16::from_ne_bytes(new_tcp_len.to_be_bytes())),
            u64::from(BPF_F_PSEUDO_HDR) | 2,
        )
        .ok()?;
        Some(delta)
    }
}

/// `bpf_skb_load_bytes` of `len` bytes, `len` made provably 1..=SCRATCH_LEN for the verifier.
#[inline(always)]
unsafe fn load(
    skb: *mut aya_ebpf::bindings::__sk_buff,
    offset: usize,
    dst: *mut u8,
    len: usize,
) -> i64 {
    if len == 0 || len > SCRATCH_LEN {
        return -1;
    }
    let len = crate::maps::helper_len(len, SCRATCH_LEN - 1);
    // SAFETY: the caller guarantees `dst` has room for SCRATCH_LEN bytes.
    unsafe { bpf_skb_load_bytes(skb as *const c_void, offset as u32, dst.cast(), len as u32) }
}
