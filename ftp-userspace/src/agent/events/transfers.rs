//! The transfer log: each live session's transfers (command, file, mode, bytes, duration), built
//! from the event stream, for `ftpnat sessions ID`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ftp_common::maps::EventKind;
use serde::{Deserialize, Serialize};

use super::EventRecord;

/// One transfer of a session, as `ftpnat sessions ID` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferRecord {
    /// RETR, STOR, LIST, … (none if the data connection came without one).
    pub command: Option<String>,
    pub file: Option<String>,
    /// `active` or `passive`, once its data connection opened.
    pub mode: Option<String>,
    /// Bytes of its data connection, both ways, once it closed.
    pub bytes: Option<u64>,
    /// From its data connection's first packet to its last.
    pub duration_ms: Option<u64>,
    /// When the transfer command or its data connection came, whichever first.
    pub started: String,
    #[serde(skip)]
    flow_opened_ns: Option<u64>,
}

/// How many transfers of one session the agent remembers (the latest).
const TRANSFERS_PER_SESSION: usize = 256;

/// The transfers of the live sessions, by session id, built from the events.
#[derive(Default)]
pub struct TransferLog {
    sessions: HashMap<String, Vec<TransferRecord>>,
}

/// The log shared between the agent's loop and the socket's request handlers.
pub type SharedTransferLog = Arc<Mutex<TransferLog>>;

impl TransferLog {
    /// Follows one event. A transfer pairs a transfer command with a data connection, in either
    /// order: passive clients connect before they send RETR, active ones after.
    pub fn observe(&mut self, record: &EventRecord, ts_ns: u64) {
        if record.event == EventKind::SessionClosed.as_str() {
            self.sessions.remove(&record.session);
            return;
        }
        // Only a transfer's start makes a session known here: a late close of a session already
        // gone must not bring it back.
        let starts = matches!(
            EventKind::from_name(&record.event),
            Some(EventKind::DataFlowOpened)
        ) || (record.event == EventKind::Command.as_str()
            && is_transfer(record.command.as_deref()));
        let transfers = match self.sessions.get_mut(&record.session) {
            Some(transfers) => transfers,
            None if starts => self.sessions.entry(record.session.clone()).or_default(),
            None => return,
        };
        let new = |record: &EventRecord| TransferRecord {
            command: None,
            file: None,
            mode: None,
            bytes: None,
            duration_ms: None,
            started: record.time.clone(),
            flow_opened_ns: None,
        };
        match EventKind::from_name(&record.event) {
            Some(EventKind::Command) if is_transfer(record.command.as_deref()) => {
                let waiting = transfers
                    .last()
                    .is_some_and(|t| t.command.is_none() && t.bytes.is_none());
                if !waiting {
                    transfers.push(new(record));
                }
                if let Some(transfer) = transfers.last_mut() {
                    transfer.command = record.command.clone();
                    transfer.file = record.argument.clone();
                }
            }
            Some(EventKind::DataFlowOpened) => {
                let waiting = transfers
                    .last()
                    .is_some_and(|t| t.flow_opened_ns.is_none() && t.command.is_some());
                if !waiting {
                    transfers.push(new(record));
                }
                if let Some(transfer) = transfers.last_mut() {
                    transfer.mode = record.kind.clone();
                    transfer.flow_opened_ns = Some(ts_ns);
                }
            }
            Some(EventKind::DataFlowClosed) => {
                if let Some(transfer) = transfers
                    .iter_mut()
                    .find(|t| t.flow_opened_ns.is_some() && t.bytes.is_none())
                {
                    transfer.bytes = record.bytes;
                    transfer.duration_ms = transfer
                        .flow_opened_ns
                        .map(|opened| ts_ns.saturating_sub(opened) / 1_000_000);
                }
            }
            _ => {}
        }
        if transfers.len() > TRANSFERS_PER_SESSION {
            transfers.drain(..transfers.len() - TRANSFERS_PER_SESSION);
        }
    }

    pub fn transfers(&self, session: &str) -> Vec<TransferRecord> {
        self.sessions.get(session).cloned().unwrap_or_default()
    }
}

fn is_transfer(command: Option<&str>) -> bool {
    matches!(
        command,
        Some("RETR" | "STOR" | "STOU" | "APPE" | "LIST" | "NLST" | "MLSD")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        event: EventKind,
        command: Option<&str>,
        argument: Option<&str>,
        kind: Option<&str>,
        bytes: Option<u64>,
    ) -> EventRecord {
        EventRecord {
            time: "t".into(),
            event: event.as_str().into(),
            session: "s".into(),
            kind: kind.map(Into::into),
            command: command.map(Into::into),
            argument: argument.map(Into::into),
            reason: None,
            endpoint: None,
            bytes,
            data_flows: None,
        }
    }

    #[test]
    fn transfers_pair_commands_with_data_connections_in_either_order() {
        let mut log = TransferLog::default();
        // Passive: the data connection opens, then RETR comes.
        log.observe(
            &event(EventKind::DataFlowOpened, None, None, Some("passive"), None),
            1_000_000_000,
        );
        log.observe(
            &event(EventKind::Command, Some("RETR"), Some("a.bin"), None, None),
            1_100_000_000,
        );
        log.observe(
            &event(EventKind::Command, Some("PASV"), None, None, None),
            1_200_000_000,
        );
        log.observe(
            &event(EventKind::DataFlowClosed, None, None, None, Some(500)),
            3_000_000_000,
        );
        // Active: STOR comes, then the data connection.
        log.observe(
            &event(EventKind::Command, Some("STOR"), Some("b.bin"), None, None),
            4_000_000_000,
        );
        log.observe(
            &event(EventKind::DataFlowOpened, None, None, Some("active"), None),
            4_100_000_000,
        );
        let transfers = log.transfers("s");
        assert_eq!(transfers.len(), 2, "{transfers:?}");
        assert_eq!(transfers[0].command.as_deref(), Some("RETR"));
        assert_eq!(transfers[0].file.as_deref(), Some("a.bin"));
        assert_eq!(transfers[0].mode.as_deref(), Some("passive"));
        assert_eq!(transfers[0].bytes, Some(500));
        assert_eq!(transfers[0].duration_ms, Some(2000));
        assert_eq!(transfers[1].command.as_deref(), Some("STOR"));
        assert_eq!(transfers[1].mode.as_deref(), Some("active"));
        assert_eq!(transfers[1].bytes, None, "still running");
        log.observe(
            &event(EventKind::SessionClosed, None, None, None, None),
            5_000_000_000,
        );
        assert!(
            log.transfers("s").is_empty(),
            "a closed session's transfers go with it"
        );
    }
}
