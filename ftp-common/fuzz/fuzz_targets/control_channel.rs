//! Feeds arbitrary bytes through everything the datapath runs on a control connection — line
//! trackers, byte-at-a-time scanners, the session state machine, the formatters — and checks the
//! invariants the datapath relies on, plus the one-line parsers against the scanners.
//!
//! Input layout (the seeds in `seeds/control_channel` follow it):
//!
//! - byte 0, policy: bit 0 allows privileged data ports, bit 1 lifts the "227 address must be the
//!   server" rule, bits 2–4 are the expectation limit, bit 5 makes the control connection IPv6,
//!   bit 6 narrows the passive ports to unprivileged ones and bit 7 excludes port 21 — except
//!   that bits 5 and 6 together make a NAT64 session (an IPv6 client, an IPv4 server, the NAT64
//!   ALG on), whose EPSV bit 7 passes as it is rather than sending it as PASV.
//! - then segments, each `header, length, payload[length]` (a short last payload is taken as is):
//!   header bit 0 is the direction (0 client, 1 server); bits 1–2 choose the sequence number
//!   (0 next in order, 1 the previous segment's again, 2 after a gap of `length` bytes, 3 starting
//!   `header >> 3` bytes before the next one); bit 7 reports one expectation closed first.
#![no_main]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use ftp_common::maps::ip;

use ftp_common::{
    ActiveKind, AlgReply, AlgsArg, ClientVerdict, Command, CommandScanner, EpsvArg, LineTracker,
    MAX_FIELD_LEN, MAX_LINE_LEN, PassiveEndpoint, Policy, PolicyContext, PublicAddress, Reply,
    ReplyBody, ReplyScanner, SegmentVerdict, ServerVerdict, Session, Span, format_227_field,
    format_229_field, format_eprt_field, format_port_field, format_rewrite,
    maps::{RewriteRecord, rewrite_kind},
    parse_command, parse_reply, splice,
};
use libfuzzer_sys::fuzz_target;

const CLIENT: usize = 0;
const SERVER: usize = 1;
/// Initial sequence numbers close to 2^32 so that sessions cross the wrap.
const ISN: [u32; 2] = [u32::MAX - 300, 0x7fff_fff0];

fuzz_target!(|data: &[u8]| {
    let Some((&policy_byte, mut rest)) = data.split_first() else {
        return;
    };
    let ctx = context(policy_byte);
    let mut session = Session::new();
    let mut trackers = [LineTracker::new(), LineTracker::new()];
    trackers[CLIENT].on_syn(ISN[CLIENT]);
    trackers[SERVER].on_syn(ISN[SERVER]);
    let mut commands = CommandScanner::new();
    let mut replies = ReplyScanner::new();
    // The bytes of the line each scanner is reading, to check its verdicts against the line.
    let mut lines: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut stream_end = ISN.map(|isn| isn.wrapping_add(1));
    let mut previous_seq = stream_end;

    while let [header, length, tail @ ..] = rest {
        let (payload, remaining) = tail.split_at(usize::from(*length).min(tail.len()));
        rest = remaining;
        let direction = usize::from(header & 1);
        if header & 0x80 != 0 {
            session.expectation_closed();
        }
        let len = payload.len() as u32;
        let seq = match (header >> 1) & 3 {
            0 => stream_end[direction],
            1 => previous_seq[direction],
            2 => stream_end[direction].wrapping_add(len),
            _ => stream_end[direction].wrapping_sub(u32::from(header >> 3)),
        };
        previous_seq[direction] = seq;
        let end = seq.wrapping_add(len);
        if (end.wrapping_sub(stream_end[direction]) as i32) > 0 {
            stream_end[direction] = end;
        }

        // The one-line parsers on their own, on whatever the segment holds.
        check_command(payload, parse_command(payload));
        check_reply(payload, parse_reply(payload));

        let SegmentVerdict::InSync(in_sync) = trackers[direction].on_segment(seq, payload) else {
            continue;
        };
        assert!((in_sync.start as usize) < payload.len());
        if !in_sync.continues_line {
            lines[direction].clear();
            if direction == CLIENT {
                commands.reset();
            } else {
                replies.reset();
            }
        }
        for &byte in &payload[in_sync.start as usize..] {
            let line = &mut lines[direction];
            line.push(byte);
            let ended = if direction == CLIENT {
                commands.push(byte)
            } else {
                replies.push(byte)
            };
            if !ended {
                continue;
            }
            let line = core::mem::take(line);
            if direction == CLIENT {
                assert_eq!(usize::from(commands.line_len()), line.len());
                let command = commands.command();
                // The scanner fed across segments agrees with the parser on the whole line.
                assert_eq!(command, parse_command(&line));
                check_client_verdict(&line, session.on_client_command(command, &ctx), &ctx);
            } else {
                assert_eq!(usize::from(replies.line_len()), line.len());
                let reply = replies.reply();
                assert_eq!(reply, parse_reply(&line));
                check_server_verdict(&line, session.on_server_reply(reply, &ctx), &ctx);
            }
            assert!(session.open_expectations() <= ctx.policy.max_outstanding_expectations);
        }
    }
});

/// The NAT64 session's addresses and the pool address its PORT lines announce.
const NAT64_CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const NAT64_SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const NAT64_POOL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

fn context(policy_byte: u8) -> PolicyContext {
    let ipv6 = policy_byte & 0x20 != 0;
    if ipv6 && policy_byte & 0x40 != 0 {
        return PolicyContext {
            client: ip::from_ip(IpAddr::V6(NAT64_CLIENT)),
            server: ip::from_ip(IpAddr::V4(NAT64_SERVER)),
            policy: Policy {
                allow_privileged_data_ports: policy_byte & 1 != 0,
                passive_address_must_match_server: policy_byte & 2 == 0,
                max_outstanding_expectations: (policy_byte >> 2) & 7,
                nat64_alg: true,
                epsv_as_pasv: policy_byte & 0x80 == 0,
                ..Policy::new()
            },
        };
    }
    PolicyContext {
        client: ip::from_ip(if ipv6 {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))
        }),
        server: ip::from_ip(if ipv6 {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10))
        } else {
            IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10))
        }),
        policy: Policy {
            allow_privileged_data_ports: policy_byte & 1 != 0,
            passive_address_must_match_server: policy_byte & 2 == 0,
            max_outstanding_expectations: (policy_byte >> 2) & 7,
            // A published server's policy: unprivileged passive ports only, never its control port.
            passive_ports: if policy_byte & 0x40 != 0 {
                [1024, u16::MAX]
            } else {
                [0, u16::MAX]
            },
            passive_port_excluded: if policy_byte & 0x80 != 0 { 21 } else { 0 },
            ..Policy::new()
        },
    }
}

/// What the datapath writes over a whole line for `kind` (the pool address and `port` where it
/// needs them), with the LF it keeps.
fn whole_line(kind: u8, port: u16, delimiter: u8) -> Vec<u8> {
    let record = RewriteRecord {
        kind,
        public_port: port,
        delimiter,
        ..RewriteRecord::default()
    };
    let mut text = [0u8; MAX_FIELD_LEN];
    let len = format_rewrite(&record, PublicAddress::V4(NAT64_POOL), &mut text)
        .expect("a whole-line replacement formats");
    assert_eq!(text[len - 1], b'\r');
    [&text[..len], b"\n"].concat()
}

fn check_client_verdict(line: &[u8], verdict: ClientVerdict, ctx: &PolicyContext) {
    let alg = ctx.policy.nat64_alg;
    match verdict {
        ClientVerdict::OpenActive {
            addr,
            field,
            kind: ActiveKind::EprtAsPort,
        } => {
            // Only the client's own IPv6 address goes to the server as the pool's, in a PORT that
            // names exactly that.
            assert!(alg, "EPRT as PORT without the NAT64 ALG");
            assert_eq!(addr.ip(), IpAddr::V6(NAT64_CLIENT));
            assert!(matches!(
                parse_command(line),
                Command::Eprt { addr: parsed, field: parsed_field, .. }
                    if parsed == addr && parsed_field == field
            ));
            for port in [addr.port(), 1, 65535] {
                assert_eq!(
                    parse_command(&whole_line(rewrite_kind::EPRT_AS_PORT, port, 0)),
                    Command::Port {
                        addr: core::net::SocketAddrV4::new(NAT64_POOL, port),
                        field: Span {
                            start: 5,
                            len: format_port_field(NAT64_POOL, port, &mut [0; MAX_FIELD_LEN])
                                .unwrap() as u16,
                        },
                    }
                );
            }
        }
        ClientVerdict::EpsvAsPasv => {
            assert!(
                alg && ctx.policy.epsv_as_pasv,
                "EPSV as PASV without the ALG"
            );
            assert!(matches!(
                parse_command(line),
                Command::Epsv(EpsvArg::Any | EpsvArg::Ipv6)
            ));
            assert_eq!(
                parse_command(&whole_line(rewrite_kind::EPSV_AS_PASV, 0, 0)),
                Command::Pasv
            );
        }
        ClientVerdict::AnsweredByAlg(reply) => {
            assert!(alg, "answered by an ALG that is off");
            let answers = match parse_command(line) {
                Command::Epsv(EpsvArg::All) => reply == AlgReply::EpsvAllAccepted,
                Command::Algs(AlgsArg::Status64) => {
                    matches!(reply, AlgReply::Enabled | AlgReply::Disabled)
                }
                Command::Algs(AlgsArg::Enable64) => reply == AlgReply::Enabled,
                Command::Algs(AlgsArg::Disable64) => reply == AlgReply::Disabled,
                Command::Algs(AlgsArg::Other) => reply == AlgReply::UnknownArgument,
                _ => false,
            };
            assert!(answers, "{reply:?} answering {line:?}");
            assert_eq!(
                parse_command(&whole_line(rewrite_kind::LOCAL_COMMAND, 0, 0)),
                Command::Other
            );
        }
        ClientVerdict::OpenActive { addr, field, kind } => {
            let expected = match kind {
                ActiveKind::Port => {
                    let SocketAddr::V4(v4) = addr else {
                        panic!("PORT with a non-IPv4 address");
                    };
                    Command::Port { addr: v4, field }
                }
                ActiveKind::Eprt { delimiter } => Command::Eprt {
                    addr,
                    delimiter,
                    field,
                },
                ActiveKind::EprtAsPort => unreachable!("matched above"),
            };
            assert_eq!(parse_command(line), expected);
            check_command(line, expected);
        }
        ClientVerdict::Transfer { arg: span, .. } | ClientVerdict::User { name: span } => {
            assert!(span.get(line).is_some());
        }
        _ => {}
    }
}

/// An opened passive endpoint is what the reply says, and a port the policy allows; the NAT64
/// ALG's replacements are what they replace.
fn check_server_verdict(line: &[u8], verdict: ServerVerdict, ctx: &PolicyContext) {
    let policy = &ctx.policy;
    match verdict {
        ServerVerdict::AlgRefused(_) => {
            assert!(policy.nat64_alg && policy.epsv_as_pasv);
            assert!(matches!(
                parse_reply(line),
                Reply::Final {
                    code: 227,
                    body: ReplyBody::Passive227 { .. }
                }
            ));
        }
        ServerVerdict::AlgReply(reply) => {
            assert!(policy.nat64_alg);
            assert!(matches!(parse_reply(line), Reply::Final { code, .. } if code != 421));
            let replacement = whole_line(rewrite_kind::ALG_REPLY, 0, reply as u8);
            assert!(matches!(
                parse_reply(&replacement),
                Reply::Final {
                    body: ReplyBody::Plain,
                    ..
                }
            ));
        }
        _ => {}
    }
    if let ServerVerdict::OpenPassive { endpoint, field } = verdict {
        let port = match endpoint {
            PassiveEndpoint::Pasv(addr) | PassiveEndpoint::PasvAs229(addr) => addr.port(),
            PassiveEndpoint::Epsv { port, .. } => port,
        };
        assert!(
            policy.allows_passive_port(port),
            "{port} opened against {policy:?}"
        );
        if let PassiveEndpoint::PasvAs229(addr) = endpoint {
            // A 229 names no address: only the server's may be announced as one.
            assert!(policy.nat64_alg && policy.epsv_as_pasv);
            assert_eq!(*addr.ip(), NAT64_SERVER);
            let replacement = whole_line(rewrite_kind::PASV_AS_229, port, 0);
            assert!(matches!(
                parse_reply(&replacement),
                Reply::Final {
                    code: 229,
                    body: ReplyBody::Passive229 { port: parsed, delimiter: b'|', .. }
                } if parsed == port
            ));
        }
        let body = match endpoint {
            PassiveEndpoint::Pasv(addr) | PassiveEndpoint::PasvAs229(addr) => {
                ReplyBody::Passive227 { addr, field }
            }
            PassiveEndpoint::Epsv { port, delimiter } => ReplyBody::Passive229 {
                port,
                delimiter,
                field,
            },
        };
        let reply = parse_reply(line);
        assert!(matches!(reply, Reply::Final { body: parsed, .. } if parsed == body));
        check_reply(line, reply);
    }
}

/// A parsed PORT/EPRT re-formats to text that parses back to it, and so does a rewrite to another
/// address; everything outside the field is kept.
fn check_command(line: &[u8], command: Command) {
    match command {
        Command::Port { addr, field } => {
            for (ip, port) in [
                (*addr.ip(), addr.port()),
                (Ipv4Addr::new(203, 0, 113, 200), 65535),
            ] {
                let mut text = [0u8; MAX_FIELD_LEN];
                let len = format_port_field(ip, port, &mut text).expect("PORT field formats");
                let Some(rewritten) = rewrite(line, field, &text[..len]) else {
                    continue;
                };
                assert_eq!(
                    parse_command(&rewritten),
                    Command::Port {
                        addr: core::net::SocketAddrV4::new(ip, port),
                        field: Span {
                            start: field.start,
                            len: len as u16
                        },
                    }
                );
            }
        }
        Command::Eprt {
            addr,
            delimiter,
            field,
        } => {
            let other = match addr {
                SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 1),
                SocketAddr::V6(_) => SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::new(0xfeed, 0, 0, 0, 0, 0xabcd, 0, 1)),
                    1,
                ),
            };
            for target in [addr, other] {
                let mut text = [0u8; MAX_FIELD_LEN];
                let len = format_eprt_field(target.ip(), target.port(), delimiter, &mut text)
                    .expect("a parsed EPRT delimiter formats");
                let Some(rewritten) = rewrite(line, field, &text[..len]) else {
                    continue;
                };
                assert_eq!(
                    parse_command(&rewritten),
                    Command::Eprt {
                        addr: target,
                        delimiter,
                        field: Span {
                            start: field.start,
                            len: len as u16
                        },
                    }
                );
            }
        }
        Command::User { name: span } | Command::Transfer { arg: span, .. } => {
            assert!(span.get(line).is_some());
        }
        _ => {}
    }
}

/// The same for a parsed 227/229.
fn check_reply(line: &[u8], reply: Reply) {
    let Reply::Final { code, body } = reply else {
        return;
    };
    match body {
        ReplyBody::Passive227 { addr, field } => {
            for (ip, port) in [(*addr.ip(), addr.port()), (Ipv4Addr::new(0, 0, 0, 0), 1)] {
                let mut text = [0u8; MAX_FIELD_LEN];
                let len = format_227_field(ip, port, &mut text).expect("227 field formats");
                let Some(rewritten) = rewrite(line, field, &text[..len]) else {
                    continue;
                };
                let expected = ReplyBody::Passive227 {
                    addr: core::net::SocketAddrV4::new(ip, port),
                    field: Span {
                        start: field.start,
                        len: len as u16,
                    },
                };
                assert_eq!(
                    parse_reply(&rewritten),
                    Reply::Final {
                        code,
                        body: expected
                    }
                );
            }
        }
        ReplyBody::Passive229 {
            port,
            delimiter,
            field,
        } => {
            for new_port in [port, 1, 65535] {
                let mut text = [0u8; MAX_FIELD_LEN];
                let len = format_229_field(new_port, &mut text).expect("229 field formats");
                let Some(rewritten) = rewrite(line, field, &text[..len]) else {
                    continue;
                };
                let expected = ReplyBody::Passive229 {
                    port: new_port,
                    delimiter,
                    field: Span {
                        start: field.start,
                        len: len as u16,
                    },
                };
                assert_eq!(
                    parse_reply(&rewritten),
                    Reply::Final {
                        code,
                        body: expected
                    }
                );
            }
        }
        ReplyBody::Plain | ReplyBody::Malformed(_) => {}
    }
}

/// `line` up to and including its first LF, with `field` replaced; the bytes outside the field
/// must come through unchanged. `None` if the result is too long to be parsed again (a rewrite
/// may lengthen a line that was already close to `MAX_LINE_LEN`).
fn rewrite(line: &[u8], field: Span, replacement: &[u8]) -> Option<Vec<u8>> {
    let end = line
        .iter()
        .position(|&b| b == b'\n')
        .expect("a parsed line has an LF")
        + 1;
    let line = &line[..end];
    let mut out = [0u8; MAX_LINE_LEN + MAX_FIELD_LEN];
    let len = splice(line, field, replacement, &mut out).expect("field lies in the line");
    let rewritten = out[..len].to_vec();
    let start = usize::from(field.start);
    assert_eq!(&rewritten[..start], &line[..start]);
    assert_eq!(
        &rewritten[start + replacement.len()..],
        &line[field.end()..]
    );
    (rewritten.len() <= MAX_LINE_LEN).then_some(rewritten)
}
