//! The free-port queue: the ports of the window not in use.

use super::Table;

/// Free ports of the port window (host byte order): a queue the agent fills and refills, the
/// kernel pops.
pub const NAME: &str = "FREE_PORTS";

/// Capacity of the free-port queue: a window can be at most this many ports.
pub const MAX_WINDOW_PORTS: u32 = 65_536;

/// A queue has no key: its key size is 0.
pub const TABLE: Table = Table::new::<(), u16>(NAME);

/// The table as aya's typed map, over owned or borrowed map data.
#[cfg(feature = "user")]
pub type AyaMap<T> = aya::maps::Queue<T, u16>;
