//! The BPF maps the kernel programs and the agent share: one module per table, holding its name,
//! its key and value types, its capacity, its [`Table`] shape and, with feature `user`, the aya
//! map type the agent opens it as (`AyaMap`; the event ring and the stage table have none, having
//! neither keys nor values of ftpnat's types).
//!
//! All keys and values are `#[repr(C)]` with fields ordered so that there is no implicit padding:
//! the kernel hashes and compares keys byte by byte, and the agent reads values from another
//! process.

/// Implements `aya::Pod` (feature `user`) for map types that are `#[repr(C)]`, `Copy`, and made
/// only of integers and byte arrays with no implicit padding (each module's tests assert their
/// sizes), so that every bit pattern is a valid value.
macro_rules! pod {
    ($($type:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the callers list only types as the macro's documentation requires.
            unsafe impl aya::Pod for $type {}
        )+
    };
}

pub mod config;
pub mod counters;
pub mod events;
pub mod expects;
pub mod flows;
pub mod free_ports;
pub mod interfaces;
pub mod ip;
pub mod masquerade;
pub mod publish;
pub mod reasons;
pub mod released;
pub mod sessions;
pub mod sources;
pub mod stage;

pub use config::{DatapathConfig, MAX_FTP_PORTS, WELL_KNOWN_NAT64_PREFIX, nat64_flags};
pub use counters::Counter;
pub use events::{
    EVENT_TEXT_LEN, EVENTS_BYTES, EVENTS_POLL_INTERVAL_MS, EVENTS_WAKEUP_BYTES, Event, EventBudget,
    EventKind, SESSION_EVENT_BURST, SESSION_EVENTS_PER_SEC,
};
pub use expects::{ExpectKey, Expectation, ExpectationKind, ExpectationPath, MAX_EXPECTATIONS};
pub use flows::{FlowDirection, FlowEntry, FlowKey, FlowKind, MAX_FLOWS, flow_flags};
pub use free_ports::MAX_WINDOW_PORTS;
pub use interfaces::{IFNAME_LEN, InterfaceInfo, InterfaceRole, MAX_COUNTED_INTERFACES};
pub use ip::IpBytes;
pub use masquerade::MAX_MASQUERADE_PREFIXES;
pub use publish::{MAX_PUBLISHED, PublishTarget};
pub use reasons::{REASON_SLOTS, malformed_slot, refusal_slot};
pub use sessions::{
    HELD_FIELD_MAX, HeldField, MAX_SESSIONS, RewriteRecord, SESSION_USER_LEN, SessionEntry,
    SessionKind, hold_state, rewrite_kind,
};
pub use sources::{SourceKey, SourceLimits, SourceScope, SourceSeen};

/// The capacities of the tables that grow with the number of sessions, all derived from one
/// setting (`--max-sessions`), so that no table fills before the session table does in ordinary
/// use: a full session table refuses new control connections cleanly (counted), whereas a flow
/// table full before it would refuse data connections of sessions already admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    /// Sessions (`SESSIONS`, and `RELEASED`, which holds at most one record per session).
    pub sessions: u32,
    /// Flow entries (`FLOWS`): [`Capacities::FLOWS_PER_SESSION`] per session.
    pub flows: u32,
    /// Expectations (`EXPECTS`): [`Capacities::EXPECTATIONS_PER_SESSION`] per session.
    pub expectations: u32,
    /// Per-source counts (`SOURCE_SEEN`, `SOURCE_OPENED`): a host and a network per session, and at
    /// least [`Capacities::MIN_SOURCES`].
    pub sources: u32,
}

impl Capacities {
    /// Two entries for the control connection and two for each of three data connections open at
    /// once (a transfer, plus a listing or a transfer starting while the previous one drains).
    pub const FLOWS_PER_SESSION: u32 = 8;
    /// The default `--max-expectations-per-session`: a session at its limit fits.
    pub const EXPECTATIONS_PER_SESSION: u32 = 4;
    /// The sizing of a home or office router: a few thousand sessions, a few MiB of kernel
    /// memory (the session record is the largest value), and as many sessions as the default
    /// port window (4096 ports) has ports for masqueraded control connections.
    pub const DEFAULT_SESSIONS: u32 = 4096;
    /// The largest `--max-sessions`: 128k sessions, whose flow table holds 2^20 (a million)
    /// connection directions; their maps, preallocated, take about 316 MiB of kernel memory.
    pub const MAX_SESSIONS: u32 = 131_072;
    pub const DEFAULT: Self = Self::for_sessions(Self::DEFAULT_SESSIONS);
    /// The per-source tables' floor: the kernel's LRU table keeps free entries per CPU and may
    /// evict before it is full, which a tiny one (a test's `--max-sessions 1`) would do at once.
    pub const MIN_SOURCES: u32 = 256;

    /// The tables sized for `sessions` sessions.
    pub const fn for_sessions(sessions: u32) -> Self {
        Self {
            sessions,
            flows: sessions.saturating_mul(Self::FLOWS_PER_SESSION),
            expectations: sessions.saturating_mul(Self::EXPECTATIONS_PER_SESSION),
            sources: {
                let sources = sessions.saturating_mul(sources::SCOPES.len() as u32);
                if sources < Self::MIN_SOURCES {
                    Self::MIN_SOURCES
                } else {
                    sources
                }
            },
        }
    }

    /// The capacity this sizing gives the pinned table `name`; None for a table of fixed size.
    pub fn of_table(&self, name: &str) -> Option<u32> {
        match name {
            sessions::NAME | released::NAME => Some(self.sessions),
            flows::NAME => Some(self.flows),
            expects::NAME => Some(self.expectations),
            sources::SEEN_NAME | sources::OPENED_NAME => Some(self.sources),
            _ => None,
        }
    }
}

/// The shape of a pinned table: its name and the sizes of its key and value, which the agent
/// compares with a pin's before it reuses it (maps of another build under the same layout
/// version would be misread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// The map's name in the eBPF object, and its pin's in the state directory.
    pub name: &'static str,
    pub key_size: usize,
    /// For a per-CPU map, one CPU's value.
    pub value_size: usize,
}

impl Table {
    /// The table `name` with keys of type `K` and values of type `V`.
    pub const fn new<K, V>(name: &'static str) -> Self {
        Self {
            name,
            key_size: core::mem::size_of::<K>(),
            value_size: core::mem::size_of::<V>(),
        }
    }
}

/// The tables the agent pins by name, which the inspection commands open and the pin-dir check
/// compares. (The event ring belongs to one agent; the stage table is pinned apart, once filled.)
pub const PINNED: [Table; 13] = [
    sessions::TABLE,
    expects::TABLE,
    interfaces::TABLE,
    config::TABLE,
    masquerade::TABLE,
    flows::TABLE,
    free_ports::TABLE,
    counters::TABLE,
    publish::TABLE,
    reasons::TABLE,
    released::TABLE,
    sources::SEEN_TABLE,
    sources::OPENED_TABLE,
];

/// Map names, as the agent looks them up in the object and pins them.
pub mod names {
    pub use super::{
        config::NAME as CONFIG, counters::NAME as COUNTERS, events::NAME as EVENTS,
        expects::NAME as EXPECTS, flows::NAME as FLOWS, free_ports::NAME as FREE_PORTS,
        interfaces::NAME as INTERFACES, masquerade::NAME as MASQUERADE, publish::NAME as PUBLISH,
        reasons::NAME as REASONS, released::NAME as RELEASED, sessions::NAME as SESSIONS,
        sources::OPENED_NAME as SOURCE_OPENED, sources::SEEN_NAME as SOURCE_SEEN,
        stage::NAME as STAGES,
    };
}

/// Program names in the eBPF object.
pub mod programs {
    /// TC classifier attached at the ingress of every router interface ftpnat manages.
    pub const INGRESS: &str = "ftpnat_ingress";
    /// The classifier ftpnat attached at the egress of each interface before issue 13 (it only
    /// counted packets, which the interfaces' own statistics do): recognised, never attached, so
    /// that a datapath an older ftpnat left behind is still found and can be detached.
    pub const LEGACY_EGRESS: &str = "ftpnat_egress";
    pub use super::stage::PROGRAMS as STAGES;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_grow_with_the_sessions() {
        let tiny = Capacities::for_sessions(2);
        assert_eq!(
            (tiny.sessions, tiny.flows, tiny.expectations),
            (2, 16, 8),
            "a session's control connection and three data connections, four expectations"
        );
        assert_eq!(tiny.of_table(sessions::NAME), Some(2));
        assert_eq!(tiny.of_table(released::NAME), Some(2));
        assert_eq!(tiny.of_table(flows::NAME), Some(16));
        assert_eq!(tiny.of_table(expects::NAME), Some(8));
        assert_eq!(tiny.of_table(sources::SEEN_NAME), Some(256));
        assert_eq!(tiny.of_table(sources::OPENED_NAME), Some(256));
        assert_eq!(
            Capacities::DEFAULT.sources,
            8192,
            "a host and a /24 per session"
        );
        assert_eq!(tiny.of_table(free_ports::NAME), None);
        assert_eq!(
            Capacities::for_sessions(Capacities::MAX_SESSIONS).flows,
            1 << 20,
            "the largest sizing holds a million connection directions"
        );
        assert_eq!(MAX_SESSIONS, Capacities::DEFAULT.sessions);
        assert_eq!(MAX_FLOWS, Capacities::DEFAULT.flows);
        assert_eq!(MAX_EXPECTATIONS, Capacities::DEFAULT.expectations);
    }

    #[test]
    fn pinned_tables_have_distinct_names() {
        for (i, table) in PINNED.iter().enumerate() {
            assert!(
                PINNED[i + 1..].iter().all(|other| other.name != table.name),
                "{} is listed twice",
                table.name
            );
        }
    }
}
