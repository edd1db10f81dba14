//! ftpnat's TC programs. One classifier runs at the ingress and one at the egress of every router
//! interface the agent attaches to; each is a thin entry point over the modules below, one per
//! concern.
#![no_std]
#![no_main]

mod alg;
mod counters;
mod events;
mod expect;
mod flows;
mod headers;
mod maps;
mod nat;
mod reset;
mod rewrite;
mod seqadj;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use ftp_common::maps::{Counter, Direction, FlowKind};

use crate::{flows::OpenError, headers::Tcp4, maps::FLOWS};

/// The packet goes on unchanged. Under TCX `TC_ACT_UNSPEC` (`TCX_NEXT`) hands it to the next
/// program on the interface, so ftpnat composes with other TC programs instead of ending the chain.
const PASS: i32 = TC_ACT_UNSPEC;

#[classifier]
pub fn ftpnat_ingress(ctx: TcContext) -> i32 {
    counters::count(&ctx, Direction::Ingress);
    // SAFETY: all-zero is a valid value of these plain header structs; parse_into overwrites it.
    let mut packet: Tcp4 = unsafe { core::mem::zeroed() };
    if !Tcp4::parse_into(&ctx, &mut packet) {
        return PASS;
    }
    let Some(config) = maps::config() else {
        return PASS;
    };
    let key = packet.key();
    let mut entry = FLOWS.get_ptr_mut(key);
    if entry.is_none() && packet.is_opening_syn() {
        let opened = match expect::open_data(&ctx, &packet, config) {
            Err(OpenError::NotOurs) => flows::open_control(&ctx, &packet, config),
            other => other,
        };
        match opened {
            Ok(()) => entry = FLOWS.get_ptr_mut(key),
            Err(OpenError::WindowExhausted) => return reset::refuse_syn(&ctx, &packet),
            Err(OpenError::Pinhole) => return TC_ACT_SHOT,
            Err(OpenError::NotOurs) => return PASS,
        }
    }
    let Some(entry) = entry else {
        return PASS;
    };
    nat::account(entry, &packet);
    // SAFETY: a live map value; the fields read below are written only when the entry is created.
    let entry = unsafe { &*entry };
    if entry.kind == FlowKind::Control as u8 {
        // Each step is a subprogram called from here, none under another: their stack frames
        // never add up.
        match alg::control_packet(&ctx, &packet, entry, config) {
            alg::Pending::Rewrite => {
                if rewrite::rewrite_pending(&ctx, &packet, config)
                    && !rewrite::splice_held_pending(&ctx, &packet, config)
                {
                    debug!(&ctx, "held bytes of a control line could not be given back");
                }
            }
            alg::Pending::Replay => {
                if rewrite::replay_pending(&ctx, &packet, config) {
                    maps::bump(Counter::RewritesSkipped);
                }
            }
            alg::Pending::Drop => return TC_ACT_SHOT,
            alg::Pending::Nothing => {}
        }
        if alg::adjust_sequence(&ctx, &packet, entry) {
            maps::bump(Counter::SequenceAdjusted);
        }
    }
    nat::translate_and_forward(&ctx, &packet, entry).action(PASS)
}

#[classifier]
pub fn ftpnat_egress(ctx: TcContext) -> i32 {
    counters::count(&ctx, Direction::Egress);
    PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a program the verifier accepted: a reachable panic would be an infinite loop,
    // which the verifier rejects.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
