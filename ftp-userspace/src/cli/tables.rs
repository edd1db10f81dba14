//! `ftpnat sessions|expectations|flows`: the datapath's tables, read from the pins of a running
//! agent, as aligned tables or JSON.

use std::{collections::HashMap as StdHashMap, net::Ipv4Addr, path::Path};

use ftp_common::maps::{
    DatapathConfig, ExpectKey, Expectation, ExpectationKind, ExpectationPath, FlowDirection,
    FlowEntry, FlowKey, FlowKind, SessionEntry, SessionKind, expects, flows, sessions,
};
use serde::Serialize;

use super::render::{emit, print_table, printable, seconds};
use crate::{
    datapath::{clock::monotonic_now_ns, maps::PinnedMaps},
    report::sessions::{SessionState, closing_sessions, endpoint, session_id},
};

#[derive(Serialize)]
pub struct SessionRow {
    pub id: String,
    pub kind: &'static str,
    pub state: &'static str,
    pub client: String,
    pub server: String,
    pub public: String,
    /// The name of the client's last USER command ("" before any).
    pub user: String,
    pub data_flows: u32,
    /// IP bytes its live connections (control and data) carried from the client's side, and to it.
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub age_ms: u64,
    pub malformed_lines: u32,
    pub refusals: u32,
    /// Events of the session the datapath dropped: over its budget (a flood of lines).
    pub events_dropped: u32,
}

#[derive(Serialize)]
pub struct ExpectationRow {
    pub session: String,
    pub kind: &'static str,
    /// Who may connect (any source port).
    pub peer: String,
    /// Where they connect to, as the router sees it.
    pub public: String,
    /// Where the connection is delivered.
    pub target: String,
    pub expires_in_ms: u64,
}

#[derive(Serialize)]
pub struct FlowRow {
    pub session: String,
    pub kind: &'static str,
    /// The connection as its opener sent it.
    pub orig: String,
    /// The connection's answers as they arrive from the other side.
    pub reply: String,
    pub bytes: u64,
    pub packets: u64,
}

/// The pinned tables, read once and indexed: the reports look entries up by key, and a full
/// table holds tens of thousands of them.
struct Tables {
    config: DatapathConfig,
    flows: StdHashMap<FlowKey, FlowEntry>,
    sessions: StdHashMap<FlowKey, SessionEntry>,
    expects: Vec<(ExpectKey, Expectation)>,
    /// Bytes of each session's live flows: (from the client's side, towards it).
    bytes: StdHashMap<FlowKey, (u64, u64)>,
}

/// Read with the kernel's batch lookups (`PinnedMaps::whole`): a table of a million flows is a
/// few hundred calls, not two million.
fn read_tables(pin_dir: &Path) -> anyhow::Result<Tables> {
    let maps = PinnedMaps::new(pin_dir);
    let config = maps.config()?;
    let flows: StdHashMap<FlowKey, FlowEntry> = zipped(maps.whole(&flows::TABLE)?).collect();
    // An entry keyed by a packet from the session's client carries bytes from the client.
    let mut bytes: StdHashMap<FlowKey, (u64, u64)> = StdHashMap::new();
    for (key, entry) in &flows {
        let (from, to) = bytes.entry(entry.session).or_default();
        if key.saddr == entry.session.saddr {
            *from += entry.bytes;
        } else {
            *to += entry.bytes;
        }
    }
    Ok(Tables {
        config,
        flows,
        sessions: zipped(maps.whole(&sessions::TABLE)?).collect(),
        expects: zipped(maps.whole(&expects::TABLE)?).collect(),
        bytes,
    })
}

/// A batch read's keys and values as pairs.
fn zipped<K, V>((keys, values): (Vec<K>, Vec<V>)) -> impl Iterator<Item = (K, V)> {
    keys.into_iter().zip(values)
}

impl Tables {
    fn kind_of(&self, session: &FlowKey) -> Option<SessionKind> {
        self.sessions
            .get(session)
            .and_then(|entry| SessionKind::from_raw(entry.kind))
    }

    /// The public endpoint of a session: for a masqueraded client its control connection's
    /// translated source, for a published server the address and port the client connected to.
    fn public_of(&self, session: &FlowKey) -> String {
        if self.kind_of(session) == Some(SessionKind::Publish) {
            return endpoint(session.daddr, session.dport);
        }
        self.translated_source(session)
            .map_or_else(|| "-".to_owned(), |(addr, port)| endpoint(addr, port))
    }

    /// Where a masqueraded session's control connection leaves the router from, while it lives.
    fn translated_source(&self, session: &FlowKey) -> Option<([u8; 4], [u8; 2])> {
        self.flows.get(session).map(|e| (e.new_saddr, e.new_sport))
    }

    /// Bytes of the session's live flows: (from the client's side, towards it).
    fn bytes_of(&self, session: &FlowKey) -> (u64, u64) {
        self.bytes.get(session).copied().unwrap_or_default()
    }

    /// A session's identifier (see [`session_id`]); `-` for a masqueraded session whose control
    /// connection is gone.
    fn id_of(&self, session: &FlowKey) -> String {
        session_id(
            session,
            self.kind_of(session),
            self.translated_source(session),
        )
        .unwrap_or_else(|| "-".to_owned())
    }
}

pub fn sessions(pin_dir: &Path) -> anyhow::Result<Vec<SessionRow>> {
    let tables = read_tables(pin_dir)?;
    let now = monotonic_now_ns();
    let closing = closing_sessions(tables.flows.values());
    let mut rows: Vec<SessionRow> = tables
        .sessions
        .iter()
        .map(|(key, entry)| SessionRow {
            id: tables.id_of(key),
            bytes_from_client: tables.bytes_of(key).0,
            bytes_to_client: tables.bytes_of(key).1,
            kind: SessionKind::from_raw(entry.kind).map_or("unknown", SessionKind::as_str),
            state: SessionState::of(&entry.state, closing.contains(key)).as_str(),
            client: endpoint(key.saddr, key.sport),
            server: endpoint(entry.server_addr, entry.server_port),
            public: tables.public_of(key),
            user: String::from_utf8_lossy(
                entry
                    .user
                    .get(..usize::from(entry.user_len))
                    .unwrap_or_default(),
            )
            .into_owned(),
            data_flows: entry.data_flows,
            age_ms: now.saturating_sub(entry.opened_ns) / 1_000_000,
            malformed_lines: entry.malformed_lines,
            refusals: entry.refusals,
            events_dropped: entry.events.dropped,
        })
        .collect();
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(rows)
}

pub fn expectations(pin_dir: &Path) -> anyhow::Result<Vec<ExpectationRow>> {
    let tables = read_tables(pin_dir)?;
    let now = monotonic_now_ns();
    let public_ip = tables.config.public_ip;
    Ok(tables
        .expects
        .iter()
        .map(|(key, e)| {
            ExpectationRow {
                session: tables.id_of(&e.session),
                kind: ExpectationKind::from_raw(e.kind).map_or("unknown", ExpectationKind::as_str),
                peer: Ipv4Addr::from(e.peer).to_string(),
                // Inbound: the reserved window port. Outbound: the announced address, which the
                // connection leaves for (its window port is taken when it opens).
                public: match ExpectationPath::from_raw(e.path) {
                    Some(ExpectationPath::Inbound) => endpoint(public_ip, key.dport),
                    _ => endpoint(key.daddr, key.dport),
                },
                target: endpoint(e.target_addr, e.target_port),
                expires_in_ms: e.expires_ns.saturating_sub(now) / 1_000_000,
            }
        })
        .collect())
}

pub fn flows(pin_dir: &Path) -> anyhow::Result<Vec<FlowRow>> {
    let tables = read_tables(pin_dir)?;
    let mut rows: Vec<FlowRow> = tables
        .flows
        .iter()
        .filter(|(_, e)| e.direction == FlowDirection::Original as u8)
        .map(|(key, e)| {
            let reply_key = e.reply_key();
            let reply = tables.flows.get(&reply_key);
            FlowRow {
                session: tables.id_of(&e.session),
                kind: FlowKind::from_raw(e.kind).map_or("unknown", FlowKind::as_str),
                orig: format!(
                    "{} -> {}",
                    endpoint(key.saddr, key.sport),
                    endpoint(key.daddr, key.dport)
                ),
                reply: format!(
                    "{} -> {}",
                    endpoint(reply_key.saddr, reply_key.sport),
                    endpoint(reply_key.daddr, reply_key.dport)
                ),
                bytes: e.bytes + reply.map_or(0, |r| r.bytes),
                packets: e.packets + reply.map_or(0, |r| r.packets),
            }
        })
        .collect();
    // A session's connections together, its control connection first.
    rows.sort_by(|a, b| (&a.session, a.kind, &a.orig).cmp(&(&b.session, b.kind, &b.orig)));
    Ok(rows)
}

/// `ftpnat sessions ID`: one session, its transfers (from the agent, which follows them) and its
/// expectations.
pub fn print_session(pin_dir: &Path, id: &str, json: bool) -> anyhow::Result<()> {
    let session = sessions(pin_dir)?
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no session {id} under {}; `ftpnat sessions` lists them",
                pin_dir.display()
            )
        })?;
    let expectations: Vec<ExpectationRow> = expectations(pin_dir)?
        .into_iter()
        .filter(|e| e.session == id)
        .collect();
    let transfers = super::events::query_transfers(pin_dir, id);
    if json {
        let report = serde_json::json!({
            "session": session,
            "transfers": transfers.as_ref().ok(),
            "expectations": expectations,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let fields = serde_json::to_value(&session)?;
    if let Some(fields) = fields.as_object() {
        let rows: Vec<Vec<String>> = fields
            .iter()
            .map(|(key, value)| {
                let value = value.as_str().map_or_else(|| value.to_string(), printable);
                vec![format!("{key}:"), value]
            })
            .collect();
        print_table(&rows);
    }
    println!();
    match &transfers {
        Ok(transfers) => emit(
            transfers,
            false,
            &["TRANSFER", "FILE", "MODE", "BYTES", "DURATION", "STARTED"],
            |t| {
                vec![
                    t.command.clone().unwrap_or_else(|| "-".into()),
                    t.file.as_deref().map_or_else(|| "-".into(), printable),
                    t.mode.clone().unwrap_or_else(|| "-".into()),
                    t.bytes.map_or_else(|| "running".into(), |b| b.to_string()),
                    t.duration_ms.map_or_else(|| "-".into(), seconds),
                    t.started.clone(),
                ]
            },
        )?,
        Err(err) => println!("transfers: unavailable ({err:#})"),
    }
    println!();
    emit(
        &expectations,
        false,
        &["EXPECTATION", "PEER", "PUBLIC", "TARGET", "EXPIRES IN"],
        |e| {
            vec![
                e.kind.to_owned(),
                e.peer.clone(),
                e.public.clone(),
                e.target.clone(),
                seconds(e.expires_in_ms),
            ]
        },
    )
}

pub fn print(what: &str, pin_dir: &Path, json: bool) -> anyhow::Result<()> {
    match what {
        "sessions" => emit(
            &sessions(pin_dir)?,
            json,
            &[
                "ID",
                "KIND",
                "STATE",
                "CLIENT",
                "PUBLIC",
                "SERVER",
                "USER",
                "DATA FLOWS",
                "FROM CLIENT",
                "TO CLIENT",
                "AGE",
                "MALFORMED",
                "REFUSED",
                "EVENTS DROPPED",
            ],
            |r| {
                vec![
                    r.id.clone(),
                    r.kind.to_owned(),
                    r.state.to_owned(),
                    r.client.clone(),
                    r.public.clone(),
                    r.server.clone(),
                    printable(&r.user),
                    r.data_flows.to_string(),
                    r.bytes_from_client.to_string(),
                    r.bytes_to_client.to_string(),
                    seconds(r.age_ms),
                    r.malformed_lines.to_string(),
                    r.refusals.to_string(),
                    r.events_dropped.to_string(),
                ]
            },
        ),
        "expectations" => emit(
            &expectations(pin_dir)?,
            json,
            &["SESSION", "KIND", "PEER", "PUBLIC", "TARGET", "EXPIRES IN"],
            |r| {
                vec![
                    r.session.clone(),
                    r.kind.to_owned(),
                    r.peer.clone(),
                    r.public.clone(),
                    r.target.clone(),
                    seconds(r.expires_in_ms),
                ]
            },
        ),
        _ => emit(
            &flows(pin_dir)?,
            json,
            &["SESSION", "KIND", "ORIG", "REPLY", "PACKETS", "BYTES"],
            |r| {
                vec![
                    r.session.clone(),
                    r.kind.to_owned(),
                    r.orig.clone(),
                    r.reply.clone(),
                    r.packets.to_string(),
                    r.bytes.to_string(),
                ]
            },
        ),
    }
}
