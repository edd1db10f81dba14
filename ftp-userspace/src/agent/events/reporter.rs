//! Reporting: every event of the ring buffer and of the sweep, named by its session, logged,
//! followed by the transfer log and sent to the event socket's subscribers.

use std::collections::HashMap;

use ftp_common::maps::{Event, EventKind, FlowKey, IpBytes, SessionEntry, SessionKind};
use tokio::sync::broadcast;

use super::{SharedTransferLog, record::record};
use crate::{
    agent::{release::Closing, sweep::ExpiryPolicy},
    datapath::Datapath,
    report::sessions::{endpoint, session_id},
};

/// How many events a slow `ftpnat events` reader may fall behind before it skips some.
pub const EVENT_BACKLOG: usize = 4096;

/// Logs events and passes them on to `ftpnat events` readers.
pub struct EventReporter {
    pub sender: broadcast::Sender<String>,
    pub ids: SessionIds,
    pub transfers: SharedTransferLog,
    pub json: bool,
}

impl EventReporter {
    pub fn report(&mut self, datapath: &mut Datapath, event: &Event) -> anyhow::Result<()> {
        let tables = datapath.state_tables()?;
        let entry = tables.sessions.get(&event.session, 0).ok();
        let public = tables
            .flows
            .get(&event.session, 0)
            .ok()
            .map(|flow| (flow.new_saddr, flow.new_sport));
        let name = self.ids.id(&event.session, entry.as_ref(), public);
        if event.kind == EventKind::SessionClosed as u8 {
            self.ids.forget(&event.session);
        }
        let Some(record) = record(event, name.id, name.nat64_prefix.as_ref()) else {
            return Ok(());
        };
        if let Ok(mut transfers) = self.transfers.lock() {
            transfers.observe(&record, event.ts_ns);
        }
        let line = serde_json::to_string(&record)?;
        if self.json {
            log::info!(target: EVENT_LOG_TARGET, "{line}");
        } else {
            log::info!(target: EVENT_LOG_TARGET, "{}", record.text());
        }
        // No reader connected is not an error.
        let _ = self.sender.send(line);
        Ok(())
    }
}

/// Reports the events waiting in the ring buffer, at most `limit` of them: the datapath may refill
/// the ring as fast as it is read, and the agent's loop has the sweep and signals to attend to.
/// True if events may be left.
/// A connection's end (`ConnectionClosed`) is not reported: it goes to `closing`, which releases
/// the connection.
pub fn drain_events(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    datapath: &mut Datapath,
    reporter: &mut EventReporter,
    (closing, policy): (&mut Closing, &ExpiryPolicy),
    limit: usize,
) -> anyhow::Result<bool> {
    for _ in 0..limit {
        let Some(item) = ring.next() else {
            return Ok(false);
        };
        if item.len() < size_of::<Event>() {
            continue;
        }
        // SAFETY: the record holds an `Event` as the datapath wrote it; `Event` is plain data for
        // which every bit pattern is valid, and the read does not assume alignment.
        let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
        drop(item);
        if event.kind == EventKind::ConnectionClosed as u8 {
            closing.closed(event.session, event.ts_ns, policy);
            continue;
        }
        reporter.report(datapath, &event)?;
    }
    Ok(true)
}

/// Log target of the events, which the JSON log format embeds as objects.
pub const EVENT_LOG_TARGET: &str = "ftpnat::event";

/// How events name a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionName {
    /// As `ftpnat sessions` shows it.
    pub id: String,
    /// A NAT64 session's prefix (its server's IPv6 address, of which the first 96 bits count):
    /// the events' addresses under it show their IPv4 address dotted, as `ftpnat flows` does.
    pub nat64_prefix: Option<IpBytes>,
}

/// Session names for events, remembered from when the session is first seen until it closes (its
/// flows are gone by then).
#[derive(Default)]
pub struct SessionIds {
    known: HashMap<FlowKey, SessionName>,
}

impl SessionIds {
    /// The name of `session`, looking it up in the maps the first time; `public` is the
    /// translated source of its control connection (masquerade, NAT64) when known.
    pub fn id(
        &mut self,
        session: &FlowKey,
        entry: Option<&SessionEntry>,
        public: Option<(IpBytes, [u8; 2])>,
    ) -> SessionName {
        if let Some(name) = self.known.get(session) {
            return name.clone();
        }
        let kind = entry.and_then(|e| SessionKind::from_raw(e.kind));
        let name = SessionName {
            // A session whose control connection is not (or no longer) in the flow table is
            // named by its client.
            id: session_id(session, kind, public)
                .unwrap_or_else(|| endpoint(session.saddr, session.sport)),
            nat64_prefix: (kind == Some(SessionKind::Nat64)).then_some(session.daddr),
        };
        // Remembered only while the session lives: a late event of a session already gone must
        // not pin its id on a later session of the same addresses.
        if entry.is_some() {
            self.known.insert(*session, name.clone());
        }
        name
    }

    pub fn forget(&mut self, session: &FlowKey) {
        self.known.remove(session);
    }
}
