//! The FTP ALG proper: follows the control channel of each session with ftp-common's line tracker
//! and state machine, and records the data connections it announces as expectations.
//!
//! Nothing here re-implements FTP parsing: the segment's payload is copied into a per-CPU buffer
//! and handed to ftp-common. A line it cannot parse passes untouched and is counted; a refused
//! line passes untouched, opens nothing and is counted.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_skb_load_bytes, programs::TcContext};
use core::net::{IpAddr, Ipv4Addr};
use ftp_common::{
    ClientVerdict, PassiveEndpoint, Policy, PolicyContext, SegmentVerdict, ServerVerdict,
    maps::{
        Counter, DatapathConfig, ExpectKey, Expectation, ExpectationKind, FlowDirection, FlowEntry,
        SessionEntry,
    },
};

use crate::{
    headers::Tcp4,
    maps::{EXPECTS, SCRATCH, SCRATCH_LEN, SCRATCH_SIZE, SESSIONS, bump, now_ns},
};

/// At most this many lines of one segment go through the state machine: a bound the verifier can
/// see. Clients send one command per segment; longer replies are multi-line bodies anyway.
const MAX_LINES_PER_SEGMENT: usize = 0;

/// Creates the session record when a control connection opens.
#[inline(always)]
pub fn open_session(packet: &Tcp4, lan_ifindex: u32) {
    let mut entry = SessionEntry {
        opened_ns: now_ns(),
        state: ftp_common::Session::new(),
        client_lines: ftp_common::LineTracker::new(),
        server_lines: ftp_common::LineTracker::new(),
        lan_ifindex,
        data_flows: 0,
        malformed_lines: 0,
        refusals: 0,
    };
    entry
        .client_lines
        .on_syn(u32::from_be_bytes(packet.tcp.seq));
    let _ = SESSIONS.insert(packet.key(), entry, u64::from(BPF_ANY));
}

/// Follows one packet of a control connection, before its headers are translated.
#[inline(always)]
pub fn control_packet(ctx: &TcContext, packet: &Tcp4, flow: &FlowEntry, config: &DatapathConfig) {
    let Some(session) = SESSIONS.get_ptr_mut(flow.session) else {
        return;
    };
    // SAFETY: a live map value; one control connection's packets are handled one at a time in
    // practice (one CPU per flow), and a torn update only costs a missed line.
    let session = unsafe { &mut *session };
    let from_client = flow.direction == FlowDirection::Original as u8;
    let seq = u32::from_be_bytes(packet.tcp.seq);
    if packet.tcp.syn() != 0 {
        if !from_client {
            session.server_lines.on_syn(seq);
        }
        return;
    }
    let Some((payload_off, payload_len)) = packet.payload() else {
        return;
    };
    if payload_len == 0 {
        return;
    }
    let Ok(last) = ctx.load::<u8>(payload_off + payload_len - 1) else {
        return;
    };
    let tracker = if from_client {
        &mut session.client_lines
    } else {
        &mut session.server_lines
    };
    let verdict = tracker.on_segment_len(seq, payload_len as u32, last == b'\n');
    let SegmentVerdict::InSync(in_sync) = verdict else {
        if !from_client && matches!(verdict, SegmentVerdict::OutOfSync) {
            session.state.server_lines_lost();
        }
        return;
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch buffer; nothing else uses it while this program runs here.
    let buf = unsafe { &mut (*scratch).bytes };
    let copied = copy_payload(ctx, payload_off, payload_len, buf);
    if copied == 0 {
        return;
    }
    if probe_227(buf, 0, copied) != 0 {
        bump(Counter::ExpectationsCreated);
    }
    let Some(payload) = buf.get(..copied) else {
        return;
    };
    let policy = PolicyContext {
        client: IpAddr::V4(Ipv4Addr::from(flow.session.saddr)),
        server: IpAddr::V4(Ipv4Addr::from(flow.session.daddr)),
        policy: Policy::new(),
    };
    let mut lines = in_sync.lines(payload);
    for _ in 0..MAX_LINES_PER_SEGMENT {
        let Some(line) = lines.next() else {
            break;
        };
        if !line.is_whole() {
            continue;
        }
        if from_client {
            let verdict = session.state.on_client_line(line.bytes, &policy);
            on_client_verdict(session, &verdict);
        } else {
            let verdict = session.state.on_server_line(line.bytes, &policy);
            on_server_verdict(session, &verdict, flow, config);
        }
    }
}

/// Copies up to [`SCRATCH_LEN`] payload bytes; returns how many.
#[inline(always)]
fn copy_payload(ctx: &TcContext, offset: usize, len: usize, buf: &mut [u8; SCRATCH_SIZE]) -> usize {
    if len == 0 {
        return 0;
    }
    let len = if len > SCRATCH_LEN { SCRATCH_LEN } else { len };
    // Rewritten so the verifier sees 1 ≤ len ≤ SCRATCH_LEN (the helper refuses a possible 0).
    let len = ((len - 1) & (SCRATCH_LEN - 1)) + 1;
    // SAFETY: `buf` has room for `len` ≤ SCRATCH_LEN bytes; the helper checks the packet bounds.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            offset as u32,
            buf.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if ret == 0 { len } else { 0 }
}

#[inline(always)]
fn on_client_verdict(session: &mut SessionEntry, verdict: &ClientVerdict) {
    match verdict {
        ClientVerdict::Malformed(_) => {
            session.malformed_lines += 1;
            bump(Counter::MalformedLines);
        }
        ClientVerdict::Refused(_) => {
            session.refusals += 1;
            bump(Counter::Refusals);
        }
        _ => {}
    }
}

#[inline(always)]
fn on_server_verdict(
    session: &mut SessionEntry,
    verdict: &ServerVerdict,
    flow: &FlowEntry,
    config: &DatapathConfig,
) {
    match *verdict {
        ServerVerdict::OpenPassive { endpoint, .. } => {
            let (addr, port) = match endpoint {
                PassiveEndpoint::Pasv(addr) => (addr.ip().octets(), addr.port()),
                PassiveEndpoint::Epsv { port, .. } => (flow.session.daddr, port),
            };
            let key = ExpectKey {
                saddr: flow.session.saddr,
                daddr: addr,
                dport: port.to_be_bytes(),
                _pad: [0; 2],
            };
            let expectation = Expectation {
                expires_ns: now_ns() + config.expect_timeout_ns,
                session: flow.session,
                target_addr: addr,
                lan_ifindex: session.lan_ifindex,
                target_port: port.to_be_bytes(),
                public_port: 0,
                kind: ExpectationKind::Passive as u8,
                _pad: [0; 7],
            };
            if EXPECTS.insert(key, expectation, u64::from(BPF_ANY)).is_ok() {
                bump(Counter::ExpectationsCreated);
            } else {
                session.state.expectation_closed();
                bump(Counter::ExpectationTableFull);
            }
        }
        ServerVerdict::Malformed(_) => {
            session.malformed_lines += 1;
            bump(Counter::MalformedLines);
        }
        ServerVerdict::Refused(_) | ServerVerdict::Unsolicited { .. } => {
            session.refusals += 1;
            bump(Counter::Refusals);
        }
        _ => {}
    }
}

const MASK: usize = SCRATCH_SIZE - 1;

/// Verifier probe: a byte-at-a-time 227 scanner driven by bpf_loop.
#[repr(C)]
struct Probe {
    len: u32,
    state: u32,
    value: u32,
    numbers: u32,
    digits: u32,
    port: u32,
}

extern "C" fn probe_step(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer we gave it.
    let probe = unsafe { &mut *ctx.cast::<Probe>() };
    if index >= u64::from(probe.len) {
        return 1;
    }
    let Some(scratch) = SCRATCH.get_ptr(0) else { return 1 };
    // SAFETY: masked index into this CPU's scratch buffer.
    let b = unsafe { (*scratch).bytes[(index as usize) & MASK] };
    match probe.state {
        0 => { if index >= 4 && b.is_ascii_digit() { probe.state = 1; probe.value = u32::from(b - b'0'); probe.digits = 1; } }
        1 => {
            if b.is_ascii_digit() {
                probe.value = probe.value * 10 + u32::from(b - b'0');
                probe.digits += 1;
                if probe.digits > 3 || probe.value > 255 { probe.state = 3; return 1; }
            } else {
                probe.numbers += 1;
                if probe.numbers == 5 { probe.port = probe.value << 8; }
                if probe.numbers == 6 { probe.port |= probe.value; probe.state = 2; return 1; }
                if b != b',' { probe.state = 3; return 1; }
                probe.value = 0; probe.digits = 0;
            }
        }
        _ => return 1,
    }
    0
}

#[inline(always)]
fn probe_227(_buf: &[u8; SCRATCH_SIZE], _start: usize, len: usize) -> u32 {
    let mut probe = Probe { len: len as u32, state: 0, value: 0, numbers: 0, digits: 0, port: 0 };
    // SAFETY: plain helper call with a static callback and a stack context.
    unsafe {
        aya_ebpf::helpers::bpf_loop(
            SCRATCH_LEN as u32,
            probe_step as *mut core::ffi::c_void,
            (&raw mut probe).cast(),
            0,
        )
    };
    if probe.state == 2 { probe.port } else { 0 }
}
