//! MSS clamping: what the datapath does to the MSS option of a SYN or SYN-ACK it forwards, so that
//! neither end sends segments bigger than the narrower of the router's two interfaces carries
//! (the datapath's redirect skips the stack's MTU check). The walk over the options is one step
//! per option, the datapath reading the 4 bytes at each position from the packet.

/// What the TCP header (without options) takes of an MTU beside the IP header: the MSS counts
/// neither.
pub const TCP_HEADER_LEN: u32 = 20;

const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
/// The MSS option's length: kind, length, a 16-bit value.
pub const MSS_OPTION_LEN: usize = 4;
/// Where the MSS value lies in its option.
pub const MSS_VALUE_OFF: usize = 2;

/// What one step of the walk found at its position, from the 4 bytes there (fewer left in the
/// options area end the walk: an MSS option cannot start there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionStep {
    /// The MSS option, with its value.
    Mss(u16),
    /// Another option: the next one starts this many bytes further.
    Skip(usize),
    /// The end of the options (an end-of-list option, or a malformed length): no MSS.
    End,
}

/// One step of the walk over a TCP header's options, from the 4 bytes at its position.
pub fn option_step([kind, len, hi, lo]: [u8; 4]) -> OptionStep {
    match kind {
        TCPOPT_EOL => OptionStep::End,
        TCPOPT_NOP => OptionStep::Skip(1),
        TCPOPT_MSS if usize::from(len) == MSS_OPTION_LEN => {
            OptionStep::Mss(u16::from_be_bytes([hi, lo]))
        }
        _ if len < 2 => OptionStep::End,
        _ => OptionStep::Skip(usize::from(len)),
    }
}

/// The MSS to write over `announced` for a connection crossing interfaces of `in_mtu` and
/// `out_mtu` bytes with an IP header of `ip_header_len` bytes (20 for IPv4, 40 for IPv6), or None if `announced` fits both (or an MTU is unknown, 0, or too small to
/// mean anything).
pub fn clamped(announced: u16, in_mtu: u32, out_mtu: u32, ip_header_len: u32) -> Option<u16> {
    let fits = in_mtu
        .min(out_mtu)
        .checked_sub(ip_header_len.saturating_add(TCP_HEADER_LEN))?;
    let fits = u16::try_from(fits).unwrap_or(u16::MAX);
    (announced > fits && fits > 0).then_some(fits)
}

/// The 16-bit words an incremental checksum update of the MSS value at `offset` bytes into the TCP
/// header must use in place of the value's bytes `old` and `new`. The checksum sums 16-bit words
/// from the header's start: a value at an odd offset straddles two of them and counts in the sum
/// with its bytes swapped.
pub fn checksum_words(offset: usize, old: [u8; 2], new: [u8; 2]) -> ([u8; 2], [u8; 2]) {
    if offset & 1 == 0 {
        (old, new)
    } else {
        let ([old_hi, old_lo], [new_hi, new_lo]) = (old, new);
        ([old_lo, old_hi], [new_lo, new_hi])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one's-complement sum of `bytes` as 16-bit big-endian words (a checksum's body).
    fn sum(bytes: &[u8]) -> u16 {
        let mut total: u32 = 0;
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            total += u32::from(word);
        }
        while total > 0xffff {
            total = (total & 0xffff) + (total >> 16);
        }
        total as u16
    }

    /// RFC 1624's incremental update: HC' = ~(~HC + ~m + m').
    fn update(check: u16, old: [u8; 2], new: [u8; 2]) -> u16 {
        let mut total = u32::from(!check)
            + u32::from(!u16::from_be_bytes(old))
            + u32::from(u16::from_be_bytes(new));
        while total > 0xffff {
            total = (total & 0xffff) + (total >> 16);
        }
        !(total as u16)
    }

    #[test]
    fn linux_syn_options_give_the_mss_at_once() {
        // mss 1460, sackOK, TS, nop, wscale 7
        let options = [2, 4, 0x05, 0xb4, 4, 2, 8, 10];
        assert_eq!(
            option_step([options[0], options[1], options[2], options[3]]),
            OptionStep::Mss(1460)
        );
    }

    #[test]
    fn the_walk_skips_nops_and_other_options_and_stops_at_the_end() {
        assert_eq!(option_step([1, 2, 4, 5]), OptionStep::Skip(1));
        assert_eq!(option_step([3, 3, 7, 1]), OptionStep::Skip(3));
        assert_eq!(option_step([8, 10, 0, 0]), OptionStep::Skip(10));
        assert_eq!(option_step([0, 0, 0, 0]), OptionStep::End);
        // A length below 2 would never move on: malformed, the walk ends.
        assert_eq!(option_step([8, 1, 0, 0]), OptionStep::End);
        assert_eq!(option_step([8, 0, 0, 0]), OptionStep::End);
        // An MSS kind with another length is not an MSS option.
        assert_eq!(option_step([2, 6, 5, 0xb4]), OptionStep::Skip(6));
    }

    #[test]
    fn the_mss_is_lowered_to_the_smaller_mtu_only() {
        assert_eq!(clamped(1460, 1500, 1492, 20), Some(1452));
        assert_eq!(clamped(1460, 1420, 1500, 20), Some(1380));
        assert_eq!(clamped(1452, 1500, 1492, 20), None, "it fits already");
        assert_eq!(clamped(536, 1500, 1420, 20), None, "never raised");
        assert_eq!(clamped(1460, 1500, 1500, 20), None);
        assert_eq!(clamped(1460, 0, 1500, 20), None, "an unknown MTU changes nothing");
        assert_eq!(clamped(1460, 40, 1500, 20), None);
        // IPv6's header is 40 bytes: the same MTUs carry 20 bytes less of segment.
        assert_eq!(clamped(1440, 1500, 1492, 40), Some(1432));
        assert_eq!(clamped(1432, 1500, 1492, 40), None);
    }

    #[test]
    fn the_checksum_stays_right_at_even_and_odd_offsets() {
        for offset in [20, 21, 22, 23, 30, 31] {
            let mut header = [0u8; 40];
            for (i, byte) in header.iter_mut().enumerate() {
                *byte = (i as u8).wrapping_mul(37).wrapping_add(11);
            }
            header[16] = 0;
            header[17] = 0;
            let check = !sum(&header);
            let old = [header[offset], header[offset + 1]];
            let new = 1452u16.to_be_bytes();
            header[offset..offset + 2].copy_from_slice(&new);
            let (old_word, new_word) = checksum_words(offset, old, new);
            assert_eq!(
                update(check, old_word, new_word),
                !sum(&header),
                "offset {offset}"
            );
        }
    }
}
