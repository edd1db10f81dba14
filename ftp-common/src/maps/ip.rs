//! Addresses in the tables: 16 bytes for either family, an IPv4 address as its IPv4-mapped IPv6
//! address (`::ffff:a.b.c.d`, RFC 4291 section 2.5.5.2). One key type then serves both families,
//! and a key of one family can never equal a key of the other.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address as the tables hold it: its 16 bytes in network byte order. Aligned to 4 bytes: the
/// kernel program then copies and compares addresses a word at a time (the BPF target has no
/// unaligned access: a byte array is moved byte by byte, each byte in a register of its own).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpBytes(pub [u8; 16]);

pod!(IpBytes);

/// The all-zero address: "any" in an expectation's key, "none" in a setting.
pub const UNSPECIFIED: IpBytes = IpBytes([0; 16]);

/// How many leading bits of a mapped address are the mapping: an IPv4 prefix of `n` bits is the
/// mapped prefix of `V4_MAPPED_BITS + n`.
pub const V4_MAPPED_BITS: u8 = 96;

/// The IPv4 address `octets`, mapped.
#[inline(always)]
pub const fn v4_mapped([a, b, c, d]: [u8; 4]) -> IpBytes {
    IpBytes([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d])
}

/// Whether `addr` is an IPv4 address (mapped).
#[inline(always)]
pub fn is_v4(addr: &IpBytes) -> bool {
    let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, ..] = addr.0;
    u64::from_ne_bytes([a0, a1, a2, a3, a4, a5, a6, a7]) == 0
        && u32::from_be_bytes([a8, a9, a10, a11]) == 0xffff
}

/// The IPv4 address in the last four bytes of `addr` (meaningful when [`is_v4`]).
#[inline(always)]
pub const fn v4_octets(addr: &IpBytes) -> [u8; 4] {
    let [.., a, b, c, d] = addr.0;
    [a, b, c, d]
}

/// The address `addr` holds, in its own family.
pub fn to_ip(addr: &IpBytes) -> IpAddr {
    if is_v4(addr) {
        IpAddr::V4(Ipv4Addr::from(v4_octets(addr)))
    } else {
        IpAddr::V6(Ipv6Addr::from(addr.0))
    }
}

/// `addr` as the tables hold it.
pub const fn from_ip(addr: IpAddr) -> IpBytes {
    match addr {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => IpBytes(v6.octets()),
    }
}

/// `addr` with the bits past the first `prefix_len` cleared (its network of that length).
#[inline(always)]
pub fn network(addr: &IpBytes, prefix_len: u8) -> IpBytes {
    let mut network = *addr;
    clear_host_bits(&mut network, prefix_len);
    network
}

/// Clears the bits of `addr` past the first `prefix_len`, in place: byte by byte in memory, as
/// the datapath does it per new session (made in registers, every byte of the address took a
/// register or a stack slot of its own on the BPF target).
#[inline(always)]
pub fn clear_host_bits(addr: &mut IpBytes, prefix_len: u8) {
    for (index, byte) in addr.0.iter_mut().enumerate() {
        // The bits of this byte inside the prefix: 0 to 8.
        let kept = prefix_len
            .saturating_sub((index as u8).wrapping_mul(8))
            .min(8);
        *byte &= !(0xffu8.checked_shr(u32::from(kept)).unwrap_or(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_addresses_are_mapped_and_come_back() {
        let addr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let bytes = from_ip(addr);
        assert_eq!(
            Ipv6Addr::from(bytes.0),
            "::ffff:192.0.2.7".parse::<Ipv6Addr>().unwrap()
        );
        assert!(is_v4(&bytes));
        assert_eq!(v4_octets(&bytes), [192, 0, 2, 7]);
        assert_eq!(to_ip(&bytes), addr);
        assert_eq!(bytes, v4_mapped([192, 0, 2, 7]));
    }

    #[test]
    fn ipv6_addresses_stay_themselves() {
        for text in [
            "2001:db8::1",
            "::",
            "::1",
            "fd00::ffff:0:0",
            "::fffe:1.2.3.4",
        ] {
            let addr: IpAddr = text.parse().unwrap();
            let bytes = from_ip(addr);
            assert!(!is_v4(&bytes), "{text}");
            assert_eq!(to_ip(&bytes), addr);
        }
    }

    #[test]
    fn a_network_keeps_exactly_its_prefix() {
        let addr = from_ip("2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff".parse().unwrap());
        let net = |len| Ipv6Addr::from(network(&addr, len).0);
        let v6 = |text: &str| text.parse::<Ipv6Addr>().unwrap();
        assert_eq!(net(128), v6("2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff"));
        assert_eq!(net(64), v6("2001:db8:aaaa:bbbb::"));
        assert_eq!(net(60), v6("2001:db8:aaaa:bbb0::"));
        assert_eq!(net(0), v6("::"));
        let v4 = v4_mapped([10, 1, 2, 3]);
        assert_eq!(network(&v4, V4_MAPPED_BITS + 24), v4_mapped([10, 1, 2, 0]));
        assert_eq!(network(&v4, V4_MAPPED_BITS + 20), v4_mapped([10, 1, 0, 0]));
    }
}
