//! Following a control connection's TCP window (ftp-common's `tcp_window`, after conntrack's
//! `tcp_in_window`): a segment outside it goes on without anything looking at its bytes or flags,
//! so an off-path sender who cannot see the connection cannot end it (RST, FIN) nor feed the ALG
//! lines (a forged `234` or `227`). It is forwarded, not dropped: the endpoints judge it by their
//! own windows, and the tracking still misjudges some legitimate segments under load (the soak
//! showed logins stalled when they were dropped), which must not cost a session.

use aya_ebpf::{
    helpers::{bpf_loop, bpf_skb_load_bytes},
    programs::TcContext,
};
use core::ffi::c_void;
use ftp_common::{
    MAX_TCP_OPTIONS, Segment, WindowVerdict,
    maps::{Counter, FlowDirection, FlowEntry, SessionEntry},
    tcp_window::{on_segment, window_scale_step},
};

use crate::{
    headers::Tcp,
    maps::{FLOWS, SCRATCH, SESSIONS, bump},
};

/// The window scale a SYN's TCP options offer, if any.
// A subprogram of its own: verified once for its callers.
#[inline(never)]
pub fn offered_scale(ctx: &TcContext, packet: &Tcp) -> Option<u8> {
    let len = (usize::from(packet.tcp.doff()) * 4).saturating_sub(20);
    if len == 0 || len > MAX_TCP_OPTIONS {
        return None;
    }
    // Written so the verifier sees 1 ≤ len ≤ 40 for the helper below (as seqadj's SACK walk).
    let len = ((len - 1) & 63) + 1;
    if len > MAX_TCP_OPTIONS {
        return None;
    }
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch area; nothing else uses the options buffer in this program run.
    let options = unsafe { &mut (*scratch).options_before };
    *options = [0; MAX_TCP_OPTIONS];
    // SAFETY: `options` has room for MAX_TCP_OPTIONS ≥ len bytes; the helper checks the packet.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            (packet.tcp_off() + 20) as u32,
            options.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if loaded != 0 {
        return None;
    }
    let mut walk = ScaleWalk {
        len: len as u32,
        at: 0,
        scale: NO_SCALE,
    };
    // SAFETY: plain helper call: a static callback and a context on this stack frame.
    unsafe {
        bpf_loop(
            MAX_TCP_OPTIONS as u32,
            scale_step as *mut c_void,
            (&raw mut walk).cast(),
            0,
        )
    };
    (walk.scale != NO_SCALE).then_some(walk.scale as u8)
}

const NO_SCALE: u32 = u32::MAX;

/// The state of a window scale walk between `bpf_loop` steps.
#[repr(C)]
struct ScaleWalk {
    len: u32,
    at: u32,
    scale: u32,
}

/// `bpf_loop` callback: looks at one option of the scratch area's `options_before`.
#[inline(never)]
extern "C" fn scale_step(_index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the `ScaleWalk` on the caller's stack.
    let walk = unsafe { &mut *ctx.cast::<ScaleWalk>() };
    let Some(scratch) = SCRATCH.get_ptr(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch area, filled by the caller in this program run.
    let options = unsafe { &(*scratch).options_before };
    match window_scale_step(options, walk.len as usize, (walk.at as usize) & 63) {
        Ok(next) => {
            walk.at = next as u32;
            0
        }
        Err(found) => {
            if let Some(scale) = found {
                walk.scale = u32::from(scale);
            }
            1
        }
    }
}

/// What the window check leaves to do with a control segment.
pub enum Checked {
    /// It counts: the ALG follows its bytes.
    Counts,
    /// It goes on without its bytes being followed and without changing anything (outside the
    /// window, an in-window reset, or a connection with no session record).
    Forward,
}

/// Checks a control segment against its connection's window and records it, and takes its FIN,
/// RST and answer onto its flow entry only if it counts.
// A subprogram of its own, called beside the client or server scan rather than under it: their
// frames would add up past Linux 6.1's stack limit.
#[inline(never)]
pub fn check(ctx: &TcContext, packet: &Tcp, flow: &FlowEntry) -> Checked {
    let Some(session) = SESSIONS.get_ptr_mut(flow.session) else {
        // No record to follow the window in: the flags count as they come.
        take_flags(packet);
        return Checked::Forward;
    };
    match follow(ctx, packet, flow, session) {
        WindowVerdict::Inside if packet.tcp.rst() != 0 => Checked::Forward,
        WindowVerdict::Inside => Checked::Counts,
        WindowVerdict::InexactReset => {
            bump(Counter::ResetsNotExact);
            Checked::Forward
        }
        WindowVerdict::Outside => {
            bump(Counter::SegmentsOutOfWindow);
            Checked::Forward
        }
    }
}

/// Checks the segment against the session's windows and records it.
#[inline(always)]
fn follow(
    ctx: &TcContext,
    packet: &Tcp,
    flow: &FlowEntry,
    session: *mut SessionEntry,
) -> WindowVerdict {
    let from_client = flow.direction == FlowDirection::Original as u8;
    let syn = packet.tcp.syn() != 0;
    let offered_scale = if syn {
        offered_scale(ctx, packet)
    } else {
        None
    };
    let payload_len = packet.payload().map_or(0, |(_, len)| len as u32);
    // SAFETY: a live map value; see scan::begin_segment on concurrent updates.
    let entry = unsafe { &mut *session };
    // The acknowledgement covers the other side's bytes as rewritten: back to its own space.
    let peer_seq = if from_client {
        &entry.server_seq
    } else {
        &entry.client_seq
    };
    let ack = (packet.tcp.ack() != 0)
        .then(|| peer_seq.backward_ack(u32::from_be_bytes(packet.tcp.ack_seq)));
    let segment = Segment {
        seq: u32::from_be_bytes(packet.tcp.seq),
        payload_len,
        syn,
        fin: packet.tcp.fin() != 0,
        rst: packet.tcp.rst() != 0,
        ack,
        window: u16::from_be_bytes(packet.tcp.window),
        offered_scale,
    };
    let verdict = if from_client {
        on_segment(&mut entry.client_window, &mut entry.server_window, &segment)
    } else {
        on_segment(&mut entry.server_window, &mut entry.client_window, &segment)
    };
    if verdict == WindowVerdict::Inside {
        take_flags(packet);
    }
    verdict
}

/// Marks the packet's flow entry with what the packet shows (FIN, RST, an answer).
#[inline(always)]
fn take_flags(packet: &Tcp) {
    let seen = crate::nat::packet_flags(packet);
    if let Some(entry) = FLOWS.get_ptr_mut(packet.key) {
        // SAFETY: a live map value; flags only move forward (see nat::account).
        unsafe {
            if (*entry).flags & seen != seen {
                let new_flags = seen & !(*entry).flags;
                (*entry).flags |= seen;
                crate::flows::report_if_closed(packet, entry, new_flags);
            }
        }
    }
}
