//! ftpnat's TC programs. One classifier runs at the ingress of every router interface the agent
//! attaches to (nothing at the egress). The ingress program is the data fast path (flow lookup,
//! translation, redirect); an opening SYN it does not know, and every control-connection packet,
//! continue in stages, each a program of its own entered by a tail call (see [`stage`]):
//!
//! ```text
//! ftpnat_ingress ─┬─ data packet of a known flow ─────────── translate, redirect
//!                 ├─ opening SYN, no flow ─► ftpnat_open ─── expectation / control / reset
//!                 ├─ control, from the client ─► ftpnat_client ─┐
//!                 └─ control, from the server ─► ftpnat_server ─┤
//!                     ┌─────────────────────────────────────────┘
//!                     ├─ a line to rewrite ─► ftpnat_rewrite ─┐
//!                     ├─ a retransmission ─► ftpnat_replay ───┤
//!                     └───────────────────────────────────────┴─► ftpnat_control_forward
//!                                                  (sequence adjustment, translate, redirect)
//! ```
//!
//! Each stage parses the headers again (the rewrite may have changed the packet's length) and looks
//! its flow up again; what a stage hands the next beyond that is in the per-CPU `SCRATCH` area.
#![no_std]
#![no_main]

mod events;
mod examine;
mod expect;
mod flows;
mod headers;
mod held;
mod maps;
mod nat;
mod reset;
mod rewrite;
mod scan;
mod scratch;
mod seqadj;
mod session;
mod sources;
mod stage;
mod tcp_window;
mod window;

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use ftp_common::maps::{
    Counter, FlowDirection, FlowEntry, FlowKind, flow_flags,
    stage::{CLIENT, CONTROL_FORWARD, REPLAY, REWRITE, SERVER},
};

use crate::{flows::OpenError, headers::Tcp, maps::FLOWS};

/// The packet goes on unchanged. `TC_ACT_UNSPEC` hands it to the next program on the interface
/// (`TCX_NEXT` under TCX; the next filter under classic TC's direct-action `cls_bpf`), so ftpnat
/// composes with other TC programs instead of ending the chain.
const PASS: i32 = TC_ACT_UNSPEC;

#[classifier]
pub fn ftpnat_ingress(mut ctx: TcContext) -> i32 {
    // The packet's headers, read in place onto the entry point's own stack: no call, no zeroing.
    let mut packet = MaybeUninit::<Tcp>::uninit();
    if !Tcp::parse(&ctx, &mut packet) {
        return PASS;
    }
    // SAFETY: a successful parse wrote every field.
    let packet = unsafe { packet.assume_init_ref() };
    let Some(entry) = FLOWS.get_ptr_mut(packet.key) else {
        if packet.is_opening_syn() {
            return stage::continue_opening(&ctx, PASS);
        }
        return PASS;
    };
    // SAFETY: reading the context's ifindex field, as TC programs may; `in_ifindex` is written
    // only when the entry is created.
    if unsafe { (*ctx.skb.skb).ifindex != (*entry).in_ifindex } {
        // Its addresses are forged (or it took a path the connection does not): translating it
        // would let it into the connection; passed on, the stack might answer it with a reset.
        maps::bump(Counter::WrongInterface);
        return TC_ACT_SHOT;
    }
    // SAFETY: a live map value; `kind` is written only when the entry is created, and a stale
    // `flags` only sends a SYN the longer way.
    let (kind, flags) = unsafe { ((*entry).kind, (*entry).flags) };
    if packet.is_opening_syn()
        && (kind == FlowKind::Control as u8 || flags & flow_flags::ESTABLISHED != 0)
    {
        // A new connection on a known control connection's tuple, or its SYN again; or on the
        // tuple of a data connection past its handshake (a port reused at once after it ended):
        // the open stage tells them apart.
        return stage::continue_opening(&ctx, PASS);
    }
    nat::account(entry, packet);
    // SAFETY: as above.
    let entry = unsafe { &*entry };
    if entry.kind == FlowKind::Control as u8 {
        let slot = if entry.direction == FlowDirection::Original as u8 {
            CLIENT
        } else {
            SERVER
        };
        stage::set_pass(&mut ctx, 0);
        return stage::continue_control(&ctx, slot);
    }
    nat::translate_and_forward(&ctx, packet, entry).action(PASS)
}

/// An opening SYN no flow knows: an announced data connection, a new control connection, or
/// neither (it passes). Installs the connection's flows and forwards the SYN through them.
#[classifier]
pub fn ftpnat_open(mut ctx: TcContext) -> i32 {
    let Some(packet) = stage_packet(&ctx) else {
        return PASS;
    };
    if let Some(entry) = FLOWS.get_ptr_mut(packet.key)
        // SAFETY: as in ftpnat_ingress.
        && unsafe { (*entry).kind } != FlowKind::Control as u8
    {
        // An opening SYN on a data connection's tuple: if that connection has ended, the new one
        // takes its place (its entries and port go, as the agent's release would); else the SYN
        // goes on as the connection's packets do.
        flows::release_closed(&packet.key);
        if let Some(entry) = FLOWS.get_ptr_mut(packet.key) {
            nat::account(entry, packet);
            // SAFETY: as in ftpnat_ingress.
            return nat::translate_and_forward(&ctx, packet, unsafe { &*entry }).action(PASS);
        }
    }
    if let Some(entry) = FLOWS.get_ptr_mut(packet.key) {
        // A control connection's opening SYN meeting its tuple's entries: a new connection where
        // a closed one lingers takes its place; a SYN sent again goes on as the connection's
        // packets do.
        if flows::reopen_closed_control(&ctx, packet, entry) {
            nat::account(entry, packet);
            // SAFETY: as in ftpnat_ingress.
            return nat::translate_and_forward(&ctx, packet, unsafe { &*entry }).action(PASS);
        }
        // SAFETY: as in ftpnat_ingress.
        let slot = if unsafe { (*entry).direction } == FlowDirection::Original as u8 {
            CLIENT
        } else {
            SERVER
        };
        nat::account(entry, packet);
        stage::set_pass(&mut ctx, 0);
        return stage::continue_control(&ctx, slot);
    }
    let Some(config) = maps::config() else {
        return PASS;
    };
    expect::make_way(&ctx, packet, config);
    let opened = match expect::open_data(&ctx, packet, config) {
        Err(OpenError::NotOurs) => flows::open_control(&ctx, packet, config),
        other => other,
    };
    match opened {
        Ok(()) => {}
        Err(OpenError::WindowExhausted) => return reset::refuse_syn(&ctx, packet),
        Err(OpenError::Pinhole) => return TC_ACT_SHOT,
        Err(OpenError::NoRoom) => {
            // SAFETY: reading the context's ifindex field, as TC programs may.
            if unsafe { (*ctx.skb.skb).ifindex } == config.wan_ifindex {
                return TC_ACT_SHOT;
            }
            return reset::refuse_syn(&ctx, packet);
        }
        Err(OpenError::NotOurs) => return PASS,
    }
    let Some(entry) = FLOWS.get_ptr_mut(packet.key) else {
        return PASS;
    };
    nat::account(entry, packet);
    // SAFETY: as in ftpnat_ingress.
    nat::translate_and_forward(&ctx, packet, unsafe { &*entry }).action(PASS)
}

/// A packet from a control connection's client: the ALG follows its bytes and says what is left
/// to do.
#[classifier]
pub fn ftpnat_client(ctx: TcContext) -> i32 {
    scan_stage(ctx, CLIENT)
}

/// A packet from a control connection's server; as [`ftpnat_client`].
#[classifier]
pub fn ftpnat_server(ctx: TcContext) -> i32 {
    scan_stage(ctx, SERVER)
}

/// The client or server stage (`slot`): one pass over the packet's bytes, then the same stage
/// again for the next line, or the stage that carries out what the scan left pending. Inlined
/// into each program, which so verifies only its own direction's scanner.
#[inline(always)]
fn scan_stage(mut ctx: TcContext, slot: u32) -> i32 {
    let Some((packet, entry)) = control_flow(&ctx) else {
        return TC_ACT_SHOT;
    };
    let pass = stage::pass(&ctx);
    if pass == 0 {
        match tcp_window::check(&ctx, packet, entry) {
            tcp_window::Checked::Counts => {}
            tcp_window::Checked::Forward => return stage::continue_control(&ctx, CONTROL_FORWARD),
        }
    }
    let pending = if slot == CLIENT {
        scan::client_packet(&ctx, packet, entry, pass)
    } else {
        scan::server_packet(&ctx, packet, entry, pass)
    };
    match pending {
        scan::Pending::More => {
            stage::set_pass(&mut ctx, pass + 1);
            stage::continue_control(&ctx, slot)
        }
        scan::Pending::Rewrite => stage::continue_control(&ctx, REWRITE),
        scan::Pending::Replay => stage::continue_control(&ctx, REPLAY),
        scan::Pending::Drop => TC_ACT_SHOT,
        scan::Pending::Nothing => stage::continue_control(&ctx, CONTROL_FORWARD),
    }
}

/// Carries out the rewrite (or the cut or give-back of held bytes) the control stage accepted.
#[classifier]
pub fn ftpnat_rewrite(ctx: TcContext) -> i32 {
    let Some(packet) = stage_packet(&ctx) else {
        return TC_ACT_SHOT;
    };
    let Some(config) = maps::config() else {
        return TC_ACT_SHOT;
    };
    if rewrite::rewrite_pending(&ctx, packet, config)
        && !held::splice_held_pending(&ctx, packet, config)
    {
        debug!(&ctx, "held bytes of a control line could not be given back");
    }
    stage::continue_control(&ctx, CONTROL_FORWARD)
}

/// Repeats on a retransmission what was done to its segment the first time.
#[classifier]
pub fn ftpnat_replay(ctx: TcContext) -> i32 {
    let Some(packet) = stage_packet(&ctx) else {
        return TC_ACT_SHOT;
    };
    let Some(config) = maps::config() else {
        return TC_ACT_SHOT;
    };
    if rewrite::replay_pending(&ctx, packet, config) {
        maps::bump(Counter::RewritesSkipped);
    }
    stage::continue_control(&ctx, CONTROL_FORWARD)
}

/// The last stage of every control packet: its sequence numbers shifted by the session's
/// rewrites, its headers translated, and on its way.
#[classifier]
pub fn ftpnat_control_forward(ctx: TcContext) -> i32 {
    let Some((packet, entry)) = control_flow(&ctx) else {
        return TC_ACT_SHOT;
    };
    if session::adjust_sequence(&ctx, packet, entry) {
        maps::bump(Counter::SequenceAdjusted);
    }
    nat::translate_and_forward(&ctx, packet, entry).action(PASS)
}

/// A stage's packet headers, parsed into this CPU's scratch area rather than onto the stack:
/// Linux 6.1 rounds every frame of a call chain up to 32 bytes and refuses chains over 512, and
/// the stages' chains are deep.
#[inline(always)]
fn stage_packet(ctx: &TcContext) -> Option<&'static Tcp> {
    let scratch = maps::SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch area; each stage parses the packet again on entry.
    let packet = unsafe { &mut (*scratch).packet };
    if !Tcp::parse_into(ctx, packet) {
        return None;
    }
    // SAFETY: a successful parse wrote every field.
    Some(unsafe { packet.assume_init_ref() })
}

/// A control stage's packet and its flow entry. None if the entry went in the meantime (the
/// agent's sweep ended the connection): the packet is then dropped, not sent untranslated.
#[inline(always)]
fn control_flow(ctx: &TcContext) -> Option<(&'static Tcp, &'static FlowEntry)> {
    let packet = stage_packet(ctx)?;
    let entry = FLOWS.get_ptr(packet.key)?;
    // SAFETY: a live map value, read only here; see ftpnat_ingress.
    Some((packet, unsafe { &*entry }))
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
