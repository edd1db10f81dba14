//! The publish table: the servers behind the router that are published on public ports.

use super::{IpBytes, Table};

/// Published servers: public port (`u16`, host byte order) to [`PublishTarget`].
pub const NAME: &str = "PUBLISH";

/// How many servers one agent can publish.
pub const MAX_PUBLISHED: u32 = 64;

pub const TABLE: Table = Table::new::<u16, PublishTarget>(NAME);

/// The table as aya's typed map, over owned or borrowed map data.
#[cfg(feature = "user")]
pub type AyaMap<T> = aya::maps::HashMap<T, u16, PublishTarget>;

/// The ports a published server's 227/229 may announce unless `--publish` says otherwise: the
/// unprivileged ones (never its control port either).
pub const DEFAULT_PASSIVE_PORTS: [u16; 2] = [1024, u16::MAX];

/// Where a published server is reached: the value of the [`NAME`] map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishTarget {
    /// The server's own address and control port (network byte order).
    pub server_addr: IpBytes,
    pub server_port: [u8; 2],
    pub _pad: [u8; 2],
    /// The interface the server is reached by.
    pub lan_ifindex: u32,
    /// The lowest and highest port its 227/229 may announce (host byte order); its control port
    /// never.
    pub passive_ports: [u16; 2],
}

pod!(PublishTarget);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_target_has_no_padding() {
        assert_eq!(core::mem::size_of::<PublishTarget>(), 28);
    }
}
