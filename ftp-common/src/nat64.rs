//! Translating a TCP packet's IP header between the families, for NAT64 (RFC 6146 with the
//! header translation of RFC 7915): the headers ftpnat writes in place of the ones it removes, and
//! the change the TCP checksum takes from its pseudo-header.
//!
//! Only what a TCP segment of a followed connection needs: no options (an IPv4 packet with
//! options is not translated), no fragments (fragments are never ftpnat's), no ICMP. IPv4 packets
//! leave with DF set and an identification of 0 (RFC 6864 section 4.1: an atomic datagram's ID
//! means nothing); the traffic class and the TOS carry over; the TTL / hop limit is decremented
//! by the caller, as every forwarded packet's is.

use crate::{
    checksum::Delta,
    maps::{IpBytes, ip},
};

/// Length of an IPv4 header without options, and of an IPv6 header.
pub const IPV4_HEADER_LEN: u16 = 20;
pub const IPV6_HEADER_LEN: u16 = 40;

/// By how much a packet grows from IPv4 to IPv6.
pub const GROWTH: u16 = IPV6_HEADER_LEN - IPV4_HEADER_LEN;

const IPPROTO_TCP: u8 = 6;
/// Don't Fragment, in the flags-and-offset word.
const DF: [u8; 2] = [0x40, 0];

/// Writes the IPv4 header (no options) of a translated packet of `total_len` bytes, checksum
/// included, into `out`. `src`/`dst` are IPv4 addresses as the tables hold them (IPv4-mapped).
/// Written in place, not returned: the datapath builds it in its scratch area, off its stack.
#[inline(always)]
pub fn write_ipv4_header(
    out: &mut [u8; 20],
    (src, dst): (&IpBytes, &IpBytes),
    total_len: u16,
    tos: u8,
    ttl: u8,
) {
    let [l0, l1] = total_len.to_be_bytes();
    let fixed = [0x45, tos, l0, l1, 0, 0, DF[0], DF[1], ttl, IPPROTO_TCP, 0, 0];
    for (slot, byte) in out.iter_mut().zip(fixed) {
        *slot = byte;
    }
    for (slot, byte) in out
        .iter_mut()
        .skip(12)
        .zip(ip::v4_octets(src).into_iter().chain(ip::v4_octets(dst)))
    {
        *slot = byte;
    }
    let [c0, c1] = header_checksum(out);
    if let Some(check) = out.get_mut(10..12) {
        check.copy_from_slice(&[c0, c1]);
    }
}

/// The RFC 1071 checksum of an IPv4 header whose checksum field is zero, as stored.
#[inline(always)]
fn header_checksum(header: &[u8; 20]) -> [u8; 2] {
    let mut sum: u32 = 0;
    for pair in header.chunks_exact(2) {
        if let [high, low] = *pair {
            sum = sum.wrapping_add(u32::from(u16::from_be_bytes([high, low])));
        }
    }
    // Ten words cannot carry past 20 bits: two folds leave 16.
    sum = (sum & 0xffff).wrapping_add(sum >> 16);
    sum = (sum & 0xffff).wrapping_add(sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// Writes the IPv6 header of a translated packet whose payload (the TCP segment) is
/// `payload_len` bytes into `out`.
#[inline(always)]
pub fn write_ipv6_header(
    out: &mut [u8; 40],
    (src, dst): (&IpBytes, &IpBytes),
    payload_len: u16,
    traffic_class: u8,
    hop_limit: u8,
) {
    let [l0, l1] = payload_len.to_be_bytes();
    let fixed = [
        0x60 | (traffic_class >> 4),
        (traffic_class & 0x0f) << 4,
        0,
        0,
        l0,
        l1,
        IPPROTO_TCP,
        hop_limit,
    ];
    for (slot, byte) in out.iter_mut().zip(fixed) {
        *slot = byte;
    }
    // A word at a time, as the addresses are held.
    let words = src.0.into_iter().chain(dst.0);
    for (chunk, word) in out.get_mut(8..).into_iter().flat_map(|rest| rest.chunks_exact_mut(4)).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
}

/// Word `index` of `addr` as it counts in the TCP pseudo-header: an IPv4 address (held
/// IPv4-mapped) contributes its own four bytes only (its last word), an IPv6 address all four
/// words. Zero words add nothing to a one's-complement sum.
#[inline(always)]
fn pseudo_header_word(addr: &IpBytes, index: usize) -> [u8; 4] {
    let word = addr.0.get(index).copied().unwrap_or(0);
    if ip::is_v4(addr) && index != 3 {
        [0; 4]
    } else {
        word.to_ne_bytes()
    }
}

/// How the TCP checksum changes when a segment's addresses go from `old` (source, destination)
/// to `new`, whatever each one's family. The pseudo-header's other words agree between the
/// families (RFC 8200 section 8.1: the upper-layer length and next header sum as IPv4's TCP length
/// and protocol do), so only the addresses count.
#[inline(always)]
pub fn pseudo_header_delta(old: (&IpBytes, &IpBytes), new: (&IpBytes, &IpBytes)) -> Delta {
    let mut delta = Delta::NONE;
    for index in 0..4 {
        delta = delta
            .replace32(pseudo_header_word(old.0, index), pseudo_header_word(new.0, index))
            .replace32(pseudo_header_word(old.1, index), pseudo_header_word(new.1, index));
    }
    delta
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// The one's-complement sum of `bytes` (big-endian words), folded.
    fn sum(bytes: &[u8]) -> u16 {
        let mut total: u64 = 0;
        for pair in bytes.chunks(2) {
            total += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while total > 0xffff {
            total = (total & 0xffff) + (total >> 16);
        }
        total as u16
    }

    fn v4(octets: [u8; 4]) -> IpBytes {
        ip::v4_mapped(octets)
    }

    fn v6(text: &str) -> IpBytes {
        ip::from_ip(text.parse().unwrap())
    }

    #[test]
    fn the_ipv4_header_sums_to_all_ones_and_says_what_it_carries() {
        let mut header = [0xaa; 20];
        let addrs = (&v4([192, 0, 2, 1]), &v4([198, 51, 100, 7]));
        write_ipv4_header(&mut header, addrs, 1480, 0x10, 63);
        assert_eq!(sum(&header), 0xffff, "a valid header checksum");
        assert_eq!(header[0], 0x45);
        assert_eq!(header[1], 0x10);
        assert_eq!(u16::from_be_bytes([header[2], header[3]]), 1480);
        assert_eq!(&header[6..8], &[0x40, 0], "DF set, no offset");
        assert_eq!(header[8], 63);
        assert_eq!(header[9], 6);
        assert_eq!(&header[12..16], &[192, 0, 2, 1]);
        assert_eq!(&header[16..20], &[198, 51, 100, 7]);
    }

    #[test]
    fn the_ipv6_header_carries_class_length_and_addresses() {
        let (src, dst) = (v6("64:ff9b::c633:6407"), v6("2001:db8::2"));
        let mut header = [0xaa; 40];
        write_ipv6_header(&mut header, (&src, &dst), 1460, 0xb8, 63);
        assert_eq!(&header[..4], &[0x6b, 0x80, 0, 0], "version, traffic class, no flow label");
        assert_eq!(u16::from_be_bytes([header[4], header[5]]), 1460);
        assert_eq!(header[6], 6);
        assert_eq!(header[7], 63);
        assert_eq!(&header[8..24], &src.octets());
        assert_eq!(&header[24..40], &dst.octets());
    }

    /// A TCP checksum computed whole over each family's pseudo-header must agree with the old one
    /// updated by the delta: the translation keeps segments valid.
    #[test]
    fn the_pseudo_header_delta_turns_one_family_s_checksum_into_the_other_s() {
        let segment: Vec<u8> = (0u8..57).map(|i| i.wrapping_mul(37)).collect();
        let tcp_len = segment.len() as u16;
        let pseudo4 = |src: [u8; 4], dst: [u8; 4]| {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&src);
            bytes.extend_from_slice(&dst);
            bytes.extend_from_slice(&[0, 6]);
            bytes.extend_from_slice(&tcp_len.to_be_bytes());
            bytes
        };
        let pseudo6 = |src: &IpBytes, dst: &IpBytes| {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&src.octets());
            bytes.extend_from_slice(&dst.octets());
            bytes.extend_from_slice(&u32::from(tcp_len).to_be_bytes());
            bytes.extend_from_slice(&[0, 0, 0, 6]);
            bytes
        };
        let checksum = |pseudo: Vec<u8>| {
            let mut bytes = pseudo;
            bytes.extend_from_slice(&segment);
            (!sum(&bytes)).to_be_bytes()
        };
        let (client, mapped_server) = (v6("2001:db8:1::10"), v6("64:ff9b::c633:6407"));
        let (pool, server) = ([192, 0, 2, 1], [198, 51, 100, 7]);
        let to_v4 = pseudo_header_delta((&client, &mapped_server), (&v4(pool), &v4(server)));
        assert_eq!(
            to_v4.apply(checksum(pseudo6(&client, &mapped_server))),
            checksum(pseudo4(pool, server)),
            "IPv6 -> IPv4"
        );
        let to_v6 = pseudo_header_delta((&v4(server), &v4(pool)), (&mapped_server, &client));
        assert_eq!(
            to_v6.apply(checksum(pseudo4(server, pool))),
            checksum(pseudo6(&mapped_server, &client)),
            "IPv4 -> IPv6"
        );
    }
}
