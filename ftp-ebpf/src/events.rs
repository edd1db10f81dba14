//! Events for the agent: what the datapath saw, one [`Event`] per record of a ring buffer. The
//! agent logs them and passes them on to `ftpnat events`. A full ring buffer drops events, never
//! packets: they are reports, not state. Each session's events are held to its budget
//! ([`ftp_common::maps::EventBudget`]): a connection flooding lines cannot flood the agent.
//! Events not reported are counted.

use aya_ebpf::maps::ring_buf::RingBufEntry;
use ftp_common::maps::{Counter, EVENT_TEXT_LEN, Event, EventKind, FlowKey};

use crate::{
    maps::{EVENTS, SCRATCH, SESSIONS, bump, now_ns},
    scratch::SCRATCH_SIZE,
};

/// Room in the ring buffer for an event of `kind` of `session`, if its budget allows one and the
/// ring has room; else the event is counted as suppressed.
#[inline(always)]
fn reserve(session: &FlowKey, kind: EventKind) -> Option<RingBufEntry<Event>> {
    if kind.budgeted()
        && let Some(entry) = SESSIONS.get_ptr_mut(session)
        // SAFETY: a live map value; a torn update of the budget would cost an event, no more.
        && unsafe { !(*entry).events.take(now_ns()) }
    {
        bump(Counter::EventsSuppressed);
        return None;
    }
    let reserved = EVENTS.reserve::<Event>(0);
    if reserved.is_none() {
        bump(Counter::EventsSuppressed);
    }
    reserved
}

/// Reports `kind` for `session`, with an address and port as the kind defines them.
// A subprogram of its own: the event is built in the ring buffer, not on the callers' stacks.
#[inline(never)]
pub fn emit(session: &FlowKey, kind: EventKind, detail: u8, addr: [u8; 4], port: u16) {
    let Some(mut entry) = reserve(session, kind) else {
        return;
    };
    entry.write(Event::new(now_ns(), *session, kind, detail, (addr, port)));
    entry.submit(0);
}

/// Reports a client command, with up to [`EVENT_TEXT_LEN`] bytes of its argument copied from this
/// CPU's scratch buffer at `text_off` (the payload copy the ALG scans).
#[inline(never)]
pub fn emit_command(session: &FlowKey, name: u8, text_off: u32, text_len: u32) {
    let Some(mut entry) = reserve(session, EventKind::Command) else {
        return;
    };
    let text_len = if text_len > EVENT_TEXT_LEN as u32 {
        EVENT_TEXT_LEN as u32
    } else {
        text_len
    };
    let event = entry.write(Event {
        text_len: text_len as u8,
        ..Event::new(now_ns(), *session, EventKind::Command, name, ([0; 4], 0))
    });
    if let Some(scratch) = SCRATCH.get_ptr(0) {
        let mut i = 0;
        while i < EVENT_TEXT_LEN {
            if i as u32 >= text_len {
                break;
            }
            let at = (text_off as usize + i) & (SCRATCH_SIZE - 1);
            // SAFETY: `at` is masked into the scratch buffer.
            event.text[i] = unsafe { *(*scratch).bytes.as_ptr().add(at) };
            i += 1;
        }
    }
    entry.submit(0);
}
