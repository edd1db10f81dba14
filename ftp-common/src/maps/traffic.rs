//! The traffic table: packets and bytes per interface and direction.

use super::{Table, interfaces::MAX_COUNTED_INTERFACES};

/// Per-CPU packet/byte counters by interface and direction: [`TrafficKey`] to [`TrafficCounters`].
pub const NAME: &str = "TRAFFIC";

/// Capacity of the traffic table: both directions of every counted interface.
pub const MAX_TRAFFIC_KEYS: u32 = MAX_COUNTED_INTERFACES * 2;

pub const TABLE: Table = Table::new::<TrafficKey, TrafficCounters>(NAME);

/// The table as aya's typed map, over owned or borrowed map data.
#[cfg(feature = "user")]
pub type AyaMap<T> = aya::maps::PerCpuHashMap<T, TrafficKey, TrafficCounters>;

/// The way a packet crossed an interface.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Key of the [`NAME`] map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrafficKey {
    pub ifindex: u32,
    /// A [`Direction`] as `u32`; kept raw so every bit pattern read from a map is a valid value.
    pub direction: u32,
}

impl TrafficKey {
    pub const fn new(ifindex: u32, direction: Direction) -> Self {
        Self {
            ifindex,
            direction: direction as u32,
        }
    }
}

/// Value of the [`NAME`] map (one per CPU; the agent sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    /// Bytes on the wire as TC sees them (`skb->len`, from the link-layer header on).
    pub bytes: u64,
}

impl TrafficCounters {
    pub fn add(&mut self, other: &TrafficCounters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

pod!(TrafficKey, TrafficCounters);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn traffic_types_have_no_padding() {
        assert_eq!(size_of::<TrafficKey>(), 8);
        assert_eq!(size_of::<TrafficCounters>(), 16);
    }

    #[test]
    fn counters_add_wraps_instead_of_panicking() {
        let mut total = TrafficCounters {
            packets: u64::MAX,
            bytes: 1,
        };
        total.add(&TrafficCounters {
            packets: 2,
            bytes: 2,
        });
        assert_eq!(
            total,
            TrafficCounters {
                packets: 1,
                bytes: 3
            }
        );
    }
}
