//! Addresses held back across a segment boundary: the datapath's decisions, without its helpers
//! or maps, so that the kernel program and the fuzz target run the same code.
//!
//! When a masqueraded client's segment ends inside the address of a PORT/EPRT, the part of the
//! address in that segment cannot be rewritten once forwarded: the datapath cuts it from the
//! segment and keeps it in the session ([`HeldField`]); the next segment then carries the whole
//! rewritten address, or, if its line is not to be rewritten, the held bytes put back in front
//! of it. Offsets here are in the scan buffer: the segment's payload, after the held bytes when a
//! hold is being completed.

use crate::{
    CommandScanner,
    maps::{HELD_FIELD_MAX, HeldField, RewriteRecord, hold_state, rewrite_kind},
};

/// The tail to cut from a client segment whose bytes up to buffer offset `end` went through
/// `commands`, if the segment ends inside a PORT/EPRT address that began at or after `start` (the
/// first byte of this segment not forwarded before: the bytes before the address must still be
/// in the segment): `(offset, length)` of the tail. At least one byte stays in the segment, and
/// the tail fits a [`HeldField`].
#[inline(always)]
pub fn cut_at_segment_end(commands: &CommandScanner, start: u32, end: u32) -> Option<(u16, u16)> {
    let address_start = commands.pending_address_start()?;
    let line_start = end.wrapping_sub(u32::from(commands.line_len()));
    let field_off = line_start.wrapping_add(u32::from(address_start));
    let held_len = end.wrapping_sub(field_off);
    if field_off < start || field_off == 0 || held_len == 0 || held_len > HELD_FIELD_MAX as u32 {
        return None;
    }
    Some((field_off as u16, held_len as u16))
}

/// Whether the rewrite the scan of the segment after a hold asked for (`kind` of its field at
/// `field_off`, `field_len` bytes, in the buffer that starts with the `held_len` held bytes)
/// completes the hold: it rewrites the held line's address, which starts at offset 0. Anything
/// else gives the held bytes back.
#[inline(always)]
pub fn completes_hold(kind: u8, field_off: u16, field_len: u16, held_len: u16) -> bool {
    matches!(kind, rewrite_kind::PORT | rewrite_kind::EPRT)
        && field_off == 0
        && field_len >= held_len
}

/// What to repeat on a retransmission, `payload_len` bytes long, of the segment whose tail was
/// held: the same cut if it has the original's length; if it is shorter (a sender may resend
/// less, after its MSS shrank), the cut of whatever part of the held bytes it carries, or nothing
/// if it stops before them; if the segment after it was merged in (Linux resends that way on a
/// timeout), the whole address replaced the way that segment completed it (`completion`, the
/// client's last rewrite record). `None` if it cannot get the same bytes.
#[inline(always)]
pub fn cut_replay(
    held: &HeldField,
    completion: &RewriteRecord,
    payload_len: usize,
) -> Option<RewriteRecord> {
    let original = usize::from(held.payload_len);
    if payload_len == original {
        return Some(RewriteRecord {
            seq: held.seq,
            payload_len: held.payload_len,
            field_off: held.off,
            field_len: u16::from(held.len),
            public_port: 0,
            kind: rewrite_kind::CUT,
            delimiter: 0,
            _pad: [0; 2],
        });
    }
    let off = usize::from(held.off);
    if payload_len < original {
        // The bytes before the held ones pass as they are; of the held ones, those it carries
        // are cut again (the receiver has them from the segment that completed the address).
        let cut = RewriteRecord {
            seq: held.seq,
            payload_len: payload_len as u16,
            field_off: held.off,
            field_len: payload_len.saturating_sub(off) as u16,
            public_port: 0,
            kind: rewrite_kind::CUT,
            delimiter: 0,
            _pad: [0; 2],
        };
        return Some(if payload_len <= off {
            RewriteRecord {
                kind: rewrite_kind::NONE,
                ..cut
            }
        } else {
            cut
        });
    }
    if held.state != hold_state::RELEASED
        || completion.seq != held.next_seq()
    {
        return None;
    }
    if completion.kind == rewrite_kind::RESTORE {
        // The bytes as the client sent them are what the receiver was given.
        return Some(RewriteRecord {
            kind: rewrite_kind::NONE,
            ..*completion
        });
    }
    Some(RewriteRecord {
        seq: held.seq,
        field_off: held.off,
        field_len: u16::from(held.len).saturating_add(completion.field_len),
        ..*completion
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PORT 10,0,` (10 bytes) with `10,0,` held from offset 5, completed by the next segment.
    fn held() -> HeldField {
        let mut held = HeldField::new();
        held.seq = 1000;
        held.payload_len = 10;
        held.off = 5;
        held.len = 5;
        held.state = hold_state::RELEASED;
        held
    }

    #[test]
    fn a_retransmission_of_the_cut_segment_is_cut_the_same_way() {
        let replay = cut_replay(&held(), &RewriteRecord::default(), 10).unwrap();
        assert_eq!((replay.kind, replay.field_off, replay.field_len), (rewrite_kind::CUT, 5, 5));
    }

    #[test]
    fn a_shorter_retransmission_is_cut_where_it_reaches_into_the_held_bytes() {
        // Found by the datapath_segments fuzz target: passed as it was, it gave the receiver
        // bytes the stream no longer has, and its acknowledgements then ran past the stream.
        let replay = cut_replay(&held(), &RewriteRecord::default(), 8).unwrap();
        assert_eq!((replay.kind, replay.field_off, replay.field_len), (rewrite_kind::CUT, 5, 3));
        let replay = cut_replay(&held(), &RewriteRecord::default(), 5).unwrap();
        assert_eq!(replay.kind, rewrite_kind::NONE);
    }

    #[test]
    fn a_merged_retransmission_carries_the_whole_rewritten_address() {
        let completion = RewriteRecord {
            seq: 1010,
            payload_len: 12,
            field_off: 0,
            field_len: 10,
            public_port: 40000,
            kind: rewrite_kind::PORT,
            delimiter: 0,
            _pad: [0; 2],
        };
        let replay = cut_replay(&held(), &completion, 22).unwrap();
        assert_eq!((replay.seq, replay.field_off, replay.field_len), (1000, 5, 15));
        assert_eq!((replay.kind, replay.public_port), (rewrite_kind::PORT, 40000));
    }
}
