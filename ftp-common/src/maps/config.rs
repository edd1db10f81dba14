//! The config table: the datapath's settings, one record the agent writes before it attaches.

use super::{IpBytes, Table, ip};
use crate::Ipv6AddressText;

/// The datapath's settings (one [`DatapathConfig`], at index 0), written by the agent before
/// attach.
pub const NAME: &str = "CONFIG";

pub const TABLE: Table = Table::new::<u32, DatapathConfig>(NAME);

/// The table as aya's typed map, over owned or borrowed map data.
#[cfg(feature = "user")]
pub type AyaMap<T> = aya::maps::Array<T, DatapathConfig>;

/// How many FTP control ports the datapath can watch.
pub const MAX_FTP_PORTS: usize = 8;

/// The datapath's settings, the single value of the [`NAME`] array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// How long an announced data connection may take to open (`--expect-timeout`).
    pub expect_timeout_ns: u64,
    /// The address masqueraded IPv4 connections leave with (network byte order, mapped: see
    /// [`ip`](super::ip)).
    pub public_ip: IpBytes,
    /// The address masqueraded IPv6 connections leave with (NAT66), all zero for none.
    pub public_ip6: IpBytes,
    /// Its text, which rewritten EPRTs announce (see [`Ipv6AddressText`]).
    pub public_ip6_text: Ipv6AddressText,
    /// Where translated LAN-to-WAN packets are redirected.
    pub wan_ifindex: u32,
    /// FTP control ports (host byte order); 0 marks an unused slot.
    pub ftp_ports: [u16; MAX_FTP_PORTS],
    /// The port window (host byte order), for reports; the kernel takes ports from
    /// [`FREE_PORTS`](super::free_ports::NAME).
    pub window_lo: u16,
    pub window_hi: u16,
    /// 1 if a PORT/EPRT may name a port below 1024 (`--allow-privileged-data-ports`).
    pub allow_privileged_data_ports: u8,
    /// How many announced data connections one session may hold open at once
    /// (`--max-expectations-per-session`); 0, the value of a record written before this field
    /// existed, means the default.
    pub max_expectations_per_session: u8,
    /// [`nat64_flags`] bits; 0: ftpnat translates no IPv6 session to IPv4.
    pub nat64_flags: u8,
    pub _pad: [u8; 5],
    /// How many sessions one source address may hold (`--max-sessions-per-source`); 0: no limit.
    pub max_sessions_per_source: u32,
    /// How many sessions the sources of one /24 may hold together
    /// (`--max-sessions-per-subnet`); 0: no limit.
    pub max_sessions_per_subnet: u32,
    /// The NAT64 prefix (RFC 6052, a /96: its last word zero). An IPv6 LAN client's FTP control
    /// connection to `prefix::a.b.c.d` is translated to IPv4 and sent to `a.b.c.d`.
    pub nat64_prefix: IpBytes,
    /// The IPv4 address (IPv4-mapped) NAT64 sessions and their data connections leave from.
    pub nat64_pool: IpBytes,
}

/// The well-known NAT64 prefix, `64:ff9b::/96` (RFC 6052 section 2.1).
pub const WELL_KNOWN_NAT64_PREFIX: IpBytes =
    IpBytes::from_octets([0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

/// [`DatapathConfig::nat64_flags`] bits.
pub mod nat64_flags {
    /// NAT64 is on: `nat64_prefix` and `nat64_pool` hold addresses.
    pub const ENABLED: u8 = 1 << 0;
    /// A NAT64 client's `EPSV` is sent to the server as `PASV`, its 227 reply returned as a 229
    /// (RFC 6384 section 6); else the EPSV passes as it is.
    pub const EPSV_AS_PASV: u8 = 1 << 1;
}

impl DatapathConfig {
    /// The policy a session's announcements are checked against.
    #[inline(always)]
    pub fn policy(&self) -> crate::Policy {
        let mut policy = crate::Policy::new();
        policy.allow_privileged_data_ports = self.allow_privileged_data_ports != 0;
        if self.max_expectations_per_session != 0 {
            policy.max_outstanding_expectations = self.max_expectations_per_session;
        }
        policy
    }

    /// The per-source session limits.
    #[inline(always)]
    pub fn source_limits(&self) -> super::SourceLimits {
        super::SourceLimits {
            per_host: self.max_sessions_per_source,
            per_subnet: self.max_sessions_per_subnet,
        }
    }

    #[inline(always)]
    pub fn is_ftp_port(&self, port: u16) -> bool {
        // A plain loop over a fixed array: bounded, so the verifier accepts it unrolled.
        let mut i = 0;
        while i < MAX_FTP_PORTS {
            if self.ftp_ports[i] != 0 && self.ftp_ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }

    /// The public address of `addr`'s family (all zero: IPv6 without NAT66).
    #[inline(always)]
    pub fn public_ip_of(&self, addr: &IpBytes) -> &IpBytes {
        if ip::is_v4(addr) {
            &self.public_ip
        } else {
            &self.public_ip6
        }
    }

    /// Whether `addr` is one of the public addresses.
    /// The address a session of `kind` (a [`SessionKind`](super::SessionKind) as `u8`) whose
    /// client is `client` announces and is reached at from the WAN: the NAT64 pool for a NAT64
    /// session, else the public address of the client's family.
    #[inline(always)]
    pub fn public_ip_for(&self, kind: u8, client: &IpBytes) -> &IpBytes {
        if kind == super::SessionKind::Nat64 as u8 {
            &self.nat64_pool
        } else {
            self.public_ip_of(client)
        }
    }

    #[inline(always)]
    pub fn is_public(&self, addr: &IpBytes) -> bool {
        *addr != ip::UNSPECIFIED && addr == self.public_ip_of(addr)
    }

    /// Whether `port` (host byte order) belongs to the port window.
    /// Whether `addr` is an IPv6 address under the NAT64 prefix (never, with NAT64 off).
    #[inline(always)]
    pub fn is_nat64_destination(&self, addr: &IpBytes) -> bool {
        self.nat64_flags & nat64_flags::ENABLED != 0
            && addr.0[0] == self.nat64_prefix.0[0]
            && addr.0[1] == self.nat64_prefix.0[1]
            && addr.0[2] == self.nat64_prefix.0[2]
    }

    /// Whether NAT64 may take a client to the IPv4 address `v4` (IPv4-mapped): any address under
    /// a network-specific prefix, a global one only under the well-known `64:ff9b::/96` (RFC 6052
    /// section 3.1: it never names a private or other special-purpose address).
    #[inline(always)]
    pub fn nat64_reaches(&self, v4: &IpBytes) -> bool {
        self.nat64_prefix != WELL_KNOWN_NAT64_PREFIX || ip::is_global_v4(ip::v4_octets(v4))
    }

    /// The IPv6 address a NAT64 client sees for the IPv4 address `v4` (IPv4-mapped): the prefix
    /// with `v4` in its last 32 bits (RFC 6052 section 2.2, a /96).
    #[inline(always)]
    pub fn nat64_address_of(&self, v4: &IpBytes) -> IpBytes {
        IpBytes([
            self.nat64_prefix.0[0],
            self.nat64_prefix.0[1],
            self.nat64_prefix.0[2],
            v4.0[3],
        ])
    }

    #[inline(always)]
    pub fn in_window(&self, port: u16) -> bool {
        self.window_lo <= port && port <= self.window_hi
    }
}

pod!(DatapathConfig);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn the_config_has_no_padding() {
        assert_eq!(
            size_of::<DatapathConfig>(),
            8 + 2 * 16 + 40 + 4 + 2 * MAX_FTP_PORTS + 4 + 2 + 1 + 5 + 4 + 4 + 2 * 16
        );
    }

    fn test_config() -> DatapathConfig {
        DatapathConfig {
            expect_timeout_ns: 0,
            public_ip: crate::maps::ip::v4_mapped([192, 0, 2, 1]),
            public_ip6: crate::maps::ip::UNSPECIFIED,
            public_ip6_text: Ipv6AddressText::NONE,
            wan_ifindex: 2,
            ftp_ports: [0; MAX_FTP_PORTS],
            window_lo: 61000,
            window_hi: 61999,
            allow_privileged_data_ports: 0,
            max_expectations_per_session: 0,
            nat64_flags: 0,
            _pad: [0; 5],
            max_sessions_per_source: 0,
            max_sessions_per_subnet: 0,
            nat64_prefix: ip::UNSPECIFIED,
            nat64_pool: ip::UNSPECIFIED,
        }
    }

    #[test]
    fn the_policy_follows_the_config_and_zero_means_the_default() {
        let mut config = test_config();
        assert_eq!(config.policy(), crate::Policy::new());
        config.allow_privileged_data_ports = 1;
        config.max_expectations_per_session = 9;
        let policy = config.policy();
        assert!(policy.allow_privileged_data_ports);
        assert_eq!(policy.max_outstanding_expectations, 9);
        assert_eq!(
            policy.passive_address_must_match_server,
            crate::Policy::new().passive_address_must_match_server
        );
    }

    #[test]
    fn each_family_has_its_public_address() {
        let mut config = test_config();
        let v4 = ip::v4_mapped([10, 0, 0, 2]);
        let v6 = ip::from_ip("2001:db8::2".parse().unwrap());
        assert_eq!(config.public_ip_of(&v4), &config.public_ip);
        assert_eq!(config.public_ip_of(&v6), &ip::UNSPECIFIED);
        assert!(config.is_public(&config.public_ip.clone()));
        assert!(
            !config.is_public(&ip::UNSPECIFIED),
            "no public IPv6 address: none is"
        );
        config.public_ip6 = ip::from_ip("2001:db8:1::fe".parse().unwrap());
        assert_eq!(config.public_ip_of(&v6), &config.public_ip6);
        assert!(config.is_public(&config.public_ip6.clone()));
        assert!(!config.is_public(&v6));
    }

    #[test]
    fn nat64_destinations_are_the_prefix_s_and_embed_ipv4() {
        let mut config = test_config();
        let mapped = ip::from_ip("64:ff9b::c000:202".parse().unwrap());
        assert!(!config.is_nat64_destination(&mapped), "NAT64 off");
        config.nat64_flags = nat64_flags::ENABLED;
        config.nat64_prefix = ip::from_ip("64:ff9b::".parse().unwrap());
        assert!(config.is_nat64_destination(&mapped));
        assert!(!config.is_nat64_destination(&ip::from_ip("64:ff9b:1::c000:202".parse().unwrap())));
        assert!(!config.is_nat64_destination(&ip::v4_mapped([192, 0, 2, 2])));
        assert_eq!(
            config.nat64_address_of(&ip::v4_mapped([192, 0, 2, 2])),
            mapped
        );
    }

    #[test]
    fn ftp_port_slots_match_only_configured_ports() {
        let mut config = test_config();
        assert!(!config.is_ftp_port(0), "an empty slot is not port 0");
        assert!(!config.is_ftp_port(21));
        config.ftp_ports[0] = 21;
        config.ftp_ports[MAX_FTP_PORTS - 1] = 2121;
        assert!(config.is_ftp_port(21));
        assert!(config.is_ftp_port(2121));
        assert!(!config.is_ftp_port(22));
    }
}
