//! Prompt release of closed connections. The datapath reports each connection's end (an RST, or a
//! FIN each way: `EventKind::ConnectionClosed`); the agent removes the connection once it has
//! lingered [`ExpiryPolicy::closed_linger`] after its last packet, and its window port returns to
//! the window then, not at the next sweep. A small window is otherwise held by connections that
//! are over. The sweep still removes what this misses (an event lost to a full ring buffer).

use std::{cmp::Reverse, collections::BinaryHeap, time::Duration};

use ftp_common::maps::{EventKind, FlowDirection, FlowEntry, FlowKey, FlowKind, flow_flags};

use super::sweep::{ExpiryPolicy, Swept, swept_event};
use crate::datapath::maps::StateTables;

/// Connections reported closed, by when they are due for release (CLOCK_MONOTONIC ns).
#[derive(Default)]
pub struct Closing {
    due: BinaryHeap<Reverse<(u64, FlowKey)>>,
}

impl Closing {
    /// The connection of the flow entry under `key` was reported closed at `ts_ns`.
    pub fn closed(&mut self, key: FlowKey, ts_ns: u64, policy: &ExpiryPolicy) {
        self.due.push(Reverse((
            ts_ns.saturating_add(nanos(policy.closed_linger)),
            key,
        )));
    }

    /// When the next release is due, if any is waiting.
    pub fn next_due_ns(&self) -> Option<u64> {
        self.due.peek().map(|Reverse((due, _))| *due)
    }

    /// Releases the connections due by `now_ns` that are still closed and have been silent for
    /// the linger since; one with packets since waits the linger after its last one. One whose
    /// entries are gone (swept, or replaced by a new connection on its tuple) or that is no
    /// longer closed (a new connection took its key) is left alone.
    pub fn release_due(
        &mut self,
        tables: &mut StateTables<'_>,
        now_ns: u64,
        policy: &ExpiryPolicy,
    ) -> anyhow::Result<Swept> {
        let mut swept = Swept::default();
        while let Some(Reverse((due, key))) = self.due.peek().copied() {
            if due > now_ns {
                break;
            }
            self.due.pop();
            let Ok(found) = tables.flows.get(&key, 0) else {
                continue;
            };
            let found_partner = found.reply_key();
            let Ok(partner) = tables.flows.get(&found_partner, 0) else {
                continue;
            };
            let ((original_key, original), (reply_key, reply)) =
                if found.direction == FlowDirection::Original as u8 {
                    ((key, found), (found_partner, partner))
                } else {
                    ((found_partner, partner), (key, found))
                };
            if !flow_flags::closed(original.flags, reply.flags) {
                continue;
            }
            let last_seen = original.last_seen_ns.max(reply.last_seen_ns);
            let release_at = last_seen.saturating_add(nanos(policy.closed_linger));
            if release_at > now_ns {
                self.due.push(Reverse((release_at, key)));
                continue;
            }
            release(
                tables,
                (original_key, &original),
                (reply_key, &reply),
                &mut swept,
            )?;
        }
        Ok(swept)
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Removes a closed connection's two entries and returns its window port, as the sweep does.
fn release(
    tables: &mut StateTables<'_>,
    (original_key, original): (FlowKey, &FlowEntry),
    (reply_key, reply): (FlowKey, &FlowEntry),
    swept: &mut Swept,
) -> anyhow::Result<()> {
    // The original side first, and whoever removes it owns its port: the datapath may be
    // replacing the connection at the same time.
    if tables.flows.remove(&original_key).is_err() {
        return Ok(());
    }
    let _ = tables.flows.remove(&reply_key);
    swept.connections += 1;
    if original.kind == FlowKind::Data as u8 {
        swept.events.push(swept_event(
            EventKind::DataFlowClosed,
            original.session,
            0,
            (original_key.daddr, original_key.dport),
            original.bytes + reply.bytes,
            original.last_seen_ns.max(reply.last_seen_ns),
        ));
    }
    if original.flags & flow_flags::OWNS_PORT != 0 {
        tables.free_ports.push(original.public_port, 0)?;
        swept.ports_returned += 1;
    }
    Ok(())
}
