//! The pinned counters and tables of a running agent, summed: what `ftpnat stats` prints and the
//! agent's metrics expose, read the same way for both.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use ftp_common::maps::{
    Counter, DatapathConfig, ExpectKey, Expectation, ExpectationPath, FlowDirection, FlowEntry,
    FlowKey, FlowKind, InterfaceRole, SessionEntry, SessionKind, config::nat64_flags, expects,
    flow_flags, flows, ip, sessions,
};
use ftp_common::{
    MalformedReason, RefusalReason,
    maps::{malformed_slot, refusal_slot},
};
use serde::Serialize;

use crate::datapath::maps::{PinnedMaps, summed};
use crate::report::sessions::{SessionState, closing_sessions};

#[derive(Serialize, Debug, Default)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

impl Counters {
    fn add(&mut self, other: &Counters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

/// The way packets crossed an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// An interface's received (ingress) and sent (egress) packets and bytes, from the kernel's own
/// statistics as `/proc/thread-self/net/dev` gives them for the network namespace this thread is
/// in (`/sys/class/net` would show the one sysfs was mounted in). ftpnat's programs do not count
/// them again: a count per packet would cost every packet on the interface, FTP or not. Zeros if
/// the interface is gone, or if its name now belongs to another interface.
fn interface_counters(name: &str, ifindex: u32) -> (Counters, Counters) {
    let zero = (Counters::default(), Counters::default());
    let Ok(c_name) = std::ffi::CString::new(name) else {
        return zero;
    };
    // SAFETY: a NUL-terminated name; the call reads it only.
    if unsafe { libc::if_nametoindex(c_name.as_ptr()) } != ifindex {
        return zero;
    }
    std::fs::read_to_string("/proc/thread-self/net/dev")
        .ok()
        .and_then(|table| net_dev_counters(&table, name))
        .unwrap_or(zero)
}

/// One interface's row of a `/proc/net/dev` table: received bytes and packets are its first two
/// numbers, sent bytes and packets its ninth and tenth.
fn net_dev_counters(table: &str, name: &str) -> Option<(Counters, Counters)> {
    let row = table.lines().find_map(|line| {
        let (row_name, numbers) = line.split_once(':')?;
        (row_name.trim() == name).then_some(numbers)
    })?;
    let numbers: Vec<u64> = row
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let at = |i: usize| numbers.get(i).copied();
    Some((
        Counters {
            bytes: at(0)?,
            packets: at(1)?,
        },
        Counters {
            bytes: at(8)?,
            packets: at(9)?,
        },
    ))
}

#[derive(Serialize, Debug)]
pub struct InterfaceStats {
    pub name: String,
    pub ifindex: u32,
    pub role: String,
    pub ingress: Counters,
    pub egress: Counters,
}

/// The port window: how many public ports ftpnat hands out and how many are taken.
#[derive(Serialize, Debug)]
pub struct WindowStats {
    pub range: String,
    pub size: u32,
    pub in_use: u32,
    /// Times a connection or PORT/EPRT found no free port.
    pub exhausted: u64,
}

/// How much each table that grows with the sessions can hold (`--max-sessions` sizes them); the
/// use is `Stats`' field of the same name.
#[derive(Serialize, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    pub sessions: u32,
    /// Connections (two flow entries each), as `Stats::flows` counts them.
    pub flows: u32,
    pub expectations: u32,
}

/// What the datapath translates, as the agent configured it.
#[derive(Serialize, Debug, Default, PartialEq, Eq)]
pub struct NatStats {
    /// The address masqueraded IPv4 connections leave with (`--public-ip`); null on a router
    /// whose LANs have IPv6 only.
    pub public_ip: Option<String>,
    /// The IPv4 source prefixes masqueraded behind it (`--masquerade`).
    pub masquerade: Vec<String>,
    /// The address NAT66 and IPv6 published servers use (`--public-ip6`); null when there is
    /// none, and IPv6 FTP is followed untranslated.
    pub public_ip6: Option<String>,
    /// The IPv6 source prefixes masqueraded behind it (`--masquerade6`).
    pub masquerade6: Vec<String>,
    /// NAT64 (`--nat64`); null when off.
    pub nat64: Option<Nat64Stats>,
}

/// NAT64 as the datapath is configured: IPv6 clients reach `a.b.c.d` at `prefix::a.b.c.d`, and
/// their sessions leave from `pool`.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Nat64Stats {
    /// The /96 prefix, `64:ff9b::/96`.
    pub prefix: String,
    /// The IPv4 address NAT64 sessions leave from.
    pub pool: String,
    /// What a client's EPSV becomes: `translate` (PASV to the server, its 227 returned as a 229)
    /// or `pass`.
    pub epsv: &'static str,
}

impl Nat64Stats {
    /// NAT64's settings in `config`, `None` when off.
    pub fn of(config: &DatapathConfig) -> Option<Self> {
        if config.nat64_flags & nat64_flags::ENABLED == 0 {
            return None;
        }
        Some(Self {
            prefix: format!(
                "{}/96",
                std::net::Ipv6Addr::from(config.nat64_prefix.octets())
            ),
            pool: ip::to_ip(&config.nat64_pool).to_string(),
            epsv: if config.nat64_flags & nat64_flags::EPSV_AS_PASV != 0 {
                "translate"
            } else {
                "pass"
            },
        })
    }
}

/// `64:ff9b::/96 from 198.51.100.7, EPSV translate`.
impl std::fmt::Display for Nat64Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} from {}, EPSV {}", self.prefix, self.pool, self.epsv)
    }
}

#[derive(Serialize, Debug)]
pub struct Stats {
    pub interfaces: Vec<InterfaceStats>,
    pub nat: NatStats,
    pub total: Counters,
    pub window: WindowStats,
    /// What the datapath did, by event (see `Counter` in ftp-common).
    pub datapath: BTreeMap<&'static str, u64>,
    /// PORT/EPRT/227/229 the policy refused, by reason (every reason, zeros included).
    pub refusals_by_reason: BTreeMap<&'static str, u64>,
    /// Control lines that could not be parsed, by reason (every reason, zeros included).
    pub malformed_by_reason: BTreeMap<&'static str, u64>,
    pub sessions: usize,
    pub flows: usize,
    pub expectations: usize,
    /// What `sessions`, `flows` and `expectations` may reach.
    pub capacity: Capacity,
    /// Sessions by kind and state, every known pair present (zeros included), for the metrics'
    /// labels. Left out of the JSON, whose shape scripts depend on: `ftpnat sessions --json` has
    /// both per session.
    #[serde(skip)]
    pub sessions_by: BTreeMap<(&'static str, &'static str), usize>,
    /// Connections by kind, every known kind present; left out of the JSON like `sessions_by`
    /// (`ftpnat flows --json` has the kind per connection).
    #[serde(skip)]
    pub flows_by: BTreeMap<&'static str, usize>,
}

pub fn collect(pin_dir: &Path) -> anyhow::Result<Stats> {
    let maps = PinnedMaps::new(pin_dir);
    let interfaces = maps.interfaces()?;

    let mut rows = Vec::new();
    let mut total = Counters::default();
    for entry in interfaces.iter() {
        let (ifindex, info) = entry.context("reading the interface table")?;
        let name = info.name().unwrap_or("?").to_owned();
        let (ingress, egress) = interface_counters(&name, ifindex);
        total.add(&ingress);
        total.add(&egress);
        rows.push(InterfaceStats {
            role: InterfaceRole::from_raw(info.role)
                .map_or("unknown", InterfaceRole::as_str)
                .to_owned(),
            name,
            ifindex,
            ingress,
            egress,
        });
    }
    rows.sort_by_key(|row| row.ifindex);
    let config = maps.config()?;
    let counters = maps.counters()?;
    let mut datapath = BTreeMap::new();
    for counter in Counter::ALL {
        datapath.insert(counter.as_str(), summed(&counters, counter as u32)?);
    }
    let reasons = maps.reasons()?;
    let reason_count = |slot: u32| summed(&reasons, slot);
    let mut refusals_by_reason = BTreeMap::new();
    for reason in RefusalReason::ALL {
        refusals_by_reason.insert(reason.as_str(), reason_count(refusal_slot(reason as u8))?);
    }
    let mut malformed_by_reason = BTreeMap::new();
    for reason in MalformedReason::ALL {
        malformed_by_reason.insert(reason.as_str(), reason_count(malformed_slot(reason as u8))?);
    }
    let (_, flow_entries): (Vec<FlowKey>, Vec<FlowEntry>) = maps.whole(&flows::TABLE)?;
    let (_, expectations): (Vec<ExpectKey>, Vec<Expectation>) = maps.whole(&expects::TABLE)?;
    let (session_keys, session_entries): (Vec<FlowKey>, Vec<SessionEntry>) =
        maps.whole(&sessions::TABLE)?;
    let closing = closing_sessions(&flow_entries);
    let sessions_by = sessions_by_kind_and_state(
        session_keys
            .iter()
            .zip(&session_entries)
            .map(|(key, entry)| (entry, closing.contains(key))),
    );
    // A connection is its original-direction entry, as `ftpnat flows` lists it: counting those
    // (rather than halving the entries) keeps the total equal to the sum by kind even if a read
    // catches a connection with one entry of its pair installed or removed.
    let mut flows_by: BTreeMap<_, usize> = [FlowKind::Control, FlowKind::Data]
        .into_iter()
        .map(|kind| (kind.as_str(), 0))
        .collect();
    for entry in flow_entries
        .iter()
        .filter(|e| e.direction == FlowDirection::Original as u8)
    {
        let kind = FlowKind::from_raw(entry.kind).map_or("unknown", FlowKind::as_str);
        *flows_by.entry(kind).or_default() += 1;
    }
    let in_use = flow_entries
        .iter()
        .filter(|f| f.flags & flow_flags::OWNS_PORT != 0)
        .count()
        + expectations
            .iter()
            .filter(|e| e.path == ExpectationPath::Inbound as u8 && e.public_port != 0)
            .count();
    let capacity = Capacity {
        sessions: maps.capacity(&sessions::TABLE)?,
        flows: maps.capacity(&flows::TABLE)? / 2,
        expectations: maps.capacity(&expects::TABLE)?,
    };
    let size = u32::from(config.window_hi).saturating_sub(u32::from(config.window_lo)) + 1;
    let (masquerade, masquerade6) = maps.masqueraded_prefixes()?;
    let nat = NatStats {
        public_ip: (config.public_ip != ip::UNSPECIFIED)
            .then(|| ip::to_ip(&config.public_ip).to_string()),
        masquerade,
        public_ip6: (config.public_ip6 != ip::UNSPECIFIED)
            .then(|| ip::to_ip(&config.public_ip6).to_string()),
        masquerade6,
        nat64: Nat64Stats::of(&config),
    };
    Ok(Stats {
        interfaces: rows,
        nat,
        total,
        window: WindowStats {
            range: format!("{}-{}", config.window_lo, config.window_hi),
            size,
            in_use: in_use as u32,
            exhausted: datapath
                .get(Counter::WindowExhausted.as_str())
                .copied()
                .unwrap_or(0),
        },
        datapath,
        refusals_by_reason,
        malformed_by_reason,
        sessions: sessions_by.values().sum(),
        flows: flows_by.values().sum(),
        expectations: expectations.len(),
        capacity,
        sessions_by,
        flows_by,
    })
}

/// The sessions (each with whether its control connection is closing) counted by kind and state,
/// every known pair present, zeros included: a metric's series should not appear only once a
/// session of its kind does.
fn sessions_by_kind_and_state<'a>(
    sessions: impl Iterator<Item = (&'a SessionEntry, bool)>,
) -> BTreeMap<(&'static str, &'static str), usize> {
    let mut counts: BTreeMap<_, usize> = BTreeMap::new();
    for kind in [
        SessionKind::Masquerade,
        SessionKind::Publish,
        SessionKind::Firewall,
        SessionKind::Nat64,
    ] {
        for state in SessionState::ALL {
            counts.insert((kind.as_str(), state.as_str()), 0);
        }
    }
    for (entry, closing) in sessions {
        let kind = SessionKind::from_raw(entry.kind).map_or("unknown", SessionKind::as_str);
        let state = SessionState::of(&entry.state, closing);
        *counts.entry((kind, state.as_str())).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_session_kind_has_its_counts_nat64_included() {
        let counts = sessions_by_kind_and_state(std::iter::empty());
        assert_eq!(counts.len(), 4 * SessionState::ALL.len());
        for kind in ["masquerade", "publish", "firewall", "nat64"] {
            for state in SessionState::ALL {
                assert_eq!(counts.get(&(kind, state.as_str())), Some(&0), "{kind}");
            }
        }
    }

    #[test]
    fn a_net_dev_row_gives_received_and_sent_counters() {
        let table = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
 lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n  \
 wan0: 5000000    4000    0    0    0     0          0         0  9000000    7000    0    0    0     0       0          0\n";
        let (ingress, egress) = net_dev_counters(table, "wan0").expect("wan0's row");
        assert_eq!((ingress.bytes, ingress.packets), (5_000_000, 4000));
        assert_eq!((egress.bytes, egress.packets), (9_000_000, 7000));
        assert!(net_dev_counters(table, "wan").is_none());
    }
}
