//! Events for the agent: what the datapath saw, one [`Event`] per record of a ring buffer. The
//! agent logs them and passes them on to `ftpnat events`. A full ring buffer drops events, never
//! packets: they are reports, not state. Each session's events are held to its budget
//! ([`ftp_common::maps::EventBudget`]): a connection flooding lines cannot flood the agent.
//! Events not reported are counted.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    maps::ring_buf::RingBufEntry,
};
use ftp_common::maps::{
    Counter, EVENT_TEXT_LEN, EVENTS_WAKEUP_BYTES, Event, EventKind, FlowKey, IpBytes, ip,
};

use crate::{
    maps::{EVENTS, SCRATCH, SESSIONS, bump, now_ns},
    scratch::SCRATCH_SIZE,
};

/// Submits without waking the agent, which reads the ring every
/// [`ftp_common::maps::EVENTS_POLL_INTERVAL_MS`], unless the ring is filling up faster than that.
#[inline(always)]
fn submit_flags() -> u64 {
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= EVENTS_WAKEUP_BYTES {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

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
pub fn emit(session: &FlowKey, kind: EventKind, detail: u8, addr: IpBytes, port: u16) {
    let Some(mut entry) = reserve(session, kind) else {
        return;
    };
    write_record(
        entry.as_mut_ptr(),
        session,
        [kind as u8, detail, 0],
        (addr, port),
    );
    entry.submit(submit_flags());
}

/// Reports `kind` for `session` with an address and port and a count (`value`), as the kind
/// defines them.
#[inline(never)]
pub fn emit_counted(session: &FlowKey, kind: EventKind, (addr, port): (IpBytes, u16), value: u64) {
    let Some(mut entry) = reserve(session, kind) else {
        return;
    };
    let record = entry.as_mut_ptr();
    write_record(record, session, [kind as u8, 0, 0], (addr, port));
    // SAFETY: the reserved record, written in full just above.
    unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!((*record).value), value) };
    entry.submit(submit_flags());
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
    let event = entry.as_mut_ptr();
    let header = [EventKind::Command as u8, name, text_len as u8];
    write_record(event, session, header, (ip::UNSPECIFIED, 0));
    if let Some(scratch) = SCRATCH.get_ptr(0) {
        let mut i = 0;
        while i < EVENT_TEXT_LEN {
            if i as u32 >= text_len {
                break;
            }
            let at = (text_off as usize + i) & (SCRATCH_SIZE - 1);
            // SAFETY: `at` is masked into the scratch buffer; `i` is below the text's length.
            unsafe { (*event).text[i] = *(*scratch).bytes.as_ptr().add(at) };
            i += 1;
        }
    }
    entry.submit(submit_flags());
}

const _: () = assert!(
    core::mem::offset_of!(Event, text).is_multiple_of(8) && EVENT_TEXT_LEN.is_multiple_of(8),
    "the text is zeroed as whole u64 words"
);

/// Writes an event of `session` into its ring-buffer record, as [`Event::new`] would build it:
/// its kind, detail and text length (`header`), an address and port (host byte order), no count,
/// the text zeroed. Field by field, with volatile stores: the compiler would build a whole Event
/// on the stack, or merge plain stores of the zeroed count and text into a call to `memset` — one
/// frame more on the stage's call chain, whose frames Linux 6.1 rounds up to 32 bytes each and
/// refuses beyond 512 (see DEVELOPERS.md).
#[inline(always)]
fn write_record(
    record: *mut Event,
    session: &FlowKey,
    header: [u8; 3],
    (addr, port): (IpBytes, u16),
) {
    use core::ptr::{addr_of_mut, write_volatile};
    let [kind, detail, text_len] = header;
    // SAFETY: `record` is a reserved ring-buffer record of an Event's size; every field is
    // written once, the text as whole u64 words (it starts 8-byte aligned, a multiple of 8 long).
    unsafe {
        write_volatile(addr_of_mut!((*record).ts_ns), now_ns());
        write_volatile(addr_of_mut!((*record).session), *session);
        write_volatile(addr_of_mut!((*record).kind), kind);
        write_volatile(addr_of_mut!((*record).detail), detail);
        write_volatile(addr_of_mut!((*record).text_len), text_len);
        write_volatile(addr_of_mut!((*record)._pad), 0);
        write_volatile(addr_of_mut!((*record).addr), addr);
        write_volatile(addr_of_mut!((*record).port), port.to_be_bytes());
        write_volatile(addr_of_mut!((*record)._pad2), [0; 6]);
        write_volatile(addr_of_mut!((*record).value), 0);
        let text = addr_of_mut!((*record).text).cast::<u64>();
        for word in 0..EVENT_TEXT_LEN / 8 {
            write_volatile(text.add(word), 0);
        }
    }
}
