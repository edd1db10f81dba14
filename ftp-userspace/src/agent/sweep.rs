//! Expiry of translated connections: the kernel marks what it sees (FIN, RST, answers, last
//! packet); the agent removes finished or idle connections and returns their ports to the window.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use ftp_common::maps::{
    Event, EventKind, ExpectationPath, FlowDirection, FlowEntry, FlowKey, FlowKind, flow_flags,
};

use crate::datapath::maps::StateTables;

/// How long a connection may stay in each state before it is removed.
#[derive(Debug, Clone, Copy)]
pub struct ExpiryPolicy {
    /// Both sides sent FIN, or one sent RST: kept this long for the last ACKs.
    pub closed_linger: Duration,
    /// No answer to the opening SYN.
    pub unanswered: Duration,
    /// Idle control connection (FTP servers drop idle sessions after minutes; NAT should outlast them).
    pub control_idle: Duration,
    /// Idle data connection.
    pub data_idle: Duration,
}

impl Default for ExpiryPolicy {
    fn default() -> Self {
        Self {
            closed_linger: Duration::from_secs(2),
            unanswered: Duration::from_secs(30),
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
fn swept_event(
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
    let flags = original.flags | reply_flags;
    if flags & flow_flags::RST != 0
        || (original.flags & flow_flags::FIN != 0 && reply_flags & flow_flags::FIN != 0)
    {
        return idle >= policy.closed_linger;
    }
    if reply_flags & flow_flags::ESTABLISHED == 0 {
        return idle >= policy.unanswered;
    }
    match FlowKind::from_raw(original.kind) {
        Some(FlowKind::Control) => idle >= policy.control_idle,
        _ => idle >= policy.data_idle,
    }
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
    } = tables;
    // Sessions before flows: a control connection installs its flows before its session, so a
    // session of this snapshot whose flows are missing from the later one has really ended (the
    // other order would take a session opening between the two reads for an ended one).
    let known_sessions: Vec<FlowKey> = sessions.keys().filter_map(Result::ok).collect();
    let entries: HashMap<FlowKey, FlowEntry> = flows.iter().filter_map(Result::ok).collect();
    let mut swept = Swept::default();
    for (key, entry) in &entries {
        if entry.direction != FlowDirection::Original as u8 {
            continue;
        }
        let reply_key = entry.reply_key();
        let reply = entries.get(&reply_key);
        if !expired(entry, reply, now_ns, policy) {
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
    Ok(swept)
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
        assert!(!expired(&original, Some(&reply), 101 * SEC, &policy));
        assert!(expired(&original, Some(&reply), 103 * SEC, &policy));
        let reset = entry(FlowKind::Data, FlowDirection::Reply, flow_flags::RST, 100);
        assert!(expired(&original, Some(&reset), 103 * SEC, &policy));
    }

    #[test]
    fn half_closed_connection_is_not_closed() {
        let policy = ExpiryPolicy::default();
        let original = entry(
            FlowKind::Control,
            FlowDirection::Original,
            flow_flags::FIN,
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
    fn unanswered_and_idle_connections_expire_by_kind() {
        let policy = ExpiryPolicy::default();
        let syn_only = entry(FlowKind::Control, FlowDirection::Original, 0, 100);
        assert!(!expired(&syn_only, None, 120 * SEC, &policy));
        assert!(expired(&syn_only, None, 131 * SEC, &policy));
        let control = entry(FlowKind::Control, FlowDirection::Original, 0, 100);
        let answered = entry(
            FlowKind::Control,
            FlowDirection::Reply,
            flow_flags::ESTABLISHED,
            100,
        );
        assert!(!expired(&control, Some(&answered), 900 * SEC, &policy));
        assert!(expired(&control, Some(&answered), 1000 * SEC, &policy));
        let data = entry(FlowKind::Data, FlowDirection::Original, 0, 100);
        let data_reply = entry(
            FlowKind::Data,
            FlowDirection::Reply,
            flow_flags::ESTABLISHED,
            100,
        );
        assert!(expired(&data, Some(&data_reply), 400 * SEC, &policy));
    }
}
