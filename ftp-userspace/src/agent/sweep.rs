//! Expiry of translated connections: the kernel marks what it sees (FIN, RST, answers, last
//! packet); the agent removes finished or idle connections and returns their ports to the window.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, Hash, Hasher},
    time::Duration,
};

use aya::maps::MapData;
use ftp_common::maps::{
    Event, EventKind, ExpectationPath, FlowDirection, FlowEntry, FlowKey, FlowKind, IpBytes,
    SourceKey, SourceSeen, flow_flags, sources,
};

use crate::datapath::maps::{StateTables, WholeTables};

/// How long a connection may stay in each state before it is removed.
#[derive(Debug, Clone, Copy)]
pub struct ExpiryPolicy {
    /// Both sides sent FIN, or one sent RST: kept this long after the last packet, for the last
    /// ACK. Short, because the window port returns only then (at once when the datapath reports
    /// the end, see `release`): a small window would be held by connections that are over. A
    /// retransmission later than this (a FIN sent again because the last ACK was lost) finds no
    /// entry and goes to the router's stack untranslated; conntrack keeps a closed connection for
    /// its TIME_WAIT (120 s) instead, and evicts it when a new connection needs its tuple.
    pub closed_linger: Duration,
    /// Handshake not completed: the opening SYN unanswered, or answered but never acknowledged
    /// by its sender. Short, so that spoofed SYNs (whose SYN-ACK goes to a host that never asked)
    /// cannot hold sessions, flows and window ports for the idle times below.
    pub handshake: Duration,
    /// Idle control connection (FTP servers drop idle sessions after minutes; NAT should outlast
    /// them), never while its session has a live data connection (`--control-idle`).
    pub control_idle: Duration,
    /// Idle data connection (`--data-idle`).
    pub data_idle: Duration,
}

impl Default for ExpiryPolicy {
    fn default() -> Self {
        Self {
            closed_linger: Duration::from_millis(250),
            // Longer than the 16 s a Linux client waits before its last SYN retransmission but
            // one (1+2+4+8+16 s), which refreshes the connection: a slow server still gets in.
            handshake: Duration::from_secs(20),
            control_idle: Duration::from_secs(900),
            data_idle: Duration::from_secs(300),
        }
    }
}

/// What one sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Flow entries the sweep read.
    pub flow_entries: usize,
    pub connections: usize,
    pub expectations: usize,
    pub sessions: usize,
    pub ports_returned: usize,
    /// What ended, as events: data connections closed (with their bytes), expectations expired,
    /// sessions closed.
    pub events: Vec<Event>,
}

/// The share of one CPU the sweep may take on average. Reading a table costs in proportion to its
/// entries: a sweep of a million flow entries takes tens of milliseconds or more, so a sweep
/// that took longer than this share of a tick waits that many ticks before the next one.
const SWEEP_CPU_SHARE: f64 = 0.02;

/// The most ticks between two sweeps, however long one took: a closed connection is removed at
/// the latest this long after its linger time, an unanswered SYN after the handshake time.
const MAX_SWEEP_GAP: u32 = 15;

/// When the sweep is due: every tick while it is cheap (tables of ordinary size), less often as
/// its cost grows (see [`SWEEP_CPU_SHARE`]).
#[derive(Debug, Default)]
pub struct Pacing {
    /// Ticks to let pass before the next sweep.
    wait: u32,
}

impl Pacing {
    /// Runs `sweep` if it is due at this tick (nothing swept otherwise), timing it on this
    /// thread's CPU clock (the system calls included) to space the next one.
    pub fn run(
        &mut self,
        tick: Duration,
        sweep: impl FnOnce() -> anyhow::Result<Swept>,
    ) -> anyhow::Result<Swept> {
        if self.wait > 0 {
            self.wait -= 1;
            return Ok(Swept::default());
        }
        let started = thread_cpu_time();
        let swept = sweep()?;
        self.wait = ticks_to_wait(thread_cpu_time().saturating_sub(started), tick);
        Ok(swept)
    }
}

/// The ticks to let pass after a sweep that took `spent` of CPU time, so that sweeping takes
/// [`SWEEP_CPU_SHARE`] of a CPU at most, and never more than [`MAX_SWEEP_GAP`].
fn ticks_to_wait(spent: Duration, tick: Duration) -> u32 {
    let ticks_per_sweep = spent.as_secs_f64() / (SWEEP_CPU_SHARE * tick.as_secs_f64());
    (ticks_per_sweep.ceil() as u32)
        .saturating_sub(1)
        .min(MAX_SWEEP_GAP)
}

/// This thread's CPU time (CLOCK_THREAD_CPUTIME_ID): user and system.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// An event the agent reports about what it swept.
pub(super) fn swept_event(
    kind: EventKind,
    session: FlowKey,
    detail: u8,
    endpoint: (IpBytes, [u8; 2]),
    value: u64,
    now_ns: u64,
) -> Event {
    Event {
        value,
        ..Event::new(
            now_ns,
            session,
            kind,
            detail,
            (endpoint.0, u16::from_be_bytes(endpoint.1)),
        )
    }
}

/// Whether a connection (its two directions) is over at `now_ns` (CLOCK_MONOTONIC).
pub fn expired(
    original: &FlowEntry,
    reply: Option<&FlowEntry>,
    now_ns: u64,
    policy: &ExpiryPolicy,
) -> bool {
    let reply_flags = reply.map_or(0, |r| r.flags);
    let last_seen = reply.map_or(original.last_seen_ns, |r| {
        r.last_seen_ns.max(original.last_seen_ns)
    });
    let idle = Duration::from_nanos(now_ns.saturating_sub(last_seen));
    if closed(original, reply) {
        return idle >= policy.closed_linger;
    }
    // Established once the handshake completed: the answer came back (the reply side sent its
    // SYN-ACK) and the opening side sent more than its SYN (the handshake's last ACK). Netfilter
    // also checks that ACK's number; ftpnat does not, so a blind spoofer that sends the ACK too
    // gets the idle times.
    if original.flags & reply_flags & flow_flags::ESTABLISHED == 0 {
        return idle >= policy.handshake;
    }
    match FlowKind::from_raw(original.kind) {
        Some(FlowKind::Control) => idle >= policy.control_idle,
        _ => idle >= policy.data_idle,
    }
}

/// Whether a connection saw an RST, or a FIN each way.
fn closed(original: &FlowEntry, reply: Option<&FlowEntry>) -> bool {
    flow_flags::closed(original.flags, reply.map_or(0, |r| r.flags))
}

/// The flow table as one sweep read it, indexed by key.
struct FlowSnapshot {
    keys: Vec<FlowKey>,
    entries: Vec<FlowEntry>,
    /// Each key's place in `keys` and `entries`.
    index: HashMap<PackedKey, usize, KeyHashing>,
}

impl FlowSnapshot {
    fn new(keys: Vec<FlowKey>, entries: Vec<FlowEntry>) -> Self {
        let mut index = HashMap::with_capacity_and_hasher(keys.len(), KeyHashing::new());
        index.extend(keys.iter().enumerate().map(|(n, key)| (packed(key), n)));
        Self {
            keys,
            entries,
            index,
        }
    }

    fn get(&self, key: &FlowKey) -> Option<&FlowEntry> {
        self.entries.get(*self.index.get(&packed(key))?)
    }

    fn contains(&self, key: &FlowKey) -> bool {
        self.index.contains_key(&packed(key))
    }

    /// Every connection: its original direction's key and entry, and its reply direction's.
    fn connections(&self) -> impl Iterator<Item = (&FlowKey, &FlowEntry, Option<&FlowEntry>)> {
        self.keys
            .iter()
            .zip(&self.entries)
            .filter(|(_, entry)| entry.direction == FlowDirection::Original as u8)
            .map(|(key, entry)| (key, entry, self.get(&entry.reply_key())))
    }
}

/// A flow key as five words, for the snapshot's index: hashed in five steps of [`KeyHasher`],
/// where the key's derived `Hash` would take ten (one more per field, for its length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PackedKey([u64; 5]);

impl Hash for PackedKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for word in self.0 {
            state.write_u64(word);
        }
    }
}

fn packed(key: &FlowKey) -> PackedKey {
    let mut bytes = [0u8; 40];
    bytes[..16].copy_from_slice(&key.saddr.octets());
    bytes[16..32].copy_from_slice(&key.daddr.octets());
    bytes[32..34].copy_from_slice(&key.sport);
    bytes[34..36].copy_from_slice(&key.dport);
    let mut words = [0u64; 5];
    for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(chunk);
        *word = u64::from_le_bytes(eight);
    }
    PackedKey(words)
}

/// The snapshot index's hash: a folded multiplication by a seed drawn for each sweep, so that
/// whoever picks the ports and addresses of connections cannot aim them at one bucket. std's
/// SipHash took most of the time of a sweep of a million entries.
#[derive(Clone, Copy)]
struct KeyHashing {
    seed: u64,
}

impl KeyHashing {
    fn new() -> Self {
        Self {
            seed: std::collections::hash_map::RandomState::new().hash_one(0u8) | 1,
        }
    }
}

impl BuildHasher for KeyHashing {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            seed: self.seed,
            hash: 0,
        }
    }
}

struct KeyHasher {
    seed: u64,
    hash: u64,
}

impl KeyHasher {
    fn mix(&mut self, word: u64) {
        let product = u128::from(self.hash ^ word) * u128::from(self.seed);
        self.hash = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.mix(value);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// Whether a connection [`expired`] says is over stays all the same: a control connection that
/// is only idle, while a transfer of its session runs (`transferring`: the sessions with a live
/// data connection). A long download keeps its control connection silent until its `226`, which
/// would otherwise find the session gone; Linux's conntrack keeps an established connection for
/// days, so it never meets this.
fn kept_for_transfer(
    original: &FlowEntry,
    reply: Option<&FlowEntry>,
    transferring: &HashSet<FlowKey>,
) -> bool {
    original.kind == FlowKind::Control as u8
        && !closed(original, reply)
        && transferring.contains(&original.session)
}

/// Removes every expired connection, expectation and ended session, and gives their ports back to
/// the window.
pub fn sweep(
    tables: &mut StateTables<'_>,
    now_ns: u64,
    policy: &ExpiryPolicy,
) -> anyhow::Result<Swept> {
    let StateTables {
        flows,
        free_ports,
        expects,
        sessions,
        released,
        source_seen,
        source_opened,
        whole,
    } = tables;
    // Sessions before flows: a control connection installs its flows before its session, so a
    // session of this snapshot whose flows are missing from the later one has really ended (the
    // other order would take a session opening between the two reads for an ended one).
    let known_sessions = whole.sessions.keys()?;
    let (keys, entries) = whole.flows.read()?;
    let snapshot = FlowSnapshot::new(keys, entries);
    // The connections over, with their reply direction.
    let over: Vec<_> = snapshot
        .connections()
        .filter(|(_, entry, reply)| expired(entry, *reply, now_ns, policy))
        .collect();
    // Sessions with a data connection that stays (this sweep does not end it), looked for only
    // among the sessions of the idle control connections this sweep would otherwise end.
    let idle_sessions: HashSet<FlowKey> = over
        .iter()
        .filter(|(_, entry, reply)| entry.kind == FlowKind::Control as u8 && !closed(entry, *reply))
        .map(|(_, entry, _)| entry.session)
        .collect();
    let transferring: HashSet<FlowKey> = if idle_sessions.is_empty() {
        HashSet::new()
    } else {
        snapshot
            .connections()
            .filter(|(_, entry, reply)| {
                entry.kind == FlowKind::Data as u8
                    && idle_sessions.contains(&entry.session)
                    && !expired(entry, *reply, now_ns, policy)
            })
            .map(|(_, entry, _)| entry.session)
            .collect()
    };
    let mut swept = Swept {
        flow_entries: snapshot.entries.len(),
        ..Swept::default()
    };
    // The entries of the snapshot gone since: removed by this sweep or before it.
    let mut gone: HashSet<FlowKey> = HashSet::new();
    for (key, entry, reply) in over {
        if kept_for_transfer(entry, reply, &transferring) {
            continue;
        }
        let reply_key = entry.reply_key();
        // The original side first: once it is gone no new packet refreshes the connection. Who
        // removes it owns its port: never return a port for an entry already gone.
        if flows.remove(key).is_err() {
            gone.insert(*key);
            continue;
        }
        let _ = flows.remove(&reply_key);
        gone.extend([*key, reply_key]);
        swept.connections += 1;
        if entry.kind == FlowKind::Data as u8 {
            // Dated by its last packet, not by this sweep: that is when the transfer ended.
            let last_seen = reply.map_or(entry.last_seen_ns, |r| {
                r.last_seen_ns.max(entry.last_seen_ns)
            });
            swept.events.push(swept_event(
                EventKind::DataFlowClosed,
                entry.session,
                0,
                (key.daddr, key.dport),
                entry.bytes + reply.map_or(0, |r| r.bytes),
                last_seen,
            ));
        }
        if entry.flags & flow_flags::OWNS_PORT != 0 {
            free_ports.push(entry.public_port, 0)?;
            swept.ports_returned += 1;
        }
    }

    let expired_expectations: Vec<_> = whole
        .expects
        .entries()?
        .into_iter()
        .filter(|(_, e)| e.expires_ns < now_ns)
        .collect();
    for (key, expectation) in expired_expectations {
        // Whoever removes it owns it: the kernel may have just taken it for a SYN.
        if expects.remove(&key).is_err() {
            continue;
        }
        swept.expectations += 1;
        swept.events.push(swept_event(
            EventKind::ExpectationExpired,
            expectation.session,
            expectation.kind,
            (key.daddr, key.dport),
            0,
            now_ns,
        ));
        // Its place under the session's limit is free again; the datapath applies the count (the
        // agent never writes a session record, which the datapath updates concurrently).
        if sessions.get(&expectation.session, 0).is_ok() {
            let count = released.get(&expectation.session, 0).unwrap_or(0);
            released.insert(expectation.session, count.wrapping_add(1), 0)?;
        }
        if ExpectationPath::from_raw(expectation.path) == Some(ExpectationPath::Inbound)
            && expectation.public_port != 0
        {
            free_ports.push(expectation.public_port, 0)?;
            swept.ports_returned += 1;
        }
    }

    // A session ends with its control connection: missing from the snapshot, or gone since.
    let ended: HashSet<FlowKey> = known_sessions
        .into_iter()
        .filter(|key| !snapshot.contains(key) || gone.contains(key))
        .collect();
    // Its pinholes close with it: an announced connection nobody made by then never will be.
    let orphaned: Vec<_> = whole
        .expects
        .entries()?
        .into_iter()
        .filter(|(_, e)| ended.contains(&e.session))
        .collect();
    for (key, expectation) in orphaned {
        if expects.remove(&key).is_err() {
            continue;
        }
        swept.expectations += 1;
        if ExpectationPath::from_raw(expectation.path) == Some(ExpectationPath::Inbound)
            && expectation.public_port != 0
        {
            free_ports.push(expectation.public_port, 0)?;
            swept.ports_returned += 1;
        }
    }
    for key in ended {
        let data_flows = sessions.get(&key, 0).map_or(0, |s| s.data_flows);
        let _ = sessions.remove(&key);
        let _ = released.remove(&key);
        swept.sessions += 1;
        swept.events.push(swept_event(
            EventKind::SessionClosed,
            key,
            0,
            (key.daddr, key.dport),
            u64::from(data_flows),
            now_ns,
        ));
    }
    recount_sources(whole, source_seen, source_opened)?;
    Ok(swept)
}

/// Counts the sessions of every source (host, and its /24 or IPv6 /64) afresh, for the datapath's
/// per-source limits, with the datapath's count of the sessions it opened as read just before: the
/// datapath adds what it opens after that (see ftp-common's `maps::sources`). A source with no
/// session that opened none since is forgotten; should it open one between the check and the
/// removal, that session is counted at the next sweep.
fn recount_sources(
    whole: &WholeTables<'_>,
    source_seen: &mut sources::SeenAyaMap<&mut MapData>,
    source_opened: &mut sources::OpenedAyaMap<&mut MapData>,
) -> anyhow::Result<()> {
    let marks: HashMap<SourceKey, u32> = whole.source_opened.entries()?.into_iter().collect();
    let counts = source_counts(whole.sessions.keys()?.into_iter());
    let sources: HashSet<SourceKey> = marks.keys().chain(counts.keys()).copied().collect();
    for key in &sources {
        let seen = SourceSeen {
            sessions: counts.get(key).copied().unwrap_or(0),
            opened_mark: marks.get(key).copied().unwrap_or(0),
        };
        let idle = seen.sessions == 0
            && source_opened
                .get(key, 0)
                .map_or(true, |opened| opened == seen.opened_mark);
        if idle {
            let _ = source_opened.remove(key);
            let _ = source_seen.remove(key);
        } else {
            source_seen.insert(key, seen, 0)?;
        }
    }
    let gone: Vec<SourceKey> = whole
        .source_seen
        .keys()?
        .into_iter()
        .filter(|key| !sources.contains(key))
        .collect();
    for key in gone {
        let _ = source_seen.remove(&key);
    }
    Ok(())
}

/// How many of `sessions` each source host and network (see [`sources::SourceScope`]) opened.
fn source_counts(sessions: impl Iterator<Item = FlowKey>) -> HashMap<SourceKey, u32> {
    let mut counts = HashMap::new();
    for session in sessions {
        for scope in sources::SCOPES {
            *counts
                .entry(SourceKey::new(&session.saddr, scope))
                .or_default() += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use ftp_common::maps::{SourceScope, ip};

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn entry(kind: FlowKind, direction: FlowDirection, flags: u8, last_seen_s: u64) -> FlowEntry {
        FlowEntry {
            packets: 1,
            bytes: 60,
            last_seen_ns: last_seen_s * SEC,
            session: FlowKey {
                saddr: ip::v4_mapped([10, 0, 0, 2]),
                daddr: ip::v4_mapped([203, 0, 113, 10]),
                sport: 40000u16.to_be_bytes(),
                dport: 21u16.to_be_bytes(),
            },
            new_saddr: ip::v4_mapped([203, 0, 113, 254]),
            new_daddr: ip::v4_mapped([203, 0, 113, 10]),
            out_ifindex: 3,
            new_sport: 61000u16.to_be_bytes(),
            new_dport: 21u16.to_be_bytes(),
            public_port: 61000,
            kind: kind as u8,
            direction: direction as u8,
            flags,
            _pad: [0; 3],
            in_ifindex: 0,
        }
    }

    #[test]
    fn a_costly_sweep_is_spaced_to_its_cpu_share() {
        let tick = Duration::from_secs(1);
        // A cheap sweep runs at every tick.
        assert_eq!(ticks_to_wait(Duration::from_millis(1), tick), 0);
        assert_eq!(ticks_to_wait(Duration::from_millis(20), tick), 0);
        // 100 ms at 2% of a CPU: one sweep per 5 ticks.
        assert_eq!(ticks_to_wait(Duration::from_millis(100), tick), 4);
        // However long, the gap is bounded.
        assert_eq!(ticks_to_wait(Duration::from_secs(10), tick), MAX_SWEEP_GAP);
    }

    #[test]
    fn pacing_skips_the_ticks_it_waits() {
        let tick = Duration::from_secs(1);
        let mut pacing = Pacing { wait: 2 };
        let mut ran = 0;
        for _ in 0..3 {
            pacing
                .run(tick, || {
                    ran += 1;
                    Ok(Swept::default())
                })
                .unwrap();
        }
        assert_eq!(ran, 1);
    }

    /// A session of `client` (either family), from `port`.
    fn session_from(client: &str, port: u16) -> FlowKey {
        let server = if client.contains(':') {
            "2001:db8:ffff::10"
        } else {
            "203.0.113.10"
        };
        FlowKey {
            saddr: ip::from_ip(client.parse().unwrap()),
            daddr: ip::from_ip(server.parse().unwrap()),
            sport: port.to_be_bytes(),
            dport: 21u16.to_be_bytes(),
        }
    }

    /// The count of `addr` in `scope`.
    fn count_of(counts: &HashMap<SourceKey, u32>, addr: &str, scope: SourceScope) -> Option<u32> {
        let key = SourceKey::new(&ip::from_ip(addr.parse().unwrap()), scope);
        counts.get(&key).copied()
    }

    #[test]
    fn sources_are_counted_by_host_and_by_24() {
        let counts = source_counts(
            [
                session_from("10.0.0.2", 40000),
                session_from("10.0.0.2", 40001),
                session_from("10.0.0.3", 40000),
                session_from("10.0.1.2", 40000),
            ]
            .into_iter(),
        );
        let count = |addr, scope| count_of(&counts, addr, scope);
        assert_eq!(count("10.0.0.2", SourceScope::Host), Some(2));
        assert_eq!(count("10.0.0.3", SourceScope::Host), Some(1));
        assert_eq!(count("10.0.0.77", SourceScope::Subnet), Some(3));
        assert_eq!(count("10.0.1.0", SourceScope::Subnet), Some(1));
        assert_eq!(count("10.0.0.4", SourceScope::Host), None);
        assert_eq!(counts.len(), 5);
    }

    /// An IPv6 LAN is a /64: its hosts share one count, whatever their interface identifiers (a
    /// host can take any number of them), and another /64 has its own.
    #[test]
    fn ipv6_sources_are_counted_by_host_and_by_64() {
        let counts = source_counts(
            [
                session_from("2001:db8:10::2", 40000),
                session_from("2001:db8:10::2", 40001),
                session_from("2001:db8:10:0:aaaa:bbbb:cccc:dddd", 40000),
                session_from("2001:db8:10:1::2", 40000),
                session_from("10.0.0.2", 40000),
            ]
            .into_iter(),
        );
        let count = |addr, scope| count_of(&counts, addr, scope);
        assert_eq!(count("2001:db8:10::2", SourceScope::Host), Some(2));
        assert_eq!(
            count("2001:db8:10:0:aaaa:bbbb:cccc:dddd", SourceScope::Host),
            Some(1)
        );
        assert_eq!(count("2001:db8:10::", SourceScope::Subnet), Some(3));
        assert_eq!(count("2001:db8:10:0:ffff::1", SourceScope::Subnet), Some(3));
        assert_eq!(count("2001:db8:10:1::", SourceScope::Subnet), Some(1));
        // The IPv4 client is counted apart, whatever its bytes share with an IPv6 one.
        assert_eq!(count("10.0.0.2", SourceScope::Host), Some(1));
        assert_eq!(count("10.0.0.0", SourceScope::Subnet), Some(1));
        assert_eq!(counts.len(), 3 + 2 + 2);
    }

    #[test]
    fn the_snapshot_pairs_each_original_with_its_reply() {
        let original = entry(FlowKind::Data, FlowDirection::Original, 0, 100);
        let key = FlowKey {
            sport: 50000u16.to_be_bytes(),
            ..original.session
        };
        let reply = original.reply_of(&key, 0);
        let lone_key = FlowKey {
            sport: 50001u16.to_be_bytes(),
            ..key
        };
        let snapshot = FlowSnapshot::new(
            vec![original.reply_key(), key, lone_key],
            vec![reply, original, original],
        );
        let connections: Vec<_> = snapshot.connections().collect();
        assert_eq!(connections.len(), 2);
        assert_eq!(connections[0].0, &key);
        assert_eq!(
            connections[0].2.map(|r| r.direction),
            Some(FlowDirection::Reply as u8)
        );
        // The third entry's reply key is the same as the first's: the pairing is by key.
        assert_eq!(connections[1].0, &lone_key);
        assert!(snapshot.contains(&key) && snapshot.contains(&original.reply_key()));
        assert!(!snapshot.contains(&original.session));
    }

    #[test]
    fn packed_keys_differ_in_every_field() {
        let key = entry(FlowKind::Data, FlowDirection::Original, 0, 0).session;
        let variants = [
            FlowKey {
                saddr: ip::v4_mapped([10, 0, 0, 3]),
                ..key
            },
            FlowKey {
                daddr: ip::v4_mapped([203, 0, 113, 11]),
                ..key
            },
            // The first bytes of each address count too.
            FlowKey {
                saddr: ip::from_ip("1::ffff:10.0.0.2".parse().unwrap()),
                ..key
            },
            FlowKey {
                daddr: ip::from_ip("1::ffff:203.0.113.10".parse().unwrap()),
                ..key
            },
            FlowKey {
                sport: [0, 1],
                ..key
            },
            FlowKey {
                dport: [0, 1],
                ..key
            },
        ];
        for other in variants {
            assert_ne!(packed(&key), packed(&other));
        }
        let hashing = KeyHashing::new();
        assert_eq!(
            hashing.hash_one(packed(&key)),
            hashing.hash_one(packed(&key))
        );
    }

    #[test]
    fn reply_key_is_the_translated_packet_reversed() {
        let original = entry(FlowKind::Control, FlowDirection::Original, 0, 0);
        let reply = original.reply_key();
        assert_eq!(reply.saddr, ip::v4_mapped([203, 0, 113, 10]));
        assert_eq!(reply.daddr, ip::v4_mapped([203, 0, 113, 254]));
        assert_eq!(reply.sport, 21u16.to_be_bytes());
        assert_eq!(reply.dport, 61000u16.to_be_bytes());
    }

    #[test]
    fn closed_connections_linger_briefly() {
        let policy = ExpiryPolicy::default();
        let original = entry(
            FlowKind::Data,
            FlowDirection::Original,
            flow_flags::FIN,
            100,
        );
        let reply = entry(
            FlowKind::Data,
            FlowDirection::Reply,
            flow_flags::FIN | flow_flags::ESTABLISHED,
            100,
        );
        assert!(!expired(
            &original,
            Some(&reply),
            100 * SEC + SEC / 10,
            &policy
        ));
        assert!(expired(
            &original,
            Some(&reply),
            100 * SEC + SEC / 2,
            &policy
        ));
        let reset = entry(FlowKind::Data, FlowDirection::Reply, flow_flags::RST, 100);
        assert!(expired(
            &original,
            Some(&reset),
            100 * SEC + SEC / 2,
            &policy
        ));
    }

    #[test]
    fn half_closed_connection_is_not_closed() {
        let policy = ExpiryPolicy::default();
        let original = entry(
            FlowKind::Control,
            FlowDirection::Original,
            flow_flags::FIN | flow_flags::ESTABLISHED,
            100,
        );
        let reply = entry(
            FlowKind::Control,
            FlowDirection::Reply,
            flow_flags::ESTABLISHED,
            100,
        );
        assert!(!expired(&original, Some(&reply), 110 * SEC, &policy));
    }

    #[test]
    fn an_unanswered_syn_expires_after_the_handshake_time() {
        let policy = ExpiryPolicy::default();
        let syn_only = entry(FlowKind::Control, FlowDirection::Original, 0, 100);
        let no_answer = entry(FlowKind::Control, FlowDirection::Reply, 0, 100);
        for reply in [None, Some(&no_answer)] {
            assert!(!expired(&syn_only, reply, 119 * SEC, &policy));
            assert!(expired(&syn_only, reply, 120 * SEC, &policy));
        }
    }

    /// A spoofed SYN to a published server: the server's SYN-ACK goes to a host that never asked,
    /// so the opening side never sends its ACK. The answer alone does not establish it.
    #[test]
    fn a_syn_answered_but_never_acknowledged_expires_after_the_handshake_time() {
        let policy = ExpiryPolicy::default();
        let syn_only = entry(FlowKind::Control, FlowDirection::Original, 0, 100);
        let syn_ack = entry(
            FlowKind::Control,
            FlowDirection::Reply,
            flow_flags::ESTABLISHED,
            100,
        );
        assert!(!expired(&syn_only, Some(&syn_ack), 119 * SEC, &policy));
        assert!(expired(&syn_only, Some(&syn_ack), 120 * SEC, &policy));
        // Nor does the opening side's ACK without an answer (a blind ACK to a silent server).
        let acked = entry(
            FlowKind::Control,
            FlowDirection::Original,
            flow_flags::ESTABLISHED,
            100,
        );
        assert!(expired(&acked, None, 120 * SEC, &policy));
    }

    #[test]
    fn a_completed_handshake_gets_the_idle_times_by_kind() {
        let policy = ExpiryPolicy::default();
        let control = entry(
            FlowKind::Control,
            FlowDirection::Original,
            flow_flags::ESTABLISHED,
            100,
        );
        let answered = entry(
            FlowKind::Control,
            FlowDirection::Reply,
            flow_flags::ESTABLISHED,
            100,
        );
        assert!(!expired(&control, Some(&answered), 900 * SEC, &policy));
        assert!(expired(&control, Some(&answered), 1000 * SEC, &policy));
        let data = entry(
            FlowKind::Data,
            FlowDirection::Original,
            flow_flags::ESTABLISHED,
            100,
        );
        let data_reply = entry(
            FlowKind::Data,
            FlowDirection::Reply,
            flow_flags::ESTABLISHED,
            100,
        );
        assert!(!expired(&data, Some(&data_reply), 399 * SEC, &policy));
        assert!(expired(&data, Some(&data_reply), 400 * SEC, &policy));
    }

    #[test]
    fn idle_times_are_the_policys() {
        let policy = ExpiryPolicy {
            control_idle: Duration::from_secs(3),
            data_idle: Duration::from_secs(5),
            ..ExpiryPolicy::default()
        };
        let answered = |kind| entry(kind, FlowDirection::Reply, flow_flags::ESTABLISHED, 100);
        let control = entry(
            FlowKind::Control,
            FlowDirection::Original,
            flow_flags::ESTABLISHED,
            100,
        );
        assert!(!expired(
            &control,
            Some(&answered(FlowKind::Control)),
            102 * SEC,
            &policy
        ));
        assert!(expired(
            &control,
            Some(&answered(FlowKind::Control)),
            103 * SEC,
            &policy
        ));
        let data = entry(
            FlowKind::Data,
            FlowDirection::Original,
            flow_flags::ESTABLISHED,
            100,
        );
        assert!(!expired(
            &data,
            Some(&answered(FlowKind::Data)),
            104 * SEC,
            &policy
        ));
        assert!(expired(
            &data,
            Some(&answered(FlowKind::Data)),
            105 * SEC,
            &policy
        ));
    }

    #[test]
    fn an_idle_control_connection_stays_while_its_session_transfers() {
        let control = entry(FlowKind::Control, FlowDirection::Original, 0, 100);
        let answered = entry(
            FlowKind::Control,
            FlowDirection::Reply,
            flow_flags::ESTABLISHED,
            100,
        );
        let mut transferring = HashSet::new();
        assert!(!kept_for_transfer(&control, Some(&answered), &transferring));
        transferring.insert(control.session);
        assert!(kept_for_transfer(&control, Some(&answered), &transferring));
        // Closed, it goes: the transfer has nothing left to say on it.
        let reset = entry(
            FlowKind::Control,
            FlowDirection::Reply,
            flow_flags::ESTABLISHED | flow_flags::RST,
            100,
        );
        assert!(!kept_for_transfer(&control, Some(&reset), &transferring));
        // Another session's transfer does not keep it.
        let mut other = transferring.clone();
        other.clear();
        other.insert(FlowKey {
            sport: 40001u16.to_be_bytes(),
            ..control.session
        });
        assert!(!kept_for_transfer(&control, Some(&answered), &other));
        // A data connection is never kept by this.
        let data = entry(FlowKind::Data, FlowDirection::Original, 0, 100);
        assert!(!kept_for_transfer(&data, None, &transferring));
    }
}
