//! Applying a session's sequence adjustments to the control connection's packets: a sender's
//! sequence numbers move forward by what its rewritten lines added, and the other side's
//! acknowledgements and SACK blocks move back by the same, so both ends keep their own view of
//! each stream.

use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_loop, bpf_skb_load_bytes, bpf_skb_store_bytes},
    programs::TcContext,
};
use core::ffi::c_void;
use ftp_common::{MAX_TCP_OPTIONS, SeqAdjust};

use crate::{
    headers::{Covered, TCP_ACK_OFF, TCP_SEQ_OFF, Tcp, store32},
    maps::SCRATCH,
};

/// `own` is how the packet's sender's stream moved, `peer` how the receiver's did. Returns
/// whether the packet changed.
#[inline(always)]
pub fn adjust(ctx: &TcContext, packet: &Tcp, own: &SeqAdjust, peer: &SeqAdjust) -> bool {
    let mut changed = false;
    if !own.is_identity() {
        let seq = u32::from_be_bytes(packet.tcp.seq);
        changed |= rewrite_u32(ctx, packet, TCP_SEQ_OFF, seq, own.forward_seq(seq)).is_ok();
    }
    if packet.tcp.ack() != 0 && !peer.is_identity() {
        let ack = u32::from_be_bytes(packet.tcp.ack_seq);
        changed |= rewrite_u32(ctx, packet, TCP_ACK_OFF, ack, peer.backward_ack(ack)).is_ok();
        if packet.tcp.doff() > 5 {
            adjust_sack(ctx, packet, peer);
        }
    }
    changed
}

/// Moves the SACK edges in the packet's options back into the receiver's sequence space.
// A subprogram of its own: the two option copies stay off the callers' stack frames.
#[inline(never)]
fn adjust_sack(ctx: &TcContext, packet: &Tcp, peer: &SeqAdjust) {
    let len = (usize::from(packet.tcp.doff()) * 4).saturating_sub(20);
    if len == 0 || len > MAX_TCP_OPTIONS {
        return;
    }
    // Written so the verifier sees 1 ≤ len ≤ 40 for the helpers below.
    let len = ((len - 1) & 63) + 1;
    if len > MAX_TCP_OPTIONS {
        return;
    }
    let offset = packet.tcp_off() + 20;
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch area; nothing else uses it while this program runs here.
    let (old, new) = unsafe {
        (
            &mut (*scratch).options_before,
            &mut (*scratch).options_after,
        )
    };
    *old = [0; MAX_TCP_OPTIONS];
    let skb = ctx.skb.skb;
    // SAFETY: `old` has room for MAX_TCP_OPTIONS ≥ len bytes; the helper checks the packet bounds.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            skb as *const c_void,
            offset as u32,
            old.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if loaded != 0 {
        return;
    }
    *new = *old;
    let mut walk = SackWalk {
        adjust: *peer,
        len: len as u32,
        at: 0,
    };
    // SAFETY: plain helper call: a static callback and a context on this stack frame.
    unsafe {
        bpf_loop(
            MAX_TCP_OPTIONS as u32,
            sack_step as *mut c_void,
            (&raw mut walk).cast(),
            0,
        )
    };
    // Whether an edge changed is not tracked through the walk (a value that varies from step to
    // step makes the verifier walk the callback again for each): the two copies are compared
    // after it, so that a packet without SACK blocks (most carry only timestamps) is left alone.
    if same_words(old, new) {
        return;
    }
    // SAFETY: both buffers are MAX_TCP_OPTIONS (a multiple of 4) bytes of the scratch map value;
    // the bytes past `len` are zero in both, so they add nothing to the difference.
    let diff = unsafe {
        bpf_csum_diff(
            old.as_mut_ptr().cast(),
            MAX_TCP_OPTIONS as u32,
            new.as_mut_ptr().cast(),
            MAX_TCP_OPTIONS as u32,
            0,
        )
    };
    if diff < 0 {
        return;
    }
    // SAFETY: storing `len` bytes of `new` at the options' offset of this program's skb.
    if unsafe { bpf_skb_store_bytes(skb, offset as u32, new.as_ptr().cast(), len as u32, 0) } != 0 {
        return;
    }
    let _ = ctx.l4_csum_replace(packet.tcp_check_off(), 0, diff as u64, 0);
}

/// Whether two options areas hold the same bytes, compared a word at a time at fixed offsets (a
/// byte loop, or the `bcmp` the compiler would call, is a loop for the verifier to walk).
#[inline(always)]
fn same_words(a: &[u8; MAX_TCP_OPTIONS], b: &[u8; MAX_TCP_OPTIONS]) -> bool {
    let word = |bytes: &[u8; MAX_TCP_OPTIONS], i: usize| {
        // SAFETY: i < MAX_TCP_OPTIONS / 8, so the 8 bytes read lie inside the array.
        unsafe { bytes.as_ptr().add(8 * i).cast::<u64>().read_unaligned() }
    };
    let mut i = 0;
    while i < MAX_TCP_OPTIONS / 8 {
        if word(a, i) != word(b, i) {
            return false;
        }
        i += 1;
    }
    true
}

/// The state of a SACK walk between `bpf_loop` steps.
#[repr(C)]
struct SackWalk {
    adjust: SeqAdjust,
    len: u32,
    at: u32,
}

/// `bpf_loop` callback: translates one option of the scratch area's `options_after`.
#[inline(never)]
extern "C" fn sack_step(_index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the `SackWalk` on the caller's stack.
    let walk = unsafe { &mut *ctx.cast::<SackWalk>() };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch area, filled by the caller in this program run.
    let options = unsafe { &mut (*scratch).options_after };
    let at = (walk.at as usize) & 63;
    match walk
        .adjust
        .backward_sack_step(options, walk.len as usize, at)
    {
        Some(step) => {
            walk.at = step.next as u32;
            0
        }
        None => 1,
    }
}

#[inline(always)]
fn rewrite_u32(ctx: &TcContext, packet: &Tcp, field: usize, old: u32, new: u32) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    let field_bytes = [old.to_be_bytes(), new.to_be_bytes()];
    store32(
        ctx,
        packet,
        packet.tcp_off() + field,
        field_bytes,
        Covered::Tcp,
    )
}
