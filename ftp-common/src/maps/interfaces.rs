//! The interface table: the interfaces the agent attached to, by ifindex.

use super::Table;

/// Interfaces the agent attached to: ifindex (`u32`) to [`InterfaceInfo`], written by the agent.
pub const NAME: &str = "INTERFACES";

/// Maximum number of interfaces the interface table holds, and the traffic table counts.
pub const MAX_COUNTED_INTERFACES: u32 = 64;

pub const TABLE: Table = Table::new::<u32, InterfaceInfo>(NAME);

/// The table as aya's typed map, over owned or borrowed map data.
#[cfg(feature = "user")]
pub type AyaMap<T> = aya::maps::HashMap<T, u32, InterfaceInfo>;

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

/// Value of the [`NAME`] map, keyed by ifindex (`u32`).
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

pod!(InterfaceInfo);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn interface_info_has_no_padding() {
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
}
