//! Addresses held back across a segment boundary, and rewrites repeated on retransmissions: the
//! datapath's decisions, without its helpers or maps, so that the kernel program and the fuzz
//! target run the same code.
//!
//! When a masqueraded client's segment ends inside the address of a PORT/EPRT, the part of the
//! address in that segment cannot be rewritten once forwarded: the datapath cuts it from the
//! segment and keeps it in the session ([`HeldField`]); the next segment then carries the whole
//! rewritten address, or, if its line is not to be rewritten, the held bytes put back in front
//! of it. In a NAT64 ALG session, a line the ALG may replace whole (EPRT, EPSV, ALGS) is held
//! the same way from its first byte
//! ([`CommandScanner::pending_rewrite_start`](crate::CommandScanner::pending_rewrite_start)),
//! and so is, in the server's direction, a reply line the ALG will replace whole (the 227 it
//! returns as a 229, its own answer to a command it answered: [`cut_reply_at_segment_end`]),
//! with a [`HeldField`] of its own. Each direction's hold works the same way, in that
//! direction's sequence space.
//! Offsets here are in the scan buffer: the segment's payload, after the held bytes when a
//! hold is being completed.

use crate::{
    CommandScanner, ReplyScanner, Session,
    seqadj::seq_after,
    maps::{HELD_FIELD_MAX, HeldField, RewriteRecord, hold_state, rewrite_kind},
};

/// The tail to cut from a client segment whose bytes up to buffer offset `end` went through
/// `commands`, if the segment ends inside a PORT/EPRT address — or, with `whole_lines` (the
/// session's policy has the NAT64 ALG on), inside a line the ALG may replace whole — that began
/// at or after `start` (the first byte of this segment not forwarded before: the bytes before
/// the address must still be in the segment): `(offset, length)` of the tail. The tail fits a
/// [`HeldField`]; it may be the whole payload (see [`cut_tail`]).
#[inline(always)]
pub fn cut_at_segment_end(
    commands: &CommandScanner,
    whole_lines: bool,
    start: u32,
    end: u32,
) -> Option<(u16, u16)> {
    let address_start = commands.pending_rewrite_start(whole_lines)?;
    cut_tail(commands.line_len(), address_start, start, end)
}

/// The tail to cut from a server segment whose bytes up to buffer offset `end` went through
/// `replies`, if the segment ends inside a reply line the NAT64 ALG will replace whole (a 227
/// answering an EPSV it sent as PASV, the reply to a command it answers itself; see
/// [`Session::next_final_reply_replaced`]) that began at or after `start`: the whole line so
/// far, as [`cut_at_segment_end`] holds a client's. A server usually sends a reply as a segment
/// of its own: the tail is then the whole payload.
#[inline(always)]
pub fn cut_reply_at_segment_end(
    session: &Session,
    replies: &ReplyScanner,
    start: u32,
    end: u32,
) -> Option<(u16, u16)> {
    if !session.next_final_reply_replaced()
        || !replies.may_be_final_reply(session.multiline_reply())
    {
        return None;
    }
    cut_tail(replies.line_len(), 0, start, end)
}

/// The tail from byte `field_start` of the line being read (`line_len` bytes so far, ending at
/// buffer offset `end`) to the segment's end, if it began at or after `start` and fits a
/// [`HeldField`]: `(offset, length)`. It may begin at the payload's first byte: the segment then
/// goes on with no payload, a bare acknowledgement, which is sound as any cut is: the sequence
/// adjustment moves the bytes after it back by the held length, the line tracker and the window
/// check follow the sender's own numbers, and a retransmission of it is cut the same way
/// ([`cut_replay`]). (A segment that also carries a FIN is not cut: the datapath checks.)
#[inline(always)]
fn cut_tail(line_len: u16, field_start: u16, start: u32, end: u32) -> Option<(u16, u16)> {
    let line_start = end.wrapping_sub(u32::from(line_len));
    let field_off = line_start.wrapping_add(u32::from(field_start));
    let held_len = end.wrapping_sub(field_off);
    if field_off < start || held_len == 0 || held_len > HELD_FIELD_MAX as u32 {
        return None;
    }
    Some((field_off as u16, held_len as u16))
}

/// Whether the rewrite the scan of the segment after a hold asked for (`kind` of its field at
/// `field_off`, `field_len` bytes, in the buffer that starts with the `held_len` held bytes)
/// completes the hold: it rewrites the held line's address, or (the NAT64 ALG) replaces the held
/// line whole — a client's command or a server's reply — either of which starts at offset 0.
/// Anything else gives the held bytes back.
#[inline(always)]
pub fn completes_hold(kind: u8, field_off: u16, field_len: u16, held_len: u16) -> bool {
    matches!(
        kind,
        rewrite_kind::PORT
            | rewrite_kind::EPRT
            | rewrite_kind::EPSV_AS_PASV
            | rewrite_kind::EPRT_AS_PORT
            | rewrite_kind::LOCAL_COMMAND
            | rewrite_kind::PASV_AS_229
            | rewrite_kind::ALG_REPLY
    ) && field_off == 0
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

/// The rewrite a client retransmission of `payload_len` bytes at `seq` is to repeat ([`Replay`]
/// then places it in the segment): for one that reaches the segment whose tail was held, from its
/// start or from before it (merged with the segments before, as Linux resends after a timeout),
/// the cut or the completed address ([`cut_replay`] of its part from that segment on); for any
/// other, `last`, the direction's last rewrite (unless that gave back held bytes that a later cut
/// replaced). `None` if it cannot get the same bytes.
#[inline(always)]
pub fn retransmission_record(
    held: &HeldField,
    last: &RewriteRecord,
    seq: u32,
    payload_len: usize,
) -> Option<RewriteRecord> {
    let lead = held.seq.wrapping_sub(seq) as usize;
    let reaches_cut_segment = seq == held.seq || (seq_after(held.seq, seq) && lead < payload_len);
    if held.state == hold_state::NONE || !reaches_cut_segment {
        // A give-back puts the held bytes back in front of its segment: once a later cut holds
        // others, it cannot be repeated.
        if last.kind == rewrite_kind::RESTORE && held.next_seq() != last.seq {
            return None;
        }
        return Some(*last);
    }
    cut_replay(held, last, payload_len.saturating_sub(lead))
}

/// What a retransmission gets of the last rewrite of its direction ([`replay_record`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// It does not reach the rewritten field: it passes as it is.
    Unchanged,
    /// The same field rewritten the same way, at its offset in this segment.
    Rewrite(RewriteRecord),
    /// It starts or stops inside the rewritten field: it cannot be given the same bytes.
    CannotRepeat,
}

/// What a retransmission of `payload_len` bytes at `seq` gets of `record`, the last rewrite of
/// its direction. One that starts where the rewritten segment did, or before it (Linux merges
/// segments when it resends after a timeout) and holds the whole field, gets the field rewritten
/// the same way; the bytes before it need no change, and the sequence adjustment already moves
/// the bytes after it.
#[inline(always)]
pub fn replay_record(record: &RewriteRecord, seq: u32, payload_len: usize) -> Replay {
    if record.kind == rewrite_kind::NONE {
        return Replay::Unchanged;
    }
    let field_start = record.seq.wrapping_add(u32::from(record.field_off));
    let field_end = field_start.wrapping_add(u32::from(record.field_len));
    if seq == record.seq {
        return Replay::Rewrite(*record);
    }
    if seq_after(seq, record.seq) {
        return if seq_after(field_end, seq) {
            Replay::CannotRepeat
        } else {
            Replay::Unchanged
        };
    }
    let end = seq.wrapping_add(payload_len as u32);
    if !seq_after(end, field_start) {
        return Replay::Unchanged;
    }
    let field_off = field_start.wrapping_sub(seq);
    if seq_after(field_end, end) || field_off > u32::from(u16::MAX) {
        return Replay::CannotRepeat;
    }
    Replay::Rewrite(RewriteRecord {
        seq,
        payload_len: payload_len as u16,
        field_off: field_off as u16,
        ..*record
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(bytes: &[u8]) -> CommandScanner {
        let mut commands = CommandScanner::new();
        for &byte in bytes {
            commands.push(byte);
        }
        commands
    }

    /// The cut of a segment holding `bytes`, all of it new.
    fn cut(bytes: &[u8], whole_lines: bool) -> Option<(u16, u16)> {
        cut_at_segment_end(&scanned(bytes), whole_lines, 0, bytes.len() as u32)
    }

    #[test]
    fn a_line_the_nat64_alg_replaces_is_held_from_its_first_byte() {
        assert_eq!(cut(b"TYPE I\r\nEPRT |2|2001:db8::2|500", true), Some((8, 23)));
        assert_eq!(cut(b"TYPE I\r\nEPSV\r", true), Some((8, 5)));
        assert_eq!(cut(b"NOOP\r\nALGS STAT", true), Some((6, 9)));
        // Without the ALG only the address is held.
        assert_eq!(cut(b"TYPE I\r\nEPRT |2|2001:db8::2|500", false), Some((13, 18)));
        assert_eq!(cut(b"TYPE I\r\nEPSV\r", false), None);
        // An EPRT of family 1 is not replaced whole.
        assert_eq!(cut(b"TYPE I\r\nEPRT |1|10.0.0.2|500", true), Some((13, 15)));
    }

    #[test]
    fn the_longest_eprt_line_fits_a_hold() {
        let line = b"EPRT |2|ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff|65535|\r";
        let segment = [&b"NOOP\r\n"[..], line].concat();
        assert_eq!(cut(&segment, true), Some((6, line.len() as u16)));
        // A longer line (an ALGS with a long argument) is not held: it passes as it is.
        let segment = [&b"NOOP\r\nALGS "[..], &[b'x'; HELD_FIELD_MAX]].concat();
        assert_eq!(cut(&segment, true), None);
    }

    #[test]
    fn a_line_held_whole_may_take_the_whole_segment_but_no_bytes_forwarded_before() {
        // The segment goes on as a bare acknowledgement.
        assert_eq!(cut(b"EPSV", true), Some((0, 4)));
        assert_eq!(cut(b"PORT 10,0,0,2,", false), Some((5, 9)));
        // The line began in bytes already forwarded (the segment's new bytes start at 3).
        let bytes = b"EPRT |2|2001:db8::2|500";
        assert_eq!(cut_at_segment_end(&scanned(bytes), true, 3, bytes.len() as u32), None);
        // Nothing to hold.
        assert_eq!(cut(b"EPSV\r\n", true), None);
    }

    /// A NAT64 session whose client sent `command` (answered by the ALG), then whose server's
    /// reply so far is `partial` (after `before`, bytes forwarded earlier in the segment).
    fn reply_cut(command: &[u8], before: &[u8], partial: &[u8]) -> Option<(u16, u16)> {
        let ctx = crate::PolicyContext {
            client: crate::maps::ip::from_ip("2001:db8::2".parse().unwrap()),
            server: crate::maps::ip::from_ip("192.0.2.7".parse().unwrap()),
            policy: crate::Policy {
                nat64_alg: true,
                epsv_as_pasv: true,
                ..crate::Policy::new()
            },
        };
        let mut session = Session::new();
        session.on_client_line(command, &ctx);
        let mut replies = ReplyScanner::new();
        for &byte in before {
            if replies.push(byte) {
                session.on_server_reply(replies.reply(), &ctx);
            }
        }
        for &byte in partial {
            assert!(!replies.push(byte));
        }
        let end = (before.len() + partial.len()) as u32;
        cut_reply_at_segment_end(&session, &replies, 0, end)
    }

    #[test]
    fn a_reply_the_nat64_alg_replaces_is_held_from_its_first_byte() {
        // The 227 answering an EPSV sent as PASV, cut anywhere: usually the whole segment.
        assert_eq!(reply_cut(b"EPSV\r\n", b"", b"22"), Some((0, 2)));
        assert_eq!(reply_cut(b"EPSV\r\n", b"", b"227 Entering Passive Mode (192,0"), Some((0, 32)));
        assert_eq!(reply_cut(b"EPSV\r\n", b"", b"227 Entering (192,0,2,7,117,48).\r"), Some((0, 33)));
        // After a preliminary reply in the same segment.
        assert_eq!(reply_cut(b"EPSV\r\n", b"150 wait\r\n", b"227 E"), Some((10, 5)));
        // The reply to a command the ALG answers itself.
        assert_eq!(reply_cut(b"ALGS STATUS64\r\n", b"", b"200 NOOP"), Some((0, 8)));
        assert_eq!(reply_cut(b"EPSV ALL\r\n", b"", b"5"), Some((0, 1)));
        // Not a final reply, or not the one the ALG replaces.
        assert_eq!(reply_cut(b"EPSV\r\n", b"", b"150 "), None);
        assert_eq!(reply_cut(b"EPSV\r\n", b"", b"227-"), None);
        assert_eq!(reply_cut(b"PASV\r\n", b"", b"227 Entering"), None);
        assert_eq!(reply_cut(b"EPSV\r\n", b"227 Entering (192,0,2,7,117,48).\r\n", b"22"), None);
        // Too long for a hold: it passes as it is.
        let long = [&b"227 "[..], &[b'x'; HELD_FIELD_MAX]].concat();
        assert_eq!(reply_cut(b"EPSV\r\n", b"", &long), None);
    }

    #[test]
    fn held_bytes_given_back_fit_the_replacement_buffer() {
        // The datapath writes a give-back where it writes a formatter's text.
        let mut held = HeldField::new();
        held.len = HELD_FIELD_MAX as u8;
        let mut out = [0u8; crate::MAX_FIELD_LEN];
        assert_eq!(held.copy_into(&mut out), Some(HELD_FIELD_MAX));
    }

    #[test]
    fn a_whole_line_replacement_completes_a_hold() {
        for kind in [
            rewrite_kind::PORT,
            rewrite_kind::EPRT,
            rewrite_kind::EPSV_AS_PASV,
            rewrite_kind::EPRT_AS_PORT,
            rewrite_kind::LOCAL_COMMAND,
            rewrite_kind::PASV_AS_229,
            rewrite_kind::ALG_REPLY,
        ] {
            assert!(completes_hold(kind, 0, 30, 24), "{kind}");
            assert!(!completes_hold(kind, 1, 30, 24), "{kind}");
            assert!(!completes_hold(kind, 0, 23, 24), "{kind}");
        }
        for kind in [
            rewrite_kind::NONE,
            rewrite_kind::PASV_227,
            rewrite_kind::PORT_REFUSED,
            rewrite_kind::CUT,
        ] {
            assert!(!completes_hold(kind, 0, 30, 24), "{kind}");
        }
    }

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

    #[test]
    fn a_resend_merging_the_rewritten_segment_into_an_earlier_one_is_rewritten_inside_it() {
        // Found by the datapath_segments fuzz target: passed as it was, its bytes after the
        // field landed where the rewritten stream has others.
        let record = RewriteRecord {
            seq: 1004,
            payload_len: 24,
            field_off: 5,
            field_len: 15,
            public_port: 40000,
            kind: rewrite_kind::PORT,
            delimiter: 0,
            _pad: [0; 2],
        };
        let Replay::Rewrite(replay) = replay_record(&record, 1000, 28) else {
            panic!("not rewritten");
        };
        assert_eq!((replay.seq, replay.field_off, replay.field_len), (1000, 9, 15));
        assert_eq!(replay_record(&record, 1000, 4), Replay::Unchanged);
        assert_eq!(replay_record(&record, 1000, 12), Replay::CannotRepeat);
        assert_eq!(replay_record(&record, 1010, 10), Replay::CannotRepeat);
        assert_eq!(replay_record(&record, 1024, 10), Replay::Unchanged);
        assert_eq!(replay_record(&record, 1004, 24), Replay::Rewrite(record));
    }

    #[test]
    fn a_resend_merging_the_cut_segment_into_an_earlier_one_is_cut_inside_it() {
        // Found by the datapath_segments fuzz target.
        let mut held = held();
        held.state = hold_state::HOLDING;
        let last = RewriteRecord::default();
        let record = retransmission_record(&held, &last, 996, 14).unwrap();
        assert_eq!((record.kind, record.seq, record.field_off, record.field_len), (rewrite_kind::CUT, 1000, 5, 5));
        let Replay::Rewrite(placed) = replay_record(&record, 996, 14) else {
            panic!("not cut");
        };
        assert_eq!((placed.seq, placed.field_off, placed.field_len), (996, 9, 5));
        assert_eq!(retransmission_record(&held, &last, 990, 10), Some(last));
        assert_eq!(retransmission_record(&held, &last, 1002, 8), Some(last));
    }

    #[test]
    fn a_give_back_is_not_repeated_with_the_bytes_of_a_later_cut() {
        // Found by the datapath_segments fuzz target: the resent segment got the later cut's
        // bytes in front of it.
        let restore = RewriteRecord {
            seq: 1010,
            payload_len: 1,
            kind: rewrite_kind::RESTORE,
            ..RewriteRecord::default()
        };
        let mut held = held();
        assert_eq!(retransmission_record(&held, &restore, 1010, 1), Some(restore));
        held.seq = 1011;
        held.state = hold_state::HOLDING;
        assert_eq!(retransmission_record(&held, &restore, 1010, 1), None);
    }
}
