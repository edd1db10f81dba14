//! `ftpnat sessions|expectations|flows`: the datapath's tables, read from the pins of a running
//! agent, as aligned tables or JSON.

use std::{collections::HashMap as StdHashMap, path::Path};

use ftp_common::maps::{
    ExpectKey, Expectation, ExpectationKind, FlowDirection, FlowEntry, FlowKey, FlowKind, IpBytes,
    SessionEntry, SessionKind, expects, flows, ip, sessions,
};
use serde::Serialize;

use super::render::{emit, print_table, printable, seconds};
use crate::{
    datapath::{clock::monotonic_now_ns, maps::PinnedMaps},
    report::sessions::{SessionState, closing_sessions, endpoint, nat64_endpoint, session_id},
};

#[derive(Serialize)]
pub struct SessionRow {
    pub id: String,
    pub kind: &'static str,
    pub state: &'static str,
    /// The client's address and port as it sent them (a NAT64 client's IPv6 ones).
    pub client: String,
    /// The server's own address and port (a NAT64 session's IPv4 server).
    pub server: String,
    /// Where the session meets the outside (see `Tables::public_of`): a NAT64 session's IPv4
    /// pool address and window port.
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
    Ok(Tables::new(
        zipped(maps.whole(&flows::TABLE)?).collect(),
        zipped(maps.whole(&sessions::TABLE)?).collect(),
        zipped(maps.whole(&expects::TABLE)?).collect(),
    ))
}

/// A batch read's keys and values as pairs.
fn zipped<K, V>((keys, values): (Vec<K>, Vec<V>)) -> impl Iterator<Item = (K, V)> {
    keys.into_iter().zip(values)
}

impl Tables {
    fn new(
        flows: StdHashMap<FlowKey, FlowEntry>,
        sessions: StdHashMap<FlowKey, SessionEntry>,
        expects: Vec<(ExpectKey, Expectation)>,
    ) -> Self {
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
        Self {
            flows,
            sessions,
            expects,
            bytes,
        }
    }

    fn kind_of(&self, session: &FlowKey) -> Option<SessionKind> {
        self.sessions
            .get(session)
            .and_then(|entry| SessionKind::from_raw(entry.kind))
    }

    /// The public endpoint of a session: for a masqueraded client its control connection's
    /// translated source, for a NAT64 client likewise (the IPv4 pool address and a window port:
    /// its IPv6 connection leaves as IPv4), for a published server the address and port the
    /// client connected to, for a firewalled client its own address and port (not translated).
    fn public_of(&self, session: &FlowKey) -> String {
        match self.kind_of(session) {
            Some(SessionKind::Publish) => endpoint(session.daddr, session.dport),
            Some(SessionKind::Firewall) => endpoint(session.saddr, session.sport),
            Some(SessionKind::Masquerade | SessionKind::Nat64) | None => self
                .translated_source(session)
                .map_or_else(|| "-".to_owned(), |(addr, port)| endpoint(addr, port)),
        }
    }

    /// Where a masqueraded or NAT64 session's control connection leaves the router from, while
    /// it lives.
    fn translated_source(&self, session: &FlowKey) -> Option<(IpBytes, [u8; 2])> {
        self.flows.get(session).map(|e| (e.new_saddr, e.new_sport))
    }

    /// An address and port of one of `session`'s connections: under a NAT64 session's prefix (its
    /// server's IPv6 address, but for the last 32 bits) with the IPv4 address dotted.
    fn endpoint_in(&self, session: &FlowKey, addr: IpBytes, port: [u8; 2]) -> String {
        match self.kind_of(session) {
            Some(SessionKind::Nat64) => nat64_endpoint(addr, port, &session.daddr),
            Some(SessionKind::Masquerade | SessionKind::Publish | SessionKind::Firewall) | None => {
                endpoint(addr, port)
            }
        }
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

    fn session_rows(&self, now: u64) -> Vec<SessionRow> {
        let closing = closing_sessions(self.flows.values());
        let mut rows: Vec<SessionRow> = self
            .sessions
            .iter()
            .map(|(key, entry)| SessionRow {
                id: self.id_of(key),
                bytes_from_client: self.bytes_of(key).0,
                bytes_to_client: self.bytes_of(key).1,
                kind: SessionKind::from_raw(entry.kind).map_or("unknown", SessionKind::as_str),
                state: SessionState::of(&entry.state, closing.contains(key)).as_str(),
                client: endpoint(key.saddr, key.sport),
                server: endpoint(entry.server_addr, entry.server_port),
                public: self.public_of(key),
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
        rows
    }

    fn expectation_rows(&self, now: u64) -> Vec<ExpectationRow> {
        self.expects
            .iter()
            .map(|(key, e)| {
                ExpectationRow {
                    session: self.id_of(&e.session),
                    kind: ExpectationKind::from_raw(e.kind)
                        .map_or("unknown", ExpectationKind::as_str),
                    peer: ip::to_ip(&e.peer).to_string(),
                    // Inbound: the reserved window port of the public address (or a firewalled
                    // client's announced address and port). Outbound: the announced address, which
                    // the connection leaves for (its window port is taken when it opens).
                    public: self.endpoint_in(&e.session, key.daddr, key.dport),
                    target: self.endpoint_in(&e.session, e.target_addr, e.target_port),
                    expires_in_ms: e.expires_ns.saturating_sub(now) / 1_000_000,
                }
            })
            .collect()
    }

    fn flow_rows(&self) -> Vec<FlowRow> {
        let mut rows: Vec<FlowRow> = self
            .flows
            .iter()
            .filter(|(_, e)| e.direction == FlowDirection::Original as u8)
            .map(|(key, e)| {
                let reply_key = e.reply_key();
                let reply = self.flows.get(&reply_key);
                FlowRow {
                    session: self.id_of(&e.session),
                    kind: FlowKind::from_raw(e.kind).map_or("unknown", FlowKind::as_str),
                    orig: format!(
                        "{} -> {}",
                        self.endpoint_in(&e.session, key.saddr, key.sport),
                        self.endpoint_in(&e.session, key.daddr, key.dport)
                    ),
                    reply: format!(
                        "{} -> {}",
                        self.endpoint_in(&e.session, reply_key.saddr, reply_key.sport),
                        self.endpoint_in(&e.session, reply_key.daddr, reply_key.dport)
                    ),
                    bytes: e.bytes + reply.map_or(0, |r| r.bytes),
                    packets: e.packets + reply.map_or(0, |r| r.packets),
                }
            })
            .collect();
        // A session's connections together, its control connection first.
        rows.sort_by(|a, b| (&a.session, a.kind, &a.orig).cmp(&(&b.session, b.kind, &b.orig)));
        rows
    }
}

pub fn sessions(pin_dir: &Path) -> anyhow::Result<Vec<SessionRow>> {
    Ok(read_tables(pin_dir)?.session_rows(monotonic_now_ns()))
}

pub fn expectations(pin_dir: &Path) -> anyhow::Result<Vec<ExpectationRow>> {
    Ok(read_tables(pin_dir)?.expectation_rows(monotonic_now_ns()))
}

pub fn flows(pin_dir: &Path) -> anyhow::Result<Vec<FlowRow>> {
    Ok(read_tables(pin_dir)?.flow_rows())
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

/// A session's row of `ftpnat sessions`, in the order of its headers.
fn session_cells(r: &SessionRow) -> Vec<String> {
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
            session_cells,
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

#[cfg(test)]
mod tests {
    use ftp_common::{
        CommandScanner, LineTracker, ReplyScanner, SeqAdjust, TcpWindow,
        maps::{EventBudget, ExpectationPath, HeldField, RewriteRecord, SESSION_USER_LEN},
    };

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn key(client: &str, sport: u16, server: &str) -> FlowKey {
        FlowKey {
            saddr: ip::from_ip(client.parse().unwrap()),
            daddr: ip::from_ip(server.parse().unwrap()),
            sport: sport.to_be_bytes(),
            dport: 21u16.to_be_bytes(),
        }
    }

    /// A session record as the datapath starts one (all-zero protocol state), of `kind`, with
    /// `session`'s destination as its server.
    fn session_entry(session: &FlowKey, kind: SessionKind) -> SessionEntry {
        let mut user = [0; SESSION_USER_LEN];
        user[..5].copy_from_slice(b"alice");
        SessionEntry {
            opened_ns: SEC,
            state: ftp_common::Session::new(),
            client_lines: LineTracker::new(),
            server_lines: LineTracker::new(),
            lan_ifindex: 2,
            data_flows: 1,
            malformed_lines: 0,
            refusals: 0,
            commands: CommandScanner::new(),
            replies: ReplyScanner::new(),
            client_seq: SeqAdjust::new(),
            server_seq: SeqAdjust::new(),
            client_rewrite: RewriteRecord::NONE,
            server_rewrite: RewriteRecord::NONE,
            server_addr: session.daddr,
            server_port: session.dport,
            kind: kind as u8,
            user_len: 5,
            released_seen: [0; 4],
            _pad: [0; 4],
            user,
            held: HeldField::new(),
            server_held: HeldField::new(),
            events: EventBudget::new(),
            client_window: TcpWindow::new(),
            server_window: TcpWindow::new(),
        }
    }

    /// An IPv6 client's session followed untranslated (firewall mode), with its control
    /// connection and one active data connection, and an IPv4 client's masqueraded session.
    fn dual_stack_tables() -> Tables {
        let v6 = key("2001:db8:10::2", 40000, "2001:db8:ffff::10");
        let v6_data = FlowKey {
            saddr: v6.daddr,
            daddr: v6.saddr,
            sport: 20u16.to_be_bytes(),
            dport: 50000u16.to_be_bytes(),
        };
        let v4 = key("10.0.0.2", 40000, "203.0.113.10");
        let mut flows = StdHashMap::new();
        flows.extend(FlowEntry::established_untranslated(
            v6,
            FlowKind::Control,
            (SEC, SEC),
        ));
        flows.extend(
            FlowEntry::established_untranslated(v6_data, FlowKind::Data, (SEC, SEC)).map(
                |(key, entry)| {
                    (
                        key,
                        FlowEntry {
                            session: v6,
                            ..entry
                        },
                    )
                },
            ),
        );
        // The masqueraded control connection leaves from 203.0.113.254:61000.
        let v4_control = FlowEntry {
            new_saddr: ip::v4_mapped([203, 0, 113, 254]),
            new_sport: 61000u16.to_be_bytes(),
            ..FlowEntry::established_untranslated(v4, FlowKind::Control, (SEC, SEC))[0].1
        };
        flows.insert(v4, v4_control);
        flows.insert(v4_control.reply_key(), v4_control.reply_of(&v4, 2));
        let sessions = StdHashMap::from([
            (v6, session_entry(&v6, SessionKind::Firewall)),
            (v4, session_entry(&v4, SessionKind::Masquerade)),
        ]);
        // The IPv6 client announced [2001:db8:10::2]:50001 (EPRT): the server may connect to it.
        let expects = vec![(
            ExpectKey::inbound(v6.saddr, 50001),
            Expectation {
                expires_ns: 10 * SEC,
                session: v6,
                target_addr: v6.saddr,
                lan_ifindex: 2,
                target_port: 50001u16.to_be_bytes(),
                public_port: 0,
                peer: v6.daddr,
                kind: ExpectationKind::Active as u8,
                path: ExpectationPath::Inbound as u8,
                _pad: [0; 2],
            },
        )];
        Tables::new(flows, sessions, expects)
    }

    #[test]
    fn an_ipv6_session_shows_in_its_own_form_beside_an_ipv4_one() {
        let rows = dual_stack_tables().session_rows(3 * SEC);
        let cells: Vec<Vec<String>> = rows.iter().map(session_cells).collect();
        assert_eq!(
            cells,
            [
                [
                    "203.0.113.254:61000",
                    "masquerade",
                    "command",
                    "10.0.0.2:40000",
                    "203.0.113.254:61000",
                    "203.0.113.10:21",
                    "alice",
                    "1",
                    "60",
                    "60",
                    "2.0s",
                    "0",
                    "0",
                    "0",
                ]
                .map(String::from)
                .to_vec(),
                [
                    "[2001:db8:10::2]:40000",
                    "firewall",
                    "command",
                    "[2001:db8:10::2]:40000",
                    "[2001:db8:10::2]:40000",
                    "[2001:db8:ffff::10]:21",
                    "alice",
                    "1",
                    "120",
                    "120",
                    "2.0s",
                    "0",
                    "0",
                    "0",
                ]
                .map(String::from)
                .to_vec(),
            ]
        );
    }

    /// An IPv6 client's NAT64 session to the IPv4 server 203.0.113.10 (reached at
    /// 64:ff9b::203.0.113.10), leaving from the pool address 198.51.100.7: its control
    /// connection, a passive data connection, and an EPRT turned into a PORT that reserved
    /// window port 61003 for the server's connection.
    fn nat64_tables() -> Tables {
        let control = key("2001:db8:10::2", 40000, "64:ff9b::203.0.113.10");
        let pool = ip::v4_mapped([198, 51, 100, 7]);
        let server = ip::v4_mapped([203, 0, 113, 10]);
        let translated = |key: FlowKey, kind: FlowKind, window_port: u16| FlowEntry {
            session: control,
            new_saddr: pool,
            new_sport: window_port.to_be_bytes(),
            new_daddr: server,
            public_port: window_port,
            ..FlowEntry::established_untranslated(key, kind, (SEC, SEC))[0].1
        };
        let mut flows = StdHashMap::new();
        let control_entry = translated(control, FlowKind::Control, 61001);
        let data = FlowKey {
            dport: 40100u16.to_be_bytes(),
            sport: 50000u16.to_be_bytes(),
            ..control
        };
        let data_entry = translated(data, FlowKind::Data, 61002);
        for (key, entry) in [(control, control_entry), (data, data_entry)] {
            flows.insert(key, entry);
            flows.insert(entry.reply_key(), entry.reply_of(&key, 2));
        }
        let sessions = StdHashMap::from([(
            control,
            SessionEntry {
                server_addr: server,
                ..session_entry(&control, SessionKind::Nat64)
            },
        )]);
        let expects = vec![(
            ExpectKey::inbound(pool, 61003),
            Expectation {
                expires_ns: 10 * SEC,
                session: control,
                target_addr: control.saddr,
                lan_ifindex: 2,
                target_port: 50001u16.to_be_bytes(),
                public_port: 61003,
                peer: server,
                kind: ExpectationKind::Active as u8,
                path: ExpectationPath::Inbound as u8,
                _pad: [0; 2],
            },
        )];
        Tables::new(flows, sessions, expects)
    }

    #[test]
    fn a_nat64_session_shows_its_ipv6_client_ipv4_server_and_pool_endpoint() {
        let tables = nat64_tables();
        let rows = tables.session_rows(3 * SEC);
        let cells: Vec<Vec<String>> = rows.iter().map(session_cells).collect();
        assert_eq!(
            cells,
            [[
                "198.51.100.7:61001",
                "nat64",
                "command",
                "[2001:db8:10::2]:40000",
                "198.51.100.7:61001",
                "203.0.113.10:21",
                "alice",
                "1",
                // Both connections' entries keyed by the client's packets count from it, those
                // keyed by the server's IPv4 ones towards it.
                "120",
                "120",
                "2.0s",
                "0",
                "0",
                "0",
            ]
            .map(String::from)
            .to_vec()]
        );
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["kind"], "nat64");
        assert_eq!(json[0]["client"], "[2001:db8:10::2]:40000");
        assert_eq!(json[0]["server"], "203.0.113.10:21");
        assert_eq!(json[0]["public"], "198.51.100.7:61001");
    }

    #[test]
    fn a_nat64_flow_is_ipv6_one_way_and_ipv4_the_other() {
        let tables = nat64_tables();
        let flows = serde_json::to_value(tables.flow_rows()).unwrap();
        assert_eq!(
            flows,
            serde_json::json!([
                {
                    "session": "198.51.100.7:61001",
                    "kind": "control",
                    "orig": "[2001:db8:10::2]:40000 -> [64:ff9b::203.0.113.10]:21",
                    "reply": "203.0.113.10:21 -> 198.51.100.7:61001",
                    "bytes": 120,
                    "packets": 2,
                },
                {
                    "session": "198.51.100.7:61001",
                    "kind": "data",
                    "orig": "[2001:db8:10::2]:50000 -> [64:ff9b::203.0.113.10]:40100",
                    "reply": "203.0.113.10:40100 -> 198.51.100.7:61002",
                    "bytes": 120,
                    "packets": 2,
                },
            ])
        );
        // The server's connection to the reserved window port is delivered to the client's
        // announced IPv6 address.
        let expectations = serde_json::to_value(tables.expectation_rows(SEC)).unwrap();
        assert_eq!(
            expectations,
            serde_json::json!([{
                "session": "198.51.100.7:61001",
                "kind": "active",
                "peer": "203.0.113.10",
                "public": "198.51.100.7:61003",
                "target": "[2001:db8:10::2]:50001",
                "expires_in_ms": 9000,
            }])
        );
    }

    #[test]
    fn an_ipv6_flow_and_expectation_have_bracketed_endpoints_in_json() {
        let tables = dual_stack_tables();
        let flows = serde_json::to_value(tables.flow_rows()).unwrap();
        let v6_flows: Vec<&serde_json::Value> = flows
            .as_array()
            .unwrap()
            .iter()
            .filter(|row| row["session"] == "[2001:db8:10::2]:40000")
            .collect();
        assert_eq!(v6_flows.len(), 2, "{flows:#}");
        assert_eq!(
            v6_flows[0]["orig"],
            "[2001:db8:10::2]:40000 -> [2001:db8:ffff::10]:21"
        );
        assert_eq!(
            v6_flows[0]["reply"],
            "[2001:db8:ffff::10]:21 -> [2001:db8:10::2]:40000"
        );
        assert_eq!(v6_flows[1]["kind"], "data");
        assert_eq!(
            v6_flows[1]["orig"],
            "[2001:db8:ffff::10]:20 -> [2001:db8:10::2]:50000"
        );
        let expectations = serde_json::to_value(tables.expectation_rows(SEC)).unwrap();
        assert_eq!(
            expectations,
            serde_json::json!([{
                "session": "[2001:db8:10::2]:40000",
                "kind": "active",
                "peer": "2001:db8:ffff::10",
                "public": "[2001:db8:10::2]:50001",
                "target": "[2001:db8:10::2]:50001",
                "expires_in_ms": 9000,
            }])
        );
    }
}
