//! Lines of the control channel: which bytes of a TCP segment may be parsed, and how a line ends.
//!
//! FTP commands and replies are only meaningful at the start of a line. Text that merely looks
//! like `PORT …` or `227 …` inside another line (a file name, a banner, the middle of a long reply)
//! must never be acted on, so bytes are only parsed when it is known where in the stream the
//! current line began. That position is the byte after the last LF seen in that direction, tracked
//! by a [`LineTracker`] per direction.
//!
//! # Per segment
//!
//! 1. [`LineTracker::on_segment_len`] (or [`LineTracker::on_segment`]) classifies the segment:
//!    - [`SegmentVerdict::InSync`]: the segment carries the next bytes of the stream from a known
//!      position, [`InSync::start`]. If [`InSync::continues_line`] is false a line starts there:
//!      [`reset`](crate::CommandScanner::reset) the direction's scanner first. If it is true, the
//!      bytes continue the line the scanner was reading at the end of the previous in-sync segment,
//!      and the scanner carries on from its stored state: a command or reply split over two (or
//!      more) segments is parsed like any other, and is never taken for a line start.
//!      Feed the bytes from `start` on to the scanner, one at a time.
//!    - [`SegmentVerdict::Retransmission`]: every byte was seen before. The caller re-applies what
//!      it did the first time (same rewrite, same sequence adjustment) and must not feed the
//!      scanner or run the session again. If it recorded nothing for that range, it passes the
//!      segment untouched: a range skipped while out of sync also comes back as a retransmission.
//!    - [`SegmentVerdict::OutOfSync`]: the start of the segment is not a known position (nothing
//!      known yet, or bytes are missing before it). It is never parsed.
//!    - [`SegmentVerdict::Empty`]: no payload.
//! 2. Whatever the verdict, a segment that ends with LF tells that the next byte starts a line: the
//!    tracker moves forward to it (never backwards, comparing sequence numbers modulo 2^32). This is
//!    how tracking recovers after a gap, as the Linux helper does. The next in-sync segment then
//!    starts a line, so the scanner is reset and whatever it held is dropped.
//!
//! A segment that overlaps the tracked position (a retransmission coalesced with new data) is
//! `InSync` with [`InSync::start`] past the bytes already seen.
//!
//! A field split between two segments can be recognised but not rewritten in one place; the
//! caller sees that from the field's offsets (see the crate's `README.md`).
//!
//! Why byte by byte: a BPF verifier follows a bounded loop one iteration at a time with exact
//! values, so splitting a segment into lines and then parsing each line costs it the product of
//! the two scans and exceeds its limit. A scanner step inside a `bpf_loop` callback is verified
//! once.

use crate::MalformedReason;

/// The longest line parsed, terminator included. A longer line is reported as
/// [`MalformedReason::TooLong`] and passes untouched; RFC 959 lines are far
/// shorter (the longest command the core rewrites, an IPv6 `EPRT`, is under 64 bytes).
pub const MAX_LINE_LEN: usize = 512;

/// Whether the eight bytes `word` can all be passed over in a line whose content no longer
/// matters (see [`ReplyScanner::skip`](crate::ReplyScanner::skip)): none of them ends the line
/// (LF) and the last is not a CR, which the next byte would have to settle. A test on the whole
/// word at once (the classic "has a zero byte" trick on the word XOR LFs), for the datapath,
/// which otherwise pays a scanner step per byte.
pub fn skippable_word(word: [u8; 8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const LFS: u64 = 0x0a0a_0a0a_0a0a_0a0a;
    let lf_bytes_zero = u64::from_le_bytes(word) ^ LFS;
    let has_lf = lf_bytes_zero.wrapping_sub(ONES) & !lf_bytes_zero & HIGHS != 0;
    let [.., last] = word;
    !has_lf && last != b'\r'
}

/// Where a scanner is in its current line: how many bytes it has seen, whether a CR is held back
/// (it belongs to the terminator if an LF follows, to the content otherwise) and whether the line
/// has ended. Part of the scanners' stored state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Framing {
    len: u16,
    flags: u8,
    _pad: u8,
}

const FRAMING_CR_HELD: u8 = 1;
const FRAMING_ENDED: u8 = 2;

/// What one byte means for the grammar, as [`Framing::push`] sees it.
pub(crate) enum Framed {
    /// Content for the grammar: a held-back CR (at `index - 1`) first if `held_cr`, then `byte`
    /// at `index` (none if the byte is a CR, now held back).
    Content {
        held_cr: bool,
        byte: Option<u8>,
        index: u16,
    },
    /// Beyond [`MAX_LINE_LEN`]: ignored until the LF.
    Beyond,
    /// The LF: the line's content (without CR LF or LF) is this many bytes, or it was too long.
    End(Result<u16, MalformedReason>),
}

/// A grammar read one byte at a time behind a [`Framing`]: what the command and reply scanners
/// have in common, so that [`scan_byte`] drives both.
pub(crate) trait LineGrammar {
    fn framing(&mut self) -> &mut Framing;
    /// Forget the line: the next byte starts one.
    fn restart(&mut self);
    /// Content byte `byte` at `index` in the line.
    fn consume(&mut self, byte: u8, index: u16);
    /// The LF arrived; the content was this long (or the line too long).
    fn finish(&mut self, content_len: Result<u16, MalformedReason>);
}

/// Takes the next byte of a stream for `grammar`: true when it was the LF that ends a line (the
/// next byte then starts a new one).
#[inline(always)]
pub(crate) fn scan_byte<G: LineGrammar>(grammar: &mut G, byte: u8) -> bool {
    if grammar.framing().ended() {
        grammar.restart();
    }
    match grammar.framing().push(byte) {
        Framed::Content {
            held_cr,
            byte,
            index,
        } => {
            if held_cr {
                grammar.consume(b'\r', index.wrapping_sub(1));
            }
            if let Some(byte) = byte {
                grammar.consume(byte, index);
            }
            false
        }
        Framed::Beyond => false,
        Framed::End(content_len) => {
            grammar.finish(content_len);
            true
        }
    }
}

impl Framing {
    pub(crate) const fn new() -> Self {
        Self {
            len: 0,
            flags: 0,
            _pad: 0,
        }
    }

    /// The line ended with the last byte.
    #[inline(always)]
    pub(crate) fn ended(&self) -> bool {
        self.flags & FRAMING_ENDED != 0
    }

    /// Bytes of the line so far, LF included once it has ended.
    #[inline(always)]
    pub(crate) fn len(&self) -> u16 {
        self.len
    }

    /// The last byte was a CR, held back until the next shows whether it ends the line.
    #[inline(always)]
    pub(crate) fn cr_held(&self) -> bool {
        self.flags & FRAMING_CR_HELD != 0
    }

    /// Counts `len` bytes of content that are neither LF nor, for the last, CR, with no CR held:
    /// what pushing them does to the framing (a CR inside them is held and let go again).
    #[inline(always)]
    pub(crate) fn skip(&mut self, len: u16) {
        self.len = self.len.saturating_add(len);
    }

    #[inline(always)]
    pub(crate) fn push(&mut self, byte: u8) -> Framed {
        let index = self.len;
        self.len = index.saturating_add(1);
        let held_cr = self.flags & FRAMING_CR_HELD != 0;
        self.flags &= !FRAMING_CR_HELD;
        let within = usize::from(index) < MAX_LINE_LEN;
        if byte == b'\n' {
            self.flags |= FRAMING_ENDED;
            return Framed::End(if within {
                Ok(index.saturating_sub(u16::from(held_cr)))
            } else {
                Err(MalformedReason::TooLong)
            });
        }
        if !within {
            return Framed::Beyond;
        }
        let byte = if byte == b'\r' {
            self.flags |= FRAMING_CR_HELD;
            None
        } else {
            Some(byte)
        };
        Framed::Content {
            held_cr,
            byte,
            index,
        }
    }
}

/// `a` comes before `b` in sequence space (RFC 1982 serial-number comparison on 32 bits).
#[inline(always)]
fn seq_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// No line boundary known yet: wait for a segment ending with LF.
const TRACK_UNSYNCED: u8 = 0;
/// `next_seq` starts a line.
const TRACK_LINE_START: u8 = 1;
/// `next_seq` continues a line that began in an earlier segment.
const TRACK_MID_LINE: u8 = 2;

/// Where the next line starts in one direction of a control connection.
///
/// Stored in a BPF map: `#[repr(C)]`, 8 bytes, no padding, and every bit pattern is a valid state
/// (an unknown `state` byte counts as "not synchronised"). The all-zero value is
/// [`LineTracker::new`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineTracker {
    /// Sequence number of the first byte after everything processed in order.
    next_seq: u32,
    /// One of the `TRACK_*` values.
    state: u8,
    _pad: [u8; 3],
}

/// What to do with one segment; see the [module documentation](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentVerdict {
    /// New bytes starting at a known position: feed them to the direction's scanner.
    InSync(InSync),
    /// Every byte was seen before: re-apply what was done then, do not run the state machine.
    Retransmission,
    /// Not at a known line boundary: never parsed, pass untouched.
    OutOfSync,
    /// No payload.
    Empty,
}

/// Where the new bytes of an in-sync segment begin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InSync {
    /// Offset in the payload of the first byte not seen before (0 unless the segment overlaps
    /// bytes already processed).
    pub start: u32,
    /// The bytes at `start` continue a line that began in an earlier segment.
    pub continues_line: bool,
}

impl LineTracker {
    /// Not synchronised: nothing is parsed until a segment ending with LF is seen (or
    /// [`on_syn`](Self::on_syn) is called).
    pub const fn new() -> Self {
        Self {
            next_seq: 0,
            state: TRACK_UNSYNCED,
            _pad: [0; 3],
        }
    }

    /// Synchronised at `seq`: the byte with that sequence number starts a line.
    ///
    /// For a caller that did not see the SYN and accepts that the first segment it sees starts a
    /// line (as Linux's `NF_CT_FTP_SEQ_PICKUP` does after a failover); prefer
    /// [`on_syn`](Self::on_syn).
    pub const fn starting_at(seq: u32) -> Self {
        Self {
            next_seq: seq,
            state: TRACK_LINE_START,
            _pad: [0; 3],
        }
    }

    /// The SYN (or SYN-ACK) of this direction carried initial sequence number `isn`: the first data
    /// byte, `isn + 1`, starts a line.
    pub fn on_syn(&mut self, isn: u32) {
        *self = Self::starting_at(isn.wrapping_add(1));
    }

    /// Forget the position, as after the TLS close of a `CCC`: parsing resumes after the next
    /// segment that ends with LF.
    pub fn desync(&mut self) {
        *self = Self::new();
    }

    /// Whether a position is known.
    pub fn is_synced(&self) -> bool {
        matches!(self.state, TRACK_LINE_START | TRACK_MID_LINE)
    }

    /// The sequence number of the first byte not yet processed in order (meaningful when synced).
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Classifies a segment with sequence number `seq` and the whole TCP payload `payload`, and
    /// moves the tracked position. See the [module documentation](self).
    pub fn on_segment(&mut self, seq: u32, payload: &[u8]) -> SegmentVerdict {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        self.on_segment_len(seq, len, payload.last() == Some(&b'\n'))
    }

    /// [`on_segment`](Self::on_segment) for a caller that reads the payload length and its last
    /// byte from the packet rather than holding all of the payload.
    pub fn on_segment_len(&mut self, seq: u32, len: u32, ends_with_lf: bool) -> SegmentVerdict {
        if len == 0 {
            return SegmentVerdict::Empty;
        }
        let end = seq.wrapping_add(len);
        let synced = self.is_synced();
        let continues_line = self.state == TRACK_MID_LINE;
        // Bytes at the front of the segment that were already processed.
        let seen = self.next_seq.wrapping_sub(seq);
        let verdict = if !synced {
            SegmentVerdict::OutOfSync
        } else if seen == 0 {
            SegmentVerdict::InSync(InSync {
                start: 0,
                continues_line,
            })
        } else if !seq_before(seq, self.next_seq) {
            // Bytes are missing between what was processed and this segment.
            SegmentVerdict::OutOfSync
        } else if seen >= len {
            SegmentVerdict::Retransmission
        } else {
            SegmentVerdict::InSync(InSync {
                start: seen,
                continues_line,
            })
        };
        match verdict {
            SegmentVerdict::InSync(_) => {
                self.next_seq = end;
                self.state = if ends_with_lf {
                    TRACK_LINE_START
                } else {
                    TRACK_MID_LINE
                };
            }
            // The next byte starts a line; only ever move forward.
            SegmentVerdict::OutOfSync
                if ends_with_lf && (!synced || seq_before(self.next_seq, end)) =>
            {
                self.next_seq = end;
                self.state = TRACK_LINE_START;
            }
            _ => {}
        }
        verdict
    }
}

#[cfg(test)]
mod tests;
