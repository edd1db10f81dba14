//! Incremental updates of the Internet checksum (RFC 1071) when header fields change (RFC 1624),
//! for the translation of each forwarded packet: it rewrites addresses, ports and the TTL in
//! place and gathers every change into one [`Delta`], applied with one update per checksum instead
//! of one per field.
//!
//! Words are 16-bit values as a native-endian load from the packet reads them, which is how the
//! kernel's checksum helpers (`bpf_l4_csum_replace` with a precomputed difference) take them: the
//! one's-complement sum does not depend on the byte order it is computed in, as long as it is one
//! order throughout.

/// The change in a checksummed area's one's-complement sum when some of its 16-bit words change:
/// the kernel's `__wsum` difference. Fields are added at even offsets from the area's start (all
/// the IPv4 and TCP header fields ftpnat translates are).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u32);

impl Delta {
    /// No change.
    pub const NONE: Self = Self(0);

    /// The words `old` becoming `new`.
    #[must_use]
    pub fn replace16(self, old: [u8; 2], new: [u8; 2]) -> Self {
        let (old, new) = (u16::from_ne_bytes(old), u16::from_ne_bytes(new));
        // ~m + m' (RFC 1624, eqn. 3), accumulated in 32 bits and folded when applied: a handful
        // of words cannot carry out of 32 bits, but fold now so any number of calls stays exact.
        Self(fold32(
            u64::from(self.0)
                .wrapping_add(u64::from(!old))
                .wrapping_add(u64::from(new)),
        ))
    }

    /// A 4-byte field (two words) changing.
    #[must_use]
    pub fn replace32(self, old: [u8; 4], new: [u8; 4]) -> Self {
        let [o0, o1, o2, o3] = old;
        let [n0, n1, n2, n3] = new;
        self.replace16([o0, o1], [n0, n1])
            .replace16([o2, o3], [n2, n3])
    }

    /// A 16-byte field (an IPv6 address, eight words) changing.
    #[must_use]
    #[inline(always)]
    pub fn replace128(self, old: [u8; 16], new: [u8; 16]) -> Self {
        let [o0, o1, o2, o3, o4, o5, o6, o7, o8, o9, o10, o11, o12, o13, o14, o15] = old;
        let [n0, n1, n2, n3, n4, n5, n6, n7, n8, n9, n10, n11, n12, n13, n14, n15] = new;
        self.replace32([o0, o1, o2, o3], [n0, n1, n2, n3])
            .replace32([o4, o5, o6, o7], [n4, n5, n6, n7])
            .replace32([o8, o9, o10, o11], [n8, n9, n10, n11])
            .replace32([o12, o13, o14, o15], [n12, n13, n14, n15])
    }

    /// Whether anything changed the sum (a field replaced by itself adds `0xffff`, which folds to
    /// the same checksum; callers skip the update when no field changed at all).
    pub fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The difference as the kernel's checksum helpers take it (their `to` argument when `from`
    /// and the size are 0).
    pub fn as_wsum(self) -> u32 {
        self.0
    }

    /// The checksum field `check` (as stored in the packet) after the change.
    #[must_use]
    pub fn apply(self, check: [u8; 2]) -> [u8; 2] {
        let check = u16::from_ne_bytes(check);
        // HC' = ~(~HC + ~m + m')
        let sum = fold16(u64::from(!check).wrapping_add(u64::from(self.0)));
        (!sum).to_ne_bytes()
    }
}

/// Folds a sum's carries back into its low 32 bits (end-around carry).
fn fold32(sum: u64) -> u32 {
    let folded = (sum & 0xffff_ffff).wrapping_add(sum >> 32);
    let folded = (folded & 0xffff_ffff).wrapping_add(folded >> 32);
    // Two folds leave at most 32 bits.
    (folded & 0xffff_ffff) as u32
}

/// Folds a sum into 16 bits.
fn fold16(sum: u64) -> u16 {
    let mut sum = u64::from(fold32(sum));
    sum = (sum & 0xffff).wrapping_add(sum >> 16);
    sum = (sum & 0xffff).wrapping_add(sum >> 16);
    (sum & 0xffff) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The checksum of `bytes` computed whole, as stored (RFC 1071), with the checksum field at
    /// `check_at` taken as zero.
    fn full_checksum(bytes: &[u8], check_at: usize) -> [u8; 2] {
        let mut total: u64 = 0;
        for (i, pair) in bytes.chunks(2).enumerate() {
            if i * 2 == check_at {
                continue;
            }
            total += u64::from(u16::from_ne_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        (!fold16(total)).to_ne_bytes()
    }

    /// A real IPv4 header (RFC 1071's example values aside, one from a capture).
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn the_example_header_checksum_is_right() {
        assert_eq!(full_checksum(&HEADER, 10), [0xb8, 0x61]);
    }

    #[test]
    fn a_translated_header_checksum_equals_the_one_computed_whole() {
        let mut header = HEADER;
        let new_saddr = [203, 0, 113, 9];
        let delta = Delta::NONE
            .replace32([0xc0, 0xa8, 0x00, 0x01], new_saddr)
            .replace16([0x40, 0x11], [0x3f, 0x11]);
        header[12..16].copy_from_slice(&new_saddr);
        header[8] = 0x3f;
        let check = delta.apply([0xb8, 0x61]);
        assert_eq!(check, full_checksum(&header, 10));
    }

    #[test]
    fn an_ipv6_address_change_is_its_eight_words() {
        let (old, new) = ([0x20; 16], core::array::from_fn(|i| i as u8));
        let mut words = Delta::NONE;
        for i in (0..16).step_by(2) {
            words = words.replace16([old[i], old[i + 1]], [new[i], new[i + 1]]);
        }
        assert_eq!(Delta::NONE.replace128(old, new), words);
        let mut area = [0u8; 20];
        area[2..18].copy_from_slice(&old);
        let start = full_checksum(&area, 0);
        area[2..18].copy_from_slice(&new);
        assert_eq!(
            Delta::NONE.replace128(old, new).apply(start),
            full_checksum(&area, 0)
        );
    }

    #[test]
    fn no_change_leaves_the_checksum_as_it_was() {
        assert_eq!(Delta::NONE.apply([0x12, 0x34]), [0x12, 0x34]);
        assert!(Delta::NONE.is_none());
    }

    proptest! {
        /// Any fields of any header, changed in any order: the incremental update equals the
        /// checksum computed over the new header (up to the two encodings of zero, 0x0000 and
        /// 0xffff, which RFC 1624 says an incremental update may produce; neither is sent here
        /// for a header whose sum is not all ones).
        #[test]
        fn incremental_updates_equal_the_whole_computation(
            mut header in proptest::collection::vec(any::<u8>(), 20..=60usize),
            changes in proptest::collection::vec((0usize..30, any::<[u8; 2]>()), 0..8),
        ) {
            header.truncate(header.len() & !1);
            let check_at = 10;
            let start = full_checksum(&header, check_at);
            header[check_at..check_at + 2].copy_from_slice(&start);
            let mut delta = Delta::NONE;
            for (word, new) in changes {
                let at = (word * 2) % header.len();
                if at == check_at {
                    continue;
                }
                let old = [header[at], header[at + 1]];
                delta = delta.replace16(old, new);
                header[at..at + 2].copy_from_slice(&new);
            }
            let updated = u16::from_ne_bytes(delta.apply(start));
            let whole = u16::from_ne_bytes(full_checksum(&header, check_at));
            prop_assert!(
                updated == whole || (updated == 0 && whole == 0xffff) || (updated == 0xffff && whole == 0),
                "incremental {updated:#06x}, whole {whole:#06x}"
            );
        }
    }
}
