//! The reasons table: refusals and unparseable lines counted by reason.

use super::Table;

/// Refusals and unparseable lines by reason: a per-CPU array of `u64` indexed by
/// [`refusal_slot`] and [`malformed_slot`].
pub const NAME: &str = "REASONS";

/// Per CPU, the value size is one CPU's.
pub const TABLE: Table = Table::new::<u32, u64>(NAME);

/// The table as aya's typed map, over owned or borrowed map data.
#[cfg(feature = "user")]
pub type AyaMap<T> = aya::maps::PerCpuArray<T, u64>;

/// Slots of the [`NAME`] array: 16 for refusals, then 16 for unparseable lines.
pub const REASON_SLOTS: u32 = 32;

/// The [`NAME`] slot of a refusal: its [`crate::RefusalReason`] code.
pub const fn refusal_slot(code: u8) -> u32 {
    code as u32 & 15
}

/// The [`NAME`] slot of an unparseable line, by its [`crate::MalformedReason`] code.
pub const fn malformed_slot(code: u8) -> u32 {
    16 + (code as u32 & 15)
}
