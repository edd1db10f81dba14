//! The per-source tables: how many sessions each source address and each /24 holds, so that one
//! host or one network cannot take more than its share of the sessions (and through them of the
//! flows, expectations and window ports).
//!
//! Each record has one writer. The datapath counts the sessions it opens per source
//! ([`OPENED_NAME`], a count that only grows); the agent counts each source's sessions at every
//! sweep and records them with the datapath's count as it read it just before ([`SEEN_NAME`]). A
//! source holds `seen.sessions + (opened - seen.opened_mark)`: what the agent counted, and what
//! the datapath opened since (a session opened in between is counted twice until the next sweep,
//! never left out). The agent forgets a source that has no session and opened none since.

use super::Table;

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

pod!(SourceKey, SourceSeen);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_types_have_no_padding() {
        assert_eq!(core::mem::size_of::<SourceKey>(), 8);
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
