//! Keys and values of the BPF maps the kernel programs and the agent share.
//!
//! All are `#[repr(C)]` with fields ordered so that there is no implicit padding: the kernel hashes
//! and compares keys byte by byte, and the agent reads values from another process.

/// Map names, as the agent looks them up in the object and pins them.
pub mod names {
    /// Per-CPU packet/byte counters by interface and direction.
    pub const TRAFFIC: &str = "TRAFFIC";
    /// Interfaces the agent attached to: ifindex to name and role, written by the agent.
    pub const INTERFACES: &str = "INTERFACES";
}

/// Program names in the eBPF object.
pub mod programs {
    /// TC classifier attached at the ingress of every router interface ftpnat manages.
    pub const INGRESS: &str = "ftpnat_ingress";
    /// TC classifier attached at the egress of every router interface ftpnat manages.
    pub const EGRESS: &str = "ftpnat_egress";
}

/// Maximum number of (interface, direction) pairs the counter map holds.
pub const MAX_COUNTED_INTERFACES: u32 = 64;

/// The way a packet crossed an interface.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Key of the [`names::TRAFFIC`] map.
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

/// Value of the [`names::TRAFFIC`] map (one per CPU; the agent sums them).
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

/// What an attached interface is for.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterfaceRole {
    /// Faces the FTP servers and the public address.
    Wan = 0,
    /// Faces the FTP clients (masqueraded prefixes).
    Lan = 1,
}

impl InterfaceRole {
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(InterfaceRole::Wan),
            1 => Some(InterfaceRole::Lan),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            InterfaceRole::Wan => "wan",
            InterfaceRole::Lan => "lan",
        }
    }
}

/// Linux's `IFNAMSIZ`, including the terminating NUL.
pub const IFNAME_LEN: usize = 16;

/// Value of the [`names::INTERFACES`] map, keyed by ifindex (`u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// NUL-padded interface name as the agent saw it when it attached.
    pub name: [u8; IFNAME_LEN],
    /// An [`InterfaceRole`] as `u32`.
    pub role: u32,
}

impl InterfaceInfo {
    /// Builds the record; `None` if the name does not fit `IFNAMSIZ`.
    pub fn new(name: &str, role: InterfaceRole) -> Option<Self> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= IFNAME_LEN {
            return None;
        }
        let mut buf = [0u8; IFNAME_LEN];
        buf[..bytes.len()].copy_from_slice(bytes);
        Some(Self {
            name: buf,
            role: role as u32,
        })
    }

    /// The name up to its first NUL; `None` if it is not UTF-8.
    pub fn name(&self) -> Option<&str> {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(IFNAME_LEN);
        core::str::from_utf8(&self.name[..end]).ok()
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and byte arrays with no
    // implicit padding, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::TrafficKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TrafficCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InterfaceInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn map_types_have_no_padding() {
        assert_eq!(size_of::<TrafficKey>(), 8);
        assert_eq!(size_of::<TrafficCounters>(), 16);
        assert_eq!(size_of::<InterfaceInfo>(), IFNAME_LEN + 4);
    }

    #[test]
    fn interface_info_round_trips_names() {
        let info = InterfaceInfo::new("wan0", InterfaceRole::Wan).unwrap();
        assert_eq!(info.name(), Some("wan0"));
        assert_eq!(InterfaceRole::from_raw(info.role), Some(InterfaceRole::Wan));
        assert!(InterfaceInfo::new("", InterfaceRole::Lan).is_none());
        assert!(InterfaceInfo::new("sixteen-chars-xx", InterfaceRole::Lan).is_none());
        assert_eq!(
            InterfaceInfo::new("fifteen-chars-x", InterfaceRole::Lan)
                .unwrap()
                .name(),
            Some("fifteen-chars-x")
        );
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
