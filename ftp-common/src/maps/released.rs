//! The released table: expectations the agent let expire, per session.

use super::{FlowKey, Table};

/// Expectations the agent let expire, per session: [`FlowKey`] to a `u32` count that only the
/// agent writes and only grows; the datapath applies the growth to the session (see
/// [`SessionEntry::released_seen`](super::SessionEntry::released_seen)), so the agent never writes
/// a session record. Its capacity is the session table's,
/// [`MAX_SESSIONS`](super::MAX_SESSIONS).
pub const NAME: &str = "RELEASED";

pub const TABLE: Table = Table::new::<FlowKey, u32>(NAME);

/// The table as aya's typed map, over owned or borrowed map data.
#[cfg(feature = "user")]
pub type AyaMap<T> = aya::maps::HashMap<T, FlowKey, u32>;
