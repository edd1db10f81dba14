//! Conversations as real servers and clients write them, fed segment by segment through the line
//! trackers and the session the way the datapath does, including the NAT rewrite.

use ftp_common::maps::ip;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use ftp_common::{
    ClientVerdict, Command, CommandScanner, LineTracker, MAX_FIELD_LEN, MAX_LINE_LEN,
    PassiveEndpoint, Policy, PolicyContext, RefusalReason, Reply, ReplyBody, ReplyScanner,
    SegmentVerdict, ServerVerdict, Session, Span, format_227_field, format_229_field,
    format_port_field, parse_command, parse_reply, splice,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);

/// Both directions of one control connection, as the datapath sees them.
struct Connection {
    ctx: PolicyContext,
    session: Session,
    trackers: [LineTracker; 2],
    commands: CommandScanner,
    replies: ReplyScanner,
    next_seq: [u32; 2],
}

const FROM_CLIENT: usize = 0;
const FROM_SERVER: usize = 1;

#[derive(Debug, PartialEq)]
enum Verdict {
    Client(ClientVerdict),
    Server(ServerVerdict),
}

impl Connection {
    fn new() -> Self {
        let isn = [4_000_000_000, 17];
        let mut trackers = [LineTracker::new(), LineTracker::new()];
        trackers[FROM_CLIENT].on_syn(isn[FROM_CLIENT]);
        trackers[FROM_SERVER].on_syn(isn[FROM_SERVER]);
        Connection {
            ctx: PolicyContext {
                client: ip::from_ip(IpAddr::V4(CLIENT)),
                server: ip::from_ip(IpAddr::V4(SERVER)),
                policy: Policy::new(),
            },
            session: Session::new(),
            trackers,
            commands: CommandScanner::new(),
            replies: ReplyScanner::new(),
            next_seq: isn.map(|isn| isn.wrapping_add(1)),
        }
    }

    /// One segment from `direction`: the verdicts of the lines that end in it.
    fn segment(&mut self, direction: usize, payload: &[u8]) -> Vec<Verdict> {
        let seq = self.next_seq[direction];
        self.next_seq[direction] = seq.wrapping_add(payload.len() as u32);
        let mut verdicts = Vec::new();
        let SegmentVerdict::InSync(in_sync) = self.trackers[direction].on_segment(seq, payload)
        else {
            return verdicts;
        };
        if !in_sync.continues_line {
            self.commands.reset();
            self.replies.reset();
        }
        for &byte in &payload[in_sync.start as usize..] {
            if direction == FROM_CLIENT {
                if self.commands.push(byte) {
                    let command = self.commands.command();
                    verdicts.push(Verdict::Client(
                        self.session.on_client_command(command, &self.ctx),
                    ));
                }
            } else if self.replies.push(byte) {
                let reply = self.replies.reply();
                verdicts.push(Verdict::Server(
                    self.session.on_server_reply(reply, &self.ctx),
                ));
            }
        }
        verdicts
    }

    fn client(&mut self, payload: &[u8]) -> Vec<ClientVerdict> {
        self.segment(FROM_CLIENT, payload)
            .into_iter()
            .map(|verdict| match verdict {
                Verdict::Client(verdict) => verdict,
                Verdict::Server(_) => unreachable!(),
            })
            .collect()
    }

    fn server(&mut self, payload: &[u8]) -> Vec<ServerVerdict> {
        self.segment(FROM_SERVER, payload)
            .into_iter()
            .map(|verdict| match verdict {
                Verdict::Server(verdict) => verdict,
                Verdict::Client(_) => unreachable!(),
            })
            .collect()
    }

    /// Logs in the way most clients do.
    fn login(&mut self) {
        self.client(b"USER anonymous\r\n");
        self.server(b"331 Please specify the password.\r\n");
        self.client(b"PASS guest@\r\n");
        self.server(b"230 Login successful.\r\n");
    }
}

fn only<T: std::fmt::Debug>(mut verdicts: Vec<T>) -> T {
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    verdicts.pop().unwrap()
}

/// Every line is ignored (banners, FEAT lists, ordinary replies).
fn all_ignored(verdicts: Vec<ServerVerdict>) {
    assert!(!verdicts.is_empty());
    assert!(
        verdicts
            .iter()
            .all(|verdict| *verdict == ServerVerdict::Ignored),
        "{verdicts:?}"
    );
}

/// The passive reply for PASV from this server, and what the datapath makes of it.
fn passive_227(server_reply: &[u8]) -> (SocketAddrV4, Span) {
    let mut connection = Connection::new();
    connection.login();
    assert_eq!(
        only(connection.client(b"PASV\r\n")),
        ClientVerdict::PassiveRequested(ftp_common::PassiveKind::Pasv)
    );
    match only(connection.server(server_reply)) {
        ServerVerdict::OpenPassive {
            endpoint: PassiveEndpoint::Pasv(addr),
            field,
        } => (addr, field),
        other => panic!("expected OpenPassive, got {other:?}"),
    }
}

fn passive_229(server_reply: &[u8]) -> u16 {
    let mut connection = Connection::new();
    connection.login();
    connection.client(b"EPSV\r\n");
    match only(connection.server(server_reply)) {
        ServerVerdict::OpenPassive {
            endpoint: PassiveEndpoint::Epsv { port, .. },
            field,
        } => {
            let mut out = [0u8; MAX_FIELD_LEN];
            let len = format_229_field(port, &mut out).unwrap();
            assert_eq!(field.get(server_reply), Some(&out[..len]));
            port
        }
        other => panic!("expected OpenPassive, got {other:?}"),
    }
}

/// Rewrites a 227 for a public address, as masquerading the server would, and checks that the
/// server's text survives.
fn rewritten_227(line: &[u8], field: Span, public: SocketAddrV4) -> Vec<u8> {
    let mut replacement = [0u8; MAX_FIELD_LEN];
    let len = format_227_field(*public.ip(), public.port(), &mut replacement).unwrap();
    let mut out = [0u8; MAX_LINE_LEN + MAX_FIELD_LEN];
    let total = splice(line, field, &replacement[..len], &mut out).unwrap();
    let rewritten = out[..total].to_vec();
    match parse_reply(&rewritten) {
        Reply::Final {
            code: 227,
            body: ReplyBody::Passive227 { addr, .. },
        } => assert_eq!(addr, public),
        other => panic!("rewritten 227 does not parse: {other:?}"),
    }
    rewritten
}

// vsftpd

#[test]
fn vsftpd_banner_and_feat() {
    let mut connection = Connection::new();
    all_ignored(connection.server(b"220 (vsFTPd 3.0.5)\r\n"));
    connection.login();
    connection.client(b"FEAT\r\n");
    all_ignored(connection.server(
        b"211-Features:\r\n EPRT\r\n EPSV\r\n MDTM\r\n PASV\r\n REST STREAM\r\n SIZE\r\n TVFS\r\n211 End\r\n",
    ));
}

#[test]
fn vsftpd_227() {
    let line = b"227 Entering Passive Mode (192,168,1,10,117,48).\r\n";
    let (addr, field) = passive_227(line);
    assert_eq!(addr, SocketAddrV4::new(SERVER, 30000));
    assert_eq!(
        rewritten_227(line, field, "203.0.113.1:40000".parse().unwrap()),
        b"227 Entering Passive Mode (203,0,113,1,156,64).\r\n"
    );
}

#[test]
fn vsftpd_229() {
    assert_eq!(
        passive_229(b"229 Entering Extended Passive Mode (|||30000|)\r\n"),
        30000
    );
}

#[test]
fn vsftpd_active_listing() {
    let mut connection = Connection::new();
    connection.login();
    let verdict = only(connection.client(b"PORT 10,0,0,2,200,10\r\n"));
    assert!(
        matches!(verdict, ClientVerdict::OpenActive { .. }),
        "{verdict:?}"
    );
    all_ignored(connection.server(b"200 PORT command successful. Consider using PASV.\r\n"));
    connection.client(b"LIST\r\n");
    assert_eq!(
        connection.server(b"150 Here comes the directory listing.\r\n226 Directory send OK.\r\n"),
        [
            ServerVerdict::TransferStarted,
            ServerVerdict::TransferCompleted
        ]
    );
}

#[test]
fn vsftpd_explicit_tls() {
    let mut connection = Connection::new();
    connection.server(b"220 (vsFTPd 3.0.5)\r\n");
    connection.client(b"AUTH TLS\r\n");
    assert_eq!(
        only(connection.server(b"234 Proceed with negotiation.\r\n")),
        ServerVerdict::TlsStarted
    );
    // The TLS records that follow may contain anything, LFs included.
    assert_eq!(
        connection.client(b"\x16\x03\x01\x02\x00\x01\nPORT 10,0,0,2,200,10\r\n"),
        [ClientVerdict::Encrypted, ClientVerdict::Encrypted]
    );
}

// pure-ftpd

#[test]
fn pure_ftpd_banner() {
    let mut connection = Connection::new();
    all_ignored(connection.server(
        b"220---------- Welcome to Pure-FTPd [privsep] [TLS] ----------\r\n\
          220-You are user number 1 of 50 allowed.\r\n\
          220-Local time is now 12:00. Server port: 21.\r\n\
          220-IPv6 connections are also welcome on this server.\r\n\
          220 You will be disconnected after 15 minutes of inactivity.\r\n",
    ));
    assert_eq!(connection.session.multiline_reply(), None);
}

#[test]
fn pure_ftpd_227() {
    let (addr, _) = passive_227(b"227 Entering Passive Mode (192,168,1,10,117,48)\r\n");
    assert_eq!(addr, SocketAddrV4::new(SERVER, 30000));
}

#[test]
fn pure_ftpd_229() {
    assert_eq!(
        passive_229(b"229 Extended Passive mode OK (|||30000|)\r\n"),
        30000
    );
}

#[test]
fn pure_ftpd_multi_line_transfer_end() {
    let mut connection = Connection::new();
    connection.login();
    connection.client(b"PASV\r\n");
    connection.server(b"227 Entering Passive Mode (192,168,1,10,117,48)\r\n");
    connection.client(b"LIST\r\n");
    assert_eq!(
        connection.server(b"150 Accepted data connection\r\n"),
        [ServerVerdict::TransferStarted]
    );
    assert_eq!(
        connection.server(b"226-Options: -a -l \r\n226 3 matches total\r\n"),
        [ServerVerdict::Ignored, ServerVerdict::TransferCompleted]
    );
}

// proftpd

#[test]
fn proftpd_banner_with_an_address_is_ignored() {
    let mut connection = Connection::new();
    all_ignored(connection.server(b"220 ProFTPD Server (Debian) [::ffff:192.168.1.10]\r\n"));
}

#[test]
fn proftpd_227() {
    let (addr, field) = passive_227(b"227 Entering Passive Mode (192,168,1,10,156,65).\r\n");
    assert_eq!(addr, SocketAddrV4::new(SERVER, 40001));
    assert_eq!(field, Span { start: 27, len: 19 });
}

#[test]
fn proftpd_229() {
    assert_eq!(
        passive_229(b"229 Entering Extended Passive Mode (|||40001|)\r\n"),
        40001
    );
}

#[test]
fn proftpd_eprt_and_tls_refusal() {
    let mut connection = Connection::new();
    connection.login();
    let verdict = only(connection.client(b"EPRT |1|10.0.0.2|50123|\r\n"));
    assert!(
        matches!(verdict, ClientVerdict::OpenActive { .. }),
        "{verdict:?}"
    );
    all_ignored(connection.server(b"200 EPRT command successful\r\n"));
    connection.client(b"AUTH TLS\r\n");
    all_ignored(connection.server(b"500 AUTH not understood\r\n"));
    assert!(!connection.session.is_encrypted());
}

// FileZilla Server

#[test]
fn filezilla_banner() {
    let mut connection = Connection::new();
    all_ignored(connection.server(
        b"220-FileZilla Server 0.9.60 beta\r\n\
          220-written by Tim Kosse (tim.kosse@filezilla-project.org)\r\n\
          220 Please visit https://filezilla-project.org/\r\n",
    ));
}

#[test]
fn filezilla_227() {
    let (addr, _) = passive_227(b"227 Entering Passive Mode (192,168,1,10,195,81)\r\n");
    assert_eq!(addr, SocketAddrV4::new(SERVER, 50001));
}

#[test]
fn filezilla_229() {
    assert_eq!(
        passive_229(b"229 Entering Extended Passive Mode (|||50001|)\r\n"),
        50001
    );
}

#[test]
fn filezilla_tls() {
    let mut connection = Connection::new();
    connection.client(b"AUTH TLS\r\n");
    assert_eq!(
        only(connection.server(b"234 Using authentication type TLS\r\n")),
        ServerVerdict::TlsStarted
    );
}

// IIS

#[test]
fn iis_multi_line_banner_and_login() {
    let mut connection = Connection::new();
    all_ignored(
        connection.server(b"220-Microsoft FTP Service\r\n220 Welcome to the FTP site.\r\n"),
    );
    connection.client(b"USER ftp\r\n");
    connection
        .server(b"331 Anonymous access allowed, send identity (e-mail name) as password.\r\n");
    connection.client(b"PASS x\r\n");
    all_ignored(connection.server(b"230-Welcome\r\n230 User logged in.\r\n"));
}

#[test]
fn iis_227() {
    let (addr, _) = passive_227(b"227 Entering Passive Mode (192,168,1,10,195,80).\r\n");
    assert_eq!(addr, SocketAddrV4::new(SERVER, 50000));
}

#[test]
fn iis_229_and_125() {
    assert_eq!(
        passive_229(b"229 Entering Extended Passive Mode (|||50000|)\r\n"),
        50000
    );
    let mut connection = Connection::new();
    connection.client(b"RETR f\r\n");
    assert_eq!(
        connection.server(
            b"125 Data connection already open; Transfer starting.\r\n226 Transfer complete.\r\n"
        ),
        [
            ServerVerdict::TransferStarted,
            ServerVerdict::TransferCompleted
        ]
    );
}

#[test]
fn iis_tls() {
    let mut connection = Connection::new();
    connection.client(b"AUTH TLS\r\n");
    assert_eq!(
        only(connection.server(b"234 AUTH command ok. Expecting TLS Negotiation.\r\n")),
        ServerVerdict::TlsStarted
    );
}

// Other 227 forms

#[test]
fn equals_form_227() {
    let line = b"227 =192,168,1,10,117,48\r\n";
    let (addr, field) = passive_227(line);
    assert_eq!(addr, SocketAddrV4::new(SERVER, 30000));
    assert_eq!(
        rewritten_227(line, field, "198.51.100.7:1025".parse().unwrap()),
        b"227 =198,51,100,7,4,1\r\n"
    );
}

#[test]
fn no_parentheses_227() {
    let line = b"227 Entering Passive Mode 192,168,1,10,117,48\r\n";
    let (addr, field) = passive_227(line);
    assert_eq!(addr, SocketAddrV4::new(SERVER, 30000));
    assert_eq!(
        rewritten_227(line, field, "198.51.100.7:1025".parse().unwrap()),
        b"227 Entering Passive Mode 198,51,100,7,4,1\r\n"
    );
}

// Clients, segmentation and injection

#[test]
fn client_rewrite_of_port_for_masquerade() {
    let mut connection = Connection::new();
    connection.login();
    let line = b"PORT 10,0,0,2,200,10\r\n";
    let ClientVerdict::OpenActive { addr, field, .. } = only(connection.client(line)) else {
        panic!("PORT refused");
    };
    assert_eq!(addr, SocketAddr::V4(SocketAddrV4::new(CLIENT, 51210)));
    let public = Ipv4Addr::new(203, 0, 113, 1);
    let mut replacement = [0u8; MAX_FIELD_LEN];
    let len = format_port_field(public, 61000, &mut replacement).unwrap();
    let mut out = [0u8; MAX_LINE_LEN];
    let total = splice(line, field, &replacement[..len], &mut out).unwrap();
    assert_eq!(&out[..total], b"PORT 203,0,113,1,238,72\r\n");
    // The length delta the datapath carries into its sequence adjustment.
    assert_eq!(total as isize - line.len() as isize, 3);
}

#[test]
fn pipelined_commands_in_one_segment() {
    let mut connection = Connection::new();
    connection.login();
    assert_eq!(
        connection.client(b"TYPE I\r\nPASV\r\n"),
        [
            ClientVerdict::Ignored,
            ClientVerdict::PassiveRequested(ftp_common::PassiveKind::Pasv)
        ]
    );
    let verdicts = connection.server(
        b"200 Switching to Binary mode.\r\n227 Entering Passive Mode (192,168,1,10,117,48).\r\n",
    );
    assert_eq!(verdicts[0], ServerVerdict::Ignored);
    assert!(matches!(verdicts[1], ServerVerdict::OpenPassive { .. }));
}

#[test]
fn reply_split_over_two_segments_is_joined() {
    let mut connection = Connection::new();
    connection.login();
    connection.client(b"PASV\r\n");
    assert!(
        connection
            .server(b"227 Entering Passive Mode (192,168,")
            .is_empty()
    );
    let verdict = only(connection.server(b"1,10,117,48).\r\n"));
    assert_eq!(
        verdict,
        ServerVerdict::OpenPassive {
            endpoint: PassiveEndpoint::Pasv(SocketAddrV4::new(SERVER, 30000)),
            field: Span { start: 27, len: 19 }
        }
    );
}

#[test]
fn command_text_at_the_start_of_a_continuation_segment_is_part_of_the_line_it_continues() {
    // A client-controlled file name pushes "PORT" to the start of the next segment: the line is
    // still the RETR the server sees.
    for name_len in [1, 200] {
        let mut connection = Connection::new();
        connection.login();
        let mut first = b"RETR ".to_vec();
        first.extend(std::iter::repeat_n(b'a', name_len));
        assert!(connection.client(&first).is_empty());
        let verdict = only(connection.client(b"PORT 10,0,0,2,0,22\r\n"));
        assert!(
            matches!(verdict, ClientVerdict::Transfer { .. }),
            "{verdict:?}"
        );
        assert_eq!(connection.session.open_expectations(), 0);
    }
}

#[test]
fn command_text_after_an_over_long_line_is_never_parsed() {
    let mut connection = Connection::new();
    connection.login();
    let mut first = b"RETR ".to_vec();
    first.extend(std::iter::repeat_n(b'a', MAX_LINE_LEN));
    assert!(connection.client(&first).is_empty());
    assert_eq!(
        connection.client(b"PORT 10,0,0,2,0,22\r\n"),
        [ClientVerdict::Malformed(
            ftp_common::MalformedReason::TooLong
        )]
    );
    assert_eq!(connection.session.open_expectations(), 0);
}

#[test]
fn reply_echoing_a_command_in_a_multi_line_status_is_ignored() {
    let mut connection = Connection::new();
    connection.login();
    connection.client(b"PASV\r\n");
    connection.client(b"STAT\r\n");
    assert_eq!(
        connection.server(
            b"211-FTP server status:\r\n227 Entering Passive Mode (6,6,6,6,0,22)\r\n211 End of status\r\n"
        ),
        [ServerVerdict::Ignored, ServerVerdict::Ignored, ServerVerdict::Ignored]
    );
    assert_eq!(connection.session.open_expectations(), 0);
}

#[test]
fn bounce_via_port_to_a_third_party_is_refused() {
    let mut connection = Connection::new();
    connection.login();
    assert_eq!(
        only(connection.client(b"PORT 192,0,2,99,0,25\r\n")),
        ClientVerdict::Refused(RefusalReason::Bounce)
    );
}

#[test]
fn first_segment_without_syn_is_not_parsed_until_a_line_end() {
    let mut tracker = LineTracker::new();
    assert_eq!(
        tracker.on_segment(500, b"PORT 10,0,0,2,4,1\r\n"),
        SegmentVerdict::OutOfSync
    );
    let SegmentVerdict::InSync(in_sync) = tracker.on_segment(519, b"PASV\r\n") else {
        panic!("not resynchronised");
    };
    assert!(!in_sync.continues_line);
    assert_eq!(
        parse_command(&b"PASV\r\n"[in_sync.start as usize..]),
        Command::Pasv
    );
}
