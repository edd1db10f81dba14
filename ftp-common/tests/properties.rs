//! Property tests: every formatter round-trips through its parser, and no input makes any part of
//! the core panic or break its invariants.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use ftp_common::address::Ipv6Text;
use ftp_common::maps::ip;
use ftp_common::maps::{RewriteRecord, rewrite_kind};
use ftp_common::{
    ActiveKind, AlgReply, ClientVerdict, Command, CommandScanner, Ipv6AddressText, LineTracker,
    MAX_229_LINE_LEN, MAX_FIELD_LEN, MAX_LINE_LEN, MAX_PORT_LINE_LEN, NOOP_LINE, PASV_LINE,
    PassiveEndpoint, Policy, PolicyContext, PublicAddress, Reply, ReplyBody, ReplyScanner,
    SegmentVerdict, ServerVerdict, Session, Span, format_227_field, format_229_field,
    format_229_line, format_eprt_field, format_eprt6_field, format_port_field, format_port_line,
    format_rewrite, parse_command, parse_reply, skippable_word, splice,
};
use proptest::prelude::*;

fn valid_port() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn any_ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<[u8; 4]>().prop_map(Ipv4Addr::from)
}

fn any_ipv6() -> impl Strategy<Value = Ipv6Addr> {
    // Mostly addresses with zero runs, where the compression rules matter.
    prop_oneof![
        any::<[u16; 8]>(),
        proptest::collection::vec(prop_oneof![Just(0u16), Just(1), any::<u16>()], 8)
            .prop_map(|groups| <[u16; 8]>::try_from(groups).unwrap()),
    ]
    .prop_map(Ipv6Addr::from)
}

/// Delimiters RFC 2428 allows.
fn delimiter() -> impl Strategy<Value = u8> {
    (33u8..=126).prop_filter("not a digit", |byte| !byte.is_ascii_digit())
}

fn terminator() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![Just(&b"\r\n"[..]), Just(&b"\n"[..])]
}

/// Server text before the numbers of a 227: anything without a digit.
fn text_without_digits() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no digit, no line end", |byte| {
            !byte.is_ascii_digit() && *byte != b'\n'
        }),
        0..40,
    )
}

fn line(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn field_text(format: impl FnOnce(&mut [u8]) -> Option<usize>) -> Vec<u8> {
    let mut out = [0u8; MAX_FIELD_LEN];
    let len = format(&mut out).expect("valid value formats");
    out[..len].to_vec()
}

/// Every span a parser reports lies inside the line.
fn check_span(line: &[u8], span: Span) {
    assert!(
        span.get(line).is_some(),
        "span {span:?} outside a {}-byte line",
        line.len()
    );
}

fn ipv6(text: &[u8]) -> Option<Ipv6Addr> {
    let mut reader = Ipv6Text::new();
    for &byte in text {
        reader.push(byte);
    }
    reader.finish()
}

/// A dotted-quad part with a leading zero (`01`), which this crate reads as decimal and the
/// standard library refuses.
fn has_zero_padded_ipv4_part(text: &str) -> bool {
    text.contains('.')
        && text.split(['.', ':']).any(|part| {
            part.len() > 1 && part.starts_with('0') && part.bytes().all(|b| b.is_ascii_digit())
        })
}

fn ctx() -> PolicyContext {
    PolicyContext {
        client: ip::from_ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
        server: ip::from_ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        policy: Policy::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn port_round_trips(
        addr in any_ipv4(),
        port in valid_port(),
        verb in prop_oneof![Just("PORT"), Just("port"), Just("Port")],
        end in terminator(),
    ) {
        let field = field_text(|out| format_port_field(addr, port, out));
        let text = line(&[verb.as_bytes(), b" ", &field, end]);
        prop_assert_eq!(
            parse_command(&text),
            Command::Port {
                addr: SocketAddrV4::new(addr, port),
                field: Span { start: 5, len: field.len() as u16 },
            }
        );
    }

    #[test]
    fn reply_227_round_trips(
        addr in any_ipv4(),
        port in valid_port(),
        before in text_without_digits(),
        after in text_without_digits().prop_filter("no seventh number", |text| text.first() != Some(&b',')),
        end in terminator(),
    ) {
        let field = field_text(|out| format_227_field(addr, port, out));
        let text = line(&[b"227 ", &before, &field, &after, end]);
        prop_assert_eq!(
            parse_reply(&text),
            Reply::Final {
                code: 227,
                body: ReplyBody::Passive227 {
                    addr: SocketAddrV4::new(addr, port),
                    field: Span { start: (4 + before.len()) as u16, len: field.len() as u16 },
                },
            }
        );
    }

    #[test]
    fn eprt_ipv4_round_trips(addr in any_ipv4(), port in valid_port(), delimiter in delimiter()) {
        let Some(len) = format_eprt_field(IpAddr::V4(addr), port, delimiter, &mut [0u8; MAX_FIELD_LEN]) else {
            // Only the ambiguous delimiter is refused.
            prop_assert_eq!(delimiter, b'.');
            return Ok(());
        };
        let field = field_text(|out| format_eprt_field(IpAddr::V4(addr), port, delimiter, out));
        prop_assert_eq!(field.len(), len);
        let text = line(&[b"EPRT ", &field, b"\r\n"]);
        prop_assert_eq!(
            parse_command(&text),
            Command::Eprt {
                addr: SocketAddr::new(IpAddr::V4(addr), port),
                delimiter,
                field: Span { start: 5, len: field.len() as u16 },
            }
        );
    }

    #[test]
    fn eprt_ipv6_round_trips(addr in any_ipv6(), port in valid_port(), delimiter in delimiter()) {
        if delimiter == b':' {
            prop_assert_eq!(format_eprt_field(IpAddr::V6(addr), port, delimiter, &mut [0u8; MAX_FIELD_LEN]), None);
            return Ok(());
        }
        let field = field_text(|out| format_eprt_field(IpAddr::V6(addr), port, delimiter, out));
        let text = line(&[b"eprt ", &field, b"\n"]);
        prop_assert_eq!(
            parse_command(&text),
            Command::Eprt {
                addr: SocketAddr::new(IpAddr::V6(addr), port),
                delimiter,
                field: Span { start: 5, len: field.len() as u16 },
            }
        );
    }

    /// NAT66's EPRT, made from the public address's text formatted ahead, is the EPRT of the
    /// address itself, refused alike.
    #[test]
    fn an_ipv6_eprt_from_text_equals_the_one_from_the_address(
        addr in any_ipv6(),
        port in valid_port(),
        delimiter in delimiter(),
    ) {
        let text = Ipv6AddressText::of(addr);
        let (mut from_text, mut from_addr) = ([0u8; MAX_FIELD_LEN], [0u8; MAX_FIELD_LEN]);
        let from_text_len = format_eprt6_field(&text, port, delimiter, &mut from_text);
        let from_addr_len = format_eprt_field(IpAddr::V6(addr), port, delimiter, &mut from_addr);
        prop_assert_eq!(from_text_len, from_addr_len);
        let len = from_text_len.unwrap_or(0);
        prop_assert_eq!(&from_text[..len], &from_addr[..len]);
    }

    #[test]
    fn reply_229_round_trips(
        port in valid_port(),
        delimiter in delimiter(),
        before in text_without_digits().prop_map(|text| text.into_iter().filter(|&b| b != b'(').collect::<Vec<u8>>()),
        after in text_without_digits(),
    ) {
        let field = field_text(|out| format_229_field(port, out));
        let d = [delimiter];
        let text = line(&[b"229 ", &before, b"(", &d, &d, &d, &field, &d, b")", &after, b"\r\n"]);
        prop_assert_eq!(
            parse_reply(&text),
            Reply::Final {
                code: 229,
                body: ReplyBody::Passive229 {
                    port,
                    delimiter,
                    field: Span { start: (4 + before.len() + 4) as u16, len: field.len() as u16 },
                },
            }
        );
    }

    /// Rewriting a parsed field with a new value keeps everything around it and parses back to
    /// the new value.
    #[test]
    fn rewrite_keeps_the_rest_of_the_line(
        old in any_ipv4(), old_port in valid_port(),
        new in any_ipv4(), new_port in valid_port(),
        before in text_without_digits(),
    ) {
        let old_field = field_text(|out| format_227_field(old, old_port, out));
        let original = line(&[b"227 ", &before, &old_field, b").\r\n"]);
        let Reply::Final { body: ReplyBody::Passive227 { field, .. }, .. } = parse_reply(&original) else {
            panic!("227 did not parse");
        };
        let new_field = field_text(|out| format_227_field(new, new_port, out));
        let mut out = [0u8; MAX_LINE_LEN + MAX_FIELD_LEN];
        let len = splice(&original, field, &new_field, &mut out).unwrap();
        let rewritten = &out[..len];
        prop_assert_eq!(&rewritten[..field.start as usize], &original[..field.start as usize]);
        prop_assert_eq!(&rewritten[field.start as usize + new_field.len()..], &original[field.end()..]);
        prop_assert_eq!(
            parse_reply(rewritten),
            Reply::Final {
                code: 227,
                body: ReplyBody::Passive227 {
                    addr: SocketAddrV4::new(new, new_port),
                    field: Span { start: field.start, len: new_field.len() as u16 },
                },
            }
        );
    }

    /// The IPv6 reader agrees with the standard library on every string built from IPv6-ish
    /// characters.
    #[test]
    fn ipv6_reader_agrees_with_std(text in "[0-9a-fA-F:.]{0,46}") {
        prop_assume!(!has_zero_padded_ipv4_part(&text));
        let ours = ipv6(text.as_bytes());
        let std = text.parse::<Ipv6Addr>().ok();
        prop_assert_eq!(ours, std, "{}", text);
    }

    /// The IPv6 reader reads every textual form of an address: compressed, full with leading
    /// zeros, upper case, and with a dotted-quad tail.
    #[test]
    fn ipv6_reader_reads_every_textual_form(addr in any_ipv6()) {
        let g = addr.segments();
        let [.., a, b, c, d] = addr.octets();
        let forms = [
            addr.to_string(),
            format!("{:04x}:{:04x}:{:04x}:{:04x}:{:04x}:{:04x}:{:04x}:{:04x}", g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]),
            addr.to_string().to_uppercase(),
            format!("{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{a}.{b}.{c}.{d}", g[0], g[1], g[2], g[3], g[4], g[5]),
        ];
        for form in forms {
            prop_assert_eq!(ipv6(form.as_bytes()), Some(addr), "{}", form);
        }
    }

    /// The IPv6 text written for EPRT is what the standard library prints (RFC 5952), apart from
    /// the dotted form std uses for IPv4-mapped addresses.
    #[test]
    fn ipv6_text_is_rfc_5952(addr in any_ipv6()) {
        prop_assume!(addr.to_ipv4_mapped().is_none());
        let field = field_text(|out| format_eprt_field(IpAddr::V6(addr), 21, b'|', out));
        let expected = format!("|2|{addr}|21|");
        prop_assert_eq!(String::from_utf8(field).unwrap(), expected);
    }

    /// A well-formed command split at any byte into two segments is parsed once, when its LF
    /// arrives, exactly as if it had come whole; the field is in the second segment when the split
    /// comes before it.
    #[test]
    fn split_lines_parse_as_whole_lines(addr in any_ipv4(), port in valid_port(), split in 1usize..30, isn in any::<u32>()) {
        let field = field_text(|out| format_port_field(addr, port, out));
        let text = line(&[b"PORT ", &field, b"\r\n"]);
        let split = split.min(text.len() - 1);
        let (head, tail) = text.split_at(split);
        let mut tracker = LineTracker::new();
        tracker.on_syn(isn);
        let mut scanner = CommandScanner::new();
        let mut seq = isn.wrapping_add(1);
        let mut commands = Vec::new();
        for (index, segment) in [head, tail].into_iter().enumerate() {
            let SegmentVerdict::InSync(in_sync) = tracker.on_segment(seq, segment) else {
                panic!("segment {index} out of sync");
            };
            prop_assert_eq!(in_sync.continues_line, index == 1);
            if !in_sync.continues_line {
                scanner.reset();
            }
            for &byte in segment {
                if scanner.push(byte) {
                    commands.push(scanner.command());
                }
            }
            seq = seq.wrapping_add(segment.len() as u32);
        }
        prop_assert_eq!(&commands, &[parse_command(&text)]);
        prop_assert_eq!(usize::from(scanner.line_len()), text.len());
        let Command::Port { addr: parsed, field: span } = commands[0] else {
            panic!("not a PORT");
        };
        prop_assert_eq!(parsed, SocketAddrV4::new(addr, port));
        prop_assert_eq!(usize::from(span.start) >= split, split <= 5);
    }

    #[test]
    fn parse_command_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        match parse_command(&bytes) {
            Command::Port { field, .. } | Command::Eprt { field, .. } => check_span(&bytes, field),
            Command::User { name } => check_span(&bytes, name),
            Command::Transfer { arg, .. } => check_span(&bytes, arg),
            _ => {}
        }
    }

    #[test]
    fn parse_command_never_panics_on_command_like_input(
        verb in prop_oneof![Just("PORT "), Just("EPRT "), Just("EPSV "), Just("AUTH "), Just("USER ")],
        rest in "[0-9,.|:!a-fA-F ()\r\n]{0,80}",
    ) {
        let text = line(&[verb.as_bytes(), rest.as_bytes()]);
        match parse_command(&text) {
            Command::Port { addr, field } => {
                check_span(&text, field);
                let rendered = field_text(|out| format_port_field(*addr.ip(), addr.port(), out));
                let rewritten = line(&[b"PORT ", &rendered, b"\r\n"]);
                prop_assert_eq!(parse_command(&rewritten), Command::Port { addr, field: Span { start: 5, len: rendered.len() as u16 } });
            }
            Command::Eprt { field, .. } | Command::User { name: field } => check_span(&text, field),
            _ => {}
        }
    }

    #[test]
    fn parse_reply_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        if let Reply::Final { body: ReplyBody::Passive227 { field, .. } | ReplyBody::Passive229 { field, .. }, .. } = parse_reply(&bytes) {
            check_span(&bytes, field);
        }
    }

    #[test]
    fn parse_reply_never_panics_on_reply_like_input(
        code in prop_oneof![Just("227 "), Just("229 "), Just("227-"), Just("2270")],
        rest in "[0-9,.|()= a-zA-Z\r\n]{0,80}",
    ) {
        let text = line(&[code.as_bytes(), rest.as_bytes()]);
        if let Reply::Final { body: ReplyBody::Passive227 { field, .. } | ReplyBody::Passive229 { field, .. }, .. } = parse_reply(&text) {
            check_span(&text, field);
        }
    }

    /// Arbitrary segments in both directions, in any order, through the trackers, the scanners
    /// and the session.
    #[test]
    fn tracker_scanners_and_session_never_panic(
        segments in proptest::collection::vec(
            (any::<bool>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..200)),
            0..40,
        ),
        max in 0u8..6,
    ) {
        let mut ctx = ctx();
        ctx.policy.max_outstanding_expectations = max;
        let mut session = Session::new();
        let mut trackers = [LineTracker::starting_at(0), LineTracker::starting_at(0)];
        let mut commands = CommandScanner::new();
        let mut replies = ReplyScanner::new();
        for (from_client, seq, payload) in &segments {
            let tracker = &mut trackers[usize::from(*from_client)];
            let SegmentVerdict::InSync(in_sync) = tracker.on_segment(u32::from(*seq), payload) else {
                continue;
            };
            prop_assert!((in_sync.start as usize) < payload.len());
            if !in_sync.continues_line {
                if *from_client {
                    commands.reset();
                } else {
                    replies.reset();
                }
            }
            for &byte in &payload[in_sync.start as usize..] {
                if *from_client {
                    if !commands.push(byte) {
                        continue;
                    }
                    prop_assert!(usize::from(commands.line_len()) >= 1);
                    if let ClientVerdict::OpenActive { field, .. } = session.on_client_command(commands.command(), &ctx) {
                        prop_assert!(field.end() < usize::from(commands.line_len()));
                    }
                } else {
                    if !replies.push(byte) {
                        continue;
                    }
                    if let ServerVerdict::OpenPassive { field, .. } = session.on_server_reply(replies.reply(), &ctx) {
                        prop_assert!(field.end() < usize::from(replies.line_len()));
                    }
                }
                prop_assert!(session.open_expectations() <= max);
            }
        }
    }

    /// Arbitrary bytes as stored state never make the state machine or the scanners panic.
    #[test]
    fn any_stored_state_is_usable(
        state in proptest::collection::vec(any::<u8>(), 92),
        line in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let session_bytes: [u8; 8] = state[..8].try_into().unwrap();
        // SAFETY: `Session` is `#[repr(C)]`, 8 bytes of integers with no padding; every bit
        // pattern is a valid value, which is exactly what this test checks.
        let mut session: Session = unsafe { std::mem::transmute(session_bytes) };
        let _ = session.on_client_line(&line, &ctx());
        let _ = session.on_server_line(&line, &ctx());
        // SAFETY: as above, for the 8-byte `LineTracker`.
        let mut tracker: LineTracker = unsafe { std::mem::transmute(session_bytes) };
        let _ = tracker.on_segment(u32::from_le_bytes([state[0], state[2], state[4], state[6]]), &line);
        let command_bytes: [u8; 92] = state[..].try_into().unwrap();
        // SAFETY: as above, for the 92-byte `CommandScanner`.
        let mut commands: CommandScanner = unsafe { std::mem::transmute(command_bytes) };
        let reply_bytes: [u8; 40] = state[..40].try_into().unwrap();
        // SAFETY: as above, for the 40-byte `ReplyScanner`.
        let mut replies: ReplyScanner = unsafe { std::mem::transmute(reply_bytes) };
        for &byte in &line {
            if commands.push(byte) {
                let _ = session.on_client_command(commands.command(), &ctx());
            }
            if replies.push(byte) {
                let _ = session.on_server_reply(replies.reply(), &ctx());
            }
        }
    }
}

/// A command of the pipelining model below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ModelCommand {
    Pasv,
    Epsv,
    EpsvAll,
    Type,
    Noop,
    Retr,
}

impl ModelCommand {
    fn line(self) -> &'static [u8] {
        match self {
            ModelCommand::Pasv => b"PASV\r\n",
            ModelCommand::Epsv => b"EPSV\r\n",
            ModelCommand::EpsvAll => b"EPSV ALL\r\n",
            ModelCommand::Type => b"TYPE I\r\n",
            ModelCommand::Noop => b"NOOP\r\n",
            ModelCommand::Retr => b"RETR f\r\n",
        }
    }

    fn is_passive_request(self) -> bool {
        matches!(
            self,
            ModelCommand::Pasv | ModelCommand::Epsv | ModelCommand::EpsvAll
        )
    }
}

/// How the server answers one command of the model: any answer to any command, so a server that
/// answers a NOOP with a 227 is in it too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ModelReply {
    Passive227,
    Passive229,
    Malformed227,
    Success,
    Error,
    /// A multi-line reply whose body looks like a 227 and a 229.
    MultiLine,
    /// `150`, then `226`.
    Transfer,
}

impl ModelReply {
    /// The reply's lines; the last one is the final reply.
    fn lines(self) -> &'static [&'static [u8]] {
        match self {
            ModelReply::Passive227 => &[b"227 Entering Passive Mode (192,0,2,1,117,48).\r\n"],
            ModelReply::Passive229 => &[b"229 Entering Extended Passive Mode (|||30000|)\r\n"],
            ModelReply::Malformed227 => &[b"227 Logout.\r\n"],
            ModelReply::Success => &[b"200 OK\r\n"],
            ModelReply::Error => &[b"500 No.\r\n"],
            ModelReply::MultiLine => &[
                b"211-Status\r\n",
                b"227 Entering Passive Mode (192,0,2,1,1,2)\r\n",
                b" 229 (|||1000|)\r\n",
                b"211 End\r\n",
            ],
            ModelReply::Transfer => &[b"150 Opening data connection.\r\n", b"226 Done.\r\n"],
        }
    }
}

fn model_command() -> impl Strategy<Value = ModelCommand> {
    prop_oneof![
        Just(ModelCommand::Pasv),
        Just(ModelCommand::Epsv),
        Just(ModelCommand::EpsvAll),
        Just(ModelCommand::Type),
        Just(ModelCommand::Noop),
        Just(ModelCommand::Retr),
    ]
}

fn model_reply() -> impl Strategy<Value = ModelReply> {
    prop_oneof![
        Just(ModelReply::Passive227),
        Just(ModelReply::Passive229),
        Just(ModelReply::Malformed227),
        Just(ModelReply::Success),
        Just(ModelReply::Error),
        Just(ModelReply::MultiLine),
        Just(ModelReply::Transfer),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// A client pipelines commands and a server answers each one, in order, with exactly one
    /// final reply (the way RFC 959 pairs them), the two interleaved at random. The session
    /// opens a passive expectation only for a 227 that answers a PASV or a 229 that answers an
    /// EPSV — never for one answering another command — and it does open one for such a reply
    /// whenever its request was the only passive request outstanding.
    #[test]
    fn a_passive_reply_opens_only_when_it_answers_its_request(
        exchange in proptest::collection::vec((model_command(), model_reply()), 1..12),
        schedule in proptest::collection::vec(any::<bool>(), 0..80),
    ) {
        let mut ctx = ctx();
        ctx.policy.max_outstanding_expectations = u8::MAX;
        // EPSV ALL is refused: once accepted it would refuse later PASVs, which is not what this
        // property is about (unit tests cover it).
        let exchange: Vec<(ModelCommand, ModelReply)> = exchange
            .into_iter()
            .map(|(command, reply)| match command {
                ModelCommand::EpsvAll => (command, ModelReply::Error),
                _ => (command, reply),
            })
            .collect();
        // Every server line: which command it answers, whether it is the final reply.
        let lines: Vec<(usize, bool, &[u8])> = exchange
            .iter()
            .enumerate()
            .flat_map(|(index, (_, reply))| {
                let lines = reply.lines();
                lines
                    .iter()
                    .enumerate()
                    .map(move |(at, line)| (index, at + 1 == lines.len(), *line))
            })
            .collect();
        let mut session = Session::new();
        prop_assert_eq!(session.on_server_line(b"220 ready\r\n", &ctx), ServerVerdict::Ignored);
        let mut answered = vec![false; exchange.len()];
        // Whether the request sent as command N must get its passive reply accepted.
        let mut must_open = vec![false; exchange.len()];
        let (mut sent, mut delivered) = (0, 0);
        let mut schedule = schedule.into_iter();
        while delivered < lines.len() {
            let can_reply = lines[delivered].0 < sent;
            let send = sent < exchange.len() && (!can_reply || schedule.next().unwrap_or(true));
            if send {
                let (command, _) = exchange[sent];
                must_open[sent] = (0..sent)
                    .all(|index| answered[index] || !exchange[index].0.is_passive_request());
                session.on_client_line(command.line(), &ctx);
                sent += 1;
                continue;
            }
            let (index, is_final, line) = lines[delivered];
            delivered += 1;
            let verdict = session.on_server_line(line, &ctx);
            if is_final {
                answered[index] = true;
            }
            let (command, reply) = exchange[index];
            if let ServerVerdict::OpenPassive { endpoint, .. } = verdict {
                prop_assert!(is_final, "{line:?} is not a final reply");
                match endpoint {
                    PassiveEndpoint::Pasv(_) => prop_assert_eq!(command, ModelCommand::Pasv),
                    PassiveEndpoint::Epsv { .. } => prop_assert_eq!(command, ModelCommand::Epsv),
                    PassiveEndpoint::PasvAs229(_) => prop_assert!(false, "no NAT64 ALG here"),
                }
                session.expectation_closed();
            } else if is_final && must_open[index] {
                let answers_its_request = matches!(
                    (command, reply),
                    (ModelCommand::Pasv, ModelReply::Passive227)
                        | (ModelCommand::Epsv, ModelReply::Passive229)
                );
                prop_assert!(!answers_its_request, "{command:?} answered by {line:?}: {verdict:?}");
            }
        }
    }
}

/// Server lines of every shape, as a server may interleave them: multi-line replies with their
/// bodies, other codes inside them, passive replies, text, overlong lines, AUTH's 234.
fn server_line() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![
        Just(150u16),
        Just(200),
        Just(211),
        Just(220),
        Just(226),
        Just(227),
        Just(229),
        Just(230),
        Just(234),
        Just(550),
        100u16..600,
    ];
    let body = proptest::collection::vec(
        any::<u8>().prop_filter("no line end", |b| *b != b'\n'),
        0..24,
    );
    prop_oneof![
        (code.clone(), body.clone()).prop_map(|(c, b)| [format!("{c} ").into_bytes(), b].concat()),
        (code.clone(), body.clone()).prop_map(|(c, b)| [format!("{c}-").into_bytes(), b].concat()),
        (any_ipv4(), valid_port()).prop_map(|(ip, port)| {
            let o = ip.octets();
            format!(
                "227 Entering Passive Mode ({},{},{},{},{},{})",
                o[0],
                o[1],
                o[2],
                o[3],
                port >> 8,
                port & 0xff
            )
            .into_bytes()
        }),
        valid_port()
            .prop_map(|port| format!("229 Extended Passive Mode (|||{port}|)").into_bytes()),
        body.prop_map(|b| [b" ".to_vec(), b].concat()),
        Just(vec![b'x'; MAX_LINE_LEN + 10]),
    ]
    .prop_map(|mut line| {
        line.extend_from_slice(b"\r\n");
        line
    })
}

proptest! {
    /// A line `acts_on_reply` says the session ignores changes nothing and reports nothing: a
    /// session that skips those lines (as the BPF server stage does, to keep its passes for the
    /// lines that matter) stays identical to one that sees every line.
    #[test]
    fn skipping_the_lines_a_session_ignores_changes_nothing(
        commands in proptest::collection::vec(
            prop_oneof![Just(&b"PASV\r\n"[..]), Just(&b"EPSV\r\n"[..]), Just(&b"NOOP\r\n"[..])],
            0..6,
        ),
        lines in proptest::collection::vec(server_line(), 1..40),
    ) {
        let mut every_line = Session::new();
        for command in &commands {
            let _ = every_line.on_client_line(command, &ctx());
        }
        let mut examined_only = every_line;
        let mut replies = ReplyScanner::new();
        for line in &lines {
            let mut ended = false;
            for &byte in line {
                ended = replies.push(byte);
            }
            prop_assert!(ended);
            let acts = examined_only.acts_on_reply(replies.shape());
            let verdict = every_line.on_server_reply(replies.reply(), &ctx());
            if acts {
                let _ = examined_only.on_server_reply(replies.reply(), &ctx());
            } else {
                prop_assert!(
                    matches!(verdict, ServerVerdict::Ignored | ServerVerdict::Encrypted),
                    "a skipped line had a verdict: {verdict:?}"
                );
            }
            prop_assert_eq!(every_line, examined_only);
        }
    }
}

/// Up to a dozen of `line`'s lines in a row, each ended by CR LF, a bare LF, a bare CR or
/// nothing (run into the next).
fn stream_of(line: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let end = prop_oneof![
        Just(&b"\r\n"[..]),
        Just(&b"\n"[..]),
        Just(&b"\r"[..]),
        Just(&b""[..])
    ];
    proptest::collection::vec((line, end), 1..12).prop_map(|lines| {
        lines
            .into_iter()
            .flat_map(|(mut line, end)| {
                line.extend_from_slice(end);
                line
            })
            .collect()
    })
}

/// Server streams for the scanner: reply lines (227/229 among them), multi-line replies, text,
/// long lines, and CRs in every place, as bytes.
fn server_stream() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just(b"227 Entering Passive Mode (10,0,0,2,195,80).".to_vec()),
        Just(b"229 Entering Extended Passive Mode (|||50000|)".to_vec()),
        Just(b"211-status of /:".to_vec()),
        Just(b"211 End of status".to_vec()),
        Just(b" drwxr-xr-x    2 0        0            4096 Dec 06 23:12 pub".to_vec()),
        proptest::collection::vec(
            prop_oneof![
                Just(b'\r'),
                Just(b' '),
                Just(b'2'),
                Just(b'-'),
                Just(b'x'),
                any::<u8>()
            ],
            0..700,
        ),
    ];
    stream_of(line)
}

proptest! {
    /// Passing over whole words of a line the reply scanner ignores, as the datapath does,
    /// leaves the scanner exactly where pushing every byte leaves it, with the same lines ended at
    /// the same bytes.
    #[test]
    fn skipping_ignored_words_is_pushing_them(stream in server_stream(), offset in 0usize..8) {
        let mut pushed = ReplyScanner::new();
        let mut pushed_ends = Vec::new();
        for (i, &byte) in stream.iter().enumerate() {
            if pushed.push(byte) {
                pushed_ends.push((i, pushed.reply()));
            }
        }
        let mut skipped = ReplyScanner::new();
        let mut skipped_ends = Vec::new();
        let mut i = 0;
        while i < stream.len() {
            // Words start at positions of one alignment, as in the datapath's buffer.
            if skipped.skipping()
                && (i + offset) % 8 == 0
                && let Some(word) = stream.get(i..i + 8)
                && skippable_word(word.try_into().unwrap())
            {
                skipped.skip(8);
                i += 8;
                continue;
            }
            if skipped.push(stream[i]) {
                skipped_ends.push((i, skipped.reply()));
            }
            i += 1;
        }
        prop_assert_eq!(&skipped_ends, &pushed_ends);
        prop_assert_eq!(skipped, pushed);
    }
}

proptest! {
    /// One scanner following a whole stream (resetting itself at each line's start, as the
    /// datapath's does) reports every line as a fresh parse of that line alone: nothing of a
    /// line survives into the next.
    #[test]
    fn a_streaming_reply_scanner_reads_each_line_as_a_fresh_parse(stream in server_stream()) {
        let mut scanner = ReplyScanner::new();
        let mut line_start = 0;
        for (i, &byte) in stream.iter().enumerate() {
            if scanner.push(byte) {
                let line = &stream[line_start..=i];
                if line.len() <= MAX_LINE_LEN {
                    prop_assert_eq!(scanner.reply(), parse_reply(line), "line {:?}", String::from_utf8_lossy(line));
                }
                line_start = i + 1;
            }
        }
    }

    /// The same for the command scanner and client streams.
    #[test]
    fn a_streaming_command_scanner_reads_each_line_as_a_fresh_parse(stream in client_stream()) {
        let mut scanner = CommandScanner::new();
        let mut line_start = 0;
        for (i, &byte) in stream.iter().enumerate() {
            if scanner.push(byte) {
                let line = &stream[line_start..=i];
                if line.len() <= MAX_LINE_LEN {
                    prop_assert_eq!(scanner.command(), parse_command(line), "line {:?}", String::from_utf8_lossy(line));
                }
                line_start = i + 1;
            }
        }
    }
}

/// Client streams: PORT and EPRT (both families) with good and bad arguments, other commands,
/// junk, and CRs in every place.
fn client_stream() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just(b"PORT 10,0,0,2,195,80".to_vec()),
        Just(b"PORT 10,0,0,2,195".to_vec()),
        Just(b"port 300,0,0,2,1,1".to_vec()),
        Just(b"EPRT |1|10.0.0.2|50000|".to_vec()),
        Just(b"EPRT |2|2001:db8::1|50000|".to_vec()),
        Just(b"EPRT |2|::ffff:10.0.0.2|5|".to_vec()),
        Just(b"EPRT |3|x|1|".to_vec()),
        Just(b"EPSV ALL".to_vec()),
        Just(b"USER anonymous".to_vec()),
        Just(b"RETR file".to_vec()),
        proptest::collection::vec(
            prop_oneof![
                Just(b'\r'),
                Just(b' '),
                Just(b'|'),
                Just(b','),
                Just(b'1'),
                Just(b':'),
                any::<u8>()
            ],
            0..80,
        ),
    ];
    stream_of(line)
}

// The NAT64 ALG's whole lines.

/// An IPv6 client's session to an IPv4 server with the NAT64 ALG on.
fn nat64_ctx(epsv_as_pasv: bool) -> PolicyContext {
    PolicyContext {
        client: ip::from_ip(IpAddr::V6(NAT64_CLIENT)),
        server: ip::from_ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
        policy: Policy {
            nat64_alg: true,
            epsv_as_pasv,
            ..Policy::new()
        },
    }
}

const NAT64_CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// `word` with each letter's case chosen by `cases`.
fn mixed_case(word: &str, cases: u64) -> Vec<u8> {
    word.bytes()
        .enumerate()
        .map(|(index, byte)| {
            if cases >> (index % 64) & 1 != 0 {
                byte.to_ascii_lowercase()
            } else {
                byte
            }
        })
        .collect()
}

/// Client lines the ALG may replace whole, and near misses of them, without their terminator.
fn alg_candidate_line() -> impl Strategy<Value = Vec<u8>> {
    let word = prop_oneof![
        Just("EPSV"),
        Just("EPSV 2"),
        Just("EPSV 1"),
        Just("EPSV ALL"),
        Just("ALGS STATUS64"),
        Just("ALGS ENABLE64"),
        Just("ALGS DISABLE64"),
        Just("ALGS"),
        Just("ALGS STATUS"),
        Just("EPSVX"),
        Just("ALGSX"),
        Just("PASV"),
    ];
    prop_oneof![
        (word, any::<u64>()).prop_map(|(word, cases)| mixed_case(word, cases)),
        (
            valid_port(),
            delimiter().prop_filter("not in IPv6 text", |d| *d != b':'),
            prop_oneof![Just(NAT64_CLIENT), any_ipv6()]
        )
            .prop_map(|(port, delimiter, addr)| {
                let mut text = vec![b'E', b'P', b'R', b'T', b' '];
                text.extend(field_text(|out| {
                    format_eprt_field(IpAddr::V6(addr), port, delimiter, out)
                }));
                text
            }),
        (any_ipv4(), valid_port()).prop_map(|(addr, port)| {
            [
                &b"EPRT "[..],
                &field_text(|out| format_eprt_field(IpAddr::V4(addr), port, b'|', out)),
            ]
            .concat()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn port_line_round_trips(addr in any_ipv4(), port in valid_port()) {
        let text = field_text(|out| format_port_line(addr, port, out));
        prop_assert!(text.len() <= MAX_PORT_LINE_LEN);
        prop_assert_eq!(text.last(), Some(&b'\r'));
        let record = RewriteRecord {
            kind: rewrite_kind::EPRT_AS_PORT,
            public_port: port,
            ..RewriteRecord::default()
        };
        prop_assert_eq!(
            &field_text(|out| format_rewrite(&record, PublicAddress::V4(addr), out)),
            &text
        );
        let field = field_text(|out| format_port_field(addr, port, out));
        prop_assert_eq!(
            parse_command(&line(&[&text, b"\n"])),
            Command::Port {
                addr: SocketAddrV4::new(addr, port),
                field: Span { start: 5, len: field.len() as u16 },
            }
        );
    }

    #[test]
    fn line_229_round_trips(port in valid_port()) {
        let text = field_text(|out| format_229_line(port, out));
        prop_assert!(text.len() <= MAX_229_LINE_LEN);
        prop_assert_eq!(text.last(), Some(&b'\r'));
        let record = RewriteRecord {
            kind: rewrite_kind::PASV_AS_229,
            public_port: port,
            ..RewriteRecord::default()
        };
        prop_assert_eq!(
            &field_text(|out| format_rewrite(&record, PublicAddress::V4(Ipv4Addr::UNSPECIFIED), out)),
            &text
        );
        let digits = field_text(|out| format_229_field(port, out));
        prop_assert_eq!(
            parse_reply(&line(&[&text, b"\n"])),
            Reply::Final {
                code: 229,
                body: ReplyBody::Passive229 {
                    port,
                    delimiter: b'|',
                    field: Span { start: 39, len: digits.len() as u16 },
                },
            }
        );
    }

    /// Whatever line the ALG replaces whole, it is pending from its first byte at every cut
    /// before its LF (the datapath holds it all), and its replacement, spliced over all of it but
    /// the LF, is a line of its own that parses as the replacement.
    #[test]
    fn a_line_replaced_whole_is_pending_whole_until_it_ends(
        text in alg_candidate_line(),
        end in terminator(),
        epsv_as_pasv in any::<bool>(),
        window_port in valid_port(),
    ) {
        let ctx = nat64_ctx(epsv_as_pasv);
        let whole = line(&[&text, end]);
        let verdict = Session::new().on_client_line(&whole, &ctx);
        let replacement = match verdict {
            ClientVerdict::EpsvAsPasv => PASV_LINE.to_vec(),
            ClientVerdict::AnsweredByAlg(_) => NOOP_LINE.to_vec(),
            ClientVerdict::OpenActive { kind: ActiveKind::EprtAsPort, addr, .. } => {
                prop_assert_eq!(addr.ip(), IpAddr::V6(NAT64_CLIENT));
                field_text(|out| format_port_line(Ipv4Addr::new(203, 0, 113, 1), window_port, out))
            }
            _ => return Ok(()),
        };
        for cut in 1..whole.len() {
            let mut scanner = CommandScanner::new();
            for &byte in &whole[..cut] {
                scanner.push(byte);
            }
            prop_assert_eq!(scanner.pending_rewrite_start(true), Some(0), "cut at {}", cut);
        }
        let mut out = [0u8; MAX_LINE_LEN + MAX_FIELD_LEN];
        let whole_but_lf = Span { start: 0, len: whole.len() as u16 - 1 };
        let len = splice(&whole, whole_but_lf, &replacement, &mut out).unwrap();
        let replaced = &out[..len];
        prop_assert!(replaced.ends_with(b"\r\n"));
        let expected = match verdict {
            ClientVerdict::EpsvAsPasv => Command::Pasv,
            ClientVerdict::AnsweredByAlg(_) => Command::Other,
            _ => Command::Port {
                addr: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), window_port),
                field: Span { start: 5, len: replacement.len() as u16 - 6 },
            },
        };
        prop_assert_eq!(parse_command(replaced), expected);
    }

    /// `ALGS STATUS64` reports what the last `ENABLE64`/`DISABLE64` set, whatever came between.
    #[test]
    fn algs_status_reports_the_last_switch(
        commands in proptest::collection::vec(
            prop_oneof![Just("ALGS ENABLE64"), Just("ALGS DISABLE64"), Just("ALGS STATUS64"), Just("ALGS X"), Just("NOOP")],
            1..20,
        ),
    ) {
        let ctx = nat64_ctx(true);
        let mut session = Session::new();
        let mut enabled = true;
        for command in commands {
            let verdict = session.on_client_line(line(&[command.as_bytes(), b"\r\n"]).as_slice(), &ctx);
            match command {
                "ALGS ENABLE64" => enabled = true,
                "ALGS DISABLE64" => enabled = false,
                _ => {}
            }
            let expected = match command {
                "NOOP" => None,
                "ALGS X" => Some(AlgReply::UnknownArgument),
                _ if enabled => Some(AlgReply::Enabled),
                _ => Some(AlgReply::Disabled),
            };
            prop_assert_eq!(verdict, expected.map_or(ClientVerdict::Ignored, ClientVerdict::AnsweredByAlg));
            prop_assert_eq!(session.nat64_alg_enabled(&ctx.policy), enabled);
            let reply = session.on_server_line(b"200 NOOP ok.\r\n", &ctx);
            prop_assert_eq!(reply, expected.map_or(ServerVerdict::Ignored, ServerVerdict::AlgReply));
        }
    }
}
