//! The flow table: translated connections, one entry per direction.

use super::{IpBytes, Table};

/// Translated connections, one entry per direction: [`FlowKey`] to [`FlowEntry`].
pub const NAME: &str = "FLOWS";

/// Capacity of the flow table (entries; each connection takes two) as the object declares it: the
/// default sizing's (see [`Capacities`](super::Capacities)).
pub const MAX_FLOWS: u32 = super::Capacities::DEFAULT.flows;

pub const TABLE: Table = Table::new::<FlowKey, FlowEntry>(NAME);

/// The table as aya's typed map, over owned or borrowed map data.
#[cfg(feature = "user")]
pub type AyaMap<T> = aya::maps::HashMap<T, FlowKey, FlowEntry>;

/// A TCP connection as seen in one direction, with addresses and ports as they appear in the
/// headers (network byte order; an IPv4 address mapped, see [`ip`](super::ip)). Byte arrays keep
/// the key free of padding and alignment.
// Aligned to 4 bytes: copies of its addresses then move words, not bytes, in the kernel
// program (the BPF target has no unaligned access), which also keeps them off its stack.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub saddr: IpBytes,
    pub daddr: IpBytes,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

impl FlowKey {
    /// The same connection seen from the other side.
    pub const fn reversed(&self) -> Self {
        Self {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// What kind of connection a flow entry belongs to.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowKind {
    /// An FTP control connection from a masqueraded client.
    Control = 0,
    /// A data connection opened through an expectation.
    Data = 1,
}

impl FlowKind {
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(FlowKind::Control),
            1 => Some(FlowKind::Data),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            FlowKind::Control => "control",
            FlowKind::Data => "data",
        }
    }
}

/// Which side of its connection a flow entry translates.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowDirection {
    /// From the side that opened the connection.
    Original = 0,
    /// The answers.
    Reply = 1,
}

/// [`FlowEntry::flags`] bits, set by the kernel as it sees them, read by the agent's expiry.
pub mod flow_flags {
    /// Whether a connection whose directions saw `original` and `reply` flags is over: a reset
    /// either way, or a FIN both ways.
    pub const fn closed(original: u8, reply: u8) -> bool {
        (original | reply) & RST != 0 || (original & FIN != 0 && reply & FIN != 0)
    }

    /// A FIN went this way.
    pub const FIN: u8 = 1;
    /// An RST went this way.
    pub const RST: u8 = 2;
    /// A packet other than the opening SYN went this way: on the reply entry, the connection got
    /// an answer; on both, its handshake completed (the agent's expiry tells the two apart).
    pub const ESTABLISHED: u8 = 4;
    /// This entry owns [`super::FlowEntry::public_port`]: the port returns to the window with it.
    pub const OWNS_PORT: u8 = 8;
}

/// The translation of one direction of a connection: the value of the [`NAME`] map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    pub packets: u64,
    /// IP bytes (header included) that went this way.
    pub bytes: u64,
    /// `bpf_ktime_get_ns` of the last packet (CLOCK_MONOTONIC).
    pub last_seen_ns: u64,
    /// The control connection (original direction key) this flow belongs to.
    pub session: FlowKey,
    /// Header values after translation (network byte order).
    pub new_saddr: IpBytes,
    pub new_daddr: IpBytes,
    /// Interface the translated packet leaves by.
    pub out_ifindex: u32,
    pub new_sport: [u8; 2],
    pub new_dport: [u8; 2],
    /// The window port this connection uses on the public side (host byte order).
    pub public_port: u16,
    /// A [`FlowKind`] as `u8`.
    pub kind: u8,
    /// A [`FlowDirection`] as `u8`.
    pub direction: u8,
    /// [`flow_flags`] bits.
    pub flags: u8,
    pub _pad: [u8; 3],
    /// The interface this direction's packets arrive on: a packet matching the entry elsewhere
    /// is not translated.
    pub in_ifindex: u32,
}

impl FlowEntry {
    /// The key under which the other direction of this translated connection arrives: the
    /// translated tuple, reversed. The only place a reply key is derived.
    pub const fn reply_key(&self) -> FlowKey {
        FlowKey {
            saddr: self.new_daddr,
            daddr: self.new_saddr,
            sport: self.new_dport,
            dport: self.new_sport,
        }
    }

    /// The entry of the other direction of this translation, which `key` (this entry's own key)
    /// opened: its packets arrive where this entry's leave, get `key`'s tuple back, reversed, and
    /// leave by `out_ifindex` (where this entry's arrive). It owns no
    /// port (this direction returns the window port, if any, when the connection ends).
    pub const fn reply_of(&self, key: &FlowKey, out_ifindex: u32) -> Self {
        Self {
            new_saddr: key.daddr,
            new_daddr: key.saddr,
            new_sport: key.dport,
            new_dport: key.sport,
            in_ifindex: self.out_ifindex,
            out_ifindex,
            direction: FlowDirection::Reply as u8,
            flags: 0,
            ..*self
        }
    }
}

#[cfg(feature = "user")]
impl FlowEntry {
    /// The two entries (original and reply, each with its key) of an established connection
    /// `key` of `kind` that translates nothing and arrives by no interface, last seen at
    /// `last_seen_ns` (original's, reply's): what the bench and the lab write straight into the
    /// table, to give the agent's sweep connections to judge that no packet ever matches.
    pub fn established_untranslated(
        key: FlowKey,
        kind: FlowKind,
        (original_seen, reply_seen): (u64, u64),
    ) -> [(FlowKey, FlowEntry); 2] {
        let original = FlowEntry {
            packets: 1,
            bytes: 60,
            last_seen_ns: original_seen,
            session: key,
            new_saddr: key.saddr,
            new_daddr: key.daddr,
            out_ifindex: 0,
            new_sport: key.sport,
            new_dport: key.dport,
            public_port: 0,
            kind: kind as u8,
            direction: FlowDirection::Original as u8,
            flags: flow_flags::ESTABLISHED,
            _pad: [0; 3],
            in_ifindex: 0,
        };
        let reply = FlowEntry {
            // Answered: the sweep judges the connection by its idle timeout.
            flags: flow_flags::ESTABLISHED,
            last_seen_ns: reply_seen,
            ..original.reply_of(&key, 0)
        };
        [(key, original), (original.reply_key(), reply)]
    }
}

pod!(FlowKey, FlowEntry);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::ip::v4_mapped;
    use core::mem::size_of;

    /// A masqueraded client's control connection, 10.0.0.2:40000 -> 203.0.113.10:21.
    const CLIENT_TO_SERVER: FlowKey = FlowKey {
        saddr: v4_mapped([10, 0, 0, 2]),
        daddr: v4_mapped([203, 0, 113, 10]),
        sport: 40000u16.to_be_bytes(),
        dport: 21u16.to_be_bytes(),
    };

    /// The tuple a packet with `key` carries after `entry`'s translation.
    fn translated(entry: &FlowEntry) -> FlowKey {
        FlowKey {
            saddr: entry.new_saddr,
            daddr: entry.new_daddr,
            sport: entry.new_sport,
            dport: entry.new_dport,
        }
    }

    #[test]
    fn flow_types_have_no_padding() {
        assert_eq!(size_of::<FlowKey>(), 36);
        assert_eq!(size_of::<FlowEntry>(), 24 + 36 + 32 + 4 + 6 + 3 + 3 + 4);
        assert_eq!(size_of::<FlowEntry>() % 8, 0);
    }

    #[test]
    fn a_reply_comes_back_to_the_connections_own_tuple() {
        // The client's connection leaves behind 198.51.100.1:61000.
        let key = CLIENT_TO_SERVER;
        let original = FlowEntry {
            packets: 0,
            bytes: 0,
            last_seen_ns: 7,
            session: key,
            new_saddr: v4_mapped([198, 51, 100, 1]),
            new_daddr: key.daddr,
            out_ifindex: 2,
            new_sport: 61000u16.to_be_bytes(),
            new_dport: key.dport,
            public_port: 61000,
            kind: FlowKind::Control as u8,
            direction: FlowDirection::Original as u8,
            flags: flow_flags::OWNS_PORT,
            _pad: [0; 3],
            in_ifindex: 3,
        };
        let reply_key = original.reply_key();
        assert_eq!(reply_key, translated(&original).reversed());
        assert_eq!(
            reply_key,
            FlowKey {
                saddr: v4_mapped([203, 0, 113, 10]),
                daddr: v4_mapped([198, 51, 100, 1]),
                sport: 21u16.to_be_bytes(),
                dport: 61000u16.to_be_bytes(),
            }
        );
        let reply = original.reply_of(&key, 3);
        // The server's answer, translated, is the client's own connection seen from the server.
        assert_eq!(translated(&reply), key.reversed());
        assert_eq!(reply.reply_key(), key);
        assert_eq!((reply.in_ifindex, reply.out_ifindex), (2, 3));
        assert_eq!(reply.direction, FlowDirection::Reply as u8);
        assert_eq!(
            reply.flags, 0,
            "only the original direction gives its port back"
        );
        assert_eq!(
            (reply.session, reply.public_port, reply.kind),
            (key, 61000, original.kind)
        );
    }

    #[test]
    fn flow_key_reversal_swaps_ends_and_is_an_involution() {
        let key = CLIENT_TO_SERVER;
        let back = key.reversed();
        assert_eq!(back.saddr, key.daddr);
        assert_eq!(back.daddr, key.saddr);
        assert_eq!(back.sport, key.dport);
        assert_eq!(back.dport, key.sport);
        assert_eq!(back.reversed(), key);
    }
}
