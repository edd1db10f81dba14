//! ftpnat's TC programs. One classifier runs at the ingress and one at the egress of every router
//! interface the agent attaches to; each is a thin entry point over the modules below, one per
//! concern.
#![no_std]
#![no_main]

mod counters;

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
use ftp_common::maps::Direction;

/// The packet goes on unchanged. Under TCX `TC_ACT_UNSPEC` (`TCX_NEXT`) hands it to the next
/// program on the interface, so ftpnat composes with other TC programs instead of ending the chain.
const PASS: i32 = TC_ACT_UNSPEC;

#[classifier]
pub fn ftpnat_ingress(ctx: TcContext) -> i32 {
    counters::count(&ctx, Direction::Ingress);
    PASS
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
