//! The masquerade table: the source prefixes whose connections leave behind the public address.

use super::{IpBytes, Table};

/// Masqueraded source prefixes (LPM trie over [`IpBytes`]: an IPv4 prefix of `n` bits is the
/// mapped prefix of `96 + n`, see [`ip`](super::ip); the values unused), written by the agent.
pub const NAME: &str = "MASQUERADE";

/// How many masqueraded prefixes the agent can configure.
pub const MAX_MASQUERADE_PREFIXES: u32 = 256;

/// An LPM trie key is the prefix length (`u32`) and the address; the values are one byte.
pub const TABLE: Table = Table {
    name: NAME,
    key_size: core::mem::size_of::<u32>() + core::mem::size_of::<IpBytes>(),
    value_size: core::mem::size_of::<u8>(),
};

/// The table as aya's typed map, over owned or borrowed map data.
#[cfg(feature = "user")]
pub type AyaMap<T> = aya::maps::LpmTrie<T, IpBytes, u8>;
