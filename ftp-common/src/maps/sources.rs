//! The per-source tables: how many sessions each source address and each /24 holds, so that one
//! host or one network cannot take more than its share of the sessions (and through them of the
//! flows, expectations and window ports).
//!
//! Each record has one writer. The agent counts the sessions of every source at each sweep
//! ([`SESSIONS_NAME`]); the datapath counts the sessions it opened since ([`OPENED_NAME`]), and the
//! agent removes those counts as it takes them into its next recount. A source's sessions are the
//! sum of the two. An increment lost to a race (two CPUs, or the agent's removal) is made good by
//! the next recount, a second later.

use super::Table;

/// Sessions per source at the agent's last sweep: [`SourceKey`] to a `u32` count, written only by
/// the agent (sources without sessions are removed).
pub const SESSIONS_NAME: &str = "SOURCE_SESSIONS";

/// Sessions the datapath opened per source since the agent last took the count: [`SourceKey`] to
/// a `u32`, incremented only by the datapath, removed by the agent. An LRU table: filling it with
/// sources evicts the oldest counts, never refuses a session.
pub const OPENED_NAME: &str = "SOURCE_OPENED";

pub const SESSIONS_TABLE: Table = Table::new::<SourceKey, u32>(SESSIONS_NAME);
pub const OPENED_TABLE: Table = Table::new::<SourceKey, u32>(OPENED_NAME);

/// Both tables as aya's typed maps, over owned or borrowed map data.
#[cfg(feature = "user")]
pub type SessionsAyaMap<T> = aya::maps::HashMap<T, SourceKey, u32>;
#[cfg(feature = "user")]
pub type OpenedAyaMap<T> = aya::maps::HashMap<T, SourceKey, u32>;

/// The prefix lengths a source is counted under: the host, and its /24.
pub const PREFIXES: [u8; 2] = [32, 24];

/// A source host or network: its address with the bits beyond `prefix_len` cleared.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    pub addr: [u8; 4],
    pub prefix_len: u8,
    pub _pad: [u8; 3],
}

impl SourceKey {
    /// The key of `addr`'s network of `prefix_len` bits (0 to 32).
    #[inline(always)]
    pub const fn new(addr: [u8; 4], prefix_len: u8) -> Self {
        let mask = if prefix_len == 0 {
            0
        } else if prefix_len >= 32 {
            u32::MAX
        } else {
            u32::MAX << (32 - prefix_len)
        };
        Self {
            addr: (u32::from_be_bytes(addr) & mask).to_be_bytes(),
            prefix_len,
            _pad: [0; 3],
        }
    }
}

/// How many sessions one source may hold: per host and per /24 (0: no limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceLimits {
    pub per_host: u32,
    pub per_subnet: u32,
}

impl SourceLimits {
    /// The limit for sources counted under `prefix_len` (one of [`PREFIXES`]).
    #[inline(always)]
    pub const fn for_prefix(&self, prefix_len: u8) -> u32 {
        if prefix_len == 32 {
            self.per_host
        } else {
            self.per_subnet
        }
    }

    /// Whether a source holding `in_use` sessions under `prefix_len` may open another.
    #[inline(always)]
    pub const fn admits(&self, prefix_len: u8, in_use: u32) -> bool {
        let limit = self.for_prefix(prefix_len);
        limit == 0 || in_use < limit
    }
}

pod!(SourceKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_has_no_padding() {
        assert_eq!(core::mem::size_of::<SourceKey>(), 8);
    }

    #[test]
    fn a_key_keeps_only_its_prefix() {
        let host = SourceKey::new([192, 0, 2, 77], 32);
        assert_eq!((host.addr, host.prefix_len), ([192, 0, 2, 77], 32));
        let net = SourceKey::new([192, 0, 2, 77], 24);
        assert_eq!((net.addr, net.prefix_len), ([192, 0, 2, 0], 24));
        assert_eq!(net, SourceKey::new([192, 0, 2, 200], 24));
        assert_ne!(net, SourceKey::new([192, 0, 3, 77], 24));
        assert_eq!(SourceKey::new([192, 0, 2, 77], 0).addr, [0; 4]);
        // The host and its /24 are different keys even for the network's own address.
        assert_ne!(
            SourceKey::new([192, 0, 2, 0], 32),
            SourceKey::new([192, 0, 2, 0], 24)
        );
    }

    #[test]
    fn limits_admit_below_them_and_zero_is_none() {
        let limits = SourceLimits {
            per_host: 2,
            per_subnet: 0,
        };
        assert!(limits.admits(32, 0));
        assert!(limits.admits(32, 1));
        assert!(!limits.admits(32, 2));
        assert!(limits.admits(24, 1_000_000));
    }
}
