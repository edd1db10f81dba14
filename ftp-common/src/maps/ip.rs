//! Addresses in the tables: 16 bytes for either family, an IPv4 address as its IPv4-mapped IPv6
//! address (`::ffff:a.b.c.d`, RFC 4291 section 2.5.5.2). One key type then serves both families,
//! and a key of one family can never equal a key of the other.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address as the tables hold it: its 16 bytes in network byte order, kept as four words. The
/// kernel program then copies, compares and builds addresses a word at a time: the BPF target has
/// no unaligned access, and moved a byte array byte by byte (each byte in a register of its own,
/// zero runs through a byte-by-byte `memset`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpBytes(pub [u32; 4]);

pod!(IpBytes);

impl IpBytes {
    /// The address whose bytes (network byte order) are `octets`.
    #[inline(always)]
    pub const fn from_octets(octets: [u8; 16]) -> Self {
        let [
            a0,
            a1,
            a2,
            a3,
            b0,
            b1,
            b2,
            b3,
            c0,
            c1,
            c2,
            c3,
            d0,
            d1,
            d2,
            d3,
        ] = octets;
        Self([
            u32::from_ne_bytes([a0, a1, a2, a3]),
            u32::from_ne_bytes([b0, b1, b2, b3]),
            u32::from_ne_bytes([c0, c1, c2, c3]),
            u32::from_ne_bytes([d0, d1, d2, d3]),
        ])
    }

    /// Its bytes, in network byte order.
    #[inline(always)]
    pub const fn octets(&self) -> [u8; 16] {
        let [a, b, c, d] = self.0;
        let ([a0, a1, a2, a3], [b0, b1, b2, b3]) = (a.to_ne_bytes(), b.to_ne_bytes());
        let ([c0, c1, c2, c3], [d0, d1, d2, d3]) = (c.to_ne_bytes(), d.to_ne_bytes());
        [
            a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3,
        ]
    }
}

/// Addresses order as their bytes do (not as the words' native values).
impl Ord for IpBytes {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.octets().cmp(&other.octets())
    }
}

impl PartialOrd for IpBytes {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The all-zero address: "any" in an expectation's key, "none" in a setting.
pub const UNSPECIFIED: IpBytes = IpBytes([0; 4]);

/// The third word of every IPv4-mapped address: bytes `0, 0, 0xff, 0xff`.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// How many leading bits of a mapped address are the mapping: an IPv4 prefix of `n` bits is the
/// mapped prefix of `V4_MAPPED_BITS + n`.
pub const V4_MAPPED_BITS: u8 = 96;

/// The IPv4 address `octets`, mapped.
#[inline(always)]
pub const fn v4_mapped(octets: [u8; 4]) -> IpBytes {
    IpBytes([0, 0, V4_MAPPED_WORD, u32::from_ne_bytes(octets)])
}

/// Whether `addr` is an IPv4 address (mapped).
#[inline(always)]
pub fn is_v4(addr: &IpBytes) -> bool {
    let [a, b, c, _] = addr.0;
    a == 0 && b == 0 && c == V4_MAPPED_WORD
}

/// The IPv4 address in the last four bytes of `addr` (meaningful when [`is_v4`]).
#[inline(always)]
pub const fn v4_octets(addr: &IpBytes) -> [u8; 4] {
    let [.., d] = addr.0;
    d.to_ne_bytes()
}

/// The IPv4 address (mapped) embedded in the last 32 bits of the IPv6 address `addr`: a NAT64
/// destination under a /96 prefix (RFC 6052 section 2.2).
#[inline(always)]
pub const fn embedded_v4(addr: &IpBytes) -> IpBytes {
    let [.., d] = addr.0;
    IpBytes([0, 0, V4_MAPPED_WORD, d])
}

/// The address `addr` holds, in its own family.
pub fn to_ip(addr: &IpBytes) -> IpAddr {
    if is_v4(addr) {
        IpAddr::V4(Ipv4Addr::from(v4_octets(addr)))
    } else {
        IpAddr::V6(Ipv6Addr::from(addr.octets()))
    }
}

/// Whether `held` is `addr`, each in its own family: an IPv6 address that looks IPv4-mapped (an
/// `EPRT |2|::ffff:10.0.0.2|`) is never the IPv4 address it would map.
#[inline(always)]
pub fn holds(held: &IpBytes, addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => *held == v4_mapped(v4.octets()),
        IpAddr::V6(v6) => {
            let v6 = IpBytes::from_octets(v6.octets());
            !is_v4(&v6) && v6 == *held
        }
    }
}

/// `addr` as the tables hold it.
pub const fn from_ip(addr: IpAddr) -> IpBytes {
    match addr {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => IpBytes::from_octets(v6.octets()),
    }
}

/// Whether the IPv4 address `octets` is global: none of the special-purpose blocks that RFC 6890
/// (after RFC 5735) marks not global — this network, private, shared, loopback, link-local, IETF
/// protocol assignments, the documentation and benchmarking networks, 6to4 relay anycast,
/// multicast, reserved and broadcast. The well-known NAT64 prefix must not name any other
/// (RFC 6052 section 3.1).
#[inline(always)]
pub fn is_global_v4(octets: [u8; 4]) -> bool {
    let [a, b, c, _] = octets;
    let not_global = a == 0
        || a == 10
        || (a == 100 && (64..128).contains(&b))
        || a == 127
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && (c == 0 || c == 2))
        || (a == 192 && b == 88 && c == 99)
        || (a == 192 && b == 168)
        || (a == 198 && (b == 18 || b == 19))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224;
    !not_global
}

/// Clears the bits of `addr` past the first `prefix_len`, in place, a word at a time.
#[inline(always)]
pub fn clear_host_bits(addr: &mut IpBytes, prefix_len: u8) {
    for (index, word) in addr.0.iter_mut().enumerate() {
        // The bits of this word inside the prefix: 0 to 32.
        let kept = u32::from(
            prefix_len
                .saturating_sub((index as u8).wrapping_mul(32))
                .min(32),
        );
        let mask = u32::MAX.checked_shl(32 - kept).unwrap_or(0);
        *word &= u32::from_ne_bytes(mask.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_global_ipv4_addresses_are_global() {
        for global in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "192.0.3.1",
            "192.88.98.1",
            "192.169.0.1",
            "198.17.0.1",
            "198.20.0.1",
            "198.51.99.1",
            "203.0.112.1",
            "223.255.255.255",
        ] {
            let addr: core::net::Ipv4Addr = global.parse().unwrap();
            assert!(is_global_v4(addr.octets()), "{global}");
        }
        for special in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.7",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.10",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            let addr: core::net::Ipv4Addr = special.parse().unwrap();
            assert!(!is_global_v4(addr.octets()), "{special}");
        }
    }

    #[test]
    fn ipv4_addresses_are_mapped_and_come_back() {
        let addr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let bytes = from_ip(addr);
        assert_eq!(
            Ipv6Addr::from(bytes.octets()),
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
    fn an_address_is_held_only_in_its_own_family() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let v6: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(holds(&from_ip(v4), v4));
        assert!(
            !holds(&from_ip(v4), mapped),
            "an IPv6 address is not an IPv4 one"
        );
        assert!(holds(&from_ip(v6), v6));
        assert!(!holds(&from_ip(v6), v4));
    }

    #[test]
    fn the_words_hold_the_bytes_in_order() {
        let octets = core::array::from_fn(|i| i as u8 * 17);
        let addr = IpBytes::from_octets(octets);
        assert_eq!(addr.octets(), octets);
        // In memory, the words are the bytes as they were.
        assert_eq!(core::mem::size_of::<IpBytes>(), 16);
        let low = from_ip("::1".parse().unwrap());
        let high = from_ip("ff00::".parse().unwrap());
        assert!(low < high, "addresses order as their bytes");
        assert!(v4_mapped([10, 0, 0, 2]) < v4_mapped([192, 0, 2, 1]));
    }

    #[test]
    fn a_network_keeps_exactly_its_prefix() {
        let addr = from_ip("2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff".parse().unwrap());
        let net = |len| {
            let mut network = addr;
            clear_host_bits(&mut network, len);
            Ipv6Addr::from(network.octets())
        };
        let v6 = |text: &str| text.parse::<Ipv6Addr>().unwrap();
        assert_eq!(net(128), v6("2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff"));
        assert_eq!(net(64), v6("2001:db8:aaaa:bbbb::"));
        assert_eq!(net(60), v6("2001:db8:aaaa:bbb0::"));
        assert_eq!(net(0), v6("::"));
        let v4 = v4_mapped([10, 1, 2, 3]);
        for (len, expected) in [(24, [10, 1, 2, 0]), (20, [10, 1, 0, 0])] {
            let mut network = v4;
            clear_host_bits(&mut network, V4_MAPPED_BITS + len);
            assert_eq!(network, v4_mapped(expected));
        }
    }
}
