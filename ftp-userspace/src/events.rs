//! Events: what the datapath saw (from its ring buffer) and what the agent swept, as one stream.
//! The agent logs each event and passes it, as a JSON line, to every `ftpnat events` connected to
//! its event socket. The socket is an abstract Unix socket named after the pin dir: it lives in the
//! router's network namespace, like the agent, and vanishes with it.
//!
//! From the same stream the agent keeps each live session's transfers (command, file, mode,
//! bytes, duration), which `ftpnat sessions ID` asks it for over the same socket: a client's
//! first line is its request, `events` or `transfers <session id>`.

use std::{
    collections::HashMap,
    os::linux::net::SocketAddrExt as _,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, anyhow};
use ftp_common::{
    CommandName, MalformedReason, RefusalReason,
    maps::{EVENT_TEXT_LEN, Event, EventKind, ExpectationKind, FlowKey, SessionEntry, SessionKind},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::broadcast,
};

use crate::{
    datapath::clock::monotonic_now_ns,
    report::sessions::{endpoint, session_id},
};

/// One event as `ftpnat events --json` prints it and the agent logs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Wall-clock time, RFC 3339 with milliseconds (UTC).
    pub time: String,
    pub event: String,
    /// The session's id, as `ftpnat sessions` shows it.
    pub session: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The command's name (`command` events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A USER's name or a transfer's file, bounded; a password never appears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argument: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// An address and port, as the event says (`ip:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_flows: Option<u64>,
}

impl EventRecord {
    /// The event as one human-readable line (without its time: logs and `ftpnat events` put it
    /// in front).
    pub fn text(&self) -> String {
        let mut line = format!("{} session {}", self.event, self.session);
        for (label, value) in [
            ("kind", self.kind.clone()),
            ("command", self.command.clone()),
            ("argument", self.argument.as_ref().map(|a| format!("{a:?}"))),
            ("reason", self.reason.clone()),
            ("endpoint", self.endpoint.clone()),
            ("bytes", self.bytes.map(|b| b.to_string())),
            ("data_flows", self.data_flows.map(|n| n.to_string())),
        ] {
            if let Some(value) = value {
                line.push_str(&format!(" {label}={value}"));
            }
        }
        line
    }
}

fn wall_clock(ts_ns: u64) -> String {
    let age = Duration::from_nanos(monotonic_now_ns().saturating_sub(ts_ns));
    let at = SystemTime::now()
        .checked_sub(age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since_epoch.subsec_millis()
    )
}

/// The Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn expectation_kind(raw: u8) -> Option<String> {
    ExpectationKind::from_raw(raw).map(|k| k.as_str().to_owned())
}

/// Turns a raw event into its record; `session` is the session's id.
pub fn record(event: &Event, session: String) -> Option<EventRecord> {
    let kind = EventKind::from_raw(event.kind)?;
    let mut record = EventRecord {
        time: wall_clock(event.ts_ns),
        event: kind.as_str().to_owned(),
        session,
        kind: None,
        command: None,
        argument: None,
        reason: None,
        endpoint: None,
        bytes: None,
        data_flows: None,
    };
    let at = Some(endpoint(event.addr, event.port));
    match kind {
        EventKind::SessionOpened => {
            record.kind = SessionKind::from_raw(event.detail).map(|k| k.as_str().to_owned());
            record.endpoint = at;
        }
        EventKind::Command => {
            let name = CommandName::from_raw(event.detail).unwrap_or(CommandName::Other);
            record.command = Some(name.as_str().to_owned());
            let len = usize::from(event.text_len).min(EVENT_TEXT_LEN);
            if name != CommandName::Pass && len > 0 {
                record.argument = Some(String::from_utf8_lossy(&event.text[..len]).into_owned());
            }
        }
        EventKind::PassiveReply => {
            record.kind = Some(format!("2{}", event.detail));
            record.endpoint = at;
        }
        EventKind::ExpectationCreated
        | EventKind::DataFlowOpened
        | EventKind::ExpectationExpired => {
            record.kind = expectation_kind(event.detail);
            record.endpoint = at;
        }
        EventKind::Refused => {
            record.reason = Some(
                RefusalReason::from_code(u32::from(event.detail))
                    .map_or("unsolicited reply", RefusalReason::as_str)
                    .to_owned(),
            );
        }
        EventKind::Malformed => {
            record.reason =
                MalformedReason::from_code(u32::from(event.detail)).map(|r| r.as_str().to_owned());
        }
        EventKind::TlsStarted | EventKind::WindowExhausted => {}
        EventKind::DataFlowClosed => {
            record.endpoint = at;
            record.bytes = Some(event.value);
        }
        EventKind::SessionClosed => record.data_flows = Some(event.value),
    }
    Some(record)
}

/// Session ids for events: the same as `ftpnat sessions` shows, remembered from when the session
/// is first seen until it closes (its flows are gone by then).
#[derive(Default)]
pub struct SessionIds {
    known: HashMap<FlowKey, String>,
}

impl SessionIds {
    /// The id of `session`, looking it up in the maps the first time; `public` is the translated
    /// source of its control connection (masquerade) when known.
    pub fn id(
        &mut self,
        session: &FlowKey,
        entry: Option<&SessionEntry>,
        public: Option<([u8; 4], [u8; 2])>,
    ) -> String {
        if let Some(id) = self.known.get(session) {
            return id.clone();
        }
        let kind = entry.and_then(|e| SessionKind::from_raw(e.kind));
        // A session whose control connection is not (or no longer) in the flow table is named by
        // its client.
        let id = session_id(session, kind, public)
            .unwrap_or_else(|| endpoint(session.saddr, session.sport));
        // Remembered only while the session lives: a late event of a session already gone must
        // not pin its id on a later session of the same addresses.
        if entry.is_some() {
            self.known.insert(*session, id.clone());
        }
        id
    }

    pub fn forget(&mut self, session: &FlowKey) {
        self.known.remove(session);
    }
}

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

/// The longest request line a client may send (`transfers <session id>`).
const MAX_REQUEST_LEN: u64 = 256;

/// The abstract socket the agent serves events on, for a pin dir.
fn socket_name(pin_dir: &Path) -> String {
    format!("ftpnat-events:{}", pin_dir.display())
}

/// Listens on the event socket: hands every `events` subscriber the events sent on `events`, and
/// answers `transfers <id>` from `log`.
pub fn serve_subscribers(
    pin_dir: &Path,
    events: &broadcast::Sender<String>,
    log: &SharedTransferLog,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let name = socket_name(pin_dir);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .context("naming the event socket")?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).with_context(|| {
        format!("listening on the event socket @{name} (is another agent using this --pin-dir?)")
    })?;
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    let events = events.clone();
    let log = Arc::clone(log);
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            // The stream names users and files: for root and the agent's own user only (an
            // abstract socket has no file permissions to say so).
            // SAFETY: geteuid has no preconditions.
            let agent_uid = unsafe { libc::geteuid() };
            let allowed = stream
                .peer_cred()
                .is_ok_and(|cred| cred.uid() == 0 || cred.uid() == agent_uid);
            if !allowed {
                continue;
            }
            let mut receiver = events.subscribe();
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut request = String::new();
                // A request is one short line; a longer one is not a request.
                if (&mut stream)
                    .take(MAX_REQUEST_LEN)
                    .read_line(&mut request)
                    .await
                    .is_err()
                {
                    return;
                }
                if let Some(id) = request.trim().strip_prefix("transfers ") {
                    let transfers = log.lock().map(|log| log.transfers(id)).unwrap_or_default();
                    let reply = serde_json::to_string(&transfers).unwrap_or_else(|_| "[]".into());
                    let _ = stream
                        .get_mut()
                        .write_all(format!("{reply}\n").as_bytes())
                        .await;
                    return;
                }
                let mut stream = stream.into_inner();
                loop {
                    let line = match receiver.recv().await {
                        Ok(line) => line,
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            log::warn!(
                                "an `ftpnat events` reader fell behind: {missed} events skipped"
                            );
                            continue;
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    };
                    if stream
                        .write_all(format!("{line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    }))
}

fn connect(pin_dir: &Path) -> anyhow::Result<std::os::unix::net::UnixStream> {
    let name = socket_name(pin_dir);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    std::os::unix::net::UnixStream::connect_addr(&addr).map_err(|err| {
        anyhow!(
            "no `ftpnat run` serves events for --pin-dir {} in this network namespace ({err}): \
             is it running, with that pin dir?",
            pin_dir.display()
        )
    })
}

/// Asks the agent for a session's transfers.
pub fn query_transfers(pin_dir: &Path, session: &str) -> anyhow::Result<Vec<TransferRecord>> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = connect(pin_dir)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("transfers {session}\n").as_bytes())?;
    let mut reply = String::new();
    std::io::BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).context("reading the agent's answer")
}

/// `ftpnat events`: follows the agent's events until interrupted.
pub fn follow(pin_dir: &Path, json: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let stream = connect(pin_dir)?;
        stream.set_nonblocking(true)?;
        let mut stream = UnixStream::from_std(stream)?;
        stream.write_all(b"events\n").await?;
        let mut lines = BufReader::new(stream).lines();
        while let Some(line) = lines.next_line().await? {
            if json {
                println!("{line}");
            } else {
                match serde_json::from_str::<EventRecord>(&line) {
                    Ok(record) => println!("{} {}", record.time, record.text()),
                    Err(_) => println!("{line}"),
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: EventKind, detail: u8, text: &[u8]) -> Event {
        let mut event = Event {
            ts_ns: monotonic_now_ns(),
            session: FlowKey {
                saddr: [10, 0, 0, 2],
                daddr: [203, 0, 113, 10],
                sport: 40000u16.to_be_bytes(),
                dport: 21u16.to_be_bytes(),
            },
            kind: kind as u8,
            detail,
            text_len: text.len() as u8,
            _pad: 0,
            addr: [203, 0, 113, 254],
            port: 62000u16.to_be_bytes(),
            _pad2: [0; 2],
            value: 1234,
            text: [0; EVENT_TEXT_LEN],
        };
        event.text[..text.len()].copy_from_slice(text);
        event
    }

    #[test]
    fn commands_carry_their_argument_but_never_a_password() {
        let user = record(
            &raw(EventKind::Command, CommandName::User as u8, b"alice"),
            "s".into(),
        )
        .unwrap();
        assert_eq!(user.command.as_deref(), Some("USER"));
        assert_eq!(user.argument.as_deref(), Some("alice"));
        // Even if a datapath bug sent the text, a PASS event never shows it.
        let pass = record(
            &raw(EventKind::Command, CommandName::Pass as u8, b"secret"),
            "s".into(),
        )
        .unwrap();
        assert_eq!(pass.command.as_deref(), Some("PASS"));
        assert_eq!(pass.argument, None);
        assert!(!serde_json::to_string(&pass).unwrap().contains("secret"));
        assert!(!pass.text().contains("secret"));
    }

    #[test]
    fn records_name_reasons_endpoints_and_counts() {
        let refused = record(
            &raw(EventKind::Refused, RefusalReason::Bounce as u8, b""),
            "s".into(),
        )
        .unwrap();
        assert_eq!(
            refused.reason.as_deref(),
            Some(RefusalReason::Bounce.as_str())
        );
        let unsolicited = record(&raw(EventKind::Refused, 0, b""), "s".into()).unwrap();
        assert_eq!(unsolicited.reason.as_deref(), Some("unsolicited reply"));
        let reply = record(&raw(EventKind::PassiveReply, 27, b""), "s".into()).unwrap();
        assert_eq!(reply.kind.as_deref(), Some("227"));
        assert_eq!(reply.endpoint.as_deref(), Some("203.0.113.254:62000"));
        let closed = record(&raw(EventKind::DataFlowClosed, 0, b""), "s".into()).unwrap();
        assert_eq!(closed.bytes, Some(1234));
        let ended = record(&raw(EventKind::SessionClosed, 0, b""), "s".into()).unwrap();
        assert_eq!(ended.data_flows, Some(1234));
        assert_eq!(
            record(&raw(EventKind::Command, 0, b""), "s".into())
                .unwrap()
                .command
                .as_deref(),
            Some("other")
        );
        let mut unknown = raw(EventKind::Command, 0, b"");
        unknown.kind = 200;
        assert_eq!(record(&unknown, "s".into()), None);
    }

    #[test]
    fn records_round_trip_through_json() {
        let user = record(
            &raw(EventKind::Command, CommandName::Retr as u8, b"data.bin"),
            "10.0.0.2:1".into(),
        )
        .unwrap();
        let line = serde_json::to_string(&user).unwrap();
        assert_eq!(serde_json::from_str::<EventRecord>(&line).unwrap(), user);
        assert!(
            user.text().contains("command=RETR argument=\"data.bin\""),
            "{}",
            user.text()
        );
    }

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

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
