//! Sequence-number adjustment after the datapath changed the length of a direction's byte stream
//! (a rewritten PORT/EPRT/227/229 line is longer or shorter than the original).
//!
//! Like Linux's `nf_conntrack_seqadj`, one correction point is kept per direction: bytes before it
//! are shifted by `offset_before`, bytes after it by `offset_after`. That is exact as long as a new
//! correction only happens after the previous one is behind us, which FTP's command–reply rhythm
//! guarantees for the lines ftpnat rewrites. A retransmission of the rewritten segment starts at
//! the correction point itself and takes `offset_before`, the right value for its first byte; its
//! rewrite is re-applied by the caller.
//!
//! Sequence numbers compare in serial-number arithmetic (RFC 1982), so everything works across
//! the 2^32 wrap.

/// `a` comes after `b` in sequence space.
#[inline(always)]
pub fn seq_after(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) < 0
}

/// The correction state of one direction. Stored in a BPF map: `#[repr(C)]`, 12 bytes, no padding,
/// every bit pattern valid; all-zero (no correction) is [`SeqAdjust::new`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqAdjust {
    /// Sequence number (in the sender's space) of the segment the last correction was made in.
    pub correction_pos: u32,
    /// Shift of bytes up to and including the segment at `correction_pos`.
    pub offset_before: i32,
    /// Shift of bytes after it.
    pub offset_after: i32,
}

impl SeqAdjust {
    pub const fn new() -> Self {
        Self {
            correction_pos: 0,
            offset_before: 0,
            offset_after: 0,
        }
    }

    /// No byte of this direction was ever moved.
    #[inline(always)]
    pub fn is_identity(&self) -> bool {
        self.offset_before == 0 && self.offset_after == 0
    }

    /// The segment starting at `seq` grew by `delta` bytes (shrank if negative). Returns false, and
    /// changes nothing, if `seq` lies before the current correction point: the offsets could not
    /// describe both.
    #[inline(always)]
    pub fn record(&mut self, seq: u32, delta: i32) -> bool {
        if self.offset_before == self.offset_after || seq_after(seq, self.correction_pos) {
            self.correction_pos = seq;
            self.offset_before = self.offset_after;
            self.offset_after = self.offset_after.wrapping_add(delta);
            true
        } else {
            false
        }
    }

    /// The sequence number a segment of this direction starting at `seq` carries on the wire
    /// after the rewrites before it.
    #[inline(always)]
    pub fn forward_seq(&self, seq: u32) -> u32 {
        let offset = if seq_after(seq, self.correction_pos) {
            self.offset_after
        } else {
            self.offset_before
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
        } else {
            self.offset_before
        };
        ack.wrapping_sub(offset as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(adj, SeqAdjust { correction_pos: 500, offset_before: 0, offset_after: 2 });
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
        assert_eq!(core::mem::size_of::<SeqAdjust>(), 12);
    }
}
