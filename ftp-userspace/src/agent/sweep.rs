//! Expiry of translated connections: the kernel marks what it sees (FIN, RST, answers, last
//! packet); the agent removes finished or idle connections and returns their ports to the window.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use aya::maps::MapData;
use ftp_common::maps::{
    Event, EventKind, ExpectationPath, FlowDirection, FlowEntry, FlowKey, FlowKind, SourceKey,
    SourceSeen, flow_flags, sessions, sources,
};

use crate::datapath::maps::StateTables;

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
    pub connections: usize,
    pub expectations: usize,
    pub sessions: usize,
    pub ports_returned: usize,
    /// What ended, as events: data connections closed (with their bytes), expectations expired,
    /// sessions closed.
    pub events: Vec<Event>,
}

/// An event the agent reports about what it swept.
pub(super) fn swept_event(
    kind: EventKind,
    session: FlowKey,
    detail: u8,
    endpoint: ([u8; 4], [u8; 2]),
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
    } = tables;
    // Sessions before flows: a control connection installs its flows before its session, so a
    // session of this snapshot whose flows are missing from the later one has really ended (the
    // other order would take a session opening between the two reads for an ended one).
    let known_sessions: Vec<FlowKey> = sessions.keys().filter_map(Result::ok).collect();
    let entries: HashMap<FlowKey, FlowEntry> = flows.iter().filter_map(Result::ok).collect();
    let is_over = |entry: &FlowEntry| {
        entry.direction == FlowDirection::Original as u8
            && expired(entry, entries.get(&entry.reply_key()), now_ns, policy)
    };
    // Sessions with a data connection that stays (this sweep does not end it).
    let transferring: HashSet<FlowKey> = entries
        .values()
        .filter(|entry| {
            entry.kind == FlowKind::Data as u8
                && entry.direction == FlowDirection::Original as u8
                && !is_over(entry)
        })
        .map(|entry| entry.session)
        .collect();
    let mut swept = Swept::default();
    for (key, entry) in &entries {
        if entry.direction != FlowDirection::Original as u8 {
            continue;
        }
        let reply_key = entry.reply_key();
        let reply = entries.get(&reply_key);
        if !expired(entry, reply, now_ns, policy) || kept_for_transfer(entry, reply, &transferring)
        {
            continue;
        }
        // The original side first: once it is gone no new packet refreshes the connection. Who
        // removes it owns its port: never return a port for an entry already gone.
        if flows.remove(key).is_err() {
            continue;
        }
        let _ = flows.remove(&reply_key);
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

    let expired_expectations: Vec<_> = expects
        .iter()
        .filter_map(Result::ok)
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

    // A session ends with its control connection.
    let live: HashSet<FlowKey> = flows.keys().filter_map(Result::ok).collect();
    let ended: HashSet<FlowKey> = known_sessions
        .into_iter()
        .filter(|key| !live.contains(key))
        .collect();
    // Its pinholes close with it: an announced connection nobody made by then never will be.
    let orphaned: Vec<_> = expects
        .iter()
        .filter_map(Result::ok)
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
    recount_sources(sessions, source_seen, source_opened)?;
    Ok(swept)
}

/// Counts the sessions of every source (host and /24) afresh, for the datapath's per-source
/// limits, with the datapath's count of the sessions it opened as read just before: the datapath
/// adds what it opens after that (see ftp-common's `maps::sources`). A source with no session
/// that opened none since is forgotten; should it open one between the check and the removal,
/// that session is counted at the next sweep.
fn recount_sources(
    sessions: &sessions::AyaMap<&mut MapData>,
    source_seen: &mut sources::SeenAyaMap<&mut MapData>,
    source_opened: &mut sources::OpenedAyaMap<&mut MapData>,
) -> anyhow::Result<()> {
    let marks: HashMap<SourceKey, u32> = source_opened.iter().filter_map(Result::ok).collect();
    let counts = source_counts(sessions.keys().filter_map(Result::ok));
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
    let gone: Vec<SourceKey> = source_seen
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !sources.contains(key))
        .collect();
    for key in gone {
        let _ = source_seen.remove(&key);
    }
    Ok(())
}

/// How many of `sessions` each source host and /24 opened.
fn source_counts(sessions: impl Iterator<Item = FlowKey>) -> HashMap<SourceKey, u32> {
    let mut counts = HashMap::new();
    for session in sessions {
        for prefix_len in sources::PREFIXES {
            *counts
                .entry(SourceKey::new(session.saddr, prefix_len))
                .or_default() += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn entry(kind: FlowKind, direction: FlowDirection, flags: u8, last_seen_s: u64) -> FlowEntry {
        FlowEntry {
            packets: 1,
            bytes: 60,
            last_seen_ns: last_seen_s * SEC,
            session: FlowKey {
                saddr: [10, 0, 0, 2],
                daddr: [203, 0, 113, 10],
                sport: 40000u16.to_be_bytes(),
                dport: 21u16.to_be_bytes(),
            },
            new_saddr: [203, 0, 113, 254],
            new_daddr: [203, 0, 113, 10],
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
    fn sources_are_counted_by_host_and_by_24() {
        let session = |addr: [u8; 4], port: u16| FlowKey {
            saddr: addr,
            daddr: [203, 0, 113, 10],
            sport: port.to_be_bytes(),
            dport: 21u16.to_be_bytes(),
        };
        let counts = source_counts(
            [
                session([10, 0, 0, 2], 40000),
                session([10, 0, 0, 2], 40001),
                session([10, 0, 0, 3], 40000),
                session([10, 0, 1, 2], 40000),
            ]
            .into_iter(),
        );
        let count = |addr, prefix_len| counts.get(&SourceKey::new(addr, prefix_len)).copied();
        assert_eq!(count([10, 0, 0, 2], 32), Some(2));
        assert_eq!(count([10, 0, 0, 3], 32), Some(1));
        assert_eq!(count([10, 0, 0, 0], 24), Some(3));
        assert_eq!(count([10, 0, 1, 0], 24), Some(1));
        assert_eq!(count([10, 0, 0, 4], 32), None);
        assert_eq!(counts.len(), 5);
    }

    #[test]
    fn reply_key_is_the_translated_packet_reversed() {
        let original = entry(FlowKind::Control, FlowDirection::Original, 0, 0);
        let reply = original.reply_key();
        assert_eq!(reply.saddr, [203, 0, 113, 10]);
        assert_eq!(reply.daddr, [203, 0, 113, 254]);
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
