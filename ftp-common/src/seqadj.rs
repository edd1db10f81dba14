//! Sequence-number adjustment after the datapath changed the length of a direction's byte stream
//! (a rewritten PORT/EPRT/227/229 line is longer or shorter than the original).
//!
//! Linux's `nf_conntrack_seqadj` keeps one correction point per direction: bytes before it are
//! shifted by one offset, bytes after it by another. ftpnat keeps the last two, because one
//! announcement may change the stream at two places close together: when the address of a PORT
//! is cut over two segments, the first segment gives up its part of the address and the second
//! carries the whole rewritten one (see the datapath's `alg` module), and either may be
//! retransmitted after the other was corrected. Three ranges follow: segments starting at or
//! before `earlier_pos` take `offset_earlier`, those after it and at or before `correction_pos`
//! take `offset_before`, later ones `offset_after`. A correction only ever follows the previous
//! one in the stream, which FTP's command–reply rhythm guarantees for separate lines. A
//! retransmission of a rewritten segment starts at its correction point and takes the offset
//! before it, the right value for its first byte; its rewrite is re-applied by the caller.
//!
//! Sequence numbers compare in serial-number arithmetic (RFC 1982), so everything works across
//! the 2^32 wrap.

/// `a` comes after `b` in sequence space.
#[inline(always)]
pub fn seq_after(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) < 0
}

/// The correction state of one direction. Stored in a BPF map: `#[repr(C)]`, 20 bytes, no padding,
/// every bit pattern valid; all-zero (no correction) is [`SeqAdjust::new`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqAdjust {
    /// Sequence number (in the sender's space) of the segment the last correction was made in.
    pub correction_pos: u32,
    /// Shift of bytes after `earlier_pos`, up to and including the segment at `correction_pos`.
    pub offset_before: i32,
    /// Shift of bytes after `correction_pos`.
    pub offset_after: i32,
    /// The correction point before `correction_pos`.
    pub earlier_pos: u32,
    /// Shift of bytes up to and including the segment at `earlier_pos`.
    pub offset_earlier: i32,
}

impl SeqAdjust {
    pub const fn new() -> Self {
        Self {
            correction_pos: 0,
            offset_before: 0,
            offset_after: 0,
            earlier_pos: 0,
            offset_earlier: 0,
        }
    }

    /// No byte of this direction was ever moved.
    #[inline(always)]
    pub fn is_identity(&self) -> bool {
        self.offset_before == 0 && self.offset_after == 0 && self.offset_earlier == 0
    }

    /// Whether a length change of the segment starting at `seq` can be recorded: true unless a
    /// correction lies at or after it.
    #[inline(always)]
    pub fn can_record(&self, seq: u32) -> bool {
        self.is_identity() || seq_after(seq, self.correction_pos)
    }

    /// The segment starting at `seq` grew by `delta` bytes (shrank if negative). Returns false, and
    /// changes nothing, if `seq` does not lie after the current correction point.
    #[inline(always)]
    pub fn record(&mut self, seq: u32, delta: i32) -> bool {
        if !self.can_record(seq) {
            return false;
        }
        self.earlier_pos = self.correction_pos;
        self.offset_earlier = self.offset_before;
        self.correction_pos = seq;
        self.offset_before = self.offset_after;
        self.offset_after = self.offset_after.wrapping_add(delta);
        true
    }

    /// The sequence number a segment of this direction starting at `seq` carries on the wire
    /// after the rewrites before it.
    #[inline(always)]
    pub fn forward_seq(&self, seq: u32) -> u32 {
        let offset = if seq_after(seq, self.correction_pos) {
            self.offset_after
        } else if seq_after(seq, self.earlier_pos) {
            self.offset_before
        } else {
            self.offset_earlier
        };
        seq.wrapping_add(offset as u32)
    }

    /// An acknowledgement (or SACK edge) the other side sent for this direction's bytes, in the
    /// rewritten space, translated back to the sender's space.
    #[inline(always)]
    pub fn backward_ack(&self, ack: u32) -> u32 {
        let offset = if seq_after(
            ack.wrapping_sub(self.offset_before as u32),
            self.correction_pos,
        ) {
            self.offset_after
        } else if seq_after(
            ack.wrapping_sub(self.offset_earlier as u32),
            self.earlier_pos,
        ) {
            self.offset_before
        } else {
            self.offset_earlier
        };
        ack.wrapping_sub(offset as u32)
    }
}

/// Longest TCP options area (60-byte header minus the fixed 20).
pub const MAX_TCP_OPTIONS: usize = 40;
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_SACK: u8 = 5;
/// A SACK option holds at most four blocks of two 32-bit edges.
const MAX_SACK_BLOCKS: usize = 4;

/// What one step of a SACK walk did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SackStep {
    /// Offset of the next option.
    pub next: usize,
    /// Edges this option had changed.
    pub changed: u32,
}

impl SeqAdjust {
    /// Translates the edges of every SACK block in a TCP options area (the first `len` bytes of
    /// `options`), sent by the side that acknowledges this direction's bytes, like
    /// [`backward_ack`](Self::backward_ack). Returns how many edges changed. A malformed options
    /// area is left as it is from the first bad option on.
    pub fn backward_sack(&self, options: &mut [u8; MAX_TCP_OPTIONS], len: usize) -> u32 {
        let mut changed: u32 = 0;
        let mut at = 0usize;
        // Each step consumes at least one byte, so MAX_TCP_OPTIONS steps cover the area.
        for _ in 0..MAX_TCP_OPTIONS {
            let Some(step) = self.backward_sack_step(options, len, at) else {
                break;
            };
            changed = changed.saturating_add(step.changed);
            at = step.next;
        }
        changed
    }

    /// One option of [`backward_sack`](Self::backward_sack)'s walk, the one at `at`: for a BPF
    /// caller that drives the walk from a `bpf_loop` callback (a loop over options of unknown
    /// lengths is more than the verifier can follow inline). `None` when the walk is over.
    pub fn backward_sack_step(
        &self,
        options: &mut [u8; MAX_TCP_OPTIONS],
        len: usize,
        at: usize,
    ) -> Option<SackStep> {
        let len = len.min(MAX_TCP_OPTIONS);
        if at >= len {
            return None;
        }
        let kind = *options.get(at)?;
        if kind == TCPOPT_EOL {
            return None;
        }
        if kind == TCPOPT_NOP {
            return Some(SackStep {
                next: at.saturating_add(1),
                changed: 0,
            });
        }
        let option_len = usize::from(*options.get(at.saturating_add(1))?);
        if option_len < 2 || at.saturating_add(option_len) > len {
            return None;
        }
        let mut changed: u32 = 0;
        if kind == TCPOPT_SACK {
            let blocks = (option_len.saturating_sub(2) / 8).min(MAX_SACK_BLOCKS);
            for block in 0..MAX_SACK_BLOCKS {
                if block >= blocks {
                    break;
                }
                for edge in 0..2usize {
                    let offset = at
                        .saturating_add(2)
                        .saturating_add(block.saturating_mul(8))
                        .saturating_add(edge.saturating_mul(4));
                    changed = changed.saturating_add(u32::from(self.translate_edge(options, offset)));
                }
            }
        }
        Some(SackStep {
            next: at.saturating_add(option_len),
            changed,
        })
    }

    /// Translates the big-endian edge at `offset`; true if it changed.
    #[inline(always)]
    fn translate_edge(&self, options: &mut [u8; MAX_TCP_OPTIONS], offset: usize) -> bool {
        let Some(bytes) = options.get_mut(offset..offset.saturating_add(4)) else {
            return false;
        };
        let Ok(edge) = <[u8; 4]>::try_from(&*bytes) else {
            return false;
        };
        let old = u32::from_be_bytes(edge);
        let new = self.backward_ack(old);
        bytes.copy_from_slice(&new.to_be_bytes());
        new != old
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// NOP, NOP, SACK with the given blocks, NOP-padded to a multiple of 4.
    fn sack_options(blocks: &[(u32, u32)]) -> ([u8; MAX_TCP_OPTIONS], usize) {
        let mut options = [0u8; MAX_TCP_OPTIONS];
        options[0] = TCPOPT_NOP;
        options[1] = TCPOPT_NOP;
        options[2] = TCPOPT_SACK;
        options[3] = (2 + 8 * blocks.len()) as u8;
        for (i, (left, right)) in blocks.iter().enumerate() {
            options[4 + 8 * i..8 + 8 * i].copy_from_slice(&left.to_be_bytes());
            options[8 + 8 * i..12 + 8 * i].copy_from_slice(&right.to_be_bytes());
        }
        (options, 4 + 8 * blocks.len())
    }

    fn edges(options: &[u8; MAX_TCP_OPTIONS], blocks: usize) -> Vec<u32> {
        (0..blocks * 2)
            .map(|i| u32::from_be_bytes(options[4 + 4 * i..8 + 4 * i].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn sack_edges_after_the_rewrite_move_back() {
        let mut adj = SeqAdjust::new();
        assert!(adj.record(1000, 5));
        // The server holds 1025..1045 (rewritten space) and 1100..1200.
        let (mut options, len) = sack_options(&[(1025, 1045), (1100, 1200)]);
        assert_eq!(adj.backward_sack(&mut options, len), 4);
        assert_eq!(edges(&options, 2), [1020, 1040, 1095, 1195]);
    }

    #[test]
    fn sack_edges_before_the_rewrite_and_identity_are_untouched() {
        let mut adj = SeqAdjust::new();
        let (mut options, len) = sack_options(&[(500, 600)]);
        assert_eq!(adj.backward_sack(&mut options, len), 0, "no rewrite yet");
        assert!(adj.record(1000, -3));
        assert_eq!(adj.backward_sack(&mut options, len), 0);
        assert_eq!(edges(&options, 1), [500, 600]);
    }

    #[test]
    fn sack_after_timestamps_with_four_blocks() {
        let mut adj = SeqAdjust::new();
        assert!(adj.record(0, 10));
        let mut options = [0u8; MAX_TCP_OPTIONS];
        // Timestamps (10 bytes), then SACK with 3 blocks would overflow 40; real stacks send at
        // most 3 blocks with timestamps: TS + NOP NOP + SACK(26) = 38 bytes.
        options[0] = TCPOPT_NOP;
        options[1] = TCPOPT_NOP;
        options[2] = 8; // timestamps
        options[3] = 10;
        options[12] = TCPOPT_NOP;
        options[13] = TCPOPT_NOP;
        options[14] = TCPOPT_SACK;
        options[15] = 26;
        for i in 0..6u32 {
            let at = 16 + 4 * i as usize;
            options[at..at + 4].copy_from_slice(&(100 + 10 * i).to_be_bytes());
        }
        assert_eq!(adj.backward_sack(&mut options, 40), 6);
        for i in 0..6u32 {
            let at = 16 + 4 * i as usize;
            assert_eq!(
                u32::from_be_bytes(options[at..at + 4].try_into().unwrap()),
                90 + 10 * i
            );
        }
        // The timestamps were not touched.
        assert_eq!(&options[2..4], &[8, 10]);
    }

    #[test]
    fn malformed_options_stop_the_walk_without_panicking() {
        let mut adj = SeqAdjust::new();
        assert!(adj.record(0, 4));
        for bad_len in [0u8, 1, 39, 255] {
            let mut options = [0u8; MAX_TCP_OPTIONS];
            options[0] = TCPOPT_SACK;
            options[1] = bad_len;
            let before = options;
            adj.backward_sack(&mut options, MAX_TCP_OPTIONS);
            if bad_len < 2 || usize::from(bad_len) > MAX_TCP_OPTIONS {
                assert_eq!(options, before);
            }
        }
        let mut options = [0xffu8; MAX_TCP_OPTIONS];
        adj.backward_sack(&mut options, 100);
    }

    #[test]
    fn identity_until_something_is_recorded() {
        let adj = SeqAdjust::new();
        assert!(adj.is_identity());
        assert_eq!(adj.forward_seq(1234), 1234);
        assert_eq!(adj.backward_ack(1234), 1234);
    }

    #[test]
    fn growth_shifts_later_bytes_and_acks_map_back() {
        let mut adj = SeqAdjust::new();
        // A 20-byte PORT line at 1000 became 25 bytes.
        assert!(adj.record(1000, 5));
        assert_eq!(adj.forward_seq(1000), 1000, "the rewritten segment itself starts in place");
        assert_eq!(adj.forward_seq(1020), 1025, "the next segment moves by the growth");
        // The server acknowledges the 25 rewritten bytes: 1025 → the client's 1020.
        assert_eq!(adj.backward_ack(1025), 1020);
        // An ack from before the rewritten segment is untouched.
        assert_eq!(adj.backward_ack(1000), 1000);
    }

    #[test]
    fn a_change_at_or_before_the_correction_point_cannot_be_recorded() {
        let mut adj = SeqAdjust::new();
        assert!(adj.can_record(1000), "nothing recorded yet: anywhere goes");
        assert!(adj.record(1000, 5));
        assert!(!adj.can_record(1000), "the same segment again");
        assert!(!adj.can_record(900), "an older segment");
        assert!(adj.can_record(1001));
        // A refused record changes nothing.
        let before = adj;
        assert!(!adj.record(900, 7));
        assert_eq!(adj, before);
    }

    #[test]
    fn shrinking_works_the_same_way() {
        let mut adj = SeqAdjust::new();
        assert!(adj.record(5000, -3));
        assert_eq!(adj.forward_seq(5030), 5027);
        assert_eq!(adj.backward_ack(5027), 5030);
    }

    #[test]
    fn offsets_accumulate_over_many_rewrites() {
        let mut adj = SeqAdjust::new();
        let mut client_seq = 1u32;
        let mut wire_seq = 1u32;
        for _ in 0..50 {
            // Each PORT line: 22 bytes from the client, 27 on the wire.
            assert_eq!(adj.forward_seq(client_seq), wire_seq);
            assert!(adj.record(client_seq, 5));
            client_seq += 22;
            wire_seq += 27;
            assert_eq!(adj.backward_ack(wire_seq), client_seq);
        }
        assert_eq!(adj.offset_after, 250);
    }

    #[test]
    fn retransmission_of_the_rewritten_segment_keeps_the_earlier_offset() {
        let mut adj = SeqAdjust::new();
        assert!(adj.record(100, 4));
        assert!(adj.record(200, 4));
        assert_eq!(adj.forward_seq(200), 204, "retransmitted second rewrite starts after the first");
        assert_eq!(adj.forward_seq(220), 228);
    }

    #[test]
    fn a_correction_behind_the_current_point_is_refused() {
        let mut adj = SeqAdjust::new();
        assert!(adj.record(500, 2));
        assert!(!adj.record(400, 2));
        let expected = SeqAdjust {
            correction_pos: 500,
            offset_before: 0,
            offset_after: 2,
            earlier_pos: 0,
            offset_earlier: 0,
        };
        assert_eq!(adj, expected);
    }

    /// A PORT whose address is cut over two segments: the first (at 1000, 30 bytes) gives up its
    /// last 6 bytes, the second (at 1030) carries the whole rewritten address, 9 bytes longer
    /// than its own part. Both may be retransmitted after both corrections.
    #[test]
    fn two_corrections_close_together_keep_three_ranges() {
        let mut adj = SeqAdjust::new();
        assert!(adj.record(1000, -6));
        assert!(adj.record(1030, 9));
        assert_eq!(adj.forward_seq(1000), 1000, "the first segment, resent, starts in place");
        assert_eq!(adj.forward_seq(1030), 1024, "the second follows the shortened first");
        assert_eq!(adj.forward_seq(1050), 1053, "what follows moves by both changes");
        assert_eq!(adj.forward_seq(900), 900, "older bytes never moved");
        // Acknowledgements of each segment's end map back to the sender's ends.
        assert_eq!(adj.backward_ack(1024), 1030);
        assert_eq!(adj.backward_ack(1053), 1050);
        assert_eq!(adj.backward_ack(1000), 1000);
        assert_eq!(adj.backward_ack(950), 950);
        // A third correction forgets the first point: the oldest range merges into the middle.
        assert!(adj.record(2000, 1));
        assert_eq!(adj.forward_seq(1030), 1024);
        assert_eq!(adj.forward_seq(1050), 1053);
        assert_eq!(adj.forward_seq(2010), 2014);
    }

    #[test]
    fn works_across_the_wrap() {
        let mut adj = SeqAdjust::new();
        let seq = u32::MAX - 10;
        assert!(adj.record(seq, 7));
        let next = seq.wrapping_add(30);
        assert_eq!(adj.forward_seq(next), next.wrapping_add(7));
        assert_eq!(adj.backward_ack(next.wrapping_add(7)), next);
        assert!(seq_after(next, seq));
        assert!(!seq_after(seq, next));
    }

    #[test]
    fn size_is_fixed() {
        assert_eq!(core::mem::size_of::<SeqAdjust>(), 20);
    }
}
