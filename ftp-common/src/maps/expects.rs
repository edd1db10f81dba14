//! The expectation table: announced data connections not yet opened.

use super::{FlowKey, IpBytes, Table, ip::UNSPECIFIED};

/// Announced data connections not yet opened: [`ExpectKey`] to [`Expectation`].
pub const NAME: &str = "EXPECTS";

/// Capacity of the expectation table.
pub const MAX_EXPECTATIONS: u32 = super::Capacities::DEFAULT.expectations;

pub const TABLE: Table = Table::new::<ExpectKey, Expectation>(NAME);

/// The table as aya's typed map, over owned or borrowed map data.
#[cfg(feature = "user")]
pub type AyaMap<T> = aya::maps::HashMap<T, ExpectKey, Expectation>;

/// The data connection an expectation admits, as its opening SYN arrives at the router: from
/// `saddr` (any source port) to `daddr:dport`. Network byte order.
///
/// An [`ExpectationPath::Inbound`] expectation is keyed with `saddr` all zero: the window port in
/// `dport` is unique, and a SYN from the wrong peer must still find the expectation so that it is
/// told apart from a SYN nobody announced (see [`Expectation::peer`]).
// Aligned to 4 bytes: copies of its addresses then move words, not bytes, in the kernel
// program (the BPF target has no unaligned access), which also keeps them off its stack.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExpectKey {
    pub saddr: IpBytes,
    pub daddr: IpBytes,
    pub dport: [u8; 2],
    pub _pad: [u8; 2],
}

impl ExpectKey {
    /// An [`ExpectationPath::Outbound`] expectation: `from` (behind the router) may connect to
    /// `to:port` (host byte order).
    pub const fn outbound(from: IpBytes, to: IpBytes, port: u16) -> Self {
        Self {
            saddr: from,
            daddr: to,
            dport: port.to_be_bytes(),
            _pad: [0; 2],
        }
    }

    /// An [`ExpectationPath::Inbound`] expectation for `port` of `to`: a window port of the
    /// public address, or (an IPv6 client followed untranslated) the client's own address and port.
    pub const fn inbound(to: IpBytes, port: u16) -> Self {
        Self::outbound(UNSPECIFIED, to, port)
    }
}

/// Which way the announced data connection goes.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectationKind {
    /// PORT/EPRT: the server connects to the client through a window port of the public address.
    Active = 0,
    /// 227/229: the client connects to the port the server announced.
    Passive = 1,
}

impl ExpectationKind {
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(ExpectationKind::Active),
            1 => Some(ExpectationKind::Passive),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ExpectationKind::Active => "active",
            ExpectationKind::Passive => "passive",
        }
    }
}

/// How the router carries an expected data connection.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectationPath {
    /// It arrives from the WAN at a window port of the public address, reserved when the address
    /// was announced, and is DNATed to the target (masquerade PORT/EPRT, publish 227/229).
    Inbound = 0,
    /// It leaves from behind the router for the announced address and is SNATed behind a window
    /// port taken when it opens (masquerade 227/229, publish PORT/EPRT).
    Outbound = 1,
    /// It is forwarded as it is, either way (an IPv6 client followed untranslated: EPRT |2| from
    /// the WAN to the client's own announced port, keyed as [`ExpectKey::inbound`] of that
    /// address; a 229 from the client to the server, keyed as [`ExpectKey::outbound`]).
    Through = 2,
}

impl ExpectationPath {
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(ExpectationPath::Inbound),
            1 => Some(ExpectationPath::Outbound),
            2 => Some(ExpectationPath::Through),
            _ => None,
        }
    }
}

/// An announced data connection, admitted once: the value of the [`NAME`] map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expectation {
    /// `bpf_ktime_get_ns` after which it no longer admits anything.
    pub expires_ns: u64,
    /// The control connection (original direction key) that announced it.
    pub session: FlowKey,
    /// Where the data connection is delivered: the client's announced address (active) or the
    /// server (passive). Network byte order.
    pub target_addr: IpBytes,
    /// The client side's interface (where active data connections are delivered).
    pub lan_ifindex: u32,
    pub target_port: [u8; 2],
    /// The window port reserved for it (inbound), 0 while none is (outbound). Host byte order.
    pub public_port: u16,
    /// The only address the data connection may come from (network byte order).
    pub peer: IpBytes,
    /// An [`ExpectationKind`] as `u8` (the FTP mode, for reports).
    pub kind: u8,
    /// An [`ExpectationPath`] as `u8`.
    pub path: u8,
    pub _pad: [u8; 2],
}

pod!(ExpectKey, Expectation);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::ip::v4_mapped;
    use core::mem::size_of;

    #[test]
    fn expectation_types_have_no_padding() {
        assert_eq!(size_of::<ExpectKey>(), 36);
        assert_eq!(
            size_of::<Expectation>(),
            8 + 36 + 16 + 4 + 2 + 2 + 16 + 2 + 2
        );
        assert_eq!(size_of::<Expectation>() % 8, 0);
    }

    #[test]
    fn inbound_expectations_are_keyed_without_a_source() {
        let key = ExpectKey::inbound(v4_mapped([198, 51, 100, 1]), 61001);
        assert_eq!(key.saddr, UNSPECIFIED);
        assert_eq!(key.dport, 61001u16.to_be_bytes());
        assert_eq!(
            ExpectKey::outbound(v4_mapped([10, 0, 0, 2]), v4_mapped([203, 0, 113, 10]), 20),
            ExpectKey {
                saddr: v4_mapped([10, 0, 0, 2]),
                daddr: v4_mapped([203, 0, 113, 10]),
                dport: [0, 20],
                _pad: [0; 2],
            }
        );
    }
}
