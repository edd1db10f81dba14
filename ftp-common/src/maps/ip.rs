//! Addresses in the tables: 16 bytes for either family, an IPv4 address as its IPv4-mapped IPv6
//! address (`::ffff:a.b.c.d`, RFC 4291 section 2.5.5.2). One key type then serves both families,
//! and a key of one family can never equal a key of the other.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address as the tables hold it (network byte order).
pub type IpBytes = [u8; 16];

/// The all-zero address: "any" in an expectation's key, "none" in a setting.
pub const UNSPECIFIED: IpBytes = [0; 16];

/// How many leading bits of a mapped address are the mapping: an IPv4 prefix of `n` bits is the
/// mapped prefix of `V4_MAPPED_BITS + n`.
pub const V4_MAPPED_BITS: u8 = 96;

/// The IPv4 address `octets`, mapped.
#[inline(always)]
pub const fn v4_mapped(octets: [u8; 4]) -> IpBytes {
    let mut out = [0u8; 16];
    out[10] = 0xff;
    out[11] = 0xff;
    out[12] = octets[0];
    out[13] = octets[1];
    out[14] = octets[2];
    out[15] = octets[3];
    out
}

/// Whether `addr` is an IPv4 address (mapped).
#[inline(always)]
pub fn is_v4(addr: &IpBytes) -> bool {
    let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, ..] = *addr;
    u64::from_ne_bytes([a0, a1, a2, a3, a4, a5, a6, a7]) == 0
        && u32::from_be_bytes([a8, a9, a10, a11]) == 0xffff
}

/// The IPv4 address in the last four bytes of `addr` (meaningful when [`is_v4`]).
#[inline(always)]
pub const fn v4_octets(addr: &IpBytes) -> [u8; 4] {
    [addr[12], addr[13], addr[14], addr[15]]
}

/// The address `addr` holds, in its own family.
pub fn to_ip(addr: &IpBytes) -> IpAddr {
    if is_v4(addr) {
        IpAddr::V4(Ipv4Addr::from(v4_octets(addr)))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    }
}

/// `addr` as the tables hold it.
pub const fn from_ip(addr: IpAddr) -> IpBytes {
    match addr {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// `addr` with the bits past the first `prefix_len` cleared (its network of that length).
#[inline(always)]
pub fn network(addr: &IpBytes, prefix_len: u8) -> IpBytes {
    // Two 64-bit halves, not sixteen bytes: the datapath computes this per new session, and the
    // BPF target keeps a byte loop's every byte in a register or a stack slot of its own.
    let [
        a0,
        a1,
        a2,
        a3,
        a4,
        a5,
        a6,
        a7,
        a8,
        a9,
        a10,
        a11,
        a12,
        a13,
        a14,
        a15,
    ] = *addr;
    let high = u64::from_be_bytes([a0, a1, a2, a3, a4, a5, a6, a7]) & mask(prefix_len);
    let low = u64::from_be_bytes([a8, a9, a10, a11, a12, a13, a14, a15])
        & mask(prefix_len.saturating_sub(64));
    let [h0, h1, h2, h3, h4, h5, h6, h7] = high.to_be_bytes();
    let [l0, l1, l2, l3, l4, l5, l6, l7] = low.to_be_bytes();
    [
        h0, h1, h2, h3, h4, h5, h6, h7, l0, l1, l2, l3, l4, l5, l6, l7,
    ]
}

/// The mask of a 64-bit half of an address that keeps its first `bits` bits (all of it from 64).
#[inline(always)]
const fn mask(bits: u8) -> u64 {
    match bits {
        0 => 0,
        1..=63 => u64::MAX << (64 - bits as u32),
        _ => u64::MAX,
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
            Ipv6Addr::from(bytes),
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
        let net = |len| Ipv6Addr::from(network(&addr, len));
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
