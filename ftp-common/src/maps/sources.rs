//! The per-source tables: how many sessions each source address and each network (an IPv4 /24, an
//! IPv6 /64) holds, so that one host or one network cannot take more than its share of the
//! sessions (and through them of the flows, expectations and window ports).
//!
//! Each record has one writer. The datapath counts the sessions it opens per source
//! ([`OPENED_NAME`], a count that only grows); the agent counts each source's sessions at every
//! sweep and records them with the datapath's count as it read it just before ([`SEEN_NAME`]). A
//! source holds `seen.sessions + (opened - seen.opened_mark)`: what the agent counted, and what
//! the datapath opened since (a session opened in between is counted twice until the next sweep,
//! never left out). The agent forgets a source that has no session and opened none since.

use super::{IpBytes, Table, ip};

/// What the agent's last sweep found per source: [`SourceKey`] to [`SourceSeen`], written only by
/// the agent.
pub const SEEN_NAME: &str = "SOURCE_SEEN";

/// Sessions the datapath opened per source: [`SourceKey`] to a `u32` that only the datapath
/// writes, and only increments; the agent removes idle sources. An LRU table: filling it with
/// sources evicts the oldest counts (whose sources are then counted from the next sweep), never
/// refuses a session.
pub const OPENED_NAME: &str = "SOURCE_OPENED";

pub const SEEN_TABLE: Table = Table::new::<SourceKey, SourceSeen>(SEEN_NAME);
pub const OPENED_TABLE: Table = Table::new::<SourceKey, u32>(OPENED_NAME);

/// Both tables as aya's typed maps, over owned or borrowed map data.
#[cfg(feature = "user")]
pub type SeenAyaMap<T> = aya::maps::HashMap<T, SourceKey, SourceSeen>;
#[cfg(feature = "user")]
pub type OpenedAyaMap<T> = aya::maps::HashMap<T, SourceKey, u32>;

/// A source as the agent's last sweep counted it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceSeen {
    /// Its sessions in the session table.
    pub sessions: u32,
    /// Its [`OPENED_NAME`] count, read just before the sessions were counted.
    pub opened_mark: u32,
}

impl SourceSeen {
    /// The sessions the source holds now, its [`OPENED_NAME`] count being `opened` (a count below
    /// the mark, restarted after an LRU eviction, adds nothing).
    #[inline(always)]
    pub const fn in_use(&self, opened: u32) -> u32 {
        self.sessions
            .saturating_add(opened.saturating_sub(self.opened_mark))
    }
}

/// What a source's count covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceScope {
    /// The source address itself.
    Host,
    /// Its network: the /24 of an IPv4 address, the /64 of an IPv6 one (one LAN's prefix).
    Subnet,
}

/// The scopes every source is counted under.
pub const SCOPES: [SourceScope; 2] = [SourceScope::Host, SourceScope::Subnet];

/// The prefix lengths of [`SourceScope::Subnet`] in each family's own terms.
pub const IPV4_SUBNET_LEN: u8 = 24;
pub const IPV6_SUBNET_LEN: u8 = 64;

/// A source host or network: its address (see [`ip`](super::ip)) with the bits beyond
/// `prefix_len` (of the 128) cleared.
// Aligned to 4 bytes: copies of its addresses then move words, not bytes, in the kernel
// program (the BPF target has no unaligned access), which also keeps them off its stack.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    pub addr: IpBytes,
    pub prefix_len: u8,
    pub _pad: [u8; 3],
}

impl SourceKey {
    /// The key `addr` is counted under in `scope`.
    #[inline(always)]
    pub fn new(addr: &IpBytes, scope: SourceScope) -> Self {
        let prefix_len = match scope {
            SourceScope::Host => 128,
            SourceScope::Subnet if ip::is_v4(addr) => ip::V4_MAPPED_BITS + IPV4_SUBNET_LEN,
            SourceScope::Subnet => IPV6_SUBNET_LEN,
        };
        Self {
            addr: ip::network(addr, prefix_len),
            prefix_len,
            _pad: [0; 3],
        }
    }

    /// The scope the key counts.
    pub const fn scope(&self) -> SourceScope {
        if self.prefix_len == 128 {
            SourceScope::Host
        } else {
            SourceScope::Subnet
        }
    }
}

/// How many sessions one source may hold: per host and per network (0: no limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceLimits {
    pub per_host: u32,
    pub per_subnet: u32,
}

impl SourceLimits {
    /// The limit for sources counted in `scope`.
    #[inline(always)]
    pub const fn for_scope(&self, scope: SourceScope) -> u32 {
        match scope {
            SourceScope::Host => self.per_host,
            SourceScope::Subnet => self.per_subnet,
        }
    }

    /// Whether a source holding `in_use` sessions in `scope` may open another.
    #[inline(always)]
    pub const fn admits(&self, scope: SourceScope, in_use: u32) -> bool {
        let limit = self.for_scope(scope);
        limit == 0 || in_use < limit
    }
}

pod!(SourceKey, SourceSeen);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_types_have_no_padding() {
        assert_eq!(core::mem::size_of::<SourceKey>(), 20);
        assert_eq!(core::mem::size_of::<SourceSeen>(), 8);
    }

    #[test]
    fn a_source_holds_what_was_counted_and_what_opened_since() {
        let seen = SourceSeen {
            sessions: 3,
            opened_mark: 10,
        };
        assert_eq!(seen.in_use(10), 3);
        assert_eq!(seen.in_use(12), 5);
        // Counted afresh after an eviction: below the mark, nothing since.
        assert_eq!(seen.in_use(1), 3);
        assert_eq!(
            SourceSeen::default().in_use(4),
            4,
            "never seen: all it opened"
        );
    }

    #[test]
    fn a_key_keeps_only_its_prefix() {
        use super::SourceScope::{Host, Subnet};
        let v4 = |octets| ip::v4_mapped(octets);
        let host = SourceKey::new(&v4([192, 0, 2, 77]), Host);
        assert_eq!((host.addr, host.prefix_len), (v4([192, 0, 2, 77]), 128));
        assert_eq!(host.scope(), Host);
        let net = SourceKey::new(&v4([192, 0, 2, 77]), Subnet);
        assert_eq!((net.addr, net.prefix_len), (v4([192, 0, 2, 0]), 120));
        assert_eq!(net.scope(), Subnet);
        assert_eq!(net, SourceKey::new(&v4([192, 0, 2, 200]), Subnet));
        assert_ne!(net, SourceKey::new(&v4([192, 0, 3, 77]), Subnet));
        // The host and its /24 are different keys even for the network's own address.
        assert_ne!(
            SourceKey::new(&v4([192, 0, 2, 0]), Host),
            SourceKey::new(&v4([192, 0, 2, 0]), Subnet)
        );
        // An IPv6 source's network is its /64.
        let v6 = ip::from_ip("2001:db8:10:0:aaaa::2".parse().unwrap());
        let net = SourceKey::new(&v6, Subnet);
        assert_eq!(net.prefix_len, 64);
        assert_eq!(net.addr, ip::from_ip("2001:db8:10::".parse().unwrap()));
    }

    #[test]
    fn limits_admit_below_them_and_zero_is_none() {
        let limits = SourceLimits {
            per_host: 2,
            per_subnet: 0,
        };
        assert!(limits.admits(SourceScope::Host, 0));
        assert!(limits.admits(SourceScope::Host, 1));
        assert!(!limits.admits(SourceScope::Host, 2));
        assert!(limits.admits(SourceScope::Subnet, 1_000_000));
    }
}
