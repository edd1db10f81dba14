//! The ingress program's stages: programs of their own, entered by tail calls through the
//! [`STAGES`] program array, so that the verifier checks each separately and their costs never
//! add up. A stage gets nothing from the one before it but the packet, the maps and what that
//! stage left in this CPU's `SCRATCH` area (a tail call stays on the CPU it was made on).

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use ftp_common::maps::{Counter, stage};

use crate::maps::{STAGES, bump};

/// Continues the packet in `slot`. Returns only if that stage is missing, having counted it.
///
/// Inlined into the calling program's own frame on purpose: the verifier refuses a tail call
/// made from a subprogram whose callers' frames reach 256 bytes.
#[inline(always)]
fn enter(ctx: &TcContext, slot: u32) {
    // SAFETY: a tail call replaces this program run with the stage's; when the slot is empty it
    // returns, and this program goes on.
    unsafe { STAGES.tail_call(ctx, slot) };
    bump(Counter::StageMissing);
}

/// Which pass of the client or server stage this is (0 on the first): kept in the packet's
/// control buffer (`skb->cb`), which stays with the packet through its tail calls.
#[inline(always)]
pub fn pass(ctx: &TcContext) -> u32 {
    ctx.cb().first().copied().unwrap_or(0)
}

#[inline(always)]
pub fn set_pass(ctx: &mut TcContext, pass: u32) {
    if let Some(slot) = ctx.cb_mut().first_mut() {
        *slot = pass;
    }
}

/// Continues a packet of a control connection in `slot`; if the stage is missing the packet is
/// dropped: forwarded without the ALG, it could carry a private address or a wrong sequence number.
#[inline(always)]
pub fn continue_control(ctx: &TcContext, slot: u32) -> i32 {
    enter(ctx, slot);
    TC_ACT_SHOT
}

/// Continues an opening SYN in the open stage; if that is missing the SYN passes as it came
/// (`pass`): it may belong to anything the router carries, not only to FTP.
#[inline(always)]
pub fn continue_opening(ctx: &TcContext, pass: i32) -> i32 {
    enter(ctx, stage::OPEN);
    pass
}
